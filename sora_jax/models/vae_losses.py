"""Losses for training the causal video VAE (pure functions).

  * Reconstruction (L1 or L2) and KL to N(0, I), as in the LDM autoencoder (Rombach et al.,
    2022, arXiv:2112.10752). Convention: the KL summed over latent elements is divided by the
    number of pixel values, the same normalisation as the per-pixel reconstruction mean, so
    `kl_weight = 1e-6` reproduces LDM's ratio of summed losses.
  * Edge term: L1 between spatial image gradients (finite differences) of the clip and its
    reconstruction, after the gradient difference loss of Mathieu et al., 2016 ("Deep
    multi-scale video prediction beyond mean square error", arXiv:1511.05440); it keeps the
    sharp outlines that plain L1/L2 blurs away.
  * Scale equivariance (Skorokhodov et al., 2025, "Improving the Diffusability of
    Autoencoders", arXiv:2502.14831): latents average-pooled 2x in space must decode to the
    clip average-pooled 2x, which the paper finds takes high frequencies out of the latent
    spectrum. On Shapes World's tiny VAE the decoder meets it and the latents barely move
    (`benchmarks/results/vae_quality.json`); off by default.
  * Hinge GAN losses (Lim & Ye, 2017, "Geometric GAN", arXiv:1705.02894) with the 3D patch
    discriminator of `discriminator.py`, as in VQGAN (Esser et al., 2021, arXiv:2012.09841)
    and MAGVIT-v2 (arXiv:2310.05737); switched on at `disc_start_step`.
  * Perceptual hook: an LPIPS-style feature distance (Zhang et al., 2018, arXiv:1801.03924)
    through a frozen VGG-style feature network (Simonyan & Zisserman, 2015, arXiv:1409.1556)
    loaded from a local `.npz`. Off by default; no pretrained network ships with sora_jax.
"""
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models import discriminator as disc_lib
from sora_jax.models import vae as vae_lib

FeatureFn = Callable[[jax.Array], Any]  # frames [N, H, W, 3] -> feature map(s) [N, h, w, c]


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss weights. Attributes:
    recon: 'l1' or 'l2'.
    kl_weight: weight of the KL (see the module docstring for its normalisation).
    edge_weight: weight of the spatial-gradient L1 term (0 disables it).
    scale_eq_weight: weight of the scale-equivariance term (0 disables it).
    smooth_weight: weight of the latent smoothness term (`latent_roughness`; 0 disables it).
    gan_weight: weight of the hinge generator loss (0 disables the GAN).
    disc_start_step: step from which the GAN terms count (both losses are 0 before).
    perceptual_weight: weight of the perceptual term (0 disables it).
    perceptual_path: `.npz` of the frozen feature network (`load_perceptual_network`).
  """
  recon: str = 'l1'
  kl_weight: float = 1e-6
  edge_weight: float = 0.1
  scale_eq_weight: float = 0.0
  smooth_weight: float = 0.0
  gan_weight: float = 0.0
  disc_start_step: int = 0
  perceptual_weight: float = 0.0
  perceptual_path: str | None = None

  def __post_init__(self):
    if self.recon not in ('l1', 'l2'):
      raise ValueError(f"LossConfig.recon={self.recon!r}; expected 'l1' or 'l2'.")
    if self.perceptual_weight and not self.perceptual_path:
      raise ValueError(f'LossConfig.perceptual_weight={self.perceptual_weight} needs '
                       'perceptual_path (a .npz of a feature network).')


def reconstruction_loss(video: jax.Array, recon: jax.Array, kind: str = 'l1') -> jax.Array:
  """Mean |x - y| ('l1') or (x - y)^2 ('l2'). video, recon: [B, T, H, W, 3]."""
  diff = recon.astype(jnp.float32) - video.astype(jnp.float32)
  return jnp.mean(jnp.abs(diff) if kind == 'l1' else jnp.square(diff))


def kl_loss(posterior: vae_lib.Posterior, video: jax.Array) -> jax.Array:
  """Batch-mean KL summed over latent elements, divided by pixel values per clip."""
  return jnp.mean(posterior.kl()) / (video[0].size)


def _spatial_gradients(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x: [B, T, H, W, C] -> (d/dh [B, T, H-1, W, C], d/dw [B, T, H, W-1, C])."""
  return x[:, :, 1:] - x[:, :, :-1], x[:, :, :, 1:] - x[:, :, :, :-1]


def edge_loss(video: jax.Array, recon: jax.Array) -> jax.Array:
  """L1 between spatial image gradients. video, recon: [B, T, H, W, 3]."""
  (vh, vw), (rh, rw) = _spatial_gradients(video), _spatial_gradients(recon)
  return jnp.mean(jnp.abs(vh - rh)) + jnp.mean(jnp.abs(vw - rw))


