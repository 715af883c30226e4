"""Parity of the Flax Wan2.1 VAE (`models/wan_vae.py`) with diffusers' AutoencoderKLWan.

A tiny random AutoencoderKLWan (3 spatial and 2 temporal downsamplings, like Wan2.1) is saved
with `save_pretrained` and loaded through `interop.wan_vae.load`; encode and decode, whole and
chunked, must match torch in float32 to max |err| <= 1e-4 * max(1, max |ref|) (levanter's
composite-module tolerance; never loosened to pass).
"""
import json
import re

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from sora_jax.interop import safetensors_io as st
from sora_jax.interop import wan_vae as interop
from sora_jax.models import wan_vae

RTOL = 1e-4  # max |err| <= RTOL * max(1, max |ref|)
TINY = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
            temperal_downsample=[False, True, True])


def _assert_close(got, ref, what):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, (what, got.shape, ref.shape)
  err, bound = np.max(np.abs(got - ref)), RTOL * max(1.0, np.max(np.abs(ref)))
  print(f'{what}: max |err| {err:.2e} (bound {bound:.1e}, max |ref| {np.max(np.abs(ref)):.2f})')
  assert err <= bound, f'{what}: max |err| {err:.3g} > {bound:.3g}'


def _to_torch(x):  # [B, T, H, W, C] -> [B, C, T, H, W]
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def _from_torch(x):  # [B, C, T, H, W] -> [B, T, H, W, C]
  return np.moveaxis(x.detach().numpy(), 1, -1)


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  """(torch model, folder, config, params) for a tiny random Wan VAE."""
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  model = AutoencoderKLWan(**TINY, latents_mean=rng.normal(size=4).tolist(),
                           latents_std=rng.uniform(0.5, 2.0, size=4).tolist()).eval()
  with torch.no_grad():  # move every param off its init so a wrong map cannot pass
    for name, p in model.named_parameters():
      if name.endswith('gamma'):
        p.copy_(1 + 0.5 * torch.randn_like(p))
      elif name.endswith('bias'):
        p.copy_(0.2 * torch.randn_like(p))
  folder = tmp_path_factory.mktemp('wan_vae')
  model.save_pretrained(folder, safe_serialization=True)
  config, params = interop.load(folder)
  return model, folder, config, params


@pytest.mark.parametrize('frames', [1, 9])
def test_encode_matches_diffusers(models, frames):
  model, _, config, params = models
  video = np.random.default_rng(frames).uniform(-1, 1, (1, frames, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    dist = model.encode(_to_torch(video)).latent_dist
  mean, logvar = _from_torch(dist.mean), _from_torch(dist.logvar)
  for how, fn in [('whole', wan_vae.encode), ('chunked', wan_vae.encode_chunked),
                  ('chunked m=2', lambda *a: wan_vae.encode_chunked(*a, chunk_latent_frames=2))]:
    posterior = fn(params, video, config)
    _assert_close(posterior.mean, mean, f'encode T={frames} {how} mean')
    _assert_close(posterior.logvar, logvar, f'encode T={frames} {how} logvar')


@pytest.mark.parametrize('latent_frames', [1, 3])
def test_decode_matches_diffusers(models, latent_frames):
  model, _, config, params = models
  z = np.random.default_rng(latent_frames).normal(size=(1, latent_frames, 4, 4, 4))
  z = z.astype(np.float32)
  with torch.no_grad():
    ref = _from_torch(model.decode(_to_torch(z)).sample)
  assert 0.05 < np.mean(np.abs(ref) < 1), 'reference mostly clamped: a weak test'
  for how, fn in [('whole', wan_vae.decode), ('chunked', wan_vae.decode_chunked),
                  ('chunked m=2', lambda *a: wan_vae.decode_chunked(*a, chunk_latent_frames=2))]:
    _assert_close(fn(params, z, config), ref, f'decode T\'={latent_frames} {how}')


def test_config_and_stats(models):
  model, _, config, _ = models
  assert (config.temporal_factor, config.spatial_factor, config.latent_channels) == (4, 8, 4)
  mean, std = wan_vae.latent_stats(config)
  np.testing.assert_allclose(mean, model.config.latents_mean, rtol=1e-6)
  np.testing.assert_allclose(std, model.config.latents_std, rtol=1e-6)
  hash(config)  # a static jit argument
  with pytest.raises(st.ConversionError, match='is_residual=True'):
    interop.config_from_diffusers({**model.config, 'is_residual': True})
  with pytest.raises(ValueError, match='attn_scales'):
    wan_vae.WanVAEConfig(attn_scales=(0.5,))


def test_converter_names_bad_tensors(models):
  _, folder, config, _ = models
  tensors = st.read_tensors(folder, dtype='float32')
  name = 'decoder.up_blocks.0.upsamplers.0.time_conv.weight'
  bad = {**tensors, name: tensors[name][:, :, :2]}
  with pytest.raises(st.ConversionError, match=re.escape(name)):
    interop.convert(bad, config)
  name = 'encoder.mid_block.attentions.0.norm.gamma'
  missing = {k: v for k, v in tensors.items() if k != name}
  with pytest.raises(st.ConversionError, match=re.escape(name) + '.*missing'):
    interop.convert(missing, config)
  with pytest.raises(st.ConversionError, match='unused_extra'):
    interop.convert({**tensors, 'unused_extra': np.zeros(1)}, config)
  assert json.loads((folder / 'config.json').read_text())['_class_name'] == 'AutoencoderKLWan'
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves(
      interop.convert(tensors, config, dtype='bfloat16'))}
  assert dtypes == {np.dtype(jax.numpy.bfloat16)}, dtypes
