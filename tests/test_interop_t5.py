"""T5 / UMT5 encoders: parity with transformers' T5EncoderModel / UMT5EncoderModel (random
weights, small configs, padded batches), the checkpoint converter, and the T5 tokenizer."""
import dataclasses
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from jax.sharding import PartitionSpec as P

from sora_jax.interop import safetensors_io as io
from sora_jax.interop import t5 as t5_interop
from sora_jax.models import t5
from sora_jax.sharding import rules
from sora_jax.text import t5_tokenizer

import torch  # noqa: E402  (the test extra; a missing reference fails, never skips)
import transformers  # noqa: E402

# fp32 parity: max abs error <= REL * max(1, max abs of the reference output). Never loosen.
REL = 1e-4
# bfloat16 params and matmuls against the float32 reference (8-bit mantissas).
REL_BF16 = 5e-2
# Buckets 16 / max distance 20 at L = 24: exact, log-spaced (4 of them) and clipped buckets
# all occur, so a bucket edge in the wrong place shows.
# num_heads * d_kv (24) != d_model (32), as the reference allows.
SMALL = dict(vocab_size=300, d_model=32, d_kv=6, num_heads=4, d_ff=64, num_layers=3,
             relative_attention_num_buckets=16, relative_attention_max_distance=20,
             dropout_rate=0.0)
LENGTHS = (24, 17, 1)  # a full row, a padded one, an empty caption's lone EOS
KINDS = {  # name -> (model class, config class, feed_forward_proj)
    "t5_gated": (transformers.T5EncoderModel, transformers.T5Config, "gated-gelu"),
    "t5_relu": (transformers.T5EncoderModel, transformers.T5Config, "relu"),
    "umt5": (transformers.UMT5EncoderModel, transformers.UMT5Config, "gated-gelu"),
}


def _close(got, want, rel=REL):
  err, scale = np.abs(got - want).max(), max(1.0, np.abs(want).max())
  assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x {scale:.3g}"


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
  """name -> (folder, reference last_hidden_state [B, L, D], ids, mask) per KINDS entry."""
  rng = np.random.default_rng(0)
  ids = rng.integers(3, SMALL["vocab_size"], (len(LENGTHS), max(LENGTHS))).astype(np.int32)
  mask = np.arange(ids.shape[1])[None] < np.array(LENGTHS)[:, None]
  ids = np.where(mask, ids, 0).astype(np.int32)
  out = {}
  for seed, (name, (model_cls, config_cls, proj)) in enumerate(KINDS.items()):
    torch.manual_seed(seed)
    model = model_cls(config_cls(feed_forward_proj=proj, **SMALL)).eval()
    with torch.no_grad():  # norms off 1 and strong position biases, so a slip shows
      for pname, p in model.named_parameters():
        if "layer_norm" in pname:
          p.uniform_(0.5, 1.5)
        if "relative_attention_bias" in pname:
          p.normal_(0.0, 1.0)
      want = model(input_ids=torch.from_numpy(ids).long(),
                   attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder, safe_serialization=True)
    out[name] = (folder, want, ids, mask)
  return out


@pytest.mark.parametrize("name", list(KINDS))
def test_float32_parity(refs, name):
  folder, want, ids, mask = refs[name]
  config, params = t5_interop.load(folder)
  assert config.per_layer_position_bias == (name == "umt5")
  got = np.asarray(t5.encode(params, jnp.asarray(ids), jnp.asarray(mask), config))
  assert got.shape == want.shape and got.dtype == np.float32
  _close(got, want)


def test_scanned_layers_parity(refs):
  folder, want, ids, mask = refs["umt5"]
  config, params = t5_interop.load(folder, scan_layers=True)
  assert params["blocks"]["attention"]["q"].shape == (3, 32, 4, 6)
  _close(np.asarray(t5.encode(params, ids, mask, config)), want)


