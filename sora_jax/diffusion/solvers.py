"""Rectified-flow samplers: Euler, Heun, DPM-Solver++(2M); CFG; SDEdit starts; conditioning.

The convention is the one in `sora_jax/diffusion/flow.py`: x_t = (1 - t) x0 + t eps, the
model predicts v = eps - x0, t = 1 is noise, t = 0 is data, and sampling integrates
dx/dt = v(x, t) from t = 1 (or t_start) down to t = 0 on a decreasing grid `ts`.

* Grid (`timesteps`): uniform in *unshifted* time, then mapped through the SD3 shift
  t' = s t / (1 + (s - 1) t) (Esser et al., 2024, arXiv:2403.03206); s > 1 spends more
  steps near noise.
* Euler: x' = x + (t' - t) v(x, t). 1st order, one model call a step.
* Heun (Karras et al., 2022, arXiv:2206.00364, Algorithm 1): an Euler predictor, then the
  trapezoid corrector x' = x + (t' - t) (v(x, t) + v(x_pred, t')) / 2. 2nd order, two calls
  a step; a step that ends at t = 0 stays Euler (one call), as in Karras et al.
* DPM-Solver++(2M) (Lu et al., 2022, arXiv:2211.01095, Algorithm 2) for rectified flow:
  alpha_t = 1 - t, sigma_t = t, lambda_t = log(alpha_t / sigma_t), data prediction
  D = x - t v. The 1st-order update x' = (sigma'/sigma) x - alpha' (e^{-h} - 1) D, with
  h = lambda' - lambda, is written without lambda,
      x' = (t'/t) x + ((1 - t') - (1 - t) t'/t) D,
  so it's finite at t = 1 (lambda = -inf); for rectified flow it's exactly the Euler step.
  The 2M step uses D + (h / (2 h_prev)) (D - D_prev) instead of D. It falls back to 1st
  order where no finite h_prev exists (the first step, and the second one too when the grid
  starts at t = 1, since then h_prev = inf) and on a step to t = 0 (h = inf), which returns
  D, as k-diffusion does. One call a step, 2nd order overall.
* Classifier-free guidance (Ho & Salimans, 2022, arXiv:2207.12598): v = v_u + s (v_c - v_u),
  optionally only inside a t interval (Kynkaanniemi et al., 2024, arXiv:2404.07724): near
  the data, where x_t already fixes x0, guidance only adds the two branches' disagreement.
* SDEdit (Meng et al., 2021, arXiv:2108.01073): noise a clean video to t_start with
  `edit_start` and integrate from there with `timesteps(..., t_start=t_start)`.

Conditioning (image-/video-to-video, extension): positions where `cond_mask` is True hold a
clean latent `cond`. `sample` writes them in before the first model call, into Heun's
predictor and after every step, so they come out bitwise equal to `cond` (as float32).

Typical use:

    ts = timesteps(steps=50, shift=3.0)
    x0 = sample(cfg_velocity(v_text, v_empty, 7.0), init_noise(rng, shape), ts,
                method="dpmpp_2m")
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.diffusion import flow

# (x [like x_init] float32, t scalar float32) -> v [like x] float32.
VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]

METHODS = ("euler", "heun", "dpmpp_2m")


# ----------------------------------------------------------------------------- validation


def _check_steps(steps) -> int:
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be an int >= 1, got {steps!r}.")
  return int(steps)


def _check_shift(shift) -> float:
  shift = float(shift)
  if not (np.isfinite(shift) and shift > 0):
    raise ValueError(f"shift must be a finite float > 0 (1 = no shift), got {shift!r}.")
  return shift


def _check_unit(name: str, value, *, allow_zero: bool) -> float:
  value = float(value)
  ok = (0 <= value <= 1) if allow_zero else (0 < value <= 1)
  if not ok:
    allowed = "[0, 1]" if allow_zero else "(0, 1]"
    raise ValueError(f"{name} must be in {allowed} (1 = start from pure noise), got "
                     f"{value!r}.")
  return value


def _check_grid(ts) -> jax.Array:
  """ts as float32 [steps + 1]; checks values too when they're concrete (not under jit)."""
  ts = jnp.asarray(ts, jnp.float32)
  if ts.ndim != 1 or ts.shape[0] < 2:
    raise ValueError(f"ts must be a 1-D grid of >= 2 times (steps + 1), got shape "
                     f"{ts.shape}.")
  if not isinstance(ts, jax.core.Tracer):
    values = np.asarray(ts)
    if not (np.all(np.diff(values) < 0) and values[0] <= 1 and values[-1] >= 0):
      raise ValueError(f"ts must decrease strictly within [0, 1] (noise to data), got "
                       f"{values.tolist()}.")
  return ts


