"""Rectified flow: noising, timestep sampling and shift, per-clip loss, CFG text dropout.

Rectified flow (Liu et al., 2022, arXiv:2209.03003) with the SD3 recipe (Esser et al., 2024,
arXiv:2403.03206). THE convention of this codebase, stated here once:

    x_t = (1 - t) * x0 + t * eps,     eps ~ N(0, I),  t in [0, 1]
    the model predicts the velocity v = dx_t/dt = eps - x0.

t = 0 is data, t = 1 is pure noise; sampling integrates dx/dt = v from t = 1 down to 0.

* Timesteps: logit-normal, t = sigmoid(mean + std * n), n ~ N(0, 1) (SD3's default 0, 1).
* Shift by token count (SD3 section 5.3.2): t' = s t / (1 + (s - 1) t). More tokens carry
  more redundant signal, so the same t destroys less information; s > 1 moves t towards
  noise. Here s = sqrt(n / base_tokens) with n the clip's token count (the SD3 rule
  sqrt(m / n) for resolutions, applied to spacetime tokens), so a clip of `base_tokens`
  tokens is unshifted. Pass `base_tokens=None` to disable.
* Packing: one t per clip (segment), repeated over its tokens, and one shift per clip.
* Loss: per-token MSE over features; each clip's mean over its tokens; mean over all clips
  in the batch (so a clip counts the same whatever its size). Padding never counts.
* Classifier-free guidance (Ho & Salimans, 2022): `drop_text` replaces a caption by the
  empty one (all padding) with probability `rate` (default 0.1); the DiT's cross-attention
  then contributes exactly 0, which is the unconditional model.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def sample_logit_normal(rng: jax.Array, shape: tuple[int, ...], mean: float = 0.0,
                        std: float = 1.0) -> jax.Array:
  """t = sigmoid(mean + std * n), float32 `shape`, in (0, 1)."""
  return jax.nn.sigmoid(mean + std * jax.random.normal(rng, shape, jnp.float32))


def shift_timesteps(t: jax.Array, shift) -> jax.Array:
  """SD3 timestep shift t' = s t / (1 + (s - 1) t); s = 1 is the identity."""
  return shift * t / (1 + (shift - 1) * t)


def token_count_shift(num_tokens, base_tokens: int | None):
  """s = sqrt(num_tokens / base_tokens) (1 when base_tokens is None)."""
  if base_tokens is None:
    return jnp.ones_like(num_tokens, jnp.float32)
  return jnp.sqrt(jnp.asarray(num_tokens, jnp.float32) / base_tokens)


def _row_segments(segment_ids: jax.Array) -> tuple[jax.Array, int]:
  """[B, N] segment ids made unique across rows and flattened: ([B * N] int, how many)."""
  b, n = segment_ids.shape
  return (segment_ids + (n + 1) * jnp.arange(b)[:, None]).reshape(-1), b * (n + 1)


def segment_sizes(segment_ids: jax.Array, token_mask: jax.Array | None = None) -> jax.Array:
  """For each token, how many (masked-in) tokens of its row share its segment id.

  Args:
    segment_ids: [B, N] int in [0, N].
    token_mask: [B, N] bool or None; only True tokens are counted.

  Returns:
    float32 [B, N].
  """
  b, n = segment_ids.shape
  flat, num = _row_segments(segment_ids)
  ones = jnp.ones((b * n,), jnp.float32) if token_mask is None else (
      token_mask.reshape(-1).astype(jnp.float32))
  counts = jax.ops.segment_sum(ones, flat, num_segments=num)
  return counts[flat].reshape(b, n)


def sample_clip_timesteps(rng: jax.Array, segment_ids: jax.Array, *, mean: float = 0.0,
                          std: float = 1.0, base_tokens: int | None = None) -> jax.Array:
  """One logit-normal t per clip (segment), shifted by the clip's token count: [B, N].

  Padding tokens get a t too (unused: the loss ignores them).
  """
  b, n = segment_ids.shape
  per_segment = sample_logit_normal(rng, (b, n + 1), mean, std)  # index = segment id
  t = jnp.take_along_axis(per_segment, segment_ids, axis=1)
  return shift_timesteps(t, token_count_shift(segment_sizes(segment_ids), base_tokens))


def add_noise(x0: jax.Array, eps: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x_t and the velocity target. x0, eps: [B, N, D]; t: [B, N]. Returns ([B, N, D]) x 2."""
  tt = t[..., None].astype(x0.dtype)
  return (1 - tt) * x0 + tt * eps, eps - x0


def flow_loss(v_pred: jax.Array, v_target: jax.Array, segment_ids: jax.Array,
              loss_mask: jax.Array | None = None) -> jax.Array:
  """Per-clip-normalised velocity MSE.

  Args:
    v_pred, v_target: [B, N, D].
    segment_ids: [B, N] int, 0 = padding (excluded).
    loss_mask: [B, N] bool or None; False tokens (e.g. clean conditioning frames) are
      excluded, and each clip's mean is over its remaining tokens.

  Returns:
    Scalar float32: mean over clips of (mean over a clip's tokens of mean_D (v - v*)^2).
  """
  mse = jnp.mean(jnp.square(v_pred.astype(jnp.float32) - v_target.astype(jnp.float32)), -1)
  keep = segment_ids > 0
  if loss_mask is not None:
    keep = keep & loss_mask.astype(bool)
  weight = jnp.where(keep, 1.0 / jnp.maximum(segment_sizes(segment_ids, keep), 1.0), 0.0)
  num_clips = jnp.sum(weight)  # each clip's weights sum to 1
  return jnp.sum(weight * mse) / jnp.maximum(num_clips, 1.0)


def drop_text(rng: jax.Array, ids: jax.Array, mask: jax.Array,
              rate: float = 0.1) -> tuple[jax.Array, jax.Array]:
  """Replaces each caption by the empty one with probability `rate` (CFG training).

  Args:
    rng: PRNG key.
    ids: [..., L] int caption ids ([B, L], or packed [B, K, L]: one draw per caption).
    mask: [..., L] bool.
    rate: drop probability.

  Returns:
    (ids, mask) with dropped captions all padding (ids 0, mask False).
  """
  drop = jax.random.bernoulli(rng, rate, ids.shape[:-1])[..., None]
  return jnp.where(drop, 0, ids).astype(ids.dtype), mask & ~drop


def euler_sample(velocity_fn: Callable[[jax.Array, jax.Array], jax.Array], x1: jax.Array,
                 steps: int, shift: float = 1.0) -> jax.Array:
  """Integrates dx/dt = v(x, t) from t = 1 (noise `x1`) to t = 0 with Euler steps.

  The grid is `steps + 1` uniform times from 1 to 0, shifted by `shift_timesteps`.

  Args:
    velocity_fn: (x [same as x1], t scalar float32) -> velocity like x.
    x1: noise at t = 1.
    steps: number of Euler steps.
    shift: timestep shift s (1 = uniform grid).

  Returns:
    x at t = 0.
  """
  ts = shift_timesteps(jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32), shift)

  def step(x, t_pair):
    t, t_next = t_pair
    return x + (t_next - t) * velocity_fn(x, t).astype(x.dtype), None

  x0, _ = jax.lax.scan(step, x1, (ts[:-1], ts[1:]))
  return x0
