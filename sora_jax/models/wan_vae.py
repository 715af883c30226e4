"""Wan2.1's causal 3D video VAE in Flax, numerically equal to diffusers' `AutoencoderKLWan`.

Wan Team, 2025, "Wan: Open and Advanced Large-Scale Video Generative Models",
arXiv:2503.20314 (the Wan-VAE). 4x8x8 compression to C=16 for the released model: a clip
`[T, H, W, 3]`, `T = 1 + 4m`, maps to latents `[1 + m, H/8, W/8, 16]`. Pretrained weights
come from a diffusers folder through `sora_jax.interop.wan_vae.load`.

Channels-last everywhere: video `[B, T, H, W, 3]` in [-1, 1], latents `[B, T', h, w, C]`.
Latents are the raw ones; a DiT wants `(z - mean) / std` with `latent_stats(config)`.

Two ways to run, same result (fp32 to ~1e-6):
  * whole (`encode`, `decode`): the clip in one jitted call, the fast path on accelerators;
  * chunked (`encode_chunked`, `decode_chunked`): diffusers' feature-cache streaming, frame 0
    alone then `4m` frames (encoder) or `m` latent frames (decoder) per jitted step, with the
    cache an explicit pytree (the Flax 'cache' collection), so memory does not grow with T.

Why they agree. With diffusers' cache, every causal conv sees its input preceded by two zero
frames and then the clip's own past frames, exactly a zero-padded causal conv over the
whole clip. Only the temporal resamplers treat frame 0 specially, and do so at any chunk
size: `downsample3d` passes frame 0 through and then runs a valid stride-2 conv over all
frames (frame 0 included); `upsample3d` passes frame 0 through and runs its zero-padded
causal conv over frames 1.. only (diffusers' 'Rep' marker). Each module here tells the first
chunk by the absence of its cache entry, so the whole pass is simply "the first chunk".

Typical use:
  config, params = sora_jax.interop.wan_vae.load('Wan2.1-T2V-1.3B-Diffusers/vae')
  z = encode_latents(params, video, config)        # [B, 1 + (T-1)/4, H/8, W/8, 16]
  mean, std = latent_stats(config)
  frames = decode(params, z, config)                # [B, T, H, W, 3] in [-1, 1]
"""
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models import vae
from sora_jax.models.vae_blocks import constrain

# Wan2.1's released latent statistics (diffusers' defaults for AutoencoderKLWan).
_WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
_WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """The Wan2.1 VAE's architecture. Frozen and hashable (a static jit argument).

  Field names follow diffusers' `AutoencoderKLWan` config (its `temperal` spelling included).

  Attributes:
    base_dim: channels of the first level.
    z_dim: latent channels C.
    dim_mult: channel multiplier per level; `len - 1` spatial halvings.
    num_res_blocks: residual blocks per encoder level (the decoder has one more).
    attn_scales: must be empty (diffusers' encoder cannot run attention blocks with its
      feature cache; the released model has none).
    temperal_downsample: per level transition, whether it also halves time.
    dropout: ignored (inference only); kept so a diffusers config maps one to one.
    latents_mean, latents_std: per-channel latent statistics, [C] each.
    dtype: compute dtype name ('float32', 'bfloat16'); params are float32 unless converted.
    range_tolerance: how far outside [-1, 1] an input video may stray before it is rejected.
  """
  base_dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  dropout: float = 0.0
  latents_mean: tuple[float, ...] = _WAN21_MEAN
  latents_std: tuple[float, ...] = _WAN21_STD
  dtype: str = 'float32'
  range_tolerance: float = 1e-3

  def __post_init__(self):
    for name in ('dim_mult', 'attn_scales', 'temperal_downsample', 'latents_mean',
                 'latents_std'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    object.__setattr__(self, 'temperal_downsample', tuple(map(bool, self.temperal_downsample)))
    if self.attn_scales:
      raise ValueError(f'attn_scales={self.attn_scales}; only () is supported (diffusers\' '
                       'Wan encoder cannot run attention blocks with its feature cache).')
    if len(self.dim_mult) < 1 or len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f'temperal_downsample={self.temperal_downsample} has '
                       f'{len(self.temperal_downsample)} entries; expected one per level '
                       f'transition, len(dim_mult) - 1 = {len(self.dim_mult) - 1}.')
    for name in ('latents_mean', 'latents_std'):
      if len(getattr(self, name)) != self.z_dim:
        raise ValueError(f'{name} has {len(getattr(self, name))} entries; expected '
                         f'z_dim={self.z_dim}.')
    if self.dtype not in DTYPES:
      raise ValueError(f'dtype={self.dtype!r}; expected one of {DTYPES}.')

  @property
  def temporal_factor(self) -> int:
    """T pixel frames -> 1 + (T - 1) / temporal_factor latent frames (4 for Wan2.1)."""
    return 2 ** sum(self.temperal_downsample)

  @property
  def spatial_factor(self) -> int:
    """H, W -> H / spatial_factor, W / spatial_factor (8 for Wan2.1)."""
    return 2 ** (len(self.dim_mult) - 1)

  @property
  def latent_channels(self) -> int:
    return self.z_dim

  @property
  def variant(self) -> str:
    return 'wan2.1'


