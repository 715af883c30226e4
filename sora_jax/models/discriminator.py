"""3D patch discriminator for adversarial VAE training.

A PatchGAN (Isola et al., 2017, "Image-to-Image Translation with Conditional Adversarial
Networks", arXiv:1611.07004) inflated to 3D as in MAGVIT (Yu et al., 2023, arXiv:2212.05199)
and MAGVIT-v2 (arXiv:2310.05737): a few strided 3D convs score overlapping spacetime patches.
Used with the hinge losses in `vae_losses.py`. Not causal (it only judges, never generates).
"""
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models.vae_blocks import constrain


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
  """Attributes:
    base_channels: channels of the first conv; doubled per further layer.
    num_layers: strided convs; logits are 2**num_layers coarser in T (ceil), H and W.
    norm_groups: GroupNorm groups after every strided conv but the first.
    dtype: compute dtype name; params are float32.
  """
  base_channels: int = 32
  num_layers: int = 3
  norm_groups: int = 8
  dtype: str = 'float32'


class PatchDiscriminator3D(nn.Module):
  """Strided 3D conv net -> one logit per spacetime patch."""
  base_channels: int
  num_layers: int
  norm_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array) -> jax.Array:
    """video: [B, T, H, W, 3] -> logits [B, ceil(T/2^n), ceil(H/2^n), ceil(W/2^n), 1]."""
    h = constrain(video.astype(self.dtype))
    for i in range(self.num_layers):
      h = nn.Conv(self.base_channels * 2**i, (3, 4, 4), strides=(2, 2, 2), padding='SAME',
                  dtype=self.dtype, param_dtype=jnp.float32)(h)
      if i > 0:
        h = nn.GroupNorm(self.norm_groups, dtype=self.dtype, param_dtype=jnp.float32)(h)
      h = constrain(nn.leaky_relu(h, 0.2))
    logits = nn.Conv(1, (3, 3, 3), padding='SAME', dtype=self.dtype,
                     param_dtype=jnp.float32)(h)
    return logits.astype(jnp.float32)


def _module(config: DiscriminatorConfig) -> PatchDiscriminator3D:
  return PatchDiscriminator3D(config.base_channels, config.num_layers, config.norm_groups,
                              jnp.dtype(config.dtype))


@functools.partial(jax.jit, static_argnums=0)
def init_discriminator(config: DiscriminatorConfig, rng: jax.Array) -> Any:
  """Fresh float32 params (shapes do not depend on the input size).

  Draws from an 'rbg' key derived from `rng`, as `vae.init_params` does (XLA:CPU compiles
  partitionable-threefry inits very slowly).
  """
  rng = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl='rbg')
  return _module(config).init(rng, jnp.zeros((1, 1, 8, 8, 3), jnp.float32))['params']


def discriminator_logits(params: Any, video: jax.Array, config: DiscriminatorConfig) -> jax.Array:
  """video: [B, T, H, W, 3] in [-1, 1] -> patch logits [B, T'', H'', W'', 1]."""
  return _module(config).apply({'params': params}, video)
