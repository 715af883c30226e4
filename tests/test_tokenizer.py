"""Caption tokenizer: training, save/load, fixed-length encoding, CLI."""
import pickle
import subprocess
import sys

import numpy as np
import pytest

from sora_jax.text import tokenizer as tok_lib


@pytest.fixture(scope="module")
def tok():
  return tok_lib.Tokenizer.train(tok_lib.shapes_world_captions("train", 300), vocab_size=512)


def test_round_trip_and_vocab(tok):
  captions = ["A small red square moves from left to right on a gray background.",
              "a blue triangle"]
  ids, mask, truncated = tok.encode(captions, max_len=48)
  assert ids.shape == mask.shape == (2, 48) and ids.dtype == np.int32 and mask.dtype == bool
  assert truncated == 0
  assert np.array_equal(mask, ids != tok_lib.PAD_ID)
  assert tok.decode(ids) == captions
  assert 50 < tok.vocab_size <= 512 and ids.max() < tok.vocab_size


def test_truncation_is_counted(tok):
  long = "A large green circle moves from right to left on a black background. " * 4
  ids, mask, truncated = tok.encode([long, "a red square", long], max_len=8)
  assert truncated == 2
  assert mask[0].all() and mask[2].all() and not mask[1].all()


def test_empty_caption_is_all_padding(tok):
  ids, mask, truncated = tok.encode(["", "a red square"], max_len=6)
  assert (ids[0] == tok_lib.PAD_ID).all() and not mask[0].any() and truncated == 0
  ids, mask, _ = tok.encode([], max_len=6)
  assert ids.shape == (0, 6)


def test_save_load_pickle(tok, tmp_path):
  path = str(tmp_path / "sw.model")
  tok.save(path)
  loaded = tok_lib.Tokenizer.load(path)
  text = ["a yellow square and a green circle"]
  assert np.array_equal(loaded.encode(text, 16)[0], tok.encode(text, 16)[0])
  assert np.array_equal(pickle.loads(pickle.dumps(tok)).encode(text, 16)[0],
                        tok.encode(text, 16)[0])


def test_bad_inputs(tok):
  with pytest.raises(TypeError, match="sequence of captions"):
    tok.encode("a red square", 8)
  with pytest.raises(ValueError, match="max_len=0"):
    tok.encode(["a"], 0)
  with pytest.raises(ValueError, match="model_type='bpee'"):
    tok_lib.Tokenizer.train(["a b c"], model_type="bpee")
  with pytest.raises(ValueError, match="no non-empty text"):
    tok_lib.Tokenizer.train(["", ""])


def test_cli_trains_from_shapes_world(tmp_path):
  out = tmp_path / "cli.model"
  subprocess.run([sys.executable, "-m", "sora_jax.text.tokenizer", "--out", str(out),
                  "--shapes_world_split", "train", "--num", "100", "--vocab_size", "256"],
                 check=True, capture_output=True)
  tok = tok_lib.Tokenizer.load(str(out))
  assert tok.vocab_size <= 256
  assert tok.decode(tok.encode(["a white circle"], 8)[0]) == ["a white circle"]