def pool_space(x: jax.Array, factor: int = 2) -> jax.Array:
  """Average pooling over (H, W) of [B, T, H, W, C] by `factor` (H, W multiples of it)."""
  b, t, h, w, c = x.shape
  return x.reshape(b, t, h // factor, factor, w // factor, factor, c).mean(axis=(3, 5))


def scale_equivariance_loss(vae_params: Any, z: jax.Array, video: jax.Array,
                            vae_config: vae_lib.VAEConfig, kind: str = 'l1') -> jax.Array:
  """Reconstruction loss of 2x-pooled latents z [B, T', h, w, C] against the 2x-pooled clip."""
  small = vae_lib.decode(vae_params, pool_space(z), vae_config)
  return reconstruction_loss(pool_space(video), small, kind)


def blur_space(x: jax.Array) -> jax.Array:
  """Separable [1, 2, 1] / 4 blur over (H, W) of [B, T, H, W, C], edges replicated."""
  for axis in (2, 3):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    xp = jnp.pad(x, pad, mode='edge')
    n = x.shape[axis]
    take = lambda start: jax.lax.slice_in_dim(xp, start, start + n, axis=axis)
    x = 0.25 * take(0) + 0.5 * take(1) + 0.25 * take(2)
  return x


def latent_roughness(z: jax.Array) -> jax.Array:
  """Share of each latent channel's spatial variance above the blur's pass band, averaged.

  For z [B, T', h, w, C]: per (clip, frame, channel), |z - blur(z)|^2 / |z - mean_hw(z)|^2,
  then the mean. 0 for a spatially smooth latent, ~0.6 for white noise; the ratio is
  scale-free, so the encoder cannot lower it by shrinking the latent. A sparse latent
  (an object written as spikes at a few positions) is rough; diffusion decides fine
  spatial detail last, at low noise, where each token acts alone (fragments), so a smooth
  latent lets the object's place, size and colour be decided early and globally.
  """
  high = jnp.sum(jnp.square(z - blur_space(z)), axis=(2, 3))
  var = jnp.sum(jnp.square(z - jnp.mean(z, axis=(2, 3), keepdims=True)), axis=(2, 3))
  return jnp.mean(high / (var + 1e-6))


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """mean relu(1 - D(x)) + mean relu(1 + D(G(x)))."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """-mean D(G(x))."""
  return -jnp.mean(fake_logits)


def load_perceptual_network(path: str | None) -> FeatureFn:
  """Loads a frozen VGG-style feature network (the LPIPS backbone) from a `.npz`.

  `path` may be local or a gs:// URL.

  File format: `kernel_i` [3, 3, Cin, Cout] (HWIO) and `bias_i` [Cout] for i = 0..n-1 (conv +
  ReLU), `taps` (int array): layers whose output is a feature map and is followed by a 2x2
  max-pool, and optionally `mean`, `std` [3] (input normalisation after mapping [-1, 1] to
  [0, 1]). VGG16 has n = 13 and taps = [1, 3, 6, 9, 12]. Load once, outside jit.

  Raises:
    FileNotFoundError: `path` is empty or missing (no network ships with sora_jax offline).
    ValueError: the file lacks the keys above.
  """
  if not path or not epath.Path(path).is_file():
    raise FileNotFoundError(
        f'Perceptual network not found at {path!r}: expected a .npz of a frozen '
        'VGG-style feature network (kernel_i, bias_i, taps; see load_perceptual_network). '
        'None ships with sora_jax; set perceptual_weight=0 to train without it.')
  with epath.Path(path).open('rb') as fh, np.load(fh) as f:
    weights = {k: jnp.asarray(f[k]) for k in f.files}
  n = sum(k.startswith('kernel_') for k in weights)
  missing = [k for k in ['taps'] + [f'{p}_{i}' for i in range(n) for p in ('kernel', 'bias')]
             if k not in weights]
  if not n or missing:
    raise ValueError(f'{path}: perceptual network file lacks {missing or ["kernel_0"]}; '
                     f'has {sorted(weights)}.')
  return functools.partial(_vgg_features, weights, n)


def _vgg_features(weights: dict[str, jax.Array], n: int, frames: jax.Array) -> list[jax.Array]:
  """frames: [N, H, W, 3] in [-1, 1] -> feature maps at the taps, [N, h_k, w_k, c_k] each."""
  weights = jax.lax.stop_gradient(weights)
  x = (frames + 1.0) / 2.0
  if 'mean' in weights:
    x = (x - weights['mean']) / weights['std']
  taps, features = set(np.asarray(weights['taps']).tolist()), []
  for i in range(n):
    x = jax.lax.conv_general_dilated(x, weights[f'kernel_{i}'], (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    x = jax.nn.relu(x + weights[f'bias_{i}'])
    if i in taps:
      features.append(x)
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
  return features


def perceptual_loss(features_fn: FeatureFn, video: jax.Array, recon: jax.Array) -> jax.Array:
  """LPIPS-style distance: mean over layers of the squared difference of unit-normalised
  (over channels) features of every frame. video, recon: [B, T, H, W, 3]."""
  frames = lambda x: x.reshape((-1,) + x.shape[2:])
  fa, fb = features_fn(frames(video)), features_fn(frames(recon))
  fa, fb = (fa, fb) if isinstance(fa, Sequence) else ((fa,), (fb,))
  unit = lambda f: f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + 1e-10)
  return jnp.mean(jnp.stack([jnp.mean(jnp.square(unit(a) - unit(b))) for a, b in zip(fa, fb)]))


def generator_loss(vae_params: Any, disc_params: Any, video: jax.Array, rng: jax.Array,
                   step: jax.Array, *, vae_config: vae_lib.VAEConfig, loss_config: LossConfig,
                   disc_config: disc_lib.DiscriminatorConfig | None = None,
                   perceptual_fn: FeatureFn | None = None) -> tuple[jax.Array, dict[str, Any]]:
  """VAE training loss (differentiate w.r.t. `vae_params`).

  Args:
    vae_params: VAE params.
    disc_params: discriminator params (unused, may be None, when gan_weight == 0).
    video: [B, T, H, W, 3] float in [-1, 1].
    rng: key for the posterior sample.
    step: training step (int scalar) for the GAN warm-up.
    vae_config, loss_config, disc_config: configs (`disc_config` needed iff gan_weight > 0).
    perceptual_fn: `load_perceptual_network(loss_config.perceptual_path)`, iff used.

  Returns:
    (loss, aux): aux = {'recon': [B, T, H, W, 3], 'metrics': {name: scalar}}.
  """
  posterior = vae_lib.encode(vae_params, video, vae_config)
  z = posterior.sample(rng)
  recon = vae_lib.decode(vae_params, z, vae_config)
  metrics = {'recon': reconstruction_loss(video, recon, loss_config.recon),
             'kl': kl_loss(posterior, video),
             'edge': edge_loss(video, recon)}
  loss = (metrics['recon'] + loss_config.kl_weight * metrics['kl']
          + loss_config.edge_weight * metrics['edge'])
  if loss_config.scale_eq_weight:
    metrics['scale_eq'] = scale_equivariance_loss(vae_params, z, video, vae_config,
                                                  loss_config.recon)
    loss += loss_config.scale_eq_weight * metrics['scale_eq']
  if loss_config.smooth_weight:
    metrics['roughness'] = latent_roughness(posterior.mean)
    loss += loss_config.smooth_weight * metrics['roughness']
  if loss_config.perceptual_weight:
    if perceptual_fn is None:
      raise ValueError('generator_loss: perceptual_weight > 0 but perceptual_fn is None; pass '
                       'load_perceptual_network(loss_config.perceptual_path).')
    metrics['perceptual'] = perceptual_loss(perceptual_fn, video, recon)
    loss += loss_config.perceptual_weight * metrics['perceptual']
  if loss_config.gan_weight:
    if disc_config is None:
      raise ValueError('generator_loss: gan_weight > 0 needs disc_config.')
    gan_on = jnp.asarray(step >= loss_config.disc_start_step, jnp.float32)
    fake = disc_lib.discriminator_logits(disc_params, recon, disc_config)
    metrics['gan_g'] = hinge_generator_loss(fake)
    loss += loss_config.gan_weight * gan_on * metrics['gan_g']
  metrics['loss'] = loss
  return loss, {'recon': recon, 'metrics': metrics}


def discriminator_loss(disc_params: Any, video: jax.Array, recon: jax.Array, step: jax.Array, *,
                       disc_config: disc_lib.DiscriminatorConfig,
                       loss_config: LossConfig) -> tuple[jax.Array, dict[str, Any]]:
  """Hinge discriminator loss (differentiate w.r.t. `disc_params`); 0 before disc_start_step.

  Args:
    disc_params: discriminator params.
    video: real clips [B, T, H, W, 3].
    recon: reconstructions [B, T, H, W, 3] (gradients are stopped here).
    step: training step (int scalar).
    disc_config, loss_config: configs.

  Returns:
    (loss, metrics).
  """
  real = disc_lib.discriminator_logits(disc_params, video, disc_config)
  fake = disc_lib.discriminator_logits(disc_params, jax.lax.stop_gradient(recon), disc_config)
  gan_on = jnp.asarray(step >= loss_config.disc_start_step, jnp.float32)
  loss = gan_on * hinge_discriminator_loss(real, fake)
  return loss, {'gan_d': loss, 'logits_real': jnp.mean(real), 'logits_fake': jnp.mean(fake)}
