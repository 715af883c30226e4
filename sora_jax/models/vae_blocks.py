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
    arXiv:2408.06072): a causal conv with temporal stride 2 down, depth-to-time up;
  * optional CPU-efficient pieces: a causal space/time-to-depth stem and depth-to-space/time
    head (pixel-unshuffle, Shi et al., 2016, arXiv:1609.05158, as in the patchified VAEs of
    WF-VAE, arXiv:2411.17459), so every conv runs at reduced resolution, and factorised
    (2+1)D convolutions (Tran et al., 2018, "A Closer Look at Spatiotemporal Convolutions",
    arXiv:1711.11248): a per-frame spatial conv (frames folded into the batch) followed by a
    causal temporal conv written as a matmul over `kt` stacked frames. On XLA:CPU the 3D
    conv is 3-6x slower than this pair at the same channels (benchmarks/vae.py docstring).

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
import numpy as np

VIDEO_AXES = ('batch', 'frames', 'height', 'width', 'channels')


def constrain(x: jax.Array) -> jax.Array:
  """Logical sharding constraint for a `[B, T, H, W, C]` activation (no-op without rules)."""
  return nn.with_logical_constraint(x, VIDEO_AXES)


def _kernel_init(zero: bool, ndim: int):
  """Conv/Dense kernel init (Flax's default, or zeros) with logical axes: the taps are
  unnamed, the last two axes are ('conv_in', 'conv_out') (`sora_jax/sharding/rules.py`)."""
  init = nn.initializers.zeros if zero else nn.linear.default_kernel_init
  return nn.with_logical_partitioning(init, (None,) * (ndim - 2) + ('conv_in', 'conv_out'))


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
    factorized: (2+1)D: a per-frame `(kh, kw)` conv to `features` channels (params
      `spatial`), then a causal `kt`-tap temporal conv as one matmul over the stacked frames
      (params `temporal`). Same receptive field and causality, fewer FLOPs, and XLA:CPU runs
      it several times faster than a 3D conv.
    zero_init: zero-initialise the last kernel (a residual branch next to a shortcut starts
      as a no-op).
    dtype: compute dtype (params are float32).
  """
  features: int
  kernel: tuple[int, int, int] = (3, 3, 3)
  strides: tuple[int, int, int] = (1, 1, 1)
  factorized: bool = False
  zero_init: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, Cin] -> [B, (T - 1) // st + 1, H // sh, W // sw, features]."""
    pads = [_spatial_pad(k, s) for k, s in zip(self.kernel[1:], self.strides[1:])]
    init = lambda zero, ndim: dict(kernel_init=_kernel_init(zero and self.zero_init, ndim))
    if not self.factorized:
      x = self._with_past(x)
      conv = nn.Conv(self.features, self.kernel, self.strides, padding=[(0, 0)] + pads,
                     dtype=self.dtype, param_dtype=jnp.float32, **init(True, 5))
      return conv(x)
    kt, st = self.kernel[0], self.strides[0]
    if self.kernel[1:] != (1, 1) or self.strides[1:] != (1, 1) or kt == 1:
      # Per-frame spatial conv, frames folded into the batch (no temporal state needed).
      b, t = x.shape[:2]
      conv = nn.Conv(self.features, self.kernel[1:], self.strides[1:], padding=pads,
                     dtype=self.dtype, param_dtype=jnp.float32, name='spatial',
                     **init(kt == 1, 4))
      y = conv(x.reshape((b * t,) + x.shape[2:]))
      x = y.reshape((b, t) + y.shape[1:])
    if kt == 1:
      return x
    x = self._with_past(x)  # [B, kt - 1 + T, ...]
    n = (x.shape[1] - kt) // st + 1
    taps = [x[:, i:i + st * (n - 1) + 1:st] for i in range(kt)]  # kt x [B, n, H, W, C]
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32,
                    name='temporal', **init(True, 2))(jnp.concatenate(taps, axis=-1))

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
  factorized: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, Cin] -> [B, T, H, W, features]."""
    h = nn.silu(FrameGroupNorm(self.groups, self.dtype)(x))
    h = CausalConv3d(self.features, factorized=self.factorized, dtype=self.dtype)(h)
    h = nn.silu(FrameGroupNorm(self.groups, self.dtype)(h))
    h = CausalConv3d(self.features, factorized=self.factorized, dtype=self.dtype)(h)
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
  factorized: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T, H, W, features]."""
    x = ResBlock(self.features, self.groups, self.dtype, self.factorized)(x)
    if self.attention:
      x = FrameAttention(self.groups, self.dtype)(x)
    return ResBlock(self.features, self.groups, self.dtype, self.factorized)(x)


