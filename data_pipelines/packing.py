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
  caption_kind [K]        int32, when the examples carry it (the captioner's; unused rows 0)
Segment s (1-based) owns caption row s - 1. The model encodes each caption row on its own,
lays the K rows side by side (`sora_jax.models.text.flatten_packed_text`) with text segment
ids j + 1, and cross-attention compares token segment ids with text segment ids: every
token attends only to its own clip's caption.

Two ways in, the same first-fit algorithm and the same output:
  * `pack_examples(examples, ...)`: pure numpy over any iterable (inside a grain map over a
    batch of clips, a notebook, a test).
  * `pack_dataset(ds, ...)`: a grain `IterDataset` transformation with checkpointable
    iterator state (the position of the current round of bins; see `pack_dataset`).
Both pack online: an example goes to the first of `num_bins` open bins with room for it;
when none has room, all open bins are emitted and packing restarts with that example.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import grain
import numpy as np

from data_pipelines import patches

TOKEN_FEATURES = ("tokens", "positions", "clip_index", "loss_weight")
# Per-clip values, packed one row per clip: the caption, and (optional) the kind of caption
# the captioner trains on (`sora_jax/train/captioner_task.py`).
CLIP_FEATURES = ("text_ids", "text_mask", "caption_kind")


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
    self.clip_keys = [k for k in CLIP_FEATURES if k in like]
    for k in self.clip_keys:
      value = np.asarray(like[k])
      self.data[k] = np.zeros((max_clips, *value.shape), value.dtype)

  def fits(self, n: int, seq_len: int, max_clips: int) -> bool:
    return self.used + n <= seq_len and self.clips < max_clips

  def add(self, example: dict[str, np.ndarray]) -> None:
    n = example["tokens"].shape[0]
    for k in TOKEN_FEATURES:
      self.data[k][self.used:self.used + n] = example[k]
    self.data["segment_ids"][self.used:self.used + n] = self.clips + 1
    for k in self.clip_keys:
      self.data[k][self.clips] = example[k]
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
    _check_length(ex, n, seq_len)
    target = next((b for b in bins if b.fits(n, seq_len, max_clips)), None)
    if target is None and len(bins) == num_bins:
      yield from (b.data for b in bins)
      bins = []
    if target is None:
      target = _Bin(ex, seq_len, max_clips)
      bins.append(target)
    target.add(ex)
  yield from (b.data for b in bins)


def pack_dataset(ds: grain.IterDataset, seq_len: int, max_clips: int,
                 num_bins: int = 1) -> grain.IterDataset:
  """Packs a grain IterDataset of `clip_example` dicts (the first fit of `pack_examples`).

  The iterator checkpoints as grain's do (`get_state` / `set_state`, JSON): the parent's
  position at the start of the current round of bins and how many of its bins were
  given out; a restore re-packs that round and skips them.

  Args:
    ds: yields `clip_example` dicts (keys beyond TOKEN_FEATURES and CLIP_FEATURES are
      dropped).
    seq_len, max_clips, num_bins: as in `pack_examples`.
  """
  return _PackDataset(ds, seq_len, max_clips, num_bins)


class _PackDataset(grain.IterDataset):
  """`pack_dataset`'s IterDataset (importable, so grain's worker processes can build it)."""

  def __init__(self, parent: grain.IterDataset, seq_len: int, max_clips: int,
               num_bins: int):
    super().__init__(parent)
    self._args = (seq_len, max_clips, num_bins)

  def __iter__(self) -> "_PackIterator":
    return _PackIterator(self._parent.__iter__(), *self._args)


class _PackIterator(grain.DatasetIterator):
  """Packs one round of bins at a time: bins fill until a clip fits none of `num_bins`
  open ones; then the round's bins are given out and the next round starts with that clip
  (`pack_examples`' algorithm, 50x cheaper a clip than grain's FirstFitPackIterDataset)."""

  def __init__(self, parent: grain.DatasetIterator, seq_len: int, max_clips: int,
               num_bins: int):
    super().__init__(parent)
    self._seq_len, self._max_clips, self._num_bins = seq_len, max_clips, num_bins
    self._reset(self._parent.get_state())

  def _reset(self, start) -> None:
    self._ready: list[dict[str, np.ndarray]] = []  # the round's bins not yet given out
    self._round_start = start  # the parent's state before the round's first clip
    self._given = 0  # the round's bins already given out
    self._next_start = start  # where the next round starts
    self._carry = None  # the clip that overflowed the last round: the next one's first

  def _pack_round(self) -> None:
    self._round_start, bins = self._next_start, []
    example, self._carry = self._carry, None
    while True:
      if example is None:
        state = self._parent.get_state()
        try:
          example = next(self._parent)
        except StopIteration:
          break
      else:
        state = self._round_start
      n = example["tokens"].shape[0]
      _check_length(example, n, self._seq_len)
      target = next((b for b in bins if b.fits(n, self._seq_len, self._max_clips)), None)
      if target is None and len(bins) == self._num_bins:
        self._carry, self._next_start = example, state
        break
      if target is None:
        target = _Bin(example, self._seq_len, self._max_clips)
        bins.append(target)
      target.add(example)
      example = None
    if self._carry is None:
      self._next_start = self._parent.get_state()
    self._ready, self._given = [b.data for b in bins], 0

  def __next__(self) -> dict[str, np.ndarray]:
    if not self._ready:
      self._pack_round()
      if not self._ready:
        raise StopIteration
    self._given += 1
    return self._ready.pop(0)

  def get_state(self) -> dict:
    if self._ready:
      return {"parent": self._round_start, "given": self._given}
    if self._carry is not None:
      return {"parent": self._next_start, "given": 0}
    return {"parent": self._parent.get_state(), "given": 0}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._reset(state["parent"])
    if state["given"]:
      self._pack_round()
      del self._ready[:state["given"]]
      self._given = state["given"]


def _check_length(example: dict[str, np.ndarray], n: int, seq_len: int) -> None:
  if n > seq_len:
    raise ValueError(f"A clip of {n} tokens (clip_index {int(example['clip_index'][0])}) does "
                     f"not fit in seq_len={seq_len}; raise seq_len or drop such clips.")


def packing_efficiency(segment_ids: np.ndarray) -> float:
  """Fraction of non-padding tokens: (segment_ids > 0).mean() over any shape."""
  return float(np.mean(np.asarray(segment_ids) > 0))
