"""Layers shared by the DiT and the text encoder: a logically partitioned dense layer, the
transformer MLP and sinusoidal embeddings.

Weights carry logical axis names (`embed`, `mlp`; `sharding/rules.py` maps them to mesh
axes), so every model that uses these layers shards the same way.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def dense(features: int, names: tuple[str | None, str | None], dtype, param_dtype,
          name: str, zero: bool = False) -> nn.Dense:
  """nn.Dense with logically named kernel axes `names` (in, out); `zero`: zero-initialised."""
  kernel = nn.initializers.zeros if zero else nn.initializers.xavier_uniform()
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(kernel, names),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Transformer sinusoids of a real value: x [...] -> float32 [..., dim] (cos, sin halves)."""
  half = dim // 2
  freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32) / half)
  args = x.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def mlp_hidden(width: int, ratio: float, kind: str) -> int:
  """Hidden width: ratio * D for GELU; 2/3 of it rounded up to 8 for SwiGLU (same params)."""
  if kind == "swiglu":
    return int(8 * math.ceil(2 * ratio * width / 3 / 8))
  return int(ratio * width)


class FeedForward(nn.Module):
  """Transformer MLP: "gelu" (D -> hidden -> D) or "swiglu" (Shazeer, 2020).

  Attributes:
    hidden: hidden width (`mlp_hidden`).
    kind: "gelu" or "swiglu".
  """
  hidden: int
  kind: str = "gelu"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, N, D] -> [B, N, D]."""
    layer = lambda f, names, name: dense(f, names, self.dtype, self.param_dtype, name)
    if self.kind == "swiglu":
      h = nn.silu(layer(self.hidden, ("embed", "mlp"), "gate")(x))
      h = h * layer(self.hidden, ("embed", "mlp"), "up")(x)
    else:
      h = nn.gelu(layer(self.hidden, ("embed", "mlp"), "up")(x), approximate=True)
    return layer(x.shape[-1], ("mlp", "embed"), "down")(h)