WAN21 = WanVAEConfig()


def latent_stats(config: WanVAEConfig) -> tuple[np.ndarray, np.ndarray]:
  """(mean [C], std [C]) float32: a DiT's latents are `(z - mean) / std`."""
  return (np.asarray(config.latents_mean, np.float32),
          np.asarray(config.latents_std, np.float32))


# ----------------------------------------------------------------------------- layers


def _partitioned(init, ndim: int):
  """Kernel init with logical axes: unnamed taps, then ('conv_in', 'conv_out')."""
  return nn.with_logical_partitioning(init, (None,) * (ndim - 2) + ('conv_in', 'conv_out'))


class CausalConv3d(nn.Module):
  """diffusers' `WanCausalConv3d`: 3D conv, time padded with `kt - 1` past frames.

  The past is zeros on the first chunk (or the whole clip) and, when the 'cache' collection
  is mutable, the last `kt - 1` padded input frames of the previous chunk (kept as
  `cache/.../past`). `causal=False` pads nothing in time (the resamplers' `time_conv`,
  whose past the resampler manages). Spatial padding is `(k - 1) / 2` zeros per side.
  """
  features: int
  kernel: tuple[int, int, int] = (3, 3, 3)
  strides: tuple[int, int, int] = (1, 1, 1)
  causal: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, Cin] -> [B, T_out, H / sh, W / sw, features]."""
    kt = self.kernel[0]
    kernel = self.param('kernel', _partitioned(nn.linear.default_kernel_init, 5),
                        self.kernel + (x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    if self.causal and kt > 1:
      if self.has_variable('cache', 'past'):
        past = self.get_variable('cache', 'past').astype(x.dtype)
      else:
        past = jnp.zeros((x.shape[0], kt - 1) + x.shape[2:], x.dtype)
      x = jnp.concatenate([past, x], axis=1)
      if self.is_mutable_collection('cache'):
        self.put_variable('cache', 'past', x[:, -(kt - 1):])
    pads = [(0, 0)] + [((k - 1) // 2, (k - 1) // 2) for k in self.kernel[1:]]
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), self.strides, pads,
        dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'))
    return y + bias.astype(self.dtype)


class RMSNorm(nn.Module):
  """diffusers' `WanRMS_norm`: x / ||x||_2 over channels, times sqrt(C) * gamma (no bias)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., C] -> same shape; normalised in float32 like diffusers."""
    c = x.shape[-1]
    gamma = self.param('gamma', nn.initializers.ones, (c,), jnp.float32)
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
    y = (x32 / jnp.maximum(norm, 1e-12)).astype(self.dtype)  # F.normalize's eps
    return y * jnp.asarray(c ** 0.5, self.dtype) * gamma.astype(self.dtype)


class ResidualBlock(nn.Module):
  """(RMSNorm, SiLU, causal 3x3x3 conv) x 2 plus a (1x1x1 conv when channels change) skip."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, Cin] -> [B, T, H, W, features]."""
    h = x
    if x.shape[-1] != self.features:
      h = CausalConv3d(self.features, (1, 1, 1), dtype=self.dtype, name='conv_shortcut')(x)
    x = nn.silu(RMSNorm(self.dtype, name='norm1')(x))
    x = CausalConv3d(self.features, dtype=self.dtype, name='conv1')(x)
    x = nn.silu(RMSNorm(self.dtype, name='norm2')(x))
    x = CausalConv3d(self.features, dtype=self.dtype, name='conv2')(x)
    return constrain(x + h)


