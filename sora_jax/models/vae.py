"""Causal 3D video VAE: config and variants, KL posterior, public encode/decode API.

The Sora report's video compression network (OpenAI, 2024, "Video generation models as world
simulators"): a clip `[T, H, W, 3]` with `T = 1 + ft * k` (an image is `T = 1`) maps to latents
`[1 + k, H/s, W/s, C]` and back. Causal in time (MAGVIT-v2, arXiv:2310.05737), so images and
videos share one model and the first latent frame of a video equals the image latent of its
first frame. KL-regularised as in the LDM autoencoder (Rombach et al., arXiv:2112.10752).
Layers live in `vae_blocks.py`; streaming (chunked) and tiled inference at the bottom.

Frame correspondence: latent frame 0 <-> pixel frame 0; latent frame j >= 1 <->
pixel frames `ft*(j-1)+1 .. ft*j`. No output depends on a later frame.

Typical use:
  config = get_vae_config('B')                 # 4x8x8 compression, C = 16
  params = init_params(config, jax.random.key(0))
  video = preprocess(uint8_clip)               # [B, T, H, W, 3] in [-1, 1]
  z = encode_latents(params, video, config, rng)   # [B, 1 + (T-1)/4, H/8, W/8, 16]
  frames = postprocess(decode(params, z, config))  # uint8
"""
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models import vae_blocks

