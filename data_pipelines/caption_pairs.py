"""(short, detailed) caption pairs for the prompt upsampler: a grain pipeline over text.

  pairs = caption_pairs(records, "caption")               # [(short, detailed), ...]
  ds = make_pair_dataset(pairs, tokenizer, source_len=16, text_len=32, batch_size=32,
                         seed=0, train=True)

Each batch: `source_ids`/`source_mask` [B, 1, source_len] (the short caption) and
`text_ids`/`text_mask` [B, 1, text_len] (the detailed one), one pair a row (the packed
layout of `latents.make_latent_dataset` with one caption a row, which the captioner
shares). Pairs are tokenized once, up front; training order is a seeded shuffle, new each
epoch, split by process as the latent pipeline splits clips.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from data_pipelines import pipeline


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def caption_pairs(records: Any, target_key: str = "caption",
                  num: int | None = None) -> list[tuple[str, str]]:
  """(short_caption, records[i][target_key]) of the first `num` records (all: None) that
  carry a short caption."""
  n = len(records) if num is None else min(num, len(records))
  pairs = [(_text(records[i]["short_caption"]), _text(records[i][target_key]))
           for i in range(n)]
  return [p for p in pairs if p[0] and p[1]]


class _Row(grain.transforms.Map):
  """Pair index -> one row of the tokenized arrays."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def map(self, element):
    return {k: v[int(element)][None] for k, v in self.arrays.items()}


def tokenize_pairs(pairs: Sequence[tuple[str, str]], tokenizer, source_len: int,
                   text_len: int) -> dict[str, np.ndarray]:
  """{source_ids, source_mask [N, source_len], text_ids, text_mask [N, text_len]}."""
  src, src_mask, _ = tokenizer.encode([s for s, _ in pairs], source_len)
  ids, mask, _ = tokenizer.encode([d for _, d in pairs], text_len)
  return {"source_ids": src, "source_mask": src_mask, "text_ids": ids, "text_mask": mask}


def make_pair_dataset(pairs: Sequence[tuple[str, str]], tokenizer, *, source_len: int,
                      text_len: int, batch_size: int, seed: int, train: bool,
                      process_index: int | None = None,
                      process_count: int | None = None) -> grain.IterDataset:
  """Batches of tokenized pairs (see the module docstring); eval: one pass in order."""
  if not pairs:
    raise ValueError("make_pair_dataset: no (short, detailed) caption pairs; the records "
                     "need both a short and a detailed caption.")
  pi, pc = pipeline._process(process_index, process_count)  # pylint: disable=protected-access
  if batch_size % pc:
    raise ValueError(f"batch_size={batch_size} is not a multiple of {pc} processes.")
  arrays = tokenize_pairs(pairs, tokenizer, source_len, text_len)
  indices = np.arange(len(pairs), dtype=np.int64)
  if train:
    ds = pipeline._EpochShuffle(indices, seed)[pi::pc].repeat()  # pylint: disable=protected-access
  else:
    ds = grain.MapDataset.source(indices)[pi::pc]
  ds = ds.map(_Row(arrays)).batch(batch_size // pc, drop_remainder=train)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
