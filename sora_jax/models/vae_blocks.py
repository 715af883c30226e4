"""Layers of the causal 3D video VAE: causal convs, ResNet blocks, resamplers, encoder, decoder.

Implements:
  * the causal 3D convolution of MAGVIT-v2 (Yu et al., 2023, "Language Model Beats
    Diffusion -- Tokenizer is Key to Visual Generation", arXiv:2310.05737): time is padded on
    the past side only (here by replicating the first frame), so no output depends on a later
    frame and the first frame is encoded alone;
  * the ResNet blocks, mid-block attention and encoder/decoder layout of the LDM autoencoder
    (Rombach et al., 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
    arXiv:2112.10752), inflated to 3D with per-frame GroupNorm and per-frame attention so
    that causality holds;
  * temporal compression that keeps frame 0 alone, as in the CogVideoX VAE (Yang et al., 2024,
    arXiv:2408.06072): a causal conv with temporal stride 2 down, depth-to-time up.

Streaming. When the 'cache' variable collection is mutable (`apply(..., mutable=['cache'])`),
every `CausalConv3d` reads the past frames it needs from `cache/<path>/past` (if present) instead
of replicating frame 0, and writes the frames the next chunk will need. That is all the state a
causal stack has, so processing frame 0 alone and then chunks of `ft * m` frames equals one pass
over the whole clip. Per-frame layers (GroupNorm, attention, spatial resampling) need no state.

Shapes: activations are `[B, T, H, W, C]` everywhere (logical axes
`('batch', 'frames', 'height', 'width', 'channels')`).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

VIDEO_AXES = ('batch', 'frames', 'height', 'width', 'channels')


def constrain(x: jax.Array) -> jax.Array:
  """Logical sharding constraint for a `[B, T, H, W, C]` activation (no-op without rules)."""
  return nn.with_logical_constraint(x, VIDEO_AXES)


def _spatial_pad(kernel: int, stride: int) -> tuple[int, int]:
  """Padding giving `H // stride` outputs; stride 2 pads (0, 1) like the LDM downsampler."""
  total = kernel - stride
  return total // 2, total - total // 2


class CausalConv3d(nn.Module):
  """3D convolution that sees only the current and past frames.

  Attributes:
    features: output channels.
    kernel: `(kt, kh, kw)`.
    strides: `(st, sh, sw)`; needs `kt >= st` so a chunk's leftover frames are well defined.
    dtype: compute dtype (params are float32).
  """
  features: int
  kernel: tuple[int, int, int] = (3, 3, 3)
  strides: tuple[int, int, int] = (1, 1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, Cin] -> [B, (T - 1) // st + 1, H // sh, W // sw, features]."""
    x = self._with_past(x)
    pads = [(0, 0)] + [_spatial_pad(k, s) for k, s in zip(self.kernel[1:], self.strides[1:])]
    conv = nn.Conv(self.features, self.kernel, self.strides, padding=pads, dtype=self.dtype,
                   param_dtype=jnp.float32)
    return conv(x)

  def _with_past(self, x: jax.Array) -> jax.Array:
    """Prepends `kt - 1` past frames (cached, or copies of frame 0) and updates the cache.

    After a chunk whose padded length L has `(L - kt) % st == 0`, the next window starts
    `kt - st` frames before the end, so those frames are what the next chunk needs.
    """
    kt, st = self.kernel[0], self.strides[0]
    assert kt >= st, (kt, st)
    streaming = self.is_mutable_collection('cache')
    if streaming and self.has_variable('cache', 'past'):
      past = self.get_variable('cache', 'past')
      x = jnp.concatenate([past.astype(x.dtype), x], axis=1)
    elif kt > 1:
      x = jnp.concatenate([jnp.repeat(x[:, :1], kt - 1, axis=1), x], axis=1)
    if streaming and kt > st:
      self.put_variable('cache', 'past', x[:, x.shape[1] - (kt - st):])
    return x


class FrameGroupNorm(nn.Module):
  """GroupNorm with statistics per frame (over H, W and the group's channels), hence causal."""
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> same shape."""
    b, t = x.shape[:2]
    norm = nn.GroupNorm(num_groups=self.groups, dtype=self.dtype, param_dtype=jnp.float32)
    return norm(x.reshape((b * t,) + x.shape[2:])).reshape(x.shape)


class ResBlock(nn.Module):
  """Pre-activation ResNet block: (GroupNorm, SiLU, causal conv) x 2 plus a skip."""
  features: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, Cin] -> [B, T, H, W, features]."""
    h = nn.silu(FrameGroupNorm(self.groups, self.dtype)(x))
    h = CausalConv3d(self.features, dtype=self.dtype)(h)
    h = nn.silu(FrameGroupNorm(self.groups, self.dtype)(h))
    h = CausalConv3d(self.features, dtype=self.dtype)(h)
    if x.shape[-1] != self.features:
      x = CausalConv3d(self.features, kernel=(1, 1, 1), dtype=self.dtype)(x)
    return constrain(x + h)