class AttentionBlock(nn.Module):
  """diffusers' `WanAttentionBlock`: single-head attention over each frame's H*W positions."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> same shape."""
    b, t, h, w, c = x.shape
    dense = lambda f, name: nn.Dense(
        f, dtype=self.dtype, param_dtype=jnp.float32, name=name,
        kernel_init=_partitioned(nn.linear.default_kernel_init, 2))
    qkv = dense(3 * c, 'to_qkv')(RMSNorm(self.dtype, name='norm')(x))
    q, k, v = jnp.split(qkv.reshape(b * t, h * w, 1, 3 * c), 3, axis=-1)  # [BT, HW, 1, C]
    y = jax.nn.dot_product_attention(q, k, v).reshape(b, t, h, w, c)
    return constrain(x + dense(c, 'proj')(y))


class MidBlock(nn.Module):
  """ResidualBlock, AttentionBlock, ResidualBlock (diffusers' `WanMidBlock`, one layer)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = ResidualBlock(c, self.dtype, name='resnets_0')(x)
    x = AttentionBlock(self.dtype, name='attentions_0')(x)
    return ResidualBlock(c, self.dtype, name='resnets_1')(x)


def _spatial_conv(x: jax.Array, features: int, strides: int, padding, dtype, name: str):
  """Per-frame 3x3 conv (frames folded into the batch): [B, T, H, W, C] -> [B, T, H', W', F]."""
  b, t = x.shape[:2]
  conv = nn.Conv(features, (3, 3), (strides, strides), padding=padding, dtype=dtype,
                 param_dtype=jnp.float32, name=name,
                 kernel_init=_partitioned(nn.linear.default_kernel_init, 4))
  y = conv(x.reshape((b * t,) + x.shape[2:]))
  return y.reshape((b, t) + y.shape[1:])


class Downsample(nn.Module):
  """diffusers' `WanResample` in 'downsample2d' / 'downsample3d' mode.

  Spatial: zero-pad right and bottom by one, 3x3 conv with stride 2 (params `resample`).
  Temporal ('downsample3d'): frame 0 passes through, then a valid (3, 1, 1) conv with stride
  2 over the frames including frame 0 (`time_conv`); a later chunk is preceded by the
  previous chunk's last frame (`cache/past`). T = 1 + 2m -> 1 + m.
  """
  temporal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T', H/2, W/2, C]."""
    c = x.shape[-1]
    x = _spatial_conv(x, c, 2, [(0, 1), (0, 1)], self.dtype, 'resample')
    if not self.temporal:
      return constrain(x)
    first = not self.has_variable('cache', 'past')
    xp = x if first else jnp.concatenate([self.get_variable('cache', 'past'), x], axis=1)
    if self.is_mutable_collection('cache'):
      self.put_variable('cache', 'past', x[:, -1:])
    outs = [x[:, :1]] if first else []
    if xp.shape[1] >= 3:  # static: the first chunk of an image has no window
      time_conv = CausalConv3d(c, (3, 1, 1), (2, 1, 1), causal=False, dtype=self.dtype,
                               name='time_conv')
      outs.append(time_conv(xp))
    return constrain(jnp.concatenate(outs, axis=1))


