"""T5's tokenizer for encoder input: a sentencepiece model (Kudo & Richardson, 2018,
arXiv:1808.06226) read the way transformers' `T5Tokenizer` reads it.

Ids as in T5's `spiece.model`: 0 = padding, 1 = EOS, 2 = unknown; every caption ends with
EOS (an empty caption is just [EOS]). After the sentencepiece pieces come `extra_ids`
sentinels `<extra_id_N>` (id = pieces + extra_ids - 1 - N). As in transformers, the
strings "</s>", "<pad>", "<unk>" and "<extra_id_N>" in a caption are those special tokens
and the text between them is encoded piece by piece. Truncation keeps EOS as the last token,
as `tokenizer(texts, padding="max_length", max_length=L, truncation=True)` does (Wan2.1
uses L = 512, CogVideoX 226).

  tok = T5Tokenizer.load("/ckpt/Wan2.1-T2V-14B-Diffusers/tokenizer")   # or a spiece.model
  ids, mask, truncated = tok.encode(["a red square", ""], max_len=512)  # [2, 512] each
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence

from etils import epath
import numpy as np
import sentencepiece as spm

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
MODEL_FILE = "spiece.model"
DEFAULT_EXTRA_IDS = 100
_SPECIAL = re.compile(r"</s>|<pad>|<unk>|<extra_id_(\d+)>")
_NAMED = {"</s>": EOS_ID, "<pad>": PAD_ID, "<unk>": UNK_ID}


class T5Tokenizer:
  """A T5 sentencepiece model with fixed-length batch encoding. Picklable (grain workers).

  Attributes:
    extra_ids: number of `<extra_id_N>` sentinels after the pieces.
  """

  def __init__(self, model_proto: bytes, extra_ids: int = DEFAULT_EXTRA_IDS):
    self._proto = bytes(model_proto)
    self.extra_ids = int(extra_ids)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    got = (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id())
    if got != (PAD_ID, EOS_ID, UNK_ID):
      raise ValueError(f"T5Tokenizer: the sentencepiece model has (pad, eos, unk) ids {got}; "
                       f"T5 needs {(PAD_ID, EOS_ID, UNK_ID)}.")

  @classmethod
  def load(cls, path: str | epath.PathLike, extra_ids: int | None = None) -> T5Tokenizer:
    """From a spiece.model file, or a folder holding one (a transformers tokenizer folder).

    Args:
      path: the file or folder.
      extra_ids: sentinel count; None: the folder's tokenizer_config.json says
        ("extra_ids", else its `<extra_id_N>` special tokens), else 100.
    """
    p = epath.Path(path)
    folder = p if p.is_dir() else None
    if folder is not None:
      p = folder / MODEL_FILE
    if not p.exists():
      raise FileNotFoundError(f"T5Tokenizer.load: no {p} (expected a {MODEL_FILE} file or "
                              "a folder holding one).")
    if extra_ids is None:
      extra_ids = _extra_ids_of(folder) if folder is not None else DEFAULT_EXTRA_IDS
    return cls(p.read_bytes(), extra_ids)

  @property
  def vocab_size(self) -> int:
    """Number of ids: pieces + sentinels (the reference tokenizer's `len`)."""
    return self._sp.get_piece_size() + self.extra_ids

  def _special_id(self, match: re.Match) -> int | None:
    """The id of a special-token match, or None where it is plain text (<extra_id_N> with N
    out of range or not written canonically)."""
    if match.group(1) is None:
      return _NAMED[match.group(0)]
    n = match.group(1)
    if str(int(n)) != n or int(n) >= self.extra_ids:
      return None
    return self._sp.get_piece_size() + self.extra_ids - 1 - int(n)

  def tokens(self, text: str) -> list[int]:
    """One caption's ids, without EOS."""
    ids, start = [], 0
    for match in _SPECIAL.finditer(text):
      special = self._special_id(match)
      if special is None:
        continue
      ids += self._sp.encode(text[start:match.start()]) + [special]
      start = match.end()
    return ids + self._sp.encode(text[start:])

  def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Encodes a batch of captions to fixed length, each ending with EOS.

    Args:
      texts: B captions ('' allowed: [EOS] and padding).
      max_len: L; a longer caption keeps its first L - 1 tokens, then EOS.

    Returns:
      ids: int32 [B, L], PAD_ID after each caption's EOS.
      mask: bool [B, L], True at the caption's tokens and its EOS.
      truncated: how many captions did not fit (tokens + EOS > L).
    """
    if isinstance(texts, str):
      raise TypeError("T5Tokenizer.encode takes a sequence of captions, not one string.")
    if max_len < 1:
      raise ValueError(f"max_len={max_len} must be >= 1 (room for EOS).")
    ids = np.full((len(texts), max_len), PAD_ID, np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    truncated = 0
    for row, text in enumerate(texts):
      tokens = self.tokens(text)
      truncated += len(tokens) + 1 > max_len
      tokens = tokens[:max_len - 1] + [EOS_ID]
      ids[row, :len(tokens)] = tokens
      mask[row, :len(tokens)] = True  # by length: a "<pad>" in the text is a real token
    return ids, mask, truncated

  def decode(self, ids: np.ndarray) -> list[str]:
    """int [B, L] -> B strings: each row up to its first EOS, padding dropped, sentinels
    written as `<extra_id_N>`."""
    pieces = self._sp.get_piece_size()
    out = []
    for row in np.asarray(ids):
      text, run = "", []
      for i in (int(i) for i in row):
        if i == EOS_ID:
          break
        if i >= pieces:
          text += self._sp.decode(run) + f"<extra_id_{pieces + self.extra_ids - 1 - i}>"
          run = []
        elif i != PAD_ID:
          run.append(i)
      out.append(text + self._sp.decode(run))
    return out

  def __getstate__(self):
    return {"proto": self._proto, "extra_ids": self.extra_ids}

  def __setstate__(self, state):
    self.__init__(state["proto"], state["extra_ids"])


def _extra_ids_of(folder: epath.Path) -> int:
  """Sentinel count from a transformers tokenizer folder's tokenizer_config.json."""
  config_file = folder / "tokenizer_config.json"
  if not config_file.exists():
    return DEFAULT_EXTRA_IDS
  config = json.loads(config_file.read_text())
  if isinstance(config.get("extra_ids"), int) and config["extra_ids"] > 0:
    return config["extra_ids"]
  for key in ("additional_special_tokens", "extra_special_tokens"):
    tokens = config.get(key) or []
    tokens = list(tokens.values()) if isinstance(tokens, dict) else tokens
    tokens = [t.get("content") if isinstance(t, dict) else t for t in tokens]
    sentinels = [t for t in tokens if isinstance(t, str) and t.startswith("<extra_id_")]
    if sentinels:
      return len(sentinels)
  return config["extra_ids"] if isinstance(config.get("extra_ids"), int) else DEFAULT_EXTRA_IDS