def test_bfloat16_load_is_close(refs):
  folder, want, ids, mask = refs["t5_gated"]
  config, params = t5_interop.load(folder, dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  got = t5.encode(params, ids, mask, config)
  assert got.dtype == jnp.bfloat16
  _close(np.asarray(got, np.float32), want, REL_BF16)


def test_position_buckets_match_reference():
  """Wan's 512 tokens with the real 32 buckets / 128 distance, and the test's small ones."""
  bucket_fn = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
  for length, buckets, distance in ((600, 32, 128), (40, 16, 20), (40, 8, 16)):
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    want = bucket_fn(rel, bidirectional=True, num_buckets=buckets, max_distance=distance)
    got = t5.relative_position_buckets(length, length, buckets, distance)
    np.testing.assert_array_equal(got, want.numpy())


def test_logical_axis_names():
  config = t5.T5Config(**{k: v for k, v in SMALL.items() if k != "dropout_rate"},
                       scan_layers=True)
  specs = rules.param_specs(t5.T5Encoder(config), jnp.zeros((1, 4), jnp.int32),
                            jnp.ones((1, 4), bool))["params"]
  assert specs["embedding"] == P("vocab", "embed")
  attention, mlp = specs["blocks"]["attention"], specs["blocks"]["mlp"]
  assert attention["q"] == P("layers", "embed", "heads", "kv")
  assert attention["o"] == P("layers", "heads", "kv", "embed")
  assert mlp["wi_0"] == P("layers", "embed", "mlp") and mlp["wo"] == P("layers", "mlp", "embed")
  assert specs["blocks"]["position_bias"]["embedding"] == P("layers", None, "heads")


# ---------------------------------------------------------------------------- converter


@pytest.fixture(scope="module")
def t5_tensors(refs):
  folder = refs["t5_gated"][0]
  config = t5_interop.config_from_hf(io.read_json(folder / "config.json"))
  return config, io.read_tensors(folder)


def test_misshapen_tensor_is_named(t5_tensors):
  config, tensors = t5_tensors
  name = "encoder.block.1.layer.0.SelfAttention.k.weight"
  bad = dict(tensors, **{name: np.zeros((25, 32), np.float32)})
  with pytest.raises(io.ConversionError, match=name):
    t5_interop.convert(bad, config)
  name = "encoder.block.2.layer.1.DenseReluDense.wi_1.weight"
  bad = dict(tensors, **{name: np.zeros((64, 31), np.float32)})
  with pytest.raises(io.ConversionError, match=name):
    t5_interop.convert(bad, config)


def test_full_checkpoint_and_embedding_names(t5_tensors):
  """Decoder and LM head tensors are skipped; the table may be stored under either name."""
  config, tensors = t5_tensors
  want = t5_interop.convert(tensors, config)
  renamed = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v
             for k, v in tensors.items()}
  full = dict(tensors, **{"encoder.embed_tokens.weight": tensors["shared.weight"],
                          "decoder.block.0.layer.0.SelfAttention.q.weight": np.zeros((2, 2)),
                          "lm_head.weight": np.zeros((2, 2))})
  for variant in (renamed, full):
    got = t5_interop.convert(variant, config)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_unused_or_missing_tensors_fail(t5_tensors):
  config, tensors = t5_tensors
  extra = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
  with pytest.raises(io.ConversionError, match=extra):  # a UMT5 checkpoint read as T5
    t5_interop.convert(dict(tensors, **{extra: np.zeros((16, 4), np.float32)}), config)
  missing = "encoder.final_layer_norm.weight"
  with pytest.raises(io.ConversionError, match=missing):
    t5_interop.convert({k: v for k, v in tensors.items() if k != missing}, config)


def test_config_errors_name_the_key():
  with pytest.raises(io.ConversionError, match="model_type"):
    t5_interop.config_from_hf({"model_type": "bert"})
  with pytest.raises(io.ConversionError, match="feed_forward_proj"):
    t5_interop.config_from_hf({"model_type": "t5", "feed_forward_proj": "gated-tanhshrink"})
  config = t5_interop.config_from_hf({"model_type": "umt5"})
  assert config.feed_forward_proj == "gated-gelu" and config.per_layer_position_bias
  assert dataclasses.replace(config, dtype="bfloat16") != config and hash(config)


# ---------------------------------------------------------------------------- tokenizer

CORPUS = ["A red square moves from left to right on a gray background.",
          "Two blue circles bounce slowly, then stop!",
          "the quick brown fox jumps over the lazy dog 12345",
          "Ünïcödé café naïve ｆｕｌｌｗｉｄｔｈ"] * 40


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  """(ours, transformers' T5Tokenizer) over one small unigram model with T5's special ids."""
  folder = tmp_path_factory.mktemp("spiece")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_prefix=str(folder / "spiece"), vocab_size=120,
      model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1, minloglevel=2)
  # transformers 5's T5Tokenizer(vocab_file=...) ignores the file's pieces; from_pretrained
  # on the folder converts the sentencepiece model.
  ref = transformers.T5Tokenizer.from_pretrained(str(folder))
  return t5_tokenizer.T5Tokenizer.load(folder), ref


TEXTS = ["A red square moves from left to right.", "", "  extra   spaces\tand\nnewlines  ",
         "the lazy fox " * 6, "Ünïcödé ｆｕｌｌ 日本語 😀", "x <extra_id_0> y</s>z<pad>",
         "a<extra_id_99>b <extra_id_100> <extra_id_07>"]


@pytest.mark.parametrize("max_len", [16, 1])
def test_tokenizer_matches_transformers(tokenizers, max_len):
  ours, ref = tokenizers
  want = ref(TEXTS, padding="max_length", max_length=max_len, truncation=True,
             add_special_tokens=True)
  ids, mask, truncated = ours.encode(TEXTS, max_len)
  np.testing.assert_array_equal(ids, np.array(want["input_ids"], np.int32))
  np.testing.assert_array_equal(mask, np.array(want["attention_mask"], bool))
  assert ids.dtype == np.int32 and mask.dtype == bool
  lengths = [len(ref(t)["input_ids"]) for t in TEXTS]
  assert truncated == sum(n > max_len for n in lengths) and truncated > 0


def test_tokenizer_vocab_decode_pickle(tokenizers):
  ours, ref = tokenizers
  assert ours.vocab_size == len(ref)
  ids, _, _ = ours.encode(["a red square moves", "two blue circles <extra_id_3>"], 40)
  assert ours.decode(ids) == ["a red square moves", "two blue circles<extra_id_3>"]
  assert ours.decode(ids[:1]) == [ref.decode(ids[0], skip_special_tokens=True)]
  again = pickle.loads(pickle.dumps(ours))
  np.testing.assert_array_equal(again.encode(TEXTS, 16)[0], ours.encode(TEXTS, 16)[0])