def _conditioner(shape: tuple[int, ...], cond, cond_mask) -> Callable[[jax.Array], jax.Array]:
  """x -> x with the conditioned positions set to `cond` (identity without conditioning)."""
  if cond is None and cond_mask is None:
    return lambda x: x
  if cond is None or cond_mask is None:
    raise ValueError("cond and cond_mask go together; got cond "
                     f"{'None' if cond is None else 'set'} and cond_mask "
                     f"{'None' if cond_mask is None else 'set'}.")
  cond, cond_mask = jnp.asarray(cond), jnp.asarray(cond_mask)
  if cond.shape != shape:
    raise ValueError(f"cond must have x_init's shape {shape}, got {cond.shape}.")
  if cond_mask.dtype != jnp.bool_:
    raise ValueError(f"cond_mask must be bool (True = conditioned), got {cond_mask.dtype}.")
  try:
    broadcast = np.broadcast_shapes(cond_mask.shape, shape)
  except ValueError:
    broadcast = None
  if broadcast != shape:
    raise ValueError(f"cond_mask shape {cond_mask.shape} doesn't broadcast to x_init's "
                     f"shape {shape}.")
  cond = cond.astype(jnp.float32)
  return lambda x: jnp.where(cond_mask, cond, x)


# ---------------------------------------------------------------------------------- grid


def timesteps(steps: int, shift: float = 1.0, t_start: float = 1.0) -> jax.Array:
  """The sampling grid: `steps` steps from t_start down to 0, SD3-shifted.

  The grid is uniform in unshifted time u, from u_start = shift^-1(t_start) down to 0, then
  mapped through `flow.shift_timesteps`. So it starts exactly at t_start, always has
  `steps` steps, and spaces them like the full shifted grid; t_start = 1 gives exactly
  `flow.shift_timesteps(linspace(1, 0, steps + 1), shift)` (the grid of
  `flow.euler_sample`). The endpoints are pinned to t_start and 0 (the shift formula can
  miss 1 by an ulp for some s).

  Args:
    steps: number of steps, >= 1.
    shift: SD3 shift s > 0 (1 = uniform).
    t_start: first time, in (0, 1]; < 1 is SDEdit (start from `edit_start`).

  Returns:
    float32 [steps + 1], strictly decreasing from t_start to 0.
  """
  steps = _check_steps(steps)
  shift = _check_shift(shift)
  t_start = _check_unit("t_start", t_start, allow_zero=False)
  # Inverse shift: u = t / (s - (s - 1) t).
  u_start = 1.0 if t_start == 1.0 else t_start / (shift - (shift - 1.0) * t_start)
  ts = flow.shift_timesteps(jnp.linspace(u_start, 0.0, steps + 1, dtype=jnp.float32), shift)
  return ts.at[0].set(t_start).at[-1].set(0.0)


# ------------------------------------------------------------------------------ samplers


def _euler(v_fn, fix, x: jax.Array, ts: jax.Array):
  def step(x, t_pair):
    t, t_next = t_pair
    return fix(x + (t_next - t) * v_fn(x, t)), None

  return jax.lax.scan(step, x, (ts[:-1], ts[1:]))[0]