# Size presets; compression (temporal_factor, spatial_factor, latent_channels) defaults to
# 4x8x8, C=16 and is overridable. Levels = log2(spatial_factor / patch_size) + 1: channel_mults
# is cut or extended (repeating its last entry) to that many levels.
#
# 'tiny' is the CPU variant: XLA:CPU runs 3D convs at full resolution at a few GFLOP/s, so it
# patchifies instead. A 4x4x4 causal time/space-to-depth stem turns a 17x64x64 clip into
# 5x16x16 positions of 192 values, every conv is (2+1)D at that resolution (one level), and a
# depth-to-space head writes the pixels back; linear patch shortcuts around encoder and
# decoder, initialised to a low-pass 3D DCT, make the untrained model a 28.7 dB codec that
# training refines. Its default compression is lighter, 4x4x4 with C=32 (6x fewer values
# than pixels), for Shapes World's hard edges in 10 CPU minutes: a linear code of 4x4x4
# patches keeps 27.7 dB at 16 values and 30.7 dB at 32 (PCA), and a 4x8x8 C=8 prototype
# reached 21.7 dB. 'tiny_s8' is the same network at 4x8x8 (one
# learned 2x down/upsampling level on top of the stem; no linear shortcut, as the latent grid
# is coarser than the patch grid) for DiT work needing H/8 latents; its quality is untested.
VARIANTS: dict[str, dict[str, Any]] = {
    'tiny': dict(base_channels=64, channel_mults=(1,), num_res_blocks=1, attention=False,
                 norm_groups=8, spatial_factor=4, latent_channels=32, patch_size=4,
                 patch_frames=4, factorized=True),
    'tiny_s8': dict(base_channels=64, channel_mults=(1, 2), num_res_blocks=1, attention=False,
                    norm_groups=8, spatial_factor=8, patch_size=4, patch_frames=4,
                    factorized=True),
    'S': dict(base_channels=64, channel_mults=(1, 2, 4, 4), num_res_blocks=2,
              attention=False, norm_groups=32),
    'B': dict(base_channels=128, channel_mults=(1, 2, 4, 4), num_res_blocks=2,
              attention=True, norm_groups=32),
    'L': dict(base_channels=192, channel_mults=(1, 2, 4, 4), num_res_blocks=3,
              attention=True, norm_groups=32),
}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Everything that defines a VAE. Frozen and hashable (it is a static jit argument).

  Attributes:
    variant: name in `VARIANTS` the size fields came from (informational after overrides).
    base_channels, channel_mults, num_res_blocks, attention, norm_groups: size (see VARIANTS).
    temporal_factor: ft in {1, 2, 4}; T pixel frames -> 1 + (T - 1) / ft latent frames.
    spatial_factor: s in {4, 8, 16}.
    latent_channels: C.
    patch_size: the stem's space-to-depth factor p (divides s; 1 = none); the conv levels
      then do the remaining s / p.
    patch_frames: the stem's causal time-to-depth factor (divides ft; 1 = none).
    factorized: (2+1)D convolutions instead of 3D ones (`vae_blocks.CausalConv3d`).
    encoder: 'learned' (a network) or 'dct' (no encoder params: the latents are the C
      lowest-frequency 3D-DCT coefficients of each stem patch, only the decoder learns; C = 3
      is the clip's mean-pooled thumbnail, the smoothest latent a DiT can be given). 'dct'
      needs a stem-only variant (patch_size = spatial_factor, patch_frames = temporal_factor).
    dtype: compute dtype name ('float32', 'bfloat16'); params are always float32.
    range_tolerance: how far outside [-1, 1] an input may stray before it is rejected.
  """
  variant: str = 'B'
  base_channels: int = 128
  channel_mults: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attention: bool = True
  norm_groups: int = 32
  temporal_factor: int = 4
  spatial_factor: int = 8
  latent_channels: int = 16
  patch_size: int = 1
  patch_frames: int = 1
  factorized: bool = False
  encoder: str = 'learned'
  dtype: str = 'float32'
  range_tolerance: float = 1e-3

  def __post_init__(self):
    object.__setattr__(self, 'channel_mults', tuple(self.channel_mults))
    if self.temporal_factor not in (1, 2, 4):
      raise ValueError(f'temporal_factor={self.temporal_factor}; expected one of 1, 2, 4.')
    if self.spatial_factor not in (4, 8, 16):
      raise ValueError(f'spatial_factor={self.spatial_factor}; expected one of 4, 8, 16.')
    if self.patch_size not in (1, 2, 4, 8, 16) or self.spatial_factor % self.patch_size:
      raise ValueError(f'patch_size={self.patch_size}; expected a power of two dividing '
                       f'spatial_factor={self.spatial_factor}.')
    if self.patch_frames not in (1, 2, 4) or self.temporal_factor % self.patch_frames:
      raise ValueError(f'patch_frames={self.patch_frames}; expected 1, 2 or 4 dividing '
                       f'temporal_factor={self.temporal_factor}.')
    if self.temporal_downsamples > len(self.level_mults) - 1:
      raise ValueError(f'temporal_factor={self.temporal_factor} with patch_frames='
                       f'{self.patch_frames} needs {self.temporal_downsamples} temporal '
                       f'downsamplings but spatial_factor / patch_size = '
                       f'{self.spatial_factor // self.patch_size} gives only '
                       f'{len(self.level_mults) - 1} levels to do them in.')
    if self.encoder not in ENCODERS:
      raise ValueError(f'encoder={self.encoder!r}; expected one of {ENCODERS}.')
    stem_only = vae_blocks.stem_only(self.level_mults, self.temporal_downsamples)
    patch_values = 3 * self.patch_frames * self.patch_size ** 2
    if self.encoder == 'dct' and not (stem_only and self.latent_channels <= patch_values):
      raise ValueError(f"encoder='dct' needs patch_size == spatial_factor and patch_frames "
                       f'== temporal_factor (got {self.patch_size}, {self.spatial_factor}, '
                       f'{self.patch_frames}, {self.temporal_factor}) and latent_channels <= '
                       f'{patch_values} (got {self.latent_channels}).')
    for mult in set(self.level_mults):
      if (self.base_channels * mult) % self.norm_groups:
        raise ValueError(f'norm_groups={self.norm_groups} does not divide the '
                         f'{self.base_channels * mult} channels of a level.')

  @property
  def level_mults(self) -> tuple[int, ...]:
    """Channel multiplier per level: `log2(spatial_factor / patch_size) + 1` levels."""
    n = int(np.log2(self.spatial_factor // self.patch_size)) + 1
    mults = self.channel_mults[:n]
    return mults + (mults[-1],) * (n - len(mults))

  @property
  def temporal_downsamples(self) -> int:
    """Temporal halvings done by conv levels (the stem does `patch_frames`)."""
    return int(np.log2(self.temporal_factor // self.patch_frames))


ENCODERS = ('learned', 'dct')


def get_vae_config(variant: str = 'B', **overrides) -> VAEConfig:
  """Config for a named size preset, with overrides (e.g. `temporal_factor=2`).

  Raises:
    ValueError: unknown variant, or an override that is not a VAEConfig field.
  """
  if variant not in VARIANTS:
    raise ValueError(f'Unknown VAE variant {variant!r}; known variants: {sorted(VARIANTS)}.')
  fields = {f.name for f in dataclasses.fields(VAEConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'Unknown VAEConfig field(s) {unknown}; known fields: {sorted(fields)}.')
  return VAEConfig(variant=variant, **{**VARIANTS[variant], **overrides})


def latent_shape(config: VAEConfig, video_shape: tuple[int, ...]) -> tuple[int, ...]:
  """[B, T, H, W, 3] -> [B, 1 + (T-1)/ft, H/s, W/s, C] (no validation)."""
  b, t, h, w, _ = video_shape
  s = config.spatial_factor
  return (b, 1 + (t - 1) // config.temporal_factor, h // s, w // s, config.latent_channels)


# ----------------------------------------------------------------------------- model


@flax.struct.dataclass
class Posterior:
  """Diagonal Gaussian q(z | x). mean, logvar: [B, T', h, w, C] float32."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> 'Posterior':
    """moments: [..., 2C] -> Posterior with logvar clipped to [-30, 20] (LDM)."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean, jnp.clip(logvar, -30.0, 20.0))

  def sample(self, rng: jax.Array) -> jax.Array:
    noise = jax.random.normal(rng, self.mean.shape, self.mean.dtype)
    return self.mean + jnp.exp(0.5 * self.logvar) * noise

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) summed over latent elements: [B]."""
    kl = 0.5 * (jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar)
    return jnp.sum(kl, axis=tuple(range(1, kl.ndim)))


class VideoVAE(nn.Module):
  """Encoder + decoder. Methods: `encode` (moments), `decode`, `__call__` (reconstruct mode)."""
  config: VAEConfig

  def setup(self):
    c = self.config
    common = dict(base_channels=c.base_channels, level_mults=c.level_mults,
                  num_res_blocks=c.num_res_blocks, attention=c.attention,
                  groups=c.norm_groups, temporal_downsamples=c.temporal_downsamples,
                  patch_frames=c.patch_frames, patch_size=c.patch_size,
                  factorized=c.factorized, dtype=jnp.dtype(c.dtype))
    self.encoder = vae_blocks.Encoder(latent_channels=c.latent_channels,
                                      fixed=c.encoder == 'dct', **common)
    self.decoder = vae_blocks.Decoder(**common)

  def encode(self, video: jax.Array) -> jax.Array:
    """video: [B, T, H, W, 3] -> moments [B, T', h, w, 2C]."""
    return self.encoder(video)

  def decode(self, z: jax.Array, first_chunk: bool = True) -> jax.Array:
    """z: [B, T', h, w, C] -> [B, 1 + ft (T'-1), H, W, 3] (first chunk) or [B, ft T', H, W, 3]."""
    video = self.decoder(z)
    return video[:, self.config.temporal_factor - 1:] if first_chunk else video

  def __call__(self, video: jax.Array) -> jax.Array:
    """video: [B, T, H, W, 3] -> reconstruction from the posterior mean."""
    return self.decode(Posterior.from_moments(self.encode(video)).mode())


@functools.partial(jax.jit, static_argnums=1)
def _init_variables(rng: jax.Array, config: VAEConfig) -> Any:
  """Params from a 1-frame s x s dummy (param shapes do not depend on the input size).

  Draws from an 'rbg' key derived from `rng`: with jax 0.10's default (partitionable)
  threefry, XLA:CPU takes ~80 s to compile even the tiny variant's init (one threefry kernel
  per param shape); 'rbg' compiles in ~10 s. Same `rng`, same params, on one backend.
  """
  rng = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl='rbg')
  s = config.spatial_factor
  variables = VideoVAE(config).init(rng, jnp.zeros((1, 1, s, s, 3), jnp.float32))
  return nn.meta.unbox(variables['params'])  # conv kernels carry logical axis names


def init_params(config: VAEConfig, rng: jax.Array) -> Any:
  """Fresh float32 params (jitted); `rng` is any JAX key."""
  return _init_variables(rng, config)


@functools.lru_cache(maxsize=32)
def param_shapes(config: VAEConfig) -> Any:
  """Abstract param tree (ShapeDtypeStruct leaves) for `config`, via `jax.eval_shape`."""
  return jax.eval_shape(functools.partial(_init_variables, config=config),
                        jax.random.key(0))


# ----------------------------------------------------------------------------- validation


def _describe(config: VAEConfig) -> str:
  return (f'variant {config.variant!r} (ft={config.temporal_factor}, '
          f's={config.spatial_factor}, C={config.latent_channels})')


def param_tree_problems(params: Any, abstract: Any) -> list[str]:
  """How a param tree differs from an abstract one: wrong shapes, missing, unexpected paths."""
  shapes = lambda tree: {jax.tree_util.keystr(p): tuple(getattr(v, 'shape', np.shape(v)))
                         for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  expected, got = shapes(abstract), shapes(params)
  problems = [f'{k} has shape {got[k]}, expected {expected[k]}'
              for k in sorted(set(got) & set(expected)) if got[k] != expected[k]]
  problems += [f'missing {k}' for k in sorted(set(expected) - set(got))]
  return problems + [f'unexpected {k}' for k in sorted(set(got) - set(expected))]


def _check_params(params: Any, config: VAEConfig, where: str) -> None:
  """Raises ValueError if `params` is not a param tree of `config`'s shapes."""
  if isinstance(params, dict) and set(params) == {'params'}:
    raise ValueError(f'{where}: got a variables dict {{"params": ...}}; pass its "params" entry.')
  problems = param_tree_problems(params, param_shapes(config))
  if problems:
    raise ValueError(f'{where}: params do not match {_describe(config)} '
                     f'({len(problems)} differences, e.g. {"; ".join(problems[:3])}). '
                     'Were they initialised for another variant or compression?')


def _check_range(x: Any, config: VAEConfig, where: str) -> None:
  """Value range check, only on concrete arrays (inside jit the values are unknown)."""
  if isinstance(x, jax.core.Tracer):
    return
  with jax.ensure_compile_time_eval():  # a concrete array closed over by a caller's jit
    lo, hi = float(jnp.min(x)), float(jnp.max(x))
  tol = config.range_tolerance
  if lo < -1 - tol or hi > 1 + tol:
    raise ValueError(f'{where}: video values span [{lo:.4g}, {hi:.4g}]; expected floats in '
                     f'[-1, 1] (tolerance {tol}). Convert uint8 frames with preprocess().')


def check_video(video: Any, config: VAEConfig, where: str = 'video') -> None:
  """Raises ValueError unless video is float [B, T, H, W, 3] in [-1, 1] fitting `config`."""
  shape, dtype = np.shape(video), jnp.result_type(video)
  if len(shape) != 5 or shape[-1] != 3:
    raise ValueError(f'{where}: shape {shape}; expected [B, T, H, W, 3].')
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f'{where}: dtype {dtype}; expected a float video in [-1, 1] '
                     '(uint8 frames go through preprocess() first).')
  t, h, w, ft, s = shape[1], shape[2], shape[3], config.temporal_factor, config.spatial_factor
  if (t - 1) % ft:
    raise ValueError(f'{where}: T={t} frames; {_describe(config)} needs T = 1 + {ft}*m '
                     f'(e.g. {1 + ft * ((t - 1) // ft)} or {1 + ft * ((t - 1) // ft + 1)}).')
  if h % s or w % s:
    raise ValueError(f'{where}: frame size H x W = {h} x {w}; {_describe(config)} needs both '
                     f'divisible by {s}.')
  _check_range(video, config, where)


def check_latents(latents: Any, config: VAEConfig, where: str = 'latents') -> None:
  """Raises ValueError unless latents are float [B, T', h, w, C] for `config`."""
  shape, dtype = np.shape(latents), jnp.result_type(latents)
  if len(shape) != 5 or shape[-1] != config.latent_channels:
    raise ValueError(f'{where}: shape {shape}; expected [B, T\', h, w, '
                     f'{config.latent_channels}] for {_describe(config)}.')
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f'{where}: dtype {dtype}; expected float latents.')


