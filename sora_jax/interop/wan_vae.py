"""diffusers `AutoencoderKLWan` (Wan2.1 VAE) checkpoints -> `sora_jax.models.wan_vae` params.

A diffusers VAE folder holds `config.json` and `diffusion_pytorch_model*.safetensors`. The
Flax modules carry diffusers' names (`down_blocks_3` for `down_blocks.3`), so the key map
is mechanical; only layouts change: Conv3d [O, I, kt, kh, kw] -> [kt, kh, kw, I, O], Conv2d
[O, I, kh, kw] -> [kh, kw, I, O], 1x1 Conv2d -> Dense [I, O], RMS_norm gamma [C, 1, ...] -> [C].

Typical use:
  config, params = load('Wan2.1-T2V-1.3B-Diffusers/vae')
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
from etils import epath

from sora_jax.interop import safetensors_io as st
from sora_jax.models import wan_vae

# diffusers config key -> WanVAEConfig field, for the keys that carry over.
_FIELDS = ('base_dim', 'z_dim', 'dim_mult', 'num_res_blocks', 'attn_scales',
           'temperal_downsample', 'dropout', 'latents_mean', 'latents_std')
# Keys whose only supported value is the Wan2.1 one (None: any value that is checked below).
_FIXED = {'is_residual': False, 'in_channels': 3, 'out_channels': 3, 'patch_size': None,
          'decoder_base_dim': None, 'attn_scales': []}
_DERIVED = {'scale_factor_temporal': 'temporal_factor', 'scale_factor_spatial': 'spatial_factor'}
_LISTS = ('down_blocks', 'up_blocks', 'resnets', 'attentions', 'upsamplers')


def config_from_diffusers(cfg: dict[str, Any], dtype: str = 'float32',
                          source: str = 'config.json') -> wan_vae.WanVAEConfig:
  """A `WanVAEConfig` from a diffusers `vae/config.json` dict.

  Raises:
    ConversionError: a config of another class, an unknown key, or a value this port does
      not support (e.g. Wan2.2's `is_residual=True`), naming the key and value.
  """
  cls = cfg.get('_class_name', 'AutoencoderKLWan')
  if cls != 'AutoencoderKLWan':
    raise st.ConversionError(f'{source}: _class_name={cls!r}; expected AutoencoderKLWan.')
  unknown = sorted(k for k in cfg if not k.startswith('_')
                   and k not in set(_FIELDS) | set(_FIXED) | set(_DERIVED))
  if unknown:
    raise st.ConversionError(f'{source}: unknown key(s) {unknown} (={cfg[unknown[0]]!r}); '
                             'this Wan2.1 VAE port does not know what they change.')
  for key, want in _FIXED.items():
    got = cfg.get(key, want)
    if key == 'decoder_base_dim' and got == cfg.get('base_dim'):
      continue  # an explicit decoder_base_dim equal to base_dim is the same model
    if got != want:
      raise st.ConversionError(f'{source}: {key}={got!r} is not supported (only {want!r}, the '
                               'Wan2.1 layout; Wan2.2\'s VAE is another architecture).')
  kwargs = {k: cfg[k] for k in _FIELDS if k in cfg}
  try:
    config = wan_vae.WanVAEConfig(dtype=dtype, **kwargs)
  except (TypeError, ValueError) as e:
    raise st.ConversionError(f'{source}: {e}') from None
  for key, prop in _DERIVED.items():
    if cfg.get(key) is not None and cfg[key] != getattr(config, prop):
      raise st.ConversionError(f'{source}: {key}={cfg[key]!r} but dim_mult/temperal_downsample '
                               f'give {getattr(config, prop)}.')
  return config


def _torch_name(path: str) -> str:
  """'encoder/down_blocks_0/conv1/kernel' -> 'encoder.down_blocks.0.conv1.weight'."""
  out = []
  for seg in path.split('/'):
    m = re.fullmatch(rf'({"|".join(_LISTS)})_(\d+)', seg)
    if m:
      out.append(f'{m[1]}.{m[2]}')
    elif seg == 'resample':
      out.append('resample.1')  # nn.Sequential(Upsample or ZeroPad2d, Conv2d)
    else:
      out.append({'kernel': 'weight'}.get(seg, seg))
  return '.'.join(out)


def _transform(leaf: str, ndim: int):
  """torch layout -> Flax layout for a param of `ndim` dims; a tensor of the wrong rank is
  passed through unchanged so that `Placer` reports its shape by name."""
  if leaf == 'gamma':  # [C, 1, 1(, 1)] -> [C]
    return lambda x: x.reshape(x.shape[0]) if x.ndim and x.size == x.shape[0] else x
  if leaf != 'kernel':
    return None
  if ndim == 2:  # 1x1 Conv2d [O, I, 1, 1] -> Dense [I, O]
    return lambda x: st.linear(x.reshape(x.shape[:2])) if x.ndim == 4 and x.shape[2:] == (
        1, 1) else x
  perm = {5: (2, 3, 4, 1, 0), 4: (2, 3, 1, 0)}[ndim]  # [O, I, *k] -> [*k, I, O]
  return lambda x: np.ascontiguousarray(x.transpose(perm)) if x.ndim == ndim else x


def convert(tensors: dict[str, np.ndarray], config: wan_vae.WanVAEConfig,
            dtype: str | None = None, source: str = 'diffusion_pytorch_model.safetensors') -> Any:
  """Params for `config` from a diffusers AutoencoderKLWan state dict.

  Args:
    tensors: torch name -> numpy array (`safetensors_io.read_tensors`).
    config: the model's config (`config_from_diffusers`).
    dtype: params dtype name; None keeps float32.
    source: how error messages name the checkpoint.

  Raises:
    ConversionError: a missing, misshapen or unused tensor, named.
  """
  abstract = wan_vae.param_shapes(config)
  placer = st.Placer(tensors, abstract, source=source, dtype=dtype)
  for path, (shape, _) in st.param_shapes(abstract).items():
    placer.put(path, _torch_name(path), transform=_transform(path.rsplit('/', 1)[-1],
                                                             len(shape)))
  return placer.finish()


def load(path: str | epath.PathLike, dtype: str | None = None
         ) -> tuple[wan_vae.WanVAEConfig, Any]:
  """(config, params) from a diffusers VAE folder (config.json + *.safetensors).

  Args:
    path: the folder (e.g. `<model>/vae` of a diffusers Wan2.1 pipeline).
    dtype: params and compute dtype name ('float32', 'bfloat16'); None means float32.
  """
  folder = epath.Path(path)
  config = config_from_diffusers(st.read_json(folder / 'config.json'),
                                 dtype=dtype or 'float32', source=str(folder / 'config.json'))
  tensors = st.read_tensors(folder, dtype='float32')
  return config, convert(tensors, config, dtype=dtype, source=str(folder))
