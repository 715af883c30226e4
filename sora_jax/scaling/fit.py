"""Fits of a compute ladder: loss against compute, and prompt adherence against compute.

* Loss: the saturating power law of Kaplan et al., 2020 and Hoffmann et al., 2022,
  `L(C) = a C^-b + c` (c: the irreducible loss), by non-linear least squares
  (`scipy.optimize.curve_fit`, bounded to a, b, c >= 0), on C rescaled to the smallest rung
  for conditioning and reported for C in the units given. Standard errors are the square
  roots of the covariance's diagonal, scaled by the residual variance: with as many points
  as parameters (three rungs) the curve passes through every point and no error can be
  estimated, so they are None; the plain power law `L = a C^-b` (a line in log-log,
  `fit_power_law`) still has one degree of freedom there.
* Adherence (a rate in [0, 1], e.g. the Shapes World evaluator's `all`): linear in log10 C
  and logistic in log10 C, with standard errors; the logistic one is weighted by the
  binomial variance when the number of prompts is known.

All functions take plain sequences and return JSON-ready dicts.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np


def _arrays(compute: Sequence[float], values: Sequence[float], what: str, min_points: int):
  c, y = np.asarray(compute, np.float64), np.asarray(values, np.float64)
  if c.shape != y.shape or c.ndim != 1:
    raise ValueError(f"{what}: compute {c.shape} and values {y.shape} must be 1-D and "
                     "of the same length.")
  if len(c) < min_points:
    raise ValueError(f"{what}: {len(c)} points; needs at least {min_points}.")
  if not np.all(np.isfinite(c)) or not np.all(c > 0) or not np.all(np.isfinite(y)):
    raise ValueError(f"{what}: compute must be finite and > 0 and values finite; got "
                     f"compute={c.tolist()}, values={y.tolist()}.")
  return c, y


def _errors(cov, dof: int) -> list[float | None]:
  if dof <= 0 or cov is None or not np.all(np.isfinite(cov)):
    return [None] * (0 if cov is None else len(cov))
  return [float(math.sqrt(v)) if v >= 0 else None for v in np.diag(cov)]


def fit_power_law(compute: Sequence[float], loss: Sequence[float]) -> dict:
  """`loss = a C^-b` by least squares on log(loss) vs log(C) (two or more points).

  Returns:
    {"a", "b", "a_err" (of log a, i.e. relative), "b_err", "n", "dof", "rms_log_residual"}.
  """
  c, y = _arrays(compute, loss, "fit_power_law", 2)
  if not np.all(y > 0):
    raise ValueError(f"fit_power_law: losses must be > 0; got {y.tolist()}.")
  x, ly = np.log(c), np.log(y)
  design = np.stack([np.ones_like(x), -x], axis=1)
  coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
  resid = ly - design @ coef
  dof = len(x) - 2
  cov = None
  if dof > 0:
    cov = np.linalg.inv(design.T @ design) * float(resid @ resid) / dof
  errs = _errors(cov, dof) if cov is not None else [None, None]
  return {"a": float(math.exp(coef[0])), "b": float(coef[1]), "log_a_err": errs[0],
          "b_err": errs[1], "n": int(len(x)), "dof": int(dof),
          "rms_log_residual": float(np.sqrt(np.mean(resid ** 2)))}


def fit_saturating_power_law(compute: Sequence[float], loss: Sequence[float]) -> dict:
  """`loss = a C^-b + c` (a, b, c >= 0) by non-linear least squares (three or more points).

  Returns:
    {"a", "b", "c", "a_err", "b_err", "c_err" (None without degrees of freedom),
     "cov" (3x3 for a, b, c or None), "n", "dof", "rms_residual", "converged"}.
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  c, y = _arrays(compute, loss, "fit_saturating_power_law", 3)
  c0 = float(c.min())
  x = c / c0  # L = a' x^-b + c with a' = a c0^-b
  model = lambda x, a, b, cc: a * np.power(x, -b) + cc
  start = fit_power_law(c, np.maximum(y - 0.5 * y.min(), 1e-12))
  p0 = [max(float(y.max() - 0.5 * y.min()), 1e-6), min(max(start["b"], 1e-3), 5.0),
        0.5 * float(y.min())]
  converged = True
  try:
    with warnings.catch_warnings():  # no covariance without degrees of freedom: handled
      warnings.simplefilter("ignore", optimize.OptimizeWarning)
      params, cov = optimize.curve_fit(model, x, y, p0=p0, maxfev=20000,
                                       bounds=([0, 0, 0], [np.inf, 10, np.inf]))
  except RuntimeError:
    params, cov, converged = np.asarray(p0), None, False
  dof = len(x) - 3
  resid = y - model(x, *params)
  a_scaled, b, cc = (float(v) for v in params)
  a = a_scaled * c0 ** b
  if cov is not None and dof > 0 and np.all(np.isfinite(cov)):
    # d a / d a' = c0^b, d a / d b = a ln c0: propagate into the raw-C parametrisation.
    jac = np.array([[c0 ** b, a * math.log(c0), 0.0], [0, 1, 0], [0, 0, 1]])
    cov = jac @ cov @ jac.T
  else:
    cov = None
  errs = _errors(cov, dof) if cov is not None else [None] * 3
  return {"a": a, "b": b, "c": cc, "a_err": errs[0], "b_err": errs[1], "c_err": errs[2],
          "cov": None if cov is None else cov.tolist(), "n": int(len(x)), "dof": int(dof),
          "rms_residual": float(np.sqrt(np.mean(resid ** 2))), "converged": converged}