# ----------------------------------------------------------------------------- public API


def preprocess(video: Any) -> jax.Array:
  """uint8 video [..., 3] in [0, 255] -> float32 in [-1, 1]."""
  dtype = jnp.result_type(video)
  if dtype != jnp.uint8:
    raise ValueError(f'preprocess: dtype {dtype}; expected uint8 frames in [0, 255].')
  return jnp.asarray(video, jnp.float32) / 127.5 - 1.0


def postprocess(video: Any) -> jax.Array:
  """float video in [-1, 1] (clipped) -> uint8 in [0, 255]."""
  dtype = jnp.result_type(video)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f'postprocess: dtype {dtype}; expected a float video in [-1, 1].')
  x = (jnp.clip(jnp.asarray(video, jnp.float32), -1.0, 1.0) + 1.0) * 127.5
  return jnp.round(x).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames='config')
def _encode_moments(params: Any, video: jax.Array, config: VAEConfig) -> jax.Array:
  return VideoVAE(config).apply({'params': params}, video, method='encode')


@functools.partial(jax.jit, static_argnames='config')
def _decode(params: Any, latents: jax.Array, config: VAEConfig) -> jax.Array:
  return VideoVAE(config).apply({'params': params}, latents, method='decode')


def encode(params: Any, video: jax.Array, config: VAEConfig) -> Posterior:
  """video: float [B, T, H, W, 3] in [-1, 1] -> Posterior over [B, 1 + (T-1)/ft, H/s, W/s, C].

  Validates before compiling (ValueError). Traceable: works inside a caller's jit.
  """
  check_video(video, config, 'encode')
  _check_params(params, config, 'encode')
  return Posterior.from_moments(_encode_moments(params, video, config))


