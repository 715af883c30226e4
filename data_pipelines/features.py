"""The clip record contract shared by every tfds builder and the grain pipelines.

Every builder (Shapes World, video folder) writes ArrayRecord files whose records hold:

  video:          uint8 [T, H, W, 3], zlib-compressed tfds `Tensor` (no TensorFlow needed).
  caption:        the detailed caption (text; read back as bytes).
  short_caption:  a short caption ('' when the source has none).

Builders set `disable_shuffling=True`, so record `i` of a split is the `i`-th example in
generation order, and record each example's size `(T, H, W)` in the dataset metadata
(`info.metadata['sizes'][split]`, run-length encoded). Pipelines read those sizes to batch
clips of one size together without decoding every record first.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

SIZES_KEY = "sizes"


def clip_features() -> tfds.features.FeaturesDict:
  """The tfds features of one clip record."""
  return tfds.features.FeaturesDict({
      "video": tfds.features.Tensor(
          shape=(None, None, None, 3), dtype=np.uint8, encoding="zlib"),
      "caption": tfds.features.Text(),
      "short_caption": tfds.features.Text(),
  })


def encode_sizes(sizes: Sequence[Sequence[int]]) -> list[list[int]]:
  """Run-length encodes per-record sizes: [[T, H, W, count], ...]."""
  runs: list[list[int]] = []
  for t, h, w in sizes:
    if runs and runs[-1][:3] == [int(t), int(h), int(w)]:
      runs[-1][3] += 1
    else:
      runs.append([int(t), int(h), int(w), 1])
  return runs


def decode_sizes(runs: Sequence[Sequence[int]]) -> np.ndarray:
  """Inverse of `encode_sizes`: int32 [N, 3] of (T, H, W) per record."""
  if not runs:
    return np.zeros((0, 3), np.int32)
  return np.concatenate([np.tile(np.asarray(r[:3], np.int32), (r[3], 1)) for r in runs])


def record_sizes(info: tfds.core.DatasetInfo, split: str,
                 sizes: Sequence[Sequence[int]]) -> None:
  """Stores the sizes of a split's records (in record order) in the dataset metadata."""
  info.metadata.setdefault(SIZES_KEY, {})[split] = encode_sizes(sizes)


def split_sizes(info: tfds.core.DatasetInfo, split: str) -> np.ndarray:
  """Per-record (T, H, W) of a split, int32 [N, 3]. Raises if the builder did not record them."""
  table = (info.metadata or {}).get(SIZES_KEY, {})
  if split not in table:
    raise ValueError(
        f"Dataset {info.full_name!r} has no recorded clip sizes for split {split!r} "
        f"(recorded: {sorted(table)}); rebuild it with a sora_jax builder.")
  return decode_sizes(table[split])


def check_clip_size(frames: int, height: int, width: int, where: str = "",
                    max_side: int | None = None) -> None:
  """Validates a (T, H, W) clip size: T = 4k + 1; H, W positive multiples of 16.

  Args:
    frames, height, width: the size to check.
    where: where the value came from (a flag, a config key), named in the error.
    max_side: optional upper bound on H and W (Shapes World allows [32, 256]).
  """
  src = f" (from {where})" if where else ""
  if frames < 1 or (frames - 1) % 4:
    raise ValueError(f"frames T={frames}{src} must be 4k+1 (1, 5, 9, 13, 17, ...).")
  lo, hi = (32, max_side) if max_side else (16, None)
  for name, v in (("height", height), ("width", width)):
    if v % 16 or v < lo or (hi and v > hi):
      allowed = f"a multiple of 16 in [{lo}, {hi}]" if hi else "a positive multiple of 16"
      raise ValueError(f"{name}={v}{src} must be {allowed}.")