def fit_linear_log(compute: Sequence[float], rate: Sequence[float]) -> dict:
  """`rate = intercept + slope log10(C)` by least squares, with standard errors.

  Returns:
    {"slope" (per decade of compute), "intercept", "slope_err", "intercept_err", "n", "dof"}.
  """
  c, y = _arrays(compute, rate, "fit_linear_log", 2)
  x = np.log10(c)
  design = np.stack([np.ones_like(x), x], axis=1)
  coef, *_ = np.linalg.lstsq(design, y, rcond=None)
  resid = y - design @ coef
  dof = len(x) - 2
  cov = np.linalg.pinv(design.T @ design) * float(resid @ resid) / dof if dof > 0 else None
  errs = _errors(cov, dof) if cov is not None else [None, None]
  return {"slope": float(coef[1]), "intercept": float(coef[0]), "slope_err": errs[1],
          "intercept_err": errs[0], "n": int(len(x)), "dof": int(dof)}


def fit_logistic_log(compute: Sequence[float], rate: Sequence[float],
                     num_prompts: int | None = None) -> dict:
  """`rate = 1 / (1 + exp(-(alpha + beta log10 C)))` by (weighted) least squares.

  Args:
    compute: C per rung.
    rate: adherence in [0, 1] per rung.
    num_prompts: prompts behind each rate; if given, residuals are weighted by the binomial
      standard deviation sqrt(p (1 - p) / n) (p kept away from 0 and 1) and the errors are
      absolute; else they are scaled by the residual variance.

  Returns:
    {"alpha", "beta", "alpha_err", "beta_err", "n", "dof", "compute_at_half" (C where the
     fitted rate is 0.5, or None if beta is 0)}.
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  c, y = _arrays(compute, rate, "fit_logistic_log", 2)
  if np.any(y < 0) or np.any(y > 1):
    raise ValueError(f"fit_logistic_log: rates must be in [0, 1]; got {y.tolist()}.")
  x = np.log10(c)
  model = lambda x, alpha, beta: 1.0 / (1.0 + np.exp(-(alpha + beta * x)))
  eps = 0.5 / (num_prompts or 100)
  logit = np.log(np.clip(y, eps, 1 - eps) / (1 - np.clip(y, eps, 1 - eps)))
  start = np.polyfit(x, logit, 1) if len(x) > 1 and np.ptp(x) > 0 else [0.0, logit.mean()]
  sigma = None
  if num_prompts:
    p = np.clip(y, eps, 1 - eps)
    sigma = np.sqrt(p * (1 - p) / num_prompts)
  dof = len(x) - 2
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", optimize.OptimizeWarning)
      params, cov = optimize.curve_fit(model, x, y, p0=[start[1], start[0]], sigma=sigma,
                                       absolute_sigma=bool(num_prompts), maxfev=20000)
  except RuntimeError:
    params, cov = np.asarray([start[1], start[0]]), None
  if not num_prompts and dof <= 0:
    cov = None
  errs = _errors(cov, 1 if num_prompts else dof) if cov is not None else [None, None]
  alpha, beta = (float(v) for v in params)
  half = -alpha / beta if beta else None
  return {"alpha": alpha, "beta": beta, "alpha_err": errs[0], "beta_err": errs[1],
          "n": int(len(x)), "dof": int(dof),
          "compute_at_half": float(10 ** half) if half is not None and abs(half) < 300
                             else None}