def encode_latents(params: Any, video: jax.Array, config: VAEConfig,
                   rng: jax.Array | None = None) -> jax.Array:
  """Latents [B, T', h, w, C]: a posterior sample with `rng`, else the posterior mean."""
  posterior = encode(params, video, config)
  return posterior.mode() if rng is None else posterior.sample(rng)


def decode(params: Any, latents: jax.Array, config: VAEConfig) -> jax.Array:
  """latents: [B, T', h, w, C] -> float32 video [B, 1 + ft (T'-1), h s, w s, 3] (about [-1, 1])."""
  check_latents(latents, config, 'decode')
  _check_params(params, config, 'decode')
  return _decode(params, latents, config)


def reconstruct(params: Any, video: jax.Array, config: VAEConfig,
                rng: jax.Array | None = None) -> tuple[jax.Array, Posterior]:
  """Training forward pass: (recon [B, T, H, W, 3], posterior). Samples z when `rng` is given."""
  posterior = encode(params, video, config)
  z = posterior.mode() if rng is None else posterior.sample(rng)
  return decode(params, z, config), posterior


# ----------------------------------------------------------------------------- streaming


@functools.partial(jax.jit, static_argnames='config')
def encode_step(params: Any, cache: Any, chunk: jax.Array,
                config: VAEConfig) -> tuple[jax.Array, Any]:
  """One streaming encoder step: (moments [B, m', h, w, 2C], new cache).

  Args:
    params: VAE params.
    cache: None for the first chunk, else the cache this function returned last.
    chunk: [B, n, H, W, 3]; n = 1 (frame 0 alone) for the first chunk, else a multiple of ft.
    config: the VAE config.
  """
  variables = {'params': params} if cache is None else {'params': params, 'cache': cache}
  moments, state = VideoVAE(config).apply(variables, chunk, method='encode', mutable=['cache'])
  return moments, state.get('cache', {})  # a fixed ('dct') encoder keeps no cache