def _heun(v_fn, fix, x: jax.Array, ts: jax.Array):
  def step(x, t_pair):
    t, t_next = t_pair
    d = v_fn(x, t)
    x_pred = fix(x + (t_next - t) * d)

    def corrected():
      return x + (t_next - t) * 0.5 * (d + v_fn(x_pred, t_next))

    # v at t = 0 is never needed (Karras et al.): the last step stays Euler.
    x_next = jax.lax.cond(t_next > 0, corrected, lambda: x_pred)
    return fix(x_next), None

  return jax.lax.scan(step, x, (ts[:-1], ts[1:]))[0]


def _dpmpp_2m(v_fn, fix, x: jax.Array, ts: jax.Array):
  def lam(t):  # log(alpha / sigma): -inf at t = 1, +inf at t = 0.
    return jnp.log1p(-t) - jnp.log(t)

  def step(carry, t_pair):
    x, d_prev, h_prev = carry
    t, t_next = t_pair
    d = x - t * v_fn(x, t)  # data prediction D
    h = lam(t_next) - lam(t)
    second = jnp.isfinite(h_prev) & (t_next > 0)
    c = h / (2 * jnp.where(second, h_prev, 1.0))
    d_eff = jnp.where(second, d + c * (d - d_prev), d)
    ratio = t_next / t  # sigma' / sigma; t > 0 on a valid grid before its last point
    x_next = ratio * x + ((1 - t_next) - (1 - t) * ratio) * d_eff
    return (fix(x_next), d, h), None

  init = (x, jnp.zeros_like(x), jnp.array(jnp.inf, jnp.float32))  # no history yet
  return jax.lax.scan(step, init, (ts[:-1], ts[1:]))[0][0]


_SAMPLERS = {"euler": _euler, "heun": _heun, "dpmpp_2m": _dpmpp_2m}


def sample(velocity_fn: VelocityFn, x_init: jax.Array, ts: jax.Array, *,
           method: str = "euler", cond: jax.Array | None = None,
           cond_mask: jax.Array | None = None) -> jax.Array:
  """Integrates dx/dt = v(x, t) along `ts` (noise to data); deterministic.

  jit-compatible with `ts` traced and `method` static (e.g. close over them, or
  `jax.jit(partial(sample, fn), static_argnames="method")`). Model calls per run:
  `steps` for euler and dpmpp_2m; `2 steps - 1` for heun on a grid that ends at 0.

  Args:
    velocity_fn: (x [like x_init] float32, t scalar float32) -> v like x.
    x_init: x at ts[0]: noise (`init_noise`) when ts[0] = 1, else `edit_start`. Any shape;
      carried as float32.
    ts: float32 [steps + 1], strictly decreasing in [0, 1] (`timesteps`).
    method: one of "euler", "heun", "dpmpp_2m".
    cond: clean latents, x_init's shape, or None.
    cond_mask: bool, broadcastable to x_init's shape (True = conditioned), or None. Given
      together with `cond`.

  Returns:
    float32, x_init's shape: x at ts[-1] (the sample when ts[-1] = 0), with the conditioned
    positions bitwise equal to cond (as float32).

  Raises:
    ValueError: unknown method, a bad grid, or bad cond / cond_mask.
  """
  if method not in _SAMPLERS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  ts = _check_grid(ts)
  x = jnp.asarray(x_init, jnp.float32)
  fix = _conditioner(x.shape, cond, cond_mask)

  v_fn = lambda x, t: velocity_fn(x, t).astype(jnp.float32)
  return _SAMPLERS[method](v_fn, fix, fix(x), ts)


# ---------------------------------------------------------------------------------- CFG


def _is_one(scale) -> bool:
  """True when scale is concretely 1 (a traced scale can't skip the unconditional call)."""
  if isinstance(scale, jax.core.Tracer):
    return False
  return float(scale) == 1.0