class FrameAttention(nn.Module):
  """Single-head self-attention over the H*W positions of each frame (causal by construction)."""
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> same shape."""
    b, t, h, w, c = x.shape
    y = FrameGroupNorm(self.groups, self.dtype)(x)
    qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=jnp.float32)(y)
    q, k, v = jnp.split(qkv.reshape(b * t, h * w, 1, 3 * c), 3, axis=-1)  # [BT, HW, 1, C]
    out = jax.nn.dot_product_attention(q, k, v).reshape(b, t, h, w, c)
    out = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32)(out)
    return constrain(x + out)


class MidBlock(nn.Module):
  """ResBlock, optional per-frame attention, ResBlock."""
  features: int
  groups: int
  attention: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T, H, W, features]."""
    x = ResBlock(self.features, self.groups, self.dtype)(x)
    if self.attention:
      x = FrameAttention(self.groups, self.dtype)(x)
    return ResBlock(self.features, self.groups, self.dtype)(x)


class Downsample(nn.Module):
  """Halves H and W; with `temporal`, also maps T = 1 + 2m frames to 1 + m (frame 0 alone)."""
  features: int
  temporal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T', H/2, W/2, features]; T' = 1 + (T-1)/2 if temporal else T."""
    kt, st = (3, 2) if self.temporal else (1, 1)
    conv = CausalConv3d(self.features, kernel=(kt, 3, 3), strides=(st, 2, 2), dtype=self.dtype)
    return constrain(conv(x))


class Upsample(nn.Module):
  """Doubles H and W (nearest + causal conv); with `temporal`, depth-to-time doubles T.

  Temporal upsampling maps every frame, frame 0 included, to two frames; the decoder drops the
  surplus leading frames once at the end (see `VideoVAE.decode`), so no layer needs to know
  whether it is looking at the first chunk.
  """
  features: int
  temporal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, 2T if temporal else T, 2H, 2W, features]."""
    b, t, h, w, _ = x.shape
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    if not self.temporal:
      return constrain(CausalConv3d(self.features, dtype=self.dtype)(x))
    x = CausalConv3d(2 * self.features, dtype=self.dtype)(x)  # [B, T, 2H, 2W, 2F]
    x = x.reshape(b, t, 2 * h, 2 * w, 2, self.features).transpose(0, 1, 4, 2, 3, 5)
    return constrain(x.reshape(b, 2 * t, 2 * h, 2 * w, self.features))


class Encoder(nn.Module):
  """Video -> KL posterior moments.

  Attributes:
    base_channels: channels of level 0.
    level_mults: channel multiplier per level; `len - 1` spatial halvings.
    num_res_blocks: ResBlocks per level.
    attention: per-frame attention in the mid block.
    groups: GroupNorm groups.
    temporal_downsamples: how many of the first transitions also halve time (log2 ft).
    latent_channels: C.
    dtype: compute dtype.
  """
  base_channels: int
  level_mults: tuple[int, ...]
  num_res_blocks: int
  attention: bool
  groups: int
  temporal_downsamples: int
  latent_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, 3] -> moments [B, 1 + (T-1)/ft, H/s, W/s, 2C] (mean, logvar)."""
    h = CausalConv3d(self.base_channels, dtype=self.dtype)(constrain(x.astype(self.dtype)))
    for level, mult in enumerate(self.level_mults):
      features = self.base_channels * mult
      for _ in range(self.num_res_blocks):
        h = ResBlock(features, self.groups, self.dtype)(h)
      if level < len(self.level_mults) - 1:
        h = Downsample(features, level < self.temporal_downsamples, self.dtype)(h)
    h = MidBlock(h.shape[-1], self.groups, self.attention, self.dtype)(h)
    h = nn.silu(FrameGroupNorm(self.groups, self.dtype)(h))
    h = CausalConv3d(2 * self.latent_channels, dtype=self.dtype)(h)
    return constrain(h.astype(jnp.float32))


class Decoder(nn.Module):
  """Latents -> video, mirroring `Encoder` (same attributes, minus `latent_channels`).

  Returns `ft` frames for latent frame 0 (one per later-frame slot); the caller keeps the last.
  """
  base_channels: int
  level_mults: tuple[int, ...]
  num_res_blocks: int
  attention: bool
  groups: int
  temporal_downsamples: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    """z: [B, T', h, w, C] -> [B, ft * T', h*s, w*s, 3]."""
    top = self.base_channels * self.level_mults[-1]
    h = CausalConv3d(top, dtype=self.dtype)(constrain(z.astype(self.dtype)))
    h = MidBlock(top, self.groups, self.attention, self.dtype)(h)
    for level in reversed(range(len(self.level_mults))):
      features = self.base_channels * self.level_mults[level]
      for _ in range(self.num_res_blocks):
        h = ResBlock(features, self.groups, self.dtype)(h)
      if level > 0:
        h = Upsample(features, level - 1 < self.temporal_downsamples, self.dtype)(h)
    h = nn.silu(FrameGroupNorm(self.groups, self.dtype)(h))
    h = CausalConv3d(3, dtype=self.dtype)(h)
    return constrain(h.astype(jnp.float32))