@functools.partial(jax.jit, static_argnames='config')
def decode_step(params: Any, cache: Any, chunk: jax.Array,
                config: VAEConfig) -> tuple[jax.Array, Any]:
  """One streaming decoder step: (video [B, n, H, W, 3], new cache).

  Args:
    params: VAE params.
    cache: None for the first chunk (latent frame 0 -> 1 pixel frame), else the last cache.
    chunk: latents [B, m, h, w, C] (the first chunk must be the single latent frame 0).
    config: the VAE config.
  """
  first = cache is None
  variables = {'params': params} if first else {'params': params, 'cache': cache}
  video, state = VideoVAE(config).apply(variables, chunk, first, method='decode',
                                        mutable=['cache'])
  return video, state['cache']


def _chunk_bounds(total: int, first: int, size: int) -> list[tuple[int, int]]:
  """[(0, first), (first, first + size), ...] covering range(total)."""
  if size < 1:
    raise ValueError(f'chunk of {size} frames; expected chunk_latent_frames >= 1.')
  return [(0, first)] + [(a, min(a + size, total)) for a in range(first, total, size)]


def _encode_moments_chunked(params, video, config, chunk_latent_frames):
  """video: [B, T, H, W, 3] -> moments [B, T', h, w, 2C], ft * m frames per step."""
  cache, outputs = None, []
  for a, b in _chunk_bounds(video.shape[1], 1, config.temporal_factor * chunk_latent_frames):
    moments, cache = encode_step(params, cache, video[:, a:b], config)
    outputs.append(moments)
  return jnp.concatenate(outputs, axis=1)