def cfg_combine(v_cond: jax.Array, v_uncond: jax.Array, scale) -> jax.Array:
  """Classifier-free guidance v = v_u + scale (v_c - v_u), for one batched model call.

  For callers that run both branches in one batch: x doubled, with the caption in the first
  half and the unconditional text in the second, then `cfg_combine(*jnp.split(v, 2),
  scale)`. The unconditional text is the empty caption (all padding, as in
  `flow.drop_text` training); a negative prompt puts the negative caption there instead, so
  guidance pushes away from it.

  Args:
    v_cond: [...] conditional velocity.
    v_uncond: [...] unconditional (or negative-prompt) velocity, v_cond's shape.
    scale: guidance scale (1 = conditional only, 0 = unconditional only).

  Returns:
    [...] guided velocity; exactly v_cond when scale is concretely 1.
  """
  if _is_one(scale):
    return v_cond
  return v_uncond + scale * (v_cond - v_uncond)


def check_guidance_interval(interval) -> tuple[float, float]:
  """(lo, hi) with 0 <= lo < hi <= 1, as floats; a clear error otherwise."""
  try:
    lo, hi = (float(v) for v in interval)
  except (TypeError, ValueError):
    raise ValueError(f"guidance interval {interval!r} is not two numbers (lo, hi).") from None
  if not 0.0 <= lo < hi <= 1.0:
    raise ValueError(f"guidance interval {interval!r}; expected 0 <= lo < hi <= 1.")
  return lo, hi


def interval_scale(scale, t, interval: tuple[float, float]):
  """The guidance scale at time t: `scale` where lo < t <= hi, else 1 (no guidance).

  The full interval (0, 1) returns `scale` itself (concrete stays concrete); otherwise a
  traced scalar, so a jitted sampling loop runs both branches at every step.
  """
  lo, hi = check_guidance_interval(interval)
  if lo == 0.0 and hi == 1.0:
    return scale
  t = jnp.asarray(t, jnp.float32)
  return jnp.where((t > lo) & (t <= hi), jnp.asarray(scale, jnp.float32), 1.0)


def cfg_velocity(cond_fn: VelocityFn, uncond_fn: VelocityFn, scale) -> VelocityFn:
  """Classifier-free guidance as a velocity function: v = v_u + scale (v_c - v_u).

  Args:
    cond_fn: (x, t) -> v with the caption.
    uncond_fn: (x, t) -> v with the empty caption, or the negative prompt's caption (see
      `cfg_combine`).
    scale: guidance scale. When it's concretely 1 this returns `cond_fn` itself: the
      unconditional model is never called and the result is exactly the conditional one.

  Returns:
    A velocity function (x, t) -> v for `sample`.
  """
  if _is_one(scale):
    return cond_fn

  def velocity_fn(x, t):
    return cfg_combine(cond_fn(x, t), uncond_fn(x, t), scale)

  return velocity_fn


# ----------------------------------------------------------------------- starting points


def init_noise(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard normal float32 `shape`: x at t = 1."""
  return jax.random.normal(rng, shape, jnp.float32)


def edit_start(x0_clean: jax.Array, noise: jax.Array, t_start: float) -> jax.Array:
  """SDEdit start x_t = (1 - t) x0 + t eps at t = t_start (the edit strength).

  Pair with `timesteps(steps, shift, t_start=t_start)`. t_start = 1 is pure noise (the
  clean video is ignored), t_start = 0 returns x0 (nothing to edit).

  Args:
    x0_clean: [...] clean latents.
    noise: [...] standard normal, x0_clean's shape (`init_noise`).
    t_start: strength in [0, 1].

  Returns:
    float32 [...].
  """
  t = _check_unit("t_start (SDEdit strength)", t_start, allow_zero=True)
  x0, eps = jnp.asarray(x0_clean, jnp.float32), jnp.asarray(noise, jnp.float32)
  if x0.shape != eps.shape:
    raise ValueError(f"noise must have x0_clean's shape {x0.shape}, got {eps.shape}.")
  return (1 - t) * x0 + t * eps