class Upsample(nn.Module):
  """diffusers' `WanResample` in 'upsample2d' / 'upsample3d' mode (channels C -> C/2).

  Temporal ('upsample3d'): frame 0 passes through; the other frames go through a causal
  (3, 1, 1) conv to 2C channels (zero past before frame 1, then the cached last two frames)
  whose halves become two frames each. Spatial: nearest 2x, then a 3x3 conv (`resample`).
  T = 1 + m -> 1 + 2m on the first chunk, m -> 2m after.
  """
  temporal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T', 2H, 2W, C/2]."""
    b, _, h, w, c = x.shape
    if self.temporal:
      first = not self.has_variable('cache', 'past')
      head, rest = (x[:, :1], x[:, 1:]) if first else (None, x)
      past = (jnp.zeros((b, 2, h, w, c), x.dtype) if first
              else self.get_variable('cache', 'past').astype(x.dtype))
      xp = jnp.concatenate([past, rest], axis=1)
      if self.is_mutable_collection('cache'):
        self.put_variable('cache', 'past', xp[:, -2:])
      outs = [head] if first else []
      if rest.shape[1]:  # static: a one-frame first chunk has nothing to upsample in time
        y = CausalConv3d(2 * c, (3, 1, 1), causal=False, dtype=self.dtype,
                         name='time_conv')(xp)  # [B, n, H, W, 2C]
        n = y.shape[1]
        y = y.reshape(b, n, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5)  # channel half -> frame
        outs.append(y.reshape(b, 2 * n, h, w, c))
      x = jnp.concatenate(outs, axis=1)
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest-exact at scale 2
    return constrain(_spatial_conv(x, c // 2, 1, [(1, 1), (1, 1)], self.dtype, 'resample'))


class UpBlock(nn.Module):
  """diffusers' `WanUpBlock`: `num_res_blocks + 1` residual blocks, then an optional upsampler."""
  features: int
  num_res_blocks: int
  upsample: str | None  # None, 'upsample2d' or 'upsample3d'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.num_res_blocks + 1):
      x = ResidualBlock(self.features, self.dtype, name=f'resnets_{j}')(x)
    if self.upsample is not None:
      x = Upsample(self.upsample == 'upsample3d', self.dtype, name='upsamplers_0')(x)
    return x


class Encoder(nn.Module):
  """diffusers' `WanEncoder3d` (Wan2.1 layout): video -> 2 * z_dim moment channels."""
  dim: int
  out_channels: int
  dim_mult: tuple[int, ...]
  num_res_blocks: int
  temperal_downsample: tuple[bool, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, 3] -> [B, T', H/s, W/s, out_channels]."""
    x = CausalConv3d(self.dim, dtype=self.dtype, name='conv_in')(x)
    idx = 0  # diffusers' flat down_blocks list: resnets, then a resampler per transition
    for i, mult in enumerate(self.dim_mult):
      for _ in range(self.num_res_blocks):
        x = ResidualBlock(self.dim * mult, self.dtype, name=f'down_blocks_{idx}')(x)
        idx += 1
      if i != len(self.dim_mult) - 1:
        x = Downsample(self.temperal_downsample[i], self.dtype, name=f'down_blocks_{idx}')(x)
        idx += 1
    x = MidBlock(self.dtype, name='mid_block')(x)
    x = nn.silu(RMSNorm(self.dtype, name='norm_out')(x))
    return CausalConv3d(self.out_channels, dtype=self.dtype, name='conv_out')(x)


class Decoder(nn.Module):
  """diffusers' `WanDecoder3d` (Wan2.1 layout): z_dim channels -> video."""
  dim: int
  dim_mult: tuple[int, ...]
  num_res_blocks: int
  temperal_upsample: tuple[bool, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T', h, w, C] -> [B, 1 + ft (T' - 1), h s, w s, 3] (first chunk)."""
    mults = (self.dim_mult[-1],) + tuple(self.dim_mult[::-1])
    x = CausalConv3d(self.dim * mults[0], dtype=self.dtype, name='conv_in')(x)
    x = MidBlock(self.dtype, name='mid_block')(x)
    for i, mult in enumerate(mults[1:]):
      mode = None
      if i != len(self.dim_mult) - 1:
        mode = 'upsample3d' if self.temperal_upsample[i] else 'upsample2d'
      x = UpBlock(self.dim * mult, self.num_res_blocks, mode, self.dtype,
                  name=f'up_blocks_{i}')(x)
    x = nn.silu(RMSNorm(self.dtype, name='norm_out')(x))
    return CausalConv3d(3, dtype=self.dtype, name='conv_out')(x)


class WanVAE(nn.Module):
  """diffusers' `AutoencoderKLWan`: encoder + quant_conv, post_quant_conv + decoder."""
  config: WanVAEConfig

  def setup(self):
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    common = dict(dim=c.base_dim, dim_mult=c.dim_mult, num_res_blocks=c.num_res_blocks,
                  dtype=dtype)
    self.encoder = Encoder(out_channels=2 * c.z_dim,
                           temperal_downsample=c.temperal_downsample, **common)
    self.quant_conv = CausalConv3d(2 * c.z_dim, (1, 1, 1), dtype=dtype)
    self.post_quant_conv = CausalConv3d(c.z_dim, (1, 1, 1), dtype=dtype)
    self.decoder = Decoder(temperal_upsample=c.temperal_downsample[::-1], **common)

  def encode(self, video: jax.Array) -> jax.Array:
    """video: [B, T, H, W, 3] -> float32 moments [B, T', h, w, 2C] (mean, then logvar)."""
    x = self.encoder(video.astype(jnp.dtype(self.config.dtype)))
    return self.quant_conv(x).astype(jnp.float32)

  def decode(self, z: jax.Array) -> jax.Array:
    """z: raw latents [B, T', h, w, C] -> float32 video clamped to [-1, 1]."""
    x = self.decoder(self.post_quant_conv(z.astype(jnp.dtype(self.config.dtype))))
    return jnp.clip(x.astype(jnp.float32), -1.0, 1.0)

  def __call__(self, video: jax.Array, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both halves (for init)."""
    return self.encode(video), self.decode(z)


# ----------------------------------------------------------------------------- params


@functools.partial(jax.jit, static_argnums=1)
def _init_params(rng: jax.Array, config: WanVAEConfig) -> Any:
  """Params from dummies long enough that every temporal resampler runs its time_conv.

  Draws from an 'rbg' key (as `vae._init_variables` does: XLA:CPU compiles threefry init
  kernels per param shape, far slower).
  """
  rng = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl='rbg')
  s = config.spatial_factor
  video = jnp.zeros((1, 1 + config.temporal_factor, s, s, 3), jnp.float32)
  z = jnp.zeros((1, 2, 1, 1, config.z_dim), jnp.float32)
  return nn.meta.unbox(WanVAE(config).init(rng, video, z)['params'])


def init_params(config: WanVAEConfig, rng: jax.Array) -> Any:
  """Fresh float32 params (jitted); `rng` is any JAX key."""
  return _init_params(rng, config)


@functools.lru_cache(maxsize=8)
def param_shapes(config: WanVAEConfig) -> Any:
  """Abstract param tree (ShapeDtypeStruct leaves) for `config`."""
  return jax.eval_shape(functools.partial(_init_params, config=config), jax.random.key(0))


def _check_params(params: Any, config: WanVAEConfig, where: str) -> None:
  """Raises ValueError unless `params` has `config`'s param paths and shapes."""
  problems = vae.param_tree_problems(params, param_shapes(config))
  if problems:
    raise ValueError(f'{where}: params do not fit the Wan VAE config (base_dim='
                     f'{config.base_dim}, z_dim={config.z_dim}, dim_mult={config.dim_mult}): '
                     f'{len(problems)} differences, e.g. {"; ".join(problems[:3])}.')


# ----------------------------------------------------------------------------- whole clip


@functools.partial(jax.jit, static_argnames='config')
def _encode_moments(params: Any, video: jax.Array, config: WanVAEConfig) -> jax.Array:
  return WanVAE(config).apply({'params': params}, video, method='encode')


@functools.partial(jax.jit, static_argnames='config')
def _decode(params: Any, latents: jax.Array, config: WanVAEConfig) -> jax.Array:
  return WanVAE(config).apply({'params': params}, latents, method='decode')


def encode(params: Any, video: jax.Array, config: WanVAEConfig) -> vae.Posterior:
  """video: float [B, T, H, W, 3] in [-1, 1], T = 1 + 4m -> Posterior over raw latents
  [B, 1 + m, H/8, W/8, C] (logvar clipped to [-30, 20] like diffusers)."""
  vae.check_video(video, config, 'wan_vae.encode')
  _check_params(params, config, 'wan_vae.encode')
  return vae.Posterior.from_moments(_encode_moments(params, video, config))


def encode_latents(params: Any, video: jax.Array, config: WanVAEConfig,
                   rng: jax.Array | None = None) -> jax.Array:
  """Raw latents [B, T', h, w, C]: a posterior sample with `rng`, else the posterior mean."""
  posterior = encode(params, video, config)
  return posterior.mode() if rng is None else posterior.sample(rng)


def decode(params: Any, latents: jax.Array, config: WanVAEConfig) -> jax.Array:
  """Raw latents [B, T', h, w, C] -> float32 video [B, 1 + 4 (T'-1), 8h, 8w, 3] in [-1, 1]."""
  vae.check_latents(latents, config, 'wan_vae.decode')
  _check_params(params, config, 'wan_vae.decode')
  return _decode(params, latents, config)


# ----------------------------------------------------------------------------- streaming


@functools.partial(jax.jit, static_argnames='config')
def encode_step(params: Any, cache: Any, chunk: jax.Array,
                config: WanVAEConfig) -> tuple[jax.Array, Any]:
  """One streaming encoder step: (moments [B, m, h, w, 2C], new cache).

  Args:
    params: Wan VAE params.
    cache: None for the first chunk, else the cache this function returned last.
    chunk: [B, n, H, W, 3]; frame 0 alone first, then n = 4m frames.
    config: the Wan VAE config.
  """
  variables = {'params': params} if cache is None else {'params': params, 'cache': cache}
  moments, state = WanVAE(config).apply(variables, chunk, method='encode', mutable=['cache'])
  return moments, state['cache']


@functools.partial(jax.jit, static_argnames='config')
def decode_step(params: Any, cache: Any, chunk: jax.Array,
                config: WanVAEConfig) -> tuple[jax.Array, Any]:
  """One streaming decoder step: (video [B, n, H, W, 3] in [-1, 1], new cache).

  Args:
    params: Wan VAE params.
    cache: None for the first chunk (latent frame 0 -> 1 pixel frame), else the last cache.
    chunk: raw latents [B, m, h, w, C]; latent frame 0 alone first, then m -> 4m frames.
    config: the Wan VAE config.
  """
  variables = {'params': params} if cache is None else {'params': params, 'cache': cache}
  video, state = WanVAE(config).apply(variables, chunk, method='decode', mutable=['cache'])
  return video, state['cache']


def _chunk_bounds(total: int, size: int) -> list[tuple[int, int]]:
  """[(0, 1), (1, 1 + size), ...] covering range(total)."""
  if size < 1:
    raise ValueError(f'chunk of {size} frames; expected chunk_latent_frames >= 1.')
  return [(0, 1)] + [(a, min(a + size, total)) for a in range(1, total, size)]


def encode_chunked(params: Any, video: jax.Array, config: WanVAEConfig,
                   chunk_latent_frames: int = 1) -> vae.Posterior:
  """`encode` streamed like diffusers: frame 0, then `4 * chunk_latent_frames` frames a step.

  Memory per step is independent of T; equals `encode` (fp32 to ~1e-6).
  """
  vae.check_video(video, config, 'wan_vae.encode_chunked')
  _check_params(params, config, 'wan_vae.encode_chunked')
  cache, outputs = None, []
  for a, b in _chunk_bounds(video.shape[1], config.temporal_factor * chunk_latent_frames):
    moments, cache = encode_step(params, cache, video[:, a:b], config)
    outputs.append(moments)
  return vae.Posterior.from_moments(jnp.concatenate(outputs, axis=1))


def decode_chunks(params: Any, latents: jax.Array, config: WanVAEConfig,
                  chunk_latent_frames: int = 1) -> Iterator[jax.Array]:
  """Yields decoded pixel chunks [B, n, H, W, 3] (1 frame, then 4 * chunk_latent_frames)."""
  vae.check_latents(latents, config, 'wan_vae.decode_chunks')
  _check_params(params, config, 'wan_vae.decode_chunks')
  cache = None
  for a, b in _chunk_bounds(latents.shape[1], chunk_latent_frames):
    video, cache = decode_step(params, cache, latents[:, a:b], config)
    yield video


def decode_chunked(params: Any, latents: jax.Array, config: WanVAEConfig,
                   chunk_latent_frames: int = 1) -> jax.Array:
  """`decode` streamed like diffusers (one latent frame a step by default); equals `decode`."""
  return jnp.concatenate(list(decode_chunks(params, latents, config, chunk_latent_frames)),
                         axis=1)
