"""Caption tokenizer: a sentencepiece model (Kudo & Richardson, 2018, arXiv:1808.06226).

BPE (Sennrich et al., 2016) by default, trained in memory from an iterable of captions;
saved and loaded as the serialized model proto (`.model`), so a checkpoint's tokenizer is
one small file. Ids: 0 = padding, 1 = unknown; no BOS/EOS is added. An empty caption
encodes to all padding (mask all False), which the DiT reads as "unconditional".

Train one from Shapes World captions (detailed and short) and save it:

  python -m sora_jax.text.tokenizer --out /tmp/sw_tokenizer.model \
      --shapes_world_split train --num 2000 [--vocab_size 512] [--model_type bpe]

In code:
  tok = Tokenizer.train(captions, vocab_size=512)
  tok.save(path); tok = Tokenizer.load(path)
  ids, mask, truncated = tok.encode(["a red square", ""], max_len=32)  # [2, 32] each
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence

from absl import app
from absl import flags
from etils import epath
import numpy as np
import sentencepiece as spm

from data_pipelines.shapes_world import generator
from data_pipelines.shapes_world import world

PAD_ID = 0
UNK_ID = 1
MODEL_TYPES = ("bpe", "unigram", "char", "word")


class Tokenizer:
  """A sentencepiece model with fixed-length batch encoding. Picklable (grain workers)."""

  def __init__(self, model_proto: bytes):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    if self._sp.pad_id() != PAD_ID:
      raise ValueError(f"Tokenizer model has pad id {self._sp.pad_id()}; sora_jax needs "
                       f"pad id {PAD_ID} (train it with `Tokenizer.train`).")

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int = 512,
            model_type: str = "bpe") -> Tokenizer:
    """Trains a model on `texts` (empty strings are skipped).

    `vocab_size` is an upper bound: on a small, repetitive corpus (Shapes World has ~50
    distinct words) sentencepiece stops when no merge is left, so check `vocab_size`.

    Raises:
      ValueError: unknown model_type, or no non-empty text.
    """
    if model_type not in MODEL_TYPES:
      raise ValueError(f"model_type={model_type!r}; allowed: {MODEL_TYPES}.")
    texts = [t for t in texts if t]
    if not texts:
      raise ValueError("Tokenizer.train got no non-empty text.")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=proto, model_type=model_type,
        vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1, minloglevel=2)
    return cls(proto.getvalue())

  @classmethod
  def load(cls, path: str) -> Tokenizer:
    return cls(epath.Path(path).read_bytes())

  def save(self, path: str) -> None:
    epath.Path(path).write_bytes(self._proto)

  @property
  def vocab_size(self) -> int:
    """Number of ids (the text encoder's embedding table size)."""
    return self._sp.get_piece_size()

  def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Encodes a batch of captions to fixed length.

    Args:
      texts: B captions ('' allowed: all padding).
      max_len: L; longer captions are cut to their first L tokens.

    Returns:
      ids: int32 [B, L], PAD_ID after each caption.
      mask: bool [B, L], True at real tokens.
      truncated: how many captions were longer than L.
    """
    if isinstance(texts, str):
      raise TypeError("Tokenizer.encode takes a sequence of captions, not one string.")
    if max_len < 1:
      raise ValueError(f"max_len={max_len} must be >= 1.")
    pieces = self._sp.encode(list(texts)) if len(texts) else []
    ids = np.full((len(texts), max_len), PAD_ID, np.int32)
    truncated = 0
    for row, p in enumerate(pieces):
      truncated += len(p) > max_len
      p = p[:max_len]
      ids[row, :len(p)] = p
    return ids, ids != PAD_ID, truncated

  def decode(self, ids: np.ndarray) -> list[str]:
    """int [B, L] -> B strings (padding dropped)."""
    return [self._sp.decode([int(i) for i in row if i != PAD_ID]) for row in np.asarray(ids)]

  def __getstate__(self):
    return {"proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["proto"])


def shapes_world_captions(split: str, num: int, level: str = "full", frames: int = 17,
                          height: int = 64, width: int = 64,
                          include_short: bool = True) -> Iterator[str]:
  """Detailed (and short) captions of Shapes World clips 0..num-1, without rendering."""
  for i in range(num):
    scene = generator.sample_scene(split, i, frames, height, width, level)
    yield world.detailed_caption(scene)
    if include_short:
      yield world.short_caption(scene)


def _main(argv):
  del argv
  args = _FLAGS
  texts = shapes_world_captions(args.shapes_world_split, args.num, args.level,
                                args.frames, args.height, args.width)
  tok = Tokenizer.train(texts, args.vocab_size, args.model_type)
  tok.save(args.out)
  print(f"Wrote {args.out}: {tok.vocab_size} ids ({args.model_type}, asked for at most "
        f"{args.vocab_size}) from {args.num} Shapes World {args.shapes_world_split} clips.")


def _define_flags():
  """CLI flags, defined only when run as a script (importing this module defines none)."""
  flags.DEFINE_string("out", None, "Where to write the .model file.", required=True)
  flags.DEFINE_string("shapes_world_split", "train", "Shapes World split to read captions of.")
  flags.DEFINE_integer("num", 2000, "Number of clips.", lower_bound=1)
  flags.DEFINE_enum("level", "full", ["basic", "full"], "Shapes World scene level.")
  flags.DEFINE_integer("frames", 17, "Clip frames (scene sampling depends on the size).")
  flags.DEFINE_integer("height", 64, "Clip height.")
  flags.DEFINE_integer("width", 64, "Clip width.")
  flags.DEFINE_integer("vocab_size", 512, "Largest vocabulary size.", lower_bound=8)
  flags.DEFINE_enum("model_type", "bpe", list(MODEL_TYPES), "sentencepiece model type.")
  return flags.FLAGS


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(_main)
