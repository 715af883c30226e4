"""Rotary position embedding over one or more integer position axes (RoPE, Su et al., 2021,
arXiv:2104.09864), used as 3D RoPE over (t, h, w) for spacetime patches.

A head of dimension Dh holds Dh/2 rotation pairs. The pairs are split over the A position
axes in the given proportions (`axis_pairs`); the default for video is 2:3:3 over (t, h, w),
so spatial axes get more frequencies than time (latent clips are longer in space than in
time). Pair j rotates the two features `(x[j], x[j + Dh/2])` (the "rotate-half" layout) by
the angle `p_a * base^(-i / n_a)`, where axis a owns pair j, i is j's index within that
axis's n_a pairs, and p_a is the token's position on axis a. Because every pair is a plane
rotation by an angle linear in the position, `<rope(q, p1), rope(k, p2)>` depends only on
`p1 - p2` (the relative-position property; tested).

Angles and rotations are computed in float32 and cast back to the input dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

VIDEO_PROPORTIONS = (2, 3, 3)  # (t, h, w)
TEXT_PROPORTIONS = (1,)


def axis_pairs(head_dim: int, proportions: tuple[int, ...]) -> tuple[int, ...]:
  """Number of rotation pairs per position axis: Dh/2 split in `proportions`.

  Rounding: each axis gets floor(share); the leftover pairs go one each to the axes with
  the largest fractional share (ties to the later axis, i.e. the spatial ones).
  Example: head_dim 64, (2, 3, 3) -> (8, 12, 12); head_dim 16 -> (2, 3, 3).

  Raises:
    ValueError: odd head_dim, or fewer pairs than axes.
  """
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dim; got head_dim={head_dim}.")
  pairs, total = head_dim // 2, sum(proportions)
  if pairs < len(proportions) or min(proportions) <= 0:
    raise ValueError(f"RoPE: head_dim={head_dim} has {pairs} pairs, too few for "
                     f"{len(proportions)} axes with proportions {proportions}.")
  exact = [pairs * p / total for p in proportions]
  counts = [int(np.floor(e)) for e in exact]
  order = sorted(range(len(exact)), key=lambda i: (exact[i] - counts[i], i), reverse=True)
  for i in order[:pairs - sum(counts)]:
    counts[i] += 1
  return tuple(counts)


def rope_angles(positions: jax.Array, pairs: tuple[int, ...],
                base: float = 10_000.0) -> jax.Array:
  """Rotation angles [B, N, Dh/2] (float32) for integer positions [B, N, A]."""
  if positions.shape[-1] != len(pairs):
    raise ValueError(f"RoPE: positions have {positions.shape[-1]} axes but the pair split "
                     f"{pairs} has {len(pairs)}.")
  angles = []
  for a, n in enumerate(pairs):
    freqs = base ** (-np.arange(n, dtype=np.float64) / n)  # [n], from 1 down
    angles.append(positions[..., a:a + 1].astype(jnp.float32) * freqs.astype(np.float32))
  return jnp.concatenate(angles, axis=-1)


def apply_rope(x: jax.Array, positions: jax.Array, proportions: tuple[int, ...],
               base: float = 10_000.0) -> jax.Array:
  """Rotates queries or keys by their positions.

  Args:
    x: [B, N, H, Dh] queries or keys.
    positions: [B, N, A] integer positions (A = len(proportions); 3 for (t, h, w)).
    proportions: how the Dh/2 pairs are split over the A axes (see `axis_pairs`).
    base: frequency base.

  Returns:
    [B, N, H, Dh] in x's dtype.
  """
  half = x.shape[-1] // 2
  angles = rope_angles(positions, axis_pairs(x.shape[-1], proportions), base)
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]  # [B, N, 1, Dh/2]
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., :half], x32[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.astype(x.dtype)