class Downsample(nn.Module):
  """Halves H and W; with `temporal`, also maps T = 1 + 2m frames to 1 + m (frame 0 alone)."""
  features: int
  temporal: bool
  dtype: Any = jnp.float32
  factorized: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T', H/2, W/2, features]; T' = 1 + (T-1)/2 if temporal else T."""
    kt, st = (3, 2) if self.temporal else (1, 1)
    conv = CausalConv3d(self.features, kernel=(kt, 3, 3), strides=(st, 2, 2),
                        factorized=self.factorized, dtype=self.dtype)
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
  factorized: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, 2T if temporal else T, 2H, 2W, features]."""
    b, t, h, w, _ = x.shape
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    conv = lambda f: CausalConv3d(f, factorized=self.factorized, dtype=self.dtype)
    if not self.temporal:
      return constrain(conv(self.features)(x))
    x = conv(2 * self.features)(x)  # [B, T, 2H, 2W, 2F]
    x = x.reshape(b, t, 2 * h, 2 * w, 2, self.features).transpose(0, 1, 4, 2, 3, 5)
    return constrain(x.reshape(b, 2 * t, 2 * h, 2 * w, self.features))


def to_depth(x: jax.Array, frames: int, size: int) -> jax.Array:
  """Causal time- and space-to-depth: [B, T, H, W, C] -> [B, T', H/size, W/size, fr*size^2*C].

  A chunk whose length is not a multiple of `frames` (a clip's first chunk, T = 1 + frames*m)
  starts with `frames - 1` copies of frame 0, so frame 0 forms a group of its own and group
  j >= 1 holds frames `frames*(j-1)+1 .. frames*j`; later streaming chunks (multiples of
  `frames`) need no padding, hence no state. Channel order: (frame, row, col, C).
  """
  b, t, h, w, c = x.shape
  if t % frames:
    x = jnp.concatenate([jnp.repeat(x[:, :1], frames - 1, axis=1), x], axis=1)
  n = x.shape[1] // frames
  x = x.reshape(b, n, frames, h // size, size, w // size, size, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, n, h // size, w // size, frames * size * size * c)


def from_depth(x: jax.Array, frames: int, size: int) -> jax.Array:
  """Inverse of `to_depth` without the padding: [B, n, h, w, fr*size^2*C] -> [B, fr*n, ...]."""
  b, n, h, w, d = x.shape
  c = d // (frames * size * size)
  x = x.reshape(b, n, h, w, frames, size, size, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, n * frames, h * size, w * size, c)


def dct_patch_basis(frames: int, size: int, channels: int, n: int) -> np.ndarray:
  """The `n` lowest-frequency orthonormal 3D-DCT-II basis vectors of a `to_depth` patch.

  Returns [n, frames * size^2 * channels] in `to_depth`'s channel order, rows ordered by
  total frequency, then temporal frequency, then channel; zero rows beyond the patch's size.
  Initialises the linear patch shortcuts: projecting 4x4x4 Shapes World patches on the first
  32 rows keeps 28.7 dB (PCA, which needs data, 30.7 dB), so training starts there.
  """
  def dct(m):  # [freq, position]
    k, i = np.arange(m)[:, None], np.arange(m)[None]
    d = np.cos(np.pi * (i + 0.5) * k / m) * np.sqrt(2 / m)
    d[0] /= np.sqrt(2)
    return d
  dt, ds = dct(frames), dct(size)
  rows = []
  for ft in range(frames):
    for fy in range(size):
      for fx in range(size):
        for c in range(channels):
          v = np.zeros((frames, size, size, channels))
          v[..., c] = np.einsum('t,y,x->tyx', dt[ft], ds[fy], ds[fx])
          rows.append(((ft + fy + fx, ft, c), v.reshape(-1)))
  rows.sort(key=lambda r: r[0])
  basis = np.stack([r[1] for r in rows])
  return np.concatenate([basis, np.zeros((max(0, n - len(basis)), basis.shape[1]))])[:n]


def _dct_init(frames: int, size: int, transpose: bool):
  """Dense kernel init: the DCT basis [C, D] (decoder) or its transpose [D, C] (encoder)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    n = shape[0] if not transpose else shape[1]
    basis = dct_patch_basis(frames, size, 3, n)
    return jnp.asarray(basis.T if transpose else basis, dtype)
  return init


FIXED_LOGVAR = -30.0  # `Posterior.from_moments`'s floor: a fixed encoder's point posterior


def stem_only(level_mults: tuple[int, ...], temporal_downsamples: int) -> bool:
  """True when the patch stem does all the compression (latent grid == patch grid): only
  then is there a per-position linear shortcut between patches and latents."""
  return len(level_mults) == 1 and temporal_downsamples == 0


class Encoder(nn.Module):
  """Video -> KL posterior moments.

  Attributes:
    base_channels: channels of level 0.
    level_mults: channel multiplier per level; `len - 1` spatial halvings.
    num_res_blocks: ResBlocks per level.
    attention: per-frame attention in the mid block.
    groups: GroupNorm groups.
    temporal_downsamples: how many of the first transitions also halve time.
    latent_channels: C.
    patch_frames, patch_size: the stem's time- and space-to-depth factors (1 = none); when
      the stem does all the compression (one level, no temporal downsampling), the mean gets
      a linear patch shortcut, the deep path starts at zero and logvar at `logvar_offset`.
    factorized: (2+1)D convolutions (see `CausalConv3d`).
    fixed: no learned encoder: the latents are the `latent_channels` lowest-frequency DCT
      coefficients of each patch (`dct_patch_basis`; the first 3 are the patch's mean colour
      times sqrt(patch size)), with logvar at `FIXED_LOGVAR`. Needs a stem-only patch.
    dtype: compute dtype.
  """
  base_channels: int
  level_mults: tuple[int, ...]
  num_res_blocks: int
  attention: bool
  groups: int
  temporal_downsamples: int
  latent_channels: int
  patch_frames: int = 1
  patch_size: int = 1
  factorized: bool = False
  logvar_offset: float = -6.0
  fixed: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, 3] -> moments [B, 1 + (T-1)/ft, H/s, W/s, 2C] (mean, logvar)."""
    conv = lambda f, **kw: CausalConv3d(f, factorized=self.factorized, dtype=self.dtype, **kw)
    h = constrain(x.astype(self.dtype))
    patched = self.patch_frames > 1 or self.patch_size > 1
    shortcut = patched and stem_only(self.level_mults, self.temporal_downsamples)
    if self.fixed:  # the mean is the patch DCT itself: no params, a point posterior
      basis = dct_patch_basis(self.patch_frames, self.patch_size, 3, self.latent_channels)
      mean = to_depth(h, self.patch_frames, self.patch_size) @ jnp.asarray(basis.T, self.dtype)
      logvar = jnp.full_like(mean, FIXED_LOGVAR)
      return constrain(jnp.concatenate([mean, logvar], axis=-1).astype(jnp.float32))
    if patched:
      patches = to_depth(h, self.patch_frames, self.patch_size)
      # A patch is already a local neighbourhood: a 1x1x1 projection suffices, and the wide
      # (fr * p^2 * 3 channel) input would make a 3x3 conv cost as much as several ResBlocks.
      h = conv(self.base_channels, kernel=(1, 1, 1))(patches)
    else:
      h = conv(self.base_channels)(h)
    for level, mult in enumerate(self.level_mults):
      features = self.base_channels * mult
      for _ in range(self.num_res_blocks):
        h = ResBlock(features, self.groups, self.dtype, self.factorized)(h)
      if level < len(self.level_mults) - 1:
        h = Downsample(features, level < self.temporal_downsamples, self.dtype,
                       self.factorized)(h)
    h = MidBlock(h.shape[-1], self.groups, self.attention, self.dtype, self.factorized)(h)
    h = nn.silu(FrameGroupNorm(self.groups, self.dtype)(h))
    # With a shortcut, the deep path starts as a no-op: the model begins as the linear map.
    mean, logvar = jnp.split(conv(2 * self.latent_channels, zero_init=shortcut)(h), 2, axis=-1)
    if shortcut:
      # Linear patch shortcut to the mean (cf. DC-AE's space-to-channel shortcut, Chen et al.,
      # 2024, arXiv:2410.10733), initialised to a low-pass 3D DCT (`dct_patch_basis`): the
      # model starts as a decent linear codec and the deep path learns the residual. A
      # randomly initialised shortcut stayed near 22 dB after 250 steps. Per position:
      # causal and stateless.
      mean = mean + nn.Dense(self.latent_channels, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=_dct_init(self.patch_frames, self.patch_size, True),
                             name='patch_shortcut')(patches)
      # Start near-deterministic (posterior std ~0.05, not ~1): at std 1 the sampled latents
      # drown the shortcut's signal until logvar is learned down, which at KL weight ~1e-6
      # takes longer than a short CPU run.
      logvar = logvar + self.logvar_offset
    return constrain(jnp.concatenate([mean, logvar], axis=-1).astype(jnp.float32))


class Decoder(nn.Module):
  """Latents -> video, mirroring `Encoder` (same attributes, minus `latent_channels`).

  Returns `ft` frames for latent frame 0 (one per later-frame slot); the caller keeps the last.
  With a patch head, the last conv is per-frame (kernel 1x3x3): it only has to lay out the
  `patch_frames * patch_size^2` pixels of each position, the blocks before it mix time; a
  linear shortcut from the latents adds a PCA-like reconstruction the network refines.
  """
  base_channels: int
  level_mults: tuple[int, ...]
  num_res_blocks: int
  attention: bool
  groups: int
  temporal_downsamples: int
  patch_frames: int = 1
  patch_size: int = 1
  factorized: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    """z: [B, T', h, w, C] -> [B, ft * T', h*s, w*s, 3]."""
    conv = lambda f, **kw: CausalConv3d(f, factorized=self.factorized, dtype=self.dtype, **kw)
    top = self.base_channels * self.level_mults[-1]
    z = constrain(z.astype(self.dtype))
    h = conv(top)(z)
    h = MidBlock(top, self.groups, self.attention, self.dtype, self.factorized)(h)
    for level in reversed(range(len(self.level_mults))):
      features = self.base_channels * self.level_mults[level]
      for _ in range(self.num_res_blocks):
        h = ResBlock(features, self.groups, self.dtype, self.factorized)(h)
      if level > 0:
        h = Upsample(features, level - 1 < self.temporal_downsamples, self.dtype,
                     self.factorized)(h)
    h = nn.silu(FrameGroupNorm(self.groups, self.dtype)(h))
    pf, ps = self.patch_frames, self.patch_size
    if pf == ps == 1:
      h = conv(3)(h)
    elif not stem_only(self.level_mults, self.temporal_downsamples):
      h = from_depth(conv(3 * pf * ps * ps, kernel=(1, 3, 3))(h), pf, ps)
    else:
      out = 3 * pf * ps * ps
      shortcut = nn.Dense(out, dtype=self.dtype, param_dtype=jnp.float32,  # the Encoder's
                          kernel_init=_dct_init(pf, ps, False), name='patch_shortcut')(z)
      h = from_depth(conv(out, kernel=(1, 3, 3), zero_init=True)(h) + shortcut, pf, ps)
    return constrain(h.astype(jnp.float32))
