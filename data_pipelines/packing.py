"""NaViT packing of latent clips of different sizes into fixed-length token sequences.

Patch n' Pack (NaViT, Dehghani et al., 2023, arXiv:2307.06304): instead of cropping every
clip to one size, whole clips (images T' = 1 and videos, any h x w) are patchified and
concatenated into sequences of `seq_len` tokens; attention is block-diagonal by segment.

A packed example (numpy):
  tokens       [N, Din]   patch features, 0 at padding
  positions    [N, 3]     int32 (t, h, w) patch position within its own clip
  segment_ids  [N]        int32 1..k for the k packed clips, 0 = padding
  clip_index   [N]        int32 source index of the token's clip (-1 = padding)
  loss_weight  [N]        float32 1 / (tokens of its clip), 0 at padding: a clip sums to 1
  text_ids     [K, L]     int32 caption of clip row j (K = max_clips; unused rows all 0)
  text_mask    [K, L]     bool
Segment s (1-based) owns caption row s - 1. The model encodes each caption row on its own,
lays the K rows side by side (`sora_jax.models.text.flatten_packed_text`) with text segment
ids j + 1, and cross-attention compares token segment ids with text segment ids: every
token attends only to its own clip's caption.

Two ways in, the same first-fit algorithm and the same output:
  * `pack_examples(examples, ...)`: pure numpy over any iterable (inside a grain map over a
    batch of clips, a notebook, a test).
  * `pack_dataset(ds, ...)`: a grain `IterDataset` transformation built on
    `grain.experimental.FirstFitPackIterDataset`. It fits: it packs every feature along its
    leading axis with its own length budget, so tokens `[n, Din]`, positions `[n, 3]`,
    loss weights and clip indices pack as they are, and giving each clip's fixed-length
    caption `[L]` a budget of `K * L` both caps a bin at K clips and puts clip j's caption
    at row j. Grain brings checkpointable iterator state and multi-bin first fit for free;
    we only rename its segment ids and reshape the captions (`finalize_grain_example`).
Both pack online: an example goes to the first of `num_bins` open bins with room for it;
when none has room, all open bins are emitted and packing restarts with that example.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import grain
import numpy as np

from data_pipelines import patches

TOKEN_FEATURES = ("tokens", "positions", "clip_index", "loss_weight")


def clip_example(latents: np.ndarray, text_ids: np.ndarray, text_mask: np.ndarray,
                 patch: tuple[int, int, int], clip_index: int = -1) -> dict[str, np.ndarray]:
  """One clip as per-token features, ready to pack.

  Args:
    latents: [T', h, w, C] VAE latents.
    text_ids, text_mask: [L] the clip's tokenized caption.
    patch: (pt, ph, pw).
    clip_index: the clip's source index (kept per token for evaluation and debugging).

  Returns:
    dict with tokens [n, Din], positions [n, 3], clip_index [n], loss_weight [n],
    text_ids [L], text_mask [L].
  """
  tokens, positions = patches.patchify(np.asarray(latents), patch)
  n = tokens.shape[0]
  return {"tokens": tokens, "positions": positions,
          "clip_index": np.full((n,), clip_index, np.int32),
          "loss_weight": np.full((n,), 1.0 / n, np.float32),
          "text_ids": np.asarray(text_ids, np.int32),
          "text_mask": np.asarray(text_mask, bool)}


class _Bin:
  """One packed sequence being filled (numpy buffers)."""

  def __init__(self, like: dict[str, np.ndarray], seq_len: int, max_clips: int):
    self.used, self.clips = 0, 0
    self.data = {k: np.zeros((seq_len, *like[k].shape[1:]), like[k].dtype)
                 for k in TOKEN_FEATURES}
    self.data["clip_index"][:] = -1
    self.data["segment_ids"] = np.zeros((seq_len,), np.int32)
    text_len = like["text_ids"].shape[0]
    self.data["text_ids"] = np.zeros((max_clips, text_len), np.int32)
    self.data["text_mask"] = np.zeros((max_clips, text_len), bool)

  def fits(self, n: int, seq_len: int, max_clips: int) -> bool:
    return self.used + n <= seq_len and self.clips < max_clips

  def add(self, example: dict[str, np.ndarray]) -> None:
    n = example["tokens"].shape[0]
    for k in TOKEN_FEATURES:
      self.data[k][self.used:self.used + n] = example[k]
    self.data["segment_ids"][self.used:self.used + n] = self.clips + 1
    self.data["text_ids"][self.clips] = example["text_ids"]
    self.data["text_mask"][self.clips] = example["text_mask"]
    self.used, self.clips = self.used + n, self.clips + 1


def pack_examples(examples: Iterable[dict[str, np.ndarray]], seq_len: int, max_clips: int,
                  num_bins: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Online first-fit packing (same algorithm and output as `pack_dataset`).

  Args:
    examples: `clip_example` dicts.
    seq_len: N, tokens per packed sequence.
    max_clips: K, most clips per sequence (caption rows).
    num_bins: bins open at once (more bins: less padding, more reordering).

  Yields:
    Packed examples (see the module docstring).

  Raises:
    ValueError: a clip with more than `seq_len` tokens.
  """
  bins: list[_Bin] = []
  for ex in examples:
    n = ex["tokens"].shape[0]
    if n > seq_len:
      raise ValueError(f"A clip of {n} tokens (clip_index {int(ex['clip_index'][0])}) does "
                       f"not fit in seq_len={seq_len}; raise seq_len or drop such clips.")
    target = next((b for b in bins if b.fits(n, seq_len, max_clips)), None)
    if target is None and len(bins) == num_bins:
      yield from (b.data for b in bins)
      bins = []
    if target is None:
      target = _Bin(ex, seq_len, max_clips)
      bins.append(target)
    target.add(ex)
  yield from (b.data for b in bins)


def finalize_grain_example(packed: dict[str, np.ndarray], max_clips: int
                           ) -> dict[str, np.ndarray]:
  """FirstFitPackIterDataset output -> the packed example contract."""
  text_len = packed["text_ids"].shape[0] // max_clips
  seg = packed["tokens_segment_ids"].astype(np.int32)
  return {"tokens": packed["tokens"], "positions": packed["positions"],
          "segment_ids": seg,
          "clip_index": np.where(seg > 0, packed["clip_index"], -1).astype(np.int32),
          "loss_weight": packed["loss_weight"],
          "text_ids": packed["text_ids"].reshape(max_clips, text_len),
          "text_mask": packed["text_mask"].reshape(max_clips, text_len)}


def pack_dataset(ds: grain.IterDataset, seq_len: int, max_clips: int, text_len: int,
                 num_bins: int = 1, shuffle_bins: bool = False,
                 seed: int = 0) -> grain.IterDataset:
  """Packs a grain IterDataset of `clip_example` dicts (grain's first fit, then finalize).

  Args:
    ds: yields `clip_example` dicts (extra keys are dropped).
    seq_len, max_clips, num_bins: as in `pack_examples`.
    text_len: L of the captions.
    shuffle_bins: shuffle the bins grain emits together (False keeps `pack_examples` order).
    seed: for the bin shuffle.
  """
  lengths = {k: seq_len for k in TOKEN_FEATURES}
  lengths.update(text_ids=max_clips * text_len, text_mask=max_clips * text_len)
  padding = {k: 0 for k in lengths}
  padding["clip_index"] = -1
  ds = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct=lengths, num_packing_bins=num_bins, seed=seed,
      shuffle_bins=shuffle_bins, padding_struct=padding, max_sequences_per_bin=max_clips)
  return ds.map(lambda packed: finalize_grain_example(packed, max_clips))


def packing_efficiency(segment_ids: np.ndarray) -> float:
  """Fraction of non-padding tokens: (segment_ids > 0).mean() over any shape."""
  return float(np.mean(np.asarray(segment_ids) > 0))