def encode_chunked(params: Any, video: jax.Array, config: VAEConfig,
                   chunk_latent_frames: int = 4) -> Posterior:
  """`encode`, streamed over time: frame 0, then `ft * chunk_latent_frames` frames per step.

  Memory of each step is independent of T; the result equals `encode` (fp32 to ~1e-6).
  """
  check_video(video, config, 'encode_chunked')
  _check_params(params, config, 'encode_chunked')
  return Posterior.from_moments(
      _encode_moments_chunked(params, video, config, chunk_latent_frames))


def decode_chunks(params: Any, latents: jax.Array, config: VAEConfig,
                  chunk_latent_frames: int = 4) -> Iterator[jax.Array]:
  """Yields decoded pixel chunks [B, n, H, W, 3] (1 frame, then ft * m per step).

  Use to stream long videos to disk without holding the whole clip.
  """
  check_latents(latents, config, 'decode_chunks')
  _check_params(params, config, 'decode_chunks')
  cache = None
  for a, b in _chunk_bounds(latents.shape[1], 1, chunk_latent_frames):
    video, cache = decode_step(params, cache, latents[:, a:b], config)
    yield video


def decode_chunked(params: Any, latents: jax.Array, config: VAEConfig,
                   chunk_latent_frames: int = 4) -> jax.Array:
  """`decode`, streamed over latent frames; equals `decode` (fp32 to ~1e-6)."""
  return jnp.concatenate(list(decode_chunks(params, latents, config, chunk_latent_frames)), 1)


# ----------------------------------------------------------------------------- spatial tiling


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
  """Tile offsets along one axis: stride `tile - overlap`, the last tile flush with the end."""
  if size <= tile:
    return [0]
  return list(range(0, size - tile, tile - overlap)) + [size - tile]


def _ramp(n: int, overlap: int, left: bool, right: bool) -> np.ndarray:
  """1D blend weights [n]: linear over `overlap` on sides that have a neighbour, else 1."""
  i = np.arange(n) + 0.5
  w = np.ones(n)
  if left and overlap:
    w = np.minimum(w, i / overlap)
  if right and overlap:
    w = np.minimum(w, (n - i) / overlap)
  return w


