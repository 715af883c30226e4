"""Samplers: convergence order on an exact flow, grids, CFG, determinism, conditioning.

The toy flow: data x0 ~ N(mu, s^2) per dimension. x_t = (1 - t) x0 + t eps is Gaussian with
mean (1 - t) mu and variance V(t) = (1 - t)^2 s^2 + t^2, and Cov(v, x_t) = t - (1 - t) s^2
for v = eps - x0 (= V'(t) / 2), so Gaussian conditioning gives the exact field

    v(x, t) = E[v | x_t = x] = -mu + (V'(t) / (2 V(t))) (x - (1 - t) mu).

Its ODE solutions are x(t) = (1 - t) mu + sqrt(V(t)) z for a constant z (differentiate:
dx/dt = -mu + V'/(2 sqrt V) z, and (x - (1 - t) mu) / V = z / sqrt V), so noise z at t = 1
maps to mu + s z at t = 0: the monotone transport of N(0, 1) onto N(mu, s^2).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.diffusion import flow
from sora_jax.diffusion import solvers

MU = jnp.array([1.5, -0.5, 0.0, 2.0], jnp.float32)
S = jnp.array([0.5, 1.0, 2.0, 0.3], jnp.float32)


def _var(t):
  return (1 - t) ** 2 * S ** 2 + t ** 2


def gaussian_velocity(x, t):
  """Exact rectified-flow velocity for data N(MU, S^2): x [..., 4], t scalar."""
  return -MU + (t - (1 - t) * S ** 2) / _var(t) * (x - (1 - t) * MU)


def exact_path(z, t):
  """The ODE solution through noise z at t = 1, evaluated at t: [..., 4]."""
  return (1 - t) * MU + jnp.sqrt(_var(t)) * z


Z = jax.random.normal(jax.random.key(0), (64, 4), jnp.float32)


# One compile per (method, step count), shared by every shift and t_start (ts is traced).
_jit_sample = jax.jit(functools.partial(solvers.sample, gaussian_velocity),
                      static_argnames="method")


def _error(method, steps, shift=1.0, t_start=1.0):
  ts = solvers.timesteps(steps, shift, t_start)
  out = _jit_sample(exact_path(Z, t_start), ts, method=method)
  return float(jnp.max(jnp.abs(out - exact_path(Z, 0.0))))


def test_exact_path_solves_the_ode():
  """Guards the toy itself: d/dt exact_path = gaussian_velocity along it."""
  for t in (0.05, 0.3, 0.7, 0.95):
    x, dxdt = jax.jvp(lambda s: exact_path(Z, s), (jnp.float32(t),), (jnp.float32(1.0),))
    np.testing.assert_allclose(dxdt, gaussian_velocity(x, t), atol=1e-5)
  np.testing.assert_allclose(exact_path(Z, 1.0), Z, atol=1e-6)
  np.testing.assert_allclose(exact_path(Z, 0.0), MU + S * Z, atol=1e-6)


# Observed ratios (max error, shift 1, steps 32 -> 64 -> 128): euler ~1.97, heun ~4.1,
# dpmpp_2m ~3.4. DPM-Solver++ is 2nd order in lambda = log((1 - t) / t); on a grid uniform in
# t its end steps keep lambda-steps of ~log 2 whatever the step count, which costs a log
# factor (ratio ~3.4, not 4) and makes its pre-asymptotic ratios uneven (so 32+ steps here).
@pytest.mark.parametrize("method, min_ratio", [("euler", 1.6), ("heun", 3.0),
                                               ("dpmpp_2m", 3.0)])
def test_convergence_order(method, min_ratio):
  errors = [_error(method, n) for n in (32, 64, 128)]
  ratios = [a / b for a, b in zip(errors, errors[1:])]
  assert all(r > min_ratio for r in ratios), (method, errors, ratios)


@pytest.mark.parametrize("method", solvers.METHODS)
@pytest.mark.parametrize("shift, t_start", [(1.0, 1.0), (3.0, 1.0), (3.0, 0.6)])
def test_error_falls_monotonically(method, shift, t_start):
  errors = [_error(method, n, shift, t_start) for n in (4, 8, 16, 32, 64)]
  assert all(a > b for a, b in zip(errors, errors[1:])), (method, errors)
  assert errors[-1] < (0.15 if method == "euler" else 0.02), (method, errors)


def test_one_step_is_euler_for_every_method():
  """From t = 1 to 0 in one step: x - v(x, 1) (Heun's last step and DPM++'s D agree)."""
  want = Z - gaussian_velocity(Z, 1.0)
  for method in solvers.METHODS:
    out = solvers.sample(gaussian_velocity, Z, solvers.timesteps(1), method=method)
    np.testing.assert_allclose(out, want, atol=1e-6, err_msg=method)


def test_euler_matches_flow_euler_sample():
  out = solvers.sample(gaussian_velocity, Z, solvers.timesteps(12, shift=3.0))
  np.testing.assert_allclose(out, flow.euler_sample(gaussian_velocity, Z, 12, shift=3.0),
                             atol=1e-6)


def _kdiffusion_dpmpp_2m(x, ts):
  """Reference: k-diffusion's sample_dpmpp_2m in VE form, float64 numpy.

  x_ve = x / (1 - t), sigma = t / (1 - t), denoised = x - t v (t < 1 on the whole grid).
  """
  mu, s = np.float64(MU), np.float64(S)

  def denoise(x_ve, sigma):
    t = sigma / (1 + sigma)
    x_rf = x_ve * (1 - t)
    v = -mu + (t - (1 - t) * s ** 2) / ((1 - t) ** 2 * s ** 2 + t ** 2) * (x_rf - (1 - t) * mu)
    return x_rf - t * v

  sigmas = ts / (1 - ts)
  x = x / (1 - ts[0])
  t_fn = lambda sigma: -np.log(sigma)
  old = None
  for i in range(len(ts) - 1):
    d = denoise(x, sigmas[i])
    if sigmas[i + 1] == 0:
      x = d
      break
    t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
    h = t_next - t
    if old is None:
      x = sigmas[i + 1] / sigmas[i] * x - np.expm1(-h) * d
    else:
      r = (t - t_fn(sigmas[i - 1])) / h
      d2 = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old
      x = sigmas[i + 1] / sigmas[i] * x - np.expm1(-h) * d2
    old = d
  return x


def test_dpmpp_2m_matches_kdiffusion_reference():
  ts = solvers.timesteps(10, shift=2.0, t_start=0.9)
  x = exact_path(Z, 0.9)
  out = solvers.sample(gaussian_velocity, x, ts, method="dpmpp_2m")
  ref = _kdiffusion_dpmpp_2m(np.float64(x), np.float64(ts))
  np.testing.assert_allclose(out, ref, atol=2e-5)


# ----------------------------------------------------------------------------- grids


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_full_grid_is_the_plain_shifted_grid(shift):
  ts = solvers.timesteps(10, shift)
  plain = flow.shift_timesteps(jnp.linspace(1.0, 0.0, 11, dtype=jnp.float32), shift)
  assert ts.dtype == jnp.float32 and ts.shape == (11,)
  assert ts[0] == 1.0 and ts[-1] == 0.0
  np.testing.assert_allclose(ts, plain, rtol=0, atol=1e-7)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sdedit_grid(shift):
  ts = np.asarray(solvers.timesteps(8, shift, t_start=0.4))
  assert ts.shape == (9,) and ts[0] == np.float32(0.4) and ts[-1] == 0.0
  assert np.all(np.diff(ts) < 0)
  u = ts / (shift - (shift - 1) * ts)  # unshifted: uniform, like the full grid
  np.testing.assert_allclose(np.diff(u), np.full(8, -u[0] / 8), rtol=1e-4)


def test_edit_start():
  x0 = jnp.full((2, 3), 2.0)
  eps = solvers.init_noise(jax.random.key(1), (2, 3))
  assert eps.dtype == jnp.float32 and eps.shape == (2, 3)
  np.testing.assert_array_equal(eps, solvers.init_noise(jax.random.key(1), (2, 3)))
  np.testing.assert_allclose(solvers.edit_start(x0, eps, 0.3), 0.7 * x0 + 0.3 * eps,
                             atol=1e-6)
  np.testing.assert_array_equal(solvers.edit_start(x0, eps, 0.0), x0)
  np.testing.assert_allclose(solvers.edit_start(x0, eps, 1.0), eps, atol=0)


# ------------------------------------------------------------------------------- CFG


def test_cfg_scale_one_is_the_conditional_prediction():
  def uncond_fn(x, t):
    raise AssertionError("scale 1 must not call the unconditional model")

  assert solvers.cfg_velocity(gaussian_velocity, uncond_fn, 1.0) is gaussian_velocity
  v = gaussian_velocity(Z, 0.5)
  assert solvers.cfg_combine(v, v + 1.0, 1.0) is v


def test_cfg_formula():
  uncond_fn = lambda x, t: 0.5 * x - t
  fn = solvers.cfg_velocity(gaussian_velocity, uncond_fn, 4.5)
  v_c, v_u = gaussian_velocity(Z, 0.3), uncond_fn(Z, 0.3)
  np.testing.assert_allclose(fn(Z, 0.3), v_u + 4.5 * (v_c - v_u), atol=1e-6)
  np.testing.assert_allclose(solvers.cfg_combine(v_c, v_u, 0.0), v_u, atol=1e-6)
  # A traced scale can't skip the branch, but 1 still gives v_c (up to rounding).
  traced = jax.jit(solvers.cfg_combine)(v_c, v_u, 1.0)
  np.testing.assert_allclose(traced, v_c, atol=1e-6)


# ------------------------------------------------------- determinism, jit, conditioning


@pytest.mark.parametrize("method", solvers.METHODS)
def test_deterministic_and_jit_matches_eager(method):
  x1 = solvers.init_noise(jax.random.key(3), (2, 5, 4))
  ts = solvers.timesteps(6, shift=3.0)
  eager = solvers.sample(gaussian_velocity, x1, ts, method=method)
  np.testing.assert_array_equal(eager, solvers.sample(gaussian_velocity, x1, ts,
                                                       method=method))
  jitted = jax.jit(functools.partial(solvers.sample, gaussian_velocity, method=method))
  out = jitted(x1, ts)  # ts traced
  np.testing.assert_array_equal(out, jitted(x1, ts))
  np.testing.assert_allclose(out, eager, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", solvers.METHODS)
@pytest.mark.parametrize("t_start", [1.0, 0.7])
def test_conditioned_positions_are_exact(method, t_start):
  """Frame 0 of [B, T, D] is conditioned; the model must see it at every call."""
  k0, k1 = jax.random.split(jax.random.key(4))
  cond = jax.random.normal(k0, (2, 3, 4)) * 3.0 + 0.1
  mask = jnp.zeros((1, 3, 1), bool).at[:, 0].set(True)
  x_init = solvers.edit_start(cond, solvers.init_noise(k1, cond.shape), t_start)

  def velocity_fn(x, t):
    seen_wrong = jnp.any(mask & (x != cond))  # poisons every output if violated
    return gaussian_velocity(x, t) + jnp.where(seen_wrong, jnp.nan, 0.0)

  ts = solvers.timesteps(5, shift=2.0, t_start=t_start)
  for fn in (solvers.sample, jax.jit(solvers.sample, static_argnums=0,
                                      static_argnames="method")):
    out = fn(velocity_fn, x_init, ts, method=method, cond=cond, cond_mask=mask)
    np.testing.assert_array_equal(out[:, 0], cond[:, 0])
    assert np.all(np.isfinite(out)) and not np.allclose(out[:, 1:], cond[:, 1:])


# ------------------------------------------------------------------------ validation


def test_bad_inputs_raise():
  ts = solvers.timesteps(4)
  with pytest.raises(ValueError, match=r"euler.*heun.*dpmpp_2m.*'rk4'"):
    solvers.sample(gaussian_velocity, Z, ts, method="rk4")
  for steps in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match=f"steps.*{steps!r}"):
      solvers.timesteps(steps)
  for t_start in (0.0, -0.2, 1.5, float("nan")):
    with pytest.raises(ValueError, match=f"t_start.*{t_start!r}"):
      solvers.timesteps(4, t_start=t_start)
  for strength in (-0.1, 1.25):
    with pytest.raises(ValueError, match=f"strength.*{strength!r}"):
      solvers.edit_start(Z, Z, strength)
  with pytest.raises(ValueError, match="shift.*0.0"):
    solvers.timesteps(4, shift=0.0)
  with pytest.raises(ValueError, match="decrease"):
    solvers.sample(gaussian_velocity, Z, ts[::-1])
  with pytest.raises(ValueError, match="go together"):
    solvers.sample(gaussian_velocity, Z, ts, cond=Z)
  with pytest.raises(ValueError, match="bool"):
    solvers.sample(gaussian_velocity, Z, ts, cond=Z, cond_mask=jnp.ones((64, 1)))
  with pytest.raises(ValueError, match="broadcast"):
    solvers.sample(gaussian_velocity, Z, ts, cond=Z, cond_mask=jnp.ones((3,), bool))


def test_guidance_interval_scale():
  """The scale inside (lo, hi], 1 outside; the full interval keeps a concrete scale."""
  assert solvers.interval_scale(4.0, 0.5, (0.0, 1.0)) == 4.0
  got = [float(solvers.interval_scale(4.0, t, (0.3, 0.9))) for t in (1.0, 0.9, 0.5, 0.3, 0.1)]
  assert got == [1.0, 4.0, 4.0, 1.0, 1.0]
  jitted = jax.jit(lambda t: solvers.interval_scale(4.0, t, (0.3, 1.0)))
  assert [float(jitted(t)) for t in (0.31, 0.3)] == [4.0, 1.0]
  for bad in ((0.5, 0.5), (-0.1, 1.0), (0.2, 1.5), (0.2,), "ab"):
    with pytest.raises(ValueError, match="guidance interval"):
      solvers.check_guidance_interval(bad)
