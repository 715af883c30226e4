"""Spacetime patches: a clip's latents cut into (pt, ph, pw) patches, one token each.

The Sora report's "spacetime patches": latents [T', h, w, C] become tokens [N, pt*ph*pw*C]
in (t, h, w) raster order with their integer patch positions [N, 3], which 3D RoPE reads
(`sora_jax/models/rope.py`). Pure array code (numpy or jax, traceable) shared by the
packing pipeline (`packing.py`) and the models, so neither imports the other.
"""
from __future__ import annotations

import numpy as np


def check_patch(latent_shape: tuple[int, ...], patch: tuple[int, int, int],
                where: str = "latents") -> None:
  """Raises a ValueError unless `patch` divides the (T', h, w) of `latent_shape`."""
  sizes = tuple(int(s) for s in latent_shape[:3])
  if len(latent_shape) != 4 or any(s % p for s, p in zip(sizes, patch)):
    raise ValueError(f"patch (pt, ph, pw)={tuple(patch)} does not divide the {where} sizes "
                     f"(T', h, w)={sizes} (full shape {tuple(latent_shape)}, expected "
                     f"[T', h, w, C]); every size must be a multiple of its patch size.")


def patch_grid(latent_shape: tuple[int, ...], patch: tuple[int, int, int]) -> tuple[int, ...]:
  """(T'/pt, h/ph, w/pw): the token grid of a clip."""
  check_patch(latent_shape, patch)
  return tuple(s // p for s, p in zip(latent_shape[:3], patch))


def patchify(latents, patch: tuple[int, int, int]):
  """One clip's latents -> tokens and their integer (t, h, w) patch positions.

  Works on numpy arrays (data pipeline) and jax arrays (model code); traceable.

  Args:
    latents: [T', h, w, C].
    patch: (pt, ph, pw), each dividing the matching size.

  Returns:
    tokens: [N, pt*ph*pw*C] with N = T'h w / (pt ph pw), in (t, h, w) raster order; each
      token's features are ordered (pt, ph, pw, C).
    positions: int32 numpy [N, 3].
  """
  gt, gh, gw = patch_grid(latents.shape, patch)
  pt, ph, pw = patch
  c = latents.shape[-1]
  x = latents.reshape(gt, pt, gh, ph, gw, pw, c).transpose(0, 2, 4, 1, 3, 5, 6)
  tokens = x.reshape(gt * gh * gw, pt * ph * pw * c)
  grid = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
  positions = np.stack(grid, axis=-1).reshape(-1, 3).astype(np.int32)
  return tokens, positions


def unpatchify(tokens, latent_shape: tuple[int, int, int, int], patch: tuple[int, int, int]):
  """Inverse of `patchify`: tokens [N, pt*ph*pw*C] -> latents `latent_shape` [T', h, w, C]."""
  gt, gh, gw = patch_grid(latent_shape, patch)
  pt, ph, pw = patch
  c = latent_shape[-1]
  if tokens.shape != (gt * gh * gw, pt * ph * pw * c):
    raise ValueError(f"unpatchify: tokens {tuple(tokens.shape)} do not match latents "
                     f"{tuple(latent_shape)} with patch {tuple(patch)}; expected "
                     f"{(gt * gh * gw, pt * ph * pw * c)}.")
  x = tokens.reshape(gt, gh, gw, pt, ph, pw, c).transpose(0, 3, 1, 4, 2, 5, 6)
  return x.reshape(latent_shape)