def tiled_apply(fn: Callable[[jax.Array], jax.Array], x: jax.Array, tile: int, overlap: int,
                scale: float) -> jax.Array:
  """Applies `fn` to overlapping spatial tiles of x and blends the outputs linearly.

  Args:
    fn: maps [B, T, th, tw, Cin] -> [B, T', th * scale, tw * scale, Cout].
    x: [B, T, H, W, Cin].
    tile: tile size in x's pixels (both axes).
    overlap: overlap between neighbouring tiles in x's pixels (< tile).
    scale: output pixels per input pixel (1/s to encode, s to decode).

  Returns:
    [B, T', H * scale, W * scale, Cout]: sum_k w_k fn(tile_k) / sum_k w_k.
  """
  if not 0 <= overlap < tile:
    raise ValueError(f'tiled_apply: overlap={overlap}; expected 0 <= overlap < tile={tile}.')
  h, w = x.shape[2:4]
  rows, cols = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
  num = den = None
  for r in rows:
    for c in cols:
      y = fn(x[:, :, r:r + tile, c:c + tile])
      th, tw = y.shape[2:4]
      o_out = int(round(overlap * scale))
      wr = _ramp(th, o_out, r > 0, r + tile < h)
      wc = _ramp(tw, o_out, c > 0, c + tile < w)
      weight = jnp.asarray(np.outer(wr, wc)[None, None, :, :, None], y.dtype)
      if num is None:
        shape = y.shape[:2] + (int(round(h * scale)), int(round(w * scale))) + y.shape[4:]
        num, den = jnp.zeros(shape, y.dtype), jnp.zeros(shape[:4] + (1,), y.dtype)
      ro, co = int(round(r * scale)), int(round(c * scale))
      num = num.at[:, :, ro:ro + th, co:co + tw].add(weight * y)
      den = den.at[:, :, ro:ro + th, co:co + tw].add(weight)
  return num / den


def _check_tiling(tile: int, overlap: int, config: VAEConfig, where: str) -> None:
  s = config.spatial_factor
  if tile % s or overlap % s or not 0 <= overlap < tile:
    raise ValueError(f'{where}: tile={tile}, overlap={overlap} pixels; expected multiples of '
                     f's={s} with 0 <= overlap < tile.')


def encode_tiled(params: Any, video: jax.Array, config: VAEConfig, tile: int = 256,
                 overlap: int = 64, chunk_latent_frames: int | None = None) -> Posterior:
  """`encode` over overlapping `tile` x `tile` pixel tiles, moments blended linearly.

  Approximate: per-frame GroupNorm/attention see a tile, not the frame. With
  `chunk_latent_frames`, each tile is also streamed over time.
  """
  check_video(video, config, 'encode_tiled')
  _check_params(params, config, 'encode_tiled')
  _check_tiling(tile, overlap, config, 'encode_tiled')
  if chunk_latent_frames is None:
    fn = lambda x: _encode_moments(params, x, config)
  else:
    fn = lambda x: _encode_moments_chunked(params, x, config, chunk_latent_frames)
  moments = tiled_apply(fn, video, tile, overlap, 1 / config.spatial_factor)
  return Posterior.from_moments(moments)


def decode_tiled(params: Any, latents: jax.Array, config: VAEConfig, tile: int = 256,
                 overlap: int = 64, chunk_latent_frames: int | None = None) -> jax.Array:
  """`decode` over overlapping tiles (`tile`, `overlap` in output pixels), blended linearly."""
  check_latents(latents, config, 'decode_tiled')
  _check_params(params, config, 'decode_tiled')
  _check_tiling(tile, overlap, config, 'decode_tiled')
  s = config.spatial_factor
  if chunk_latent_frames is None:
    fn = lambda z: _decode(params, z, config)
  else:
    fn = lambda z: jnp.concatenate(
        list(decode_chunks(params, z, config, chunk_latent_frames)), axis=1)
  return tiled_apply(fn, latents, tile // s, overlap // s, s)
