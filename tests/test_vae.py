"""Tests for the causal 3D video VAE: shapes, causality, streaming, tiling, validation, losses.

Tiny configs only (16-64 px frames, 8 base channels). The contract tests (causality, image
path, streaming) run on three layouts: the patchified (2+1)D 'tiny' network (stem does all
of 4x4x4), a patch-2 (2+1)D network whose conv levels do the rest (strided factorised convs,
depth-to-time upsampling), and the plain 3D-conv network of S/B/L. Keys are 'rbg' and test inputs come from
numpy: on CPU, jax 0.10's default partitionable threefry compiles one slow kernel per random
shape (seconds each), which would dominate this file's runtime.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sora_jax.models import discriminator as disc_lib
from sora_jax.models import vae
from sora_jax.models import vae_blocks
from sora_jax.models import vae_losses

FT, S, C = 4, 4, 4  # test compression: 4x4x4, 4 latent channels


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl='rbg')


def smooth_video(b: int, t: int, h: int, w: int, seed: int = 0) -> jax.Array:
  """Moving random sinusoids in [-0.9, 0.9]: [b, t, h, w, 3] float32."""
  rng = np.random.default_rng(seed)
  tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing='ij')
  out = np.zeros((b, t, h, w, 3))
  for i in range(b):
    for c in range(3):
      fy, fx, ft, phase = rng.uniform(0.1, 0.5, 3).tolist() + [rng.uniform(0, 6)]
      out[i, ..., c] = np.sin(fy * yy + fx * xx + ft * tt + phase)
  return jnp.asarray(0.9 * out, jnp.float32)


LAYOUTS = {  # overrides of 'tiny' (see the module docstring)
    'patch4': {},
    'patch2': dict(patch_size=2, patch_frames=2),
    'conv3d': dict(patch_size=1, patch_frames=1, factorized=False),
}


def _test_config(layout: str) -> vae.VAEConfig:
  return vae.get_vae_config('tiny', base_channels=8, norm_groups=4, temporal_factor=FT,
                            spatial_factor=S, latent_channels=C, attention=True,
                            **LAYOUTS[layout])


@pytest.fixture(scope='module')
def cfg():
  return _test_config('patch4')


@pytest.fixture(scope='module')
def params(cfg):
  return vae.init_params(cfg, _key(0))


@pytest.fixture(scope='module', params=sorted(LAYOUTS))
def any_cfg_params(request):
  """(config, params) for each layout: the contract must hold for all of them."""
  config = _test_config(request.param)
  return config, vae.init_params(config, _key(0))


@pytest.fixture(scope='module')
def clip():
  return smooth_video(1, 9, 16, 16)


# ----------------------------------------------------------------------------- config and shapes


@pytest.mark.parametrize('variant', sorted(vae.VARIANTS))
def test_variant_shapes(variant):
  config = vae.get_vae_config(variant)
  s, c = (4, 32) if variant == 'tiny' else (8, 16)  # tiny: lighter compression (VARIANTS)
  assert (config.temporal_factor, config.spatial_factor, config.latent_channels) == (4, s, c)
  pshapes = vae.param_shapes(config)
  video = jax.ShapeDtypeStruct((1, 17, 256, 256, 3), jnp.float32)
  post = jax.eval_shape(lambda p, x: vae.encode(p, x, config), pshapes, video)
  assert post.mean.shape == post.logvar.shape == (1, 5, 256 // s, 256 // s, c)
  out = jax.eval_shape(lambda p, z: vae.decode(p, z, config), pshapes, post.mean)
  assert out.shape == video.shape and out.dtype == jnp.float32


def test_variant_sizes_grow():
  counts = [sum(np.prod(x.shape) for x in jax.tree.leaves(vae.param_shapes(
      vae.get_vae_config(v)))) for v in ('tiny', 'S', 'B', 'L')]
  assert counts == sorted(counts) and len(set(counts)) == 4, counts


@pytest.mark.parametrize('layout', ['patch4', 'conv3d'])
@pytest.mark.parametrize('h, w', [(64, 64), (48, 80), (80, 48)])
@pytest.mark.parametrize('ft, s', [(4, 8), (1, 4), (2, 16)])
def test_shapes_sizes_and_factors(h, w, ft, s, layout):
  if h % s or w % s:
    pytest.skip(f'{h}x{w} not divisible by s={s}')
  overrides = dict(LAYOUTS[layout])
  if layout == 'patch4':
    overrides['patch_frames'] = ft  # the stem may not compress time more than ft
  config = vae.get_vae_config('tiny', temporal_factor=ft, spatial_factor=s, latent_channels=8,
                              **overrides)
  pshapes = vae.param_shapes(config)
  for t in (1, 1 + 2 * ft):
    video = jax.ShapeDtypeStruct((2, t, h, w, 3), jnp.float32)
    z = jax.eval_shape(lambda p, x: vae.encode_latents(p, x, config), pshapes, video)
    assert z.shape == (2, 1 + (t - 1) // ft, h // s, w // s, 8) == vae.latent_shape(config,
                                                                                  video.shape)
    out = jax.eval_shape(lambda p, z: vae.decode(p, z, config), pshapes, z)
    assert out.shape == video.shape


def test_compute_dtype_keeps_float32_params_and_outputs():
  config = vae.get_vae_config('tiny', dtype='bfloat16')
  pshapes = vae.param_shapes(config)
  assert {x.dtype for x in jax.tree.leaves(pshapes)} == {jnp.dtype(jnp.float32)}
  video = jax.ShapeDtypeStruct((1, 5, 32, 32, 3), jnp.float32)
  out = jax.eval_shape(lambda p, x: vae.reconstruct(p, x, config)[0], pshapes, video)
  assert out.dtype == jnp.float32 and out.shape == video.shape


def test_unknown_variant_and_field():
  with pytest.raises(ValueError, match=r"'XL'.*\['B', 'L', 'S', 'tiny', 'tiny_s8'\]"):
    vae.get_vae_config('XL')
  with pytest.raises(ValueError, match='latent_chanels'):
    vae.get_vae_config('tiny', latent_chanels=8)
  with pytest.raises(ValueError, match='temporal_factor=3'):
    vae.get_vae_config('tiny', temporal_factor=3)
  with pytest.raises(ValueError, match='patch_size=8; expected a power of two dividing '
                     'spatial_factor=4'):
    vae.get_vae_config('tiny', patch_size=8)
  with pytest.raises(ValueError, match='patch_frames=4; expected 1, 2 or 4 dividing '
                     'temporal_factor=2'):
    vae.get_vae_config('tiny', temporal_factor=2)
  with pytest.raises(ValueError, match='needs 2 temporal downsamplings.*only 1 levels'):
    vae.get_vae_config('tiny', patch_frames=1, patch_size=2)


def test_depth_roundtrip():
  """from_depth inverts to_depth (after dropping the frame-0 padding); frame 0 is a group."""
  x = jnp.asarray(np.random.default_rng(13).normal(size=(2, 9, 8, 12, 3)), jnp.float32)
  d = vae_blocks.to_depth(x, 4, 2)
  assert d.shape == (2, 3, 4, 6, 48)
  np.testing.assert_array_equal(vae_blocks.from_depth(d, 4, 2)[:, 3:], x)
  np.testing.assert_array_equal(vae_blocks.to_depth(x[:, :1], 4, 2), d[:, :1])
  np.testing.assert_array_equal(vae_blocks.to_depth(x[:, 1:], 4, 2), d[:, 1:])  # no padding


def test_logical_constraints_follow_rules(cfg):
  """Block boundaries carry ('batch', 'frames', ...) constraints once rules map them."""
  pshapes = vae.param_shapes(cfg)
  video = jax.ShapeDtypeStruct((8, 5, 16, 16, 3), jnp.float32)
  fn = jax.jit(lambda p, x: vae.VideoVAE(cfg).apply({'params': p}, x, method='encode'))
  assert 'sharding_constraint' not in fn.lower(pshapes, video).as_text()
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(mesh), nn.logical_axis_rules((('batch', 'data'),)):
    text = fn.lower(pshapes, video).as_text()
  levels = len(cfg.level_mults)
  # input, one per ResBlock, per Downsample, mid block (res, attention, res), output.
  expected = 1 + levels * cfg.num_res_blocks + (levels - 1) + 3 + 1
  assert text.count('sharding_constraint') == expected


# ----------------------------------------------------------------------------- causality


def test_encoder_causal(any_cfg_params, clip):
  """Perturbing pixel frame t leaves latent frames j with FT*j < t (pixels <= FT*j) unchanged."""
  cfg, params = any_cfg_params
  base = vae.encode(params, clip, cfg).mean
  for t in (1, 4, 5, 8):
    bumped = clip.at[:, t].multiply(-0.5)
    diff = jnp.abs(vae.encode(params, bumped, cfg).mean - base).max(axis=(0, 2, 3, 4))
    first_affected = -(-t // FT)  # ceil(t / FT)
    np.testing.assert_allclose(diff[:first_affected], 0.0, atol=1e-6)
    assert diff[first_affected] > 1e-3, (t, diff)


def test_decoder_causal(any_cfg_params):
  cfg, params = any_cfg_params
  z = jnp.asarray(np.random.default_rng(1).normal(size=(1, 3, 4, 4, C)), jnp.float32)
  base = vae.decode(params, z, cfg)
  for j in (1, 2):
    diff = jnp.abs(vae.decode(params, z.at[:, j].add(1.0), cfg) - base).max(axis=(0, 2, 3, 4))
    np.testing.assert_allclose(diff[:FT * (j - 1) + 1], 0.0, atol=1e-6)
    assert diff[FT * (j - 1) + 1] > 1e-3, (j, diff)


def test_image_path_matches_first_frame(any_cfg_params, clip):
  cfg, params = any_cfg_params
  video_post, image_post = vae.encode(params, clip, cfg), vae.encode(params, clip[:, :1], cfg)
  np.testing.assert_allclose(image_post.mean, video_post.mean[:, :1], atol=1e-5)
  np.testing.assert_allclose(image_post.logvar, video_post.logvar[:, :1], atol=1e-5)
  image = vae.decode(params, video_post.mean[:, :1], cfg)
  assert image.shape == (1, 1, 16, 16, 3)
  np.testing.assert_allclose(image, vae.decode(params, video_post.mean, cfg)[:, :1], atol=1e-5)


# ----------------------------------------------------------------------------- streaming


def test_chunked_matches_full(any_cfg_params):
  """Frame 0, then 3 latent frames (12 px) per step, then a ragged 1-latent (4 px) step.

  The 3D-conv layout streams at one chunk size (1 latent frame a step over 9 frames): its
  chunk shapes are slow to compile, and the patch layouts cover the ragged step.
  """
  cfg, params = any_cfg_params
  if not cfg.factorized:
    video = smooth_video(1, 9, 16, 16, seed=2)
    full = vae.encode(params, video, cfg)
    chunked = vae.encode_chunked(params, video, cfg, chunk_latent_frames=1)
    np.testing.assert_allclose(chunked.mean, full.mean, atol=1e-5)
    np.testing.assert_allclose(vae.decode_chunked(params, full.mean, cfg, 1),
                               vae.decode(params, full.mean, cfg), atol=1e-5)
    return
  video = smooth_video(1, 17, 16, 16, seed=2)
  full = vae.encode(params, video, cfg)
  chunked = vae.encode_chunked(params, video, cfg, chunk_latent_frames=3)
  np.testing.assert_allclose(chunked.mean, full.mean, atol=1e-5)
  np.testing.assert_allclose(chunked.logvar, full.logvar, atol=1e-5)
  decoded = vae.decode(params, full.mean, cfg)
  np.testing.assert_allclose(vae.decode_chunked(params, full.mean, cfg, 3), decoded, atol=1e-5)
  sizes = [c.shape[1] for c in vae.decode_chunks(params, full.mean, cfg, 3)]
  assert sizes == [1, 12, 4]


def test_streaming_cache_is_explicit_and_bounded(any_cfg_params):
  cfg, params = any_cfg_params
  """The cache is a plain pytree whose size does not grow with the number of steps."""
  video = smooth_video(1, 9, 16, 16, seed=3)
  _, cache = vae.encode_step(params, None, video[:, :1], cfg)
  _, cache1 = vae.encode_step(params, cache, video[:, 1:5], cfg)
  _, cache2 = vae.encode_step(params, cache1, video[:, 5:9], cfg)
  shapes = lambda c: jax.tree.map(lambda x: x.shape, c)
  assert shapes(cache1) == shapes(cache2)
  assert all(x.shape[1] <= 2 for x in jax.tree.leaves(cache2))


def test_dct_encoder_is_the_patch_transform():
  """encoder='dct': no encoder params; latent channel c (< 3) of a 4x4x4 patch is 8x its mean
  colour (frame 0 alone), the rest the next DCT coefficients; a point posterior; streaming
  equals the full encode; the untrained decoder inverts the DCT; bad configs fail by name."""
  cfg = vae.get_vae_config('tiny', base_channels=8, norm_groups=4, latent_channels=12,
                           encoder='dct')
  params = vae.init_params(cfg, _key(0))
  assert set(params) == {'decoder'}
  video = smooth_video(2, 9, 16, 16, seed=4)
  post = vae.encode(params, video, cfg)
  assert post.mean.shape == (2, 3, 4, 4, 12)
  v = np.asarray(video)
  np.testing.assert_allclose(post.mean[:, 0, 1, 2, :3], 8 * v[:, 0, 4:8, 8:12].mean((1, 2)),
                             atol=1e-5)  # frame 0: 4 copies of it in the patch
  np.testing.assert_allclose(post.mean[:, 2, 3, 0, :3],
                             8 * v[:, 5:9, 12:16, 0:4].mean((1, 2, 3)), atol=1e-5)
  basis = vae_blocks.dct_patch_basis(4, 4, 3, 12)
  patches = np.asarray(vae_blocks.to_depth(video, 4, 4))
  np.testing.assert_allclose(post.mean, patches @ basis.T, atol=1e-5)
  assert float(jnp.max(post.logvar)) == vae_blocks.FIXED_LOGVAR
  chunked = vae.encode_chunked(params, video, cfg, chunk_latent_frames=1)
  np.testing.assert_allclose(chunked.mean, post.mean, atol=1e-5)
  # The untrained decoder starts at the DCT's inverse: a patch's mean colour comes back.
  thumb = vae.get_vae_config('tiny', base_channels=8, norm_groups=4, latent_channels=3,
                             encoder='dct')
  tparams = vae.init_params(thumb, _key(0))
  recon = vae.decode(tparams, vae.encode(tparams, video, thumb).mean, thumb)
  np.testing.assert_allclose(np.asarray(recon)[:, 5:9, 12:16, 0:4].mean((1, 2, 3)),
                             v[:, 5:9, 12:16, 0:4].mean((1, 2, 3)), atol=1e-5)
  with pytest.raises(ValueError, match="encoder='dct' needs patch_size == spatial_factor"):
    vae.get_vae_config('tiny_s8', encoder='dct')
  with pytest.raises(ValueError, match='latent_channels <= 192 \\(got 200\\)'):
    vae.get_vae_config('tiny', latent_channels=200, encoder='dct')
  with pytest.raises(ValueError, match="encoder='pca'; expected one of"):
    vae.get_vae_config('tiny', encoder='pca')


# ----------------------------------------------------------------------------- spatial tiling


@pytest.mark.parametrize('scale, tile, overlap', [(1, 6, 2), (0.25, 16, 8), (4, 4, 2)])
def test_tiled_blend_exact_for_pointwise_fn(scale, tile, overlap):
  """Weights, offsets and normalisation are exact when the tiled function is local."""
  x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 2, 16, 24, 3)), jnp.float32)
  if scale >= 1:
    fn = lambda t: jnp.repeat(jnp.repeat(jnp.tanh(t), scale, 2), scale, 3)
  else:
    k = int(1 / scale)
    fn = lambda t: jnp.tanh(t[:, :, ::k, ::k])
  np.testing.assert_allclose(vae.tiled_apply(fn, x, tile, overlap, scale), fn(x), atol=1e-6)


def test_tiled_single_tile_equals_full(params, cfg, clip):
  post = vae.encode_tiled(params, clip, cfg, tile=16, overlap=8)
  np.testing.assert_allclose(post.mean, vae.encode(params, clip, cfg).mean, atol=1e-5)


def test_tiled_seam_error():
  """Tiled inference is approximate; its error is measured and bounded here.

  On the 'conv3d' layout: the patch layouts start as their (exactly tileable) per-position
  linear shortcuts, since their deep branches are zero-initialised.

  Why not exact: per-frame GroupNorm and attention see a tile instead of the frame, and every
  conv sees zero padding at a tile edge where the full frame has content. With a receptive
  field about as wide as these test tiles, that error is large on a random-init net and falls
  as tiles grow (measured: 32-px tiles rel. RMS 0.20 encode / 0.35 decode, 48-px 0.11 / 0.19).

  Bound and why: a seam is an obvious artefact when the error is comparable to misplacing the
  content by one (latent) pixel, so the blended 48-px tiling must stay below 1/3 of that
  one-pixel-shift error (measured ratio 0.12 encode, 0.16 decode). Blending must also beat a
  hard cut (overlap 0) and larger tiles must do better: a bug in weights or offsets breaks both.
  """
  cfg = _test_config('conv3d')
  params = vae.init_params(cfg, _key(0))
  video = smooth_video(1, 5, 64, 64, seed=5)
  full = vae.encode(params, video, cfg).mean
  decoded = vae.decode(params, full, cfg)
  rel = lambda a, b: float(jnp.sqrt(jnp.mean(jnp.square(a - b)) / jnp.mean(jnp.square(b))))
  shift_err = {'enc': rel(jnp.roll(full, 1, axis=3), full),
               'dec': rel(jnp.roll(decoded, S, axis=3), decoded)}
  errs = {}
  for tile, overlap in [(32, 0), (32, 16), (48, 16)]:
    errs['enc', tile, overlap] = rel(
        vae.encode_tiled(params, video, cfg, tile=tile, overlap=overlap).mean, full)
    errs['dec', tile, overlap] = rel(
        vae.decode_tiled(params, full, cfg, tile=tile, overlap=overlap), decoded)
  print('tiled rel. RMS errors', errs, 'one-pixel-shift errors', shift_err)
  for part in ('enc', 'dec'):
    assert errs[part, 32, 0] > errs[part, 32, 16] > errs[part, 48, 16], errs
    assert errs[part, 48, 16] < shift_err[part] / 3, (errs, shift_err)


def test_tiled_and_chunked_compose(params, cfg):
  """Tiles (16 px, reusing shapes compiled above) each streamed over time == tiles in one pass."""
  video = smooth_video(1, 9, 24, 24, seed=6)
  tiled = vae.encode_tiled(params, video, cfg, tile=16, overlap=8)
  both = vae.encode_tiled(params, video, cfg, tile=16, overlap=8, chunk_latent_frames=1)
  np.testing.assert_allclose(both.mean, tiled.mean, atol=1e-5)
  dec = vae.decode_tiled(params, tiled.mean, cfg, tile=16, overlap=8)
  dec_both = vae.decode_tiled(params, tiled.mean, cfg, tile=16, overlap=8, chunk_latent_frames=1)
  assert dec.shape == video.shape
  np.testing.assert_allclose(dec_both, dec, atol=1e-5)


# ----------------------------------------------------------------------------- validation


def test_preprocess_postprocess_roundtrip():
  frames = np.random.default_rng(7).integers(0, 256, (1, 5, 8, 8, 3), dtype=np.uint8)
  x = vae.preprocess(frames)
  assert x.dtype == jnp.float32 and float(x.min()) >= -1 and float(x.max()) <= 1
  np.testing.assert_array_equal(vae.postprocess(x), frames)


def _bad_cases(cfg, params, clip):
  other = vae.param_shapes(dataclasses.replace(cfg, latent_channels=8))
  return {
      'preprocess float': (lambda: vae.preprocess(clip), r'dtype float32; expected uint8'),
      'postprocess uint8': (lambda: vae.postprocess(np.zeros((1, 1, 4, 4, 3), np.uint8)),
                            r'dtype uint8'),
      'uint8 video': (lambda: vae.encode(params, np.zeros((1, 5, 16, 16, 3), np.uint8), cfg),
                      r'dtype uint8; expected a float video.*preprocess'),
      'out of range': (lambda: vae.encode(params, clip * 2.0, cfg),
                       r'span \[-1\.8.*expected floats in \[-1, 1\]'),
      'bad T': (lambda: vae.encode(params, clip[:, :6], cfg), r'T=6 .*T = 1 \+ 4\*m.* 5 or 9'),
      'bad H': (lambda: vae.encode(params, jnp.zeros((1, 5, 18, 16, 3)), cfg),
                r'18 x 16.*divisible by 4'),
      'bad rank': (lambda: vae.encode(params, clip[0], cfg), r'expected \[B, T, H, W, 3\]'),
      'other variant params': (lambda: vae.encode(other, clip, cfg),
                               r'params do not match .*C=4.*shape \(3, 3, 8, 8\), '
                               r'expected \(3, 3, 4, 8\)'),
      'variables dict': (lambda: vae.decode({'params': params}, jnp.zeros((1, 1, 4, 4, C)), cfg),
                         r'"params" entry'),
      'bad latent C': (lambda: vae.decode(params, jnp.zeros((1, 2, 4, 4, 3)), cfg),
                       r"shape \(1, 2, 4, 4, 3\); expected \[B, T', h, w, 4\]"),
      'bad tile': (lambda: vae.encode_tiled(params, clip, cfg, tile=10, overlap=4),
                   r'tile=10, overlap=4.*multiples of s=4'),
  }


@pytest.mark.parametrize('case', ['preprocess float', 'postprocess uint8', 'uint8 video',
                                  'out of range', 'bad T', 'bad H', 'bad rank',
                                  'other variant params', 'variables dict', 'bad latent C',
                                  'bad tile'])
def test_bad_inputs_raise(case, cfg, params, clip):
  fn, pattern = _bad_cases(cfg, params, clip)[case]
  with pytest.raises(ValueError, match=pattern):
    fn()


def test_small_range_overshoot_is_accepted(params, cfg, clip):
  x = clip / 0.9 * (1 + cfg.range_tolerance / 2)
  assert vae.encode(params, x, cfg).mean.shape == (1, 3, 4, 4, C)


# ----------------------------------------------------------------------------- losses, training


@pytest.fixture(scope='module')
def disc():
  config = disc_lib.DiscriminatorConfig(base_channels=8, num_layers=2, norm_groups=4)
  return config, disc_lib.init_discriminator(config, _key(1))


def _finite_nonzero(tree):
  leaves = jax.tree.leaves(tree)
  return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves) and any(
      float(jnp.abs(x).max()) > 0 for x in leaves)


@pytest.mark.slow  # compile-heavy (discriminator + VAE grads): `make test-all`
def test_gan_losses_give_finite_grads(params, cfg, disc):
  disc_config, disc_params = disc
  loss_config = vae_losses.LossConfig(gan_weight=0.5, edge_weight=0.1, kl_weight=1e-6)
  video = smooth_video(2, 5, 16, 16, seed=8)
  gen = jax.jit(jax.value_and_grad(vae_losses.generator_loss, argnums=(0, 1), has_aux=True),
                static_argnames=('vae_config', 'loss_config', 'disc_config'))
  (loss, aux), (g_vae, g_disc) = gen(params, disc_params, video, _key(2), 10, vae_config=cfg,
                                     loss_config=loss_config, disc_config=disc_config)
  assert np.isfinite(float(loss)) and set(aux['metrics']) >= {'recon', 'kl', 'edge', 'gan_g'}
  assert _finite_nonzero(g_vae) and _finite_nonzero(g_disc)  # disc grads via D(G(x))
  d_loss, d_grads = jax.value_and_grad(vae_losses.discriminator_loss, has_aux=True)(
      disc_params, video, aux['recon'], 10, disc_config=disc_config, loss_config=loss_config)
  assert np.isfinite(float(d_loss[0])) and _finite_nonzero(d_grads)
  warmup = dataclasses.replace(loss_config, disc_start_step=20)
  off, _ = vae_losses.discriminator_loss(disc_params, video, aux['recon'], 0,
                                         disc_config=disc_config, loss_config=warmup)
  assert float(off) == 0.0


def test_edge_and_recon_losses():
  a = smooth_video(1, 1, 8, 8)
  assert float(vae_losses.edge_loss(a, a)) == 0.0
  assert float(vae_losses.edge_loss(a, a + 0.3)) == pytest.approx(0.0, abs=1e-6)  # shift-free
  assert float(vae_losses.edge_loss(a, jnp.zeros_like(a))) > 0.1
  assert float(vae_losses.reconstruction_loss(a, a + 0.5, 'l2')) == pytest.approx(0.25)
  with pytest.raises(ValueError, match="recon='l3'"):
    vae_losses.LossConfig(recon='l3')


def _loss_off_on(params, cfg, video, rng, **weights):
  """generator_loss (loss, aux) without and with the given extra loss weights."""
  off = vae_losses.LossConfig(edge_weight=0.1)
  return [vae_losses.generator_loss(params, None, video, rng, 0, vae_config=cfg,
                                    loss_config=c)
          for c in (off, dataclasses.replace(off, **weights))]


def test_scale_equivariance_term(params, cfg):
  """The term is L1 between decode(2x-pooled z) and the 2x-pooled clip, added with its weight."""
  x = jnp.arange(2 * 4 * 4, dtype=jnp.float32).reshape(1, 2, 4, 4, 1)
  np.testing.assert_array_equal(vae_losses.pool_space(x)[0, 1, :, :, 0],
                                [[18.5, 20.5], [26.5, 28.5]])
  video, rng = smooth_video(1, 5, 16, 16, seed=13), _key(5)
  (loss_off, aux_off), (loss_on, aux_on) = _loss_off_on(params, cfg, video, rng,
                                                        scale_eq_weight=0.5)
  assert 'scale_eq' not in aux_off['metrics']
  z = vae.encode(params, video, cfg).sample(rng)
  small = vae.decode(params, vae_losses.pool_space(z), cfg)
  assert small.shape == (1, 5, 8, 8, 3)
  expected = float(jnp.mean(jnp.abs(small - vae_losses.pool_space(video))))
  assert float(aux_on['metrics']['scale_eq']) == pytest.approx(expected, rel=1e-5)
  assert float(loss_on) == pytest.approx(float(loss_off) + 0.5 * expected, rel=1e-5)


def test_latent_roughness_term(params, cfg):
  """Roughness is scale-free, 0 for constant/linear-in-blur fields, high for spikes, and is
  added to the loss with its weight, on the posterior mean."""
  rng = np.random.default_rng(0)
  noise = rng.standard_normal((2, 3, 16, 16, 4)).astype(np.float32)
  yy, xx = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing='ij')
  blob = np.exp(-(yy ** 2 + xx ** 2) / 0.5).astype(np.float32)[None, None, :, :, None]
  spike = np.zeros((1, 1, 16, 16, 1), np.float32)
  spike[0, 0, 7, 9, 0] = 1.0
  rough = lambda z: float(vae_losses.latent_roughness(jnp.asarray(z)))
  # A 3x3 binomial blur passes little of a wide Gaussian blob, most of a one-position spike.
  assert rough(blob) < 0.01
  assert rough(spike) > 0.5
  assert 0.5 < rough(noise) < 0.7
  assert rough(37.0 * noise) == pytest.approx(rough(noise), rel=1e-4)  # scale-free
  video, key = smooth_video(1, 5, 16, 16, seed=13), _key(5)
  (loss_off, aux_off), (loss_on, aux_on) = _loss_off_on(params, cfg, video, key,
                                                        smooth_weight=0.3)
  assert 'roughness' not in aux_off['metrics']
  expected = rough(vae.encode(params, video, cfg).mean)
  assert float(aux_on['metrics']['roughness']) == pytest.approx(expected, rel=1e-5)
  assert float(loss_on) == pytest.approx(float(loss_off) + 0.3 * expected, rel=1e-5)


def test_perceptual_hook(tmp_path):
  with pytest.raises(ValueError, match='perceptual_path'):
    vae_losses.LossConfig(perceptual_weight=1.0)
  with pytest.raises(FileNotFoundError, match='VGG-style'):
    vae_losses.load_perceptual_network(str(tmp_path / 'missing.npz'))
  rng = np.random.default_rng(9)
  path = tmp_path / 'features.npz'
  np.savez(path, kernel_0=rng.normal(size=(3, 3, 3, 4)), bias_0=np.zeros(4),
           kernel_1=rng.normal(size=(3, 3, 4, 4)), bias_1=np.zeros(4), taps=np.array([0, 1]))
  fn = vae_losses.load_perceptual_network(str(path))
  np.savez(tmp_path / 'bad.npz', kernel_0=np.zeros((3, 3, 3, 4)))
  with pytest.raises(ValueError, match=r"lacks \['taps', 'bias_0'\]"):
    vae_losses.load_perceptual_network(str(tmp_path / 'bad.npz'))
  a, b = smooth_video(1, 2, 8, 8, seed=10), smooth_video(1, 2, 8, 8, seed=11)
  assert float(vae_losses.perceptual_loss(fn, a, a)) == 0.0
  value, grad = jax.value_and_grad(lambda r: vae_losses.perceptual_loss(fn, a, r))(b)
  assert float(value) > 0 and _finite_nonzero(grad)


def test_overfit_two_clips(cfg):
  """40 Adam steps on 2 tiny clips must cut the L1 reconstruction loss by more than half.

  Threshold: a working encoder/decoder pair fits 2 smooth clips quickly (measured: 0.75 ->
  0.16 here); a broken gradient path (e.g. decoder cut off from the encoder) plateaus near the
  initial loss, well above half of it.
  """
  params = vae.init_params(cfg, _key(3))
  video = smooth_video(2, 5, 16, 16, seed=12)
  loss_config = vae_losses.LossConfig(edge_weight=0.1, kl_weight=1e-6)
  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, i):
    grad_fn = jax.grad(vae_losses.generator_loss, has_aux=True)
    grads, aux = grad_fn(params, None, video, jax.random.fold_in(_key(4), i), i, vae_config=cfg,
                         loss_config=loss_config)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, aux['metrics']['recon']

  opt_state, losses = opt.init(params), []
  for i in range(40):
    params, opt_state, loss = step(params, opt_state, i)
    losses.append(float(loss))
  print('recon L1 first/last', losses[0], losses[-1])
  assert losses[-1] < 0.5 * losses[0], losses
