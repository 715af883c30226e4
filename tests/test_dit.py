"""DiT, text encoder, attention and RoPE: shapes, equivalences with references, bad input."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from data_pipelines import packing
from data_pipelines import patches
from sora_jax.diffusion import flow
from sora_jax.models import attention as attn_lib
from sora_jax.models import dit
from sora_jax.models import rope
from sora_jax.models import text as text_lib

TOL = dict(rtol=1e-5, atol=1e-5)  # fp32 equivalences; never loosen to make a test pass
# These tests check numerics, not speed: skipping LLVM's optimisation cuts XLA:CPU compile
# time by about a third (the same options compile both sides of every comparison).
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _tiny_dit(**overrides):
  kw = dict(width=32, depth=2, num_heads=2, latent_channels=3, patch=(1, 2, 2))
  return dit.get_dit_config("tiny", **{**kw, **overrides})


def _tiny_text(depth=2):
  return text_lib.get_text_config("tiny", width=32, depth=depth, num_heads=2, vocab_size=64,
                                  max_len=8)


def _perturb(params, scale=0.05, seed=1):
  """Random offsets on every param, so zero-initialised gates and outputs are live (numpy:
  no per-shape compiles)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + scale * rng.normal(size=x.shape),
                                            x.dtype), nn.meta.unbox(params))


def _random_params(model, *args, seed=0):
  """Random params of `model` without compiling its init (XLA:CPU compiles are slow):
  norm scales 1 + 0.05 n, everything else 0.1 n."""
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    scale = 0.05 if base else 0.1
    return jnp.asarray(base + scale * rng.normal(size=x.shape), x.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _random_inputs(cfg, b=2, n=12, text_len=5, text_dim=16, seed=0):
  rng = np.random.default_rng(seed)
  return dict(tokens=jnp.asarray(rng.normal(size=(b, n, cfg.token_dim)), jnp.float32),
              positions=jnp.asarray(rng.integers(0, 6, (b, n, 3)), jnp.int32),
              segment_ids=jnp.asarray(np.sort(rng.integers(0, 3, (b, n)))[:, ::-1],
                                      jnp.int32),
              t=jnp.asarray(rng.uniform(size=(b, n)), jnp.float32),
              text=jnp.asarray(rng.normal(size=(b, text_len, text_dim)), jnp.float32),
              text_mask=jnp.asarray(rng.uniform(size=(b, text_len)) < 0.7))


# ----------------------------------------------------------------------------- shapes, config


@pytest.mark.parametrize("variant", list(dit.VARIANTS))
def test_dit_variant_shapes(variant):
  cfg = dit.get_dit_config(variant)
  model = dit.DiT(cfg)
  inputs = dit.dummy_inputs(cfg, batch=2, tokens=16, text_len=8, text_dim=64)
  params = jax.eval_shape(lambda a: model.init(jax.random.key(0), **a), inputs)
  out = jax.eval_shape(lambda p, a: model.apply(p, **a), params, inputs)
  assert out.shape == (2, 16, cfg.token_dim) and out.dtype == jnp.float32
  kernel = params["params"]["blocks"]["self_attention"]["query"]["kernel"]
  assert kernel.names == ("layers", "embed", "heads", "kv")
  assert kernel.value.shape == (cfg.depth, cfg.width, cfg.num_heads, cfg.head_dim)
  mlp = params["params"]["blocks"]["mlp"]["up"]["kernel"]
  assert mlp.names == ("layers", "embed", "mlp") and mlp.value.shape[-1] == cfg.mlp_hidden
  assert cfg.mlp_hidden == (cfg.mlp_dim or 4 * cfg.width)


@pytest.mark.parametrize("variant", list(text_lib.VARIANTS))
def test_text_encoder_variant_shapes(variant):
  cfg = text_lib.get_text_config(variant)
  model = text_lib.TextEncoder(cfg)
  ids = jax.ShapeDtypeStruct((2, 3, 16), jnp.int32)  # packed [B, K, L]
  mask = jax.ShapeDtypeStruct((2, 3, 16), jnp.bool_)
  params = jax.eval_shape(lambda i, m: model.init(jax.random.key(0), i, m), ids, mask)
  assert params["params"]["embed"]["embedding"].names == ("vocab", "embed")
  assert jax.eval_shape(model.apply, params, ids, mask).shape == (2, 3, 16, cfg.width)


def test_text_encoder_learned_positions_and_length_check():
  cfg = text_lib.get_text_config("tiny", position="learned", max_len=8)
  model = text_lib.TextEncoder(cfg)
  ids, mask = jax.ShapeDtypeStruct((2, 8), jnp.int32), jax.ShapeDtypeStruct((2, 8), jnp.bool_)
  params = jax.eval_shape(lambda i, m: model.init(jax.random.key(0), i, m), ids, mask)
  assert params["params"]["position_embed"].value.shape == (8, cfg.width)
  too_long = jax.ShapeDtypeStruct((2, 9), jnp.int32)
  with pytest.raises(ValueError, match="captions of 9 tokens exceed max_len=8"):
    jax.eval_shape(lambda i, m: model.init(jax.random.key(0), i, m), too_long, too_long)
  with pytest.raises(ValueError, match="position='alibi'"):
    text_lib.get_text_config("tiny", position="alibi")

@pytest.mark.parametrize("variant", ["tiny", "S"])
def test_text_encoder_init_keeps_each_token_distinguishable(variant):
  """A fresh encoder's output for a token tells which word it was, not only its caption.

  Two captions differ in two words. With GPT-2's 0.02 embedding init the changed token's
  outputs stay at cosine ~0.75 (the blocks' caption-wide attention output dominates the
  residual stream); with T5's 1.0 (`embed_std`) they are < 0.35. Threshold 0.5.
  """
  cfg = text_lib.get_text_config(variant, vocab_size=256)
  model = text_lib.TextEncoder(cfg)
  ids = np.random.default_rng(0).integers(1, 256, (1, 20))
  other = ids.copy()
  other[0, 8:10] = (7, 9)
  ids = np.concatenate([ids, other])
  mask = np.ones(ids.shape, bool)
  out = np.asarray(model.apply(model.init(jax.random.key(0), ids, mask), ids, mask))
  a, b = out[0, 8], out[1, 8]
  assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) < 0.5
  unchanged = out[:, 2] / np.linalg.norm(out[:, 2], axis=-1, keepdims=True)
  assert float(unchanged[0] @ unchanged[1]) > 0.5  # the same word in both is still alike


@pytest.mark.parametrize("variant", ["tiny", "S"])
def test_text_encoder_absolute_table_tells_word_order(variant):
  """"from left to right" vs "from right to left": the same words, two swapped.

  The DiT's cross-attention sees text tokens without positions, so order must reach it in
  the encoder's outputs. A fresh RoPE-only encoder gives a swapped word nearly the same
  output in both places (cosine 0.97-0.98 here); with "rope+learned" it is 0.64-0.66.
  Thresholds: below 0.8, and at least 0.2 below RoPE alone.
  """
  ids = np.random.default_rng(0).integers(1, 256, (1, 20))
  other = ids.copy()
  other[0, [6, 8]] = ids[0, [8, 6]]
  ids = np.concatenate([ids, other])
  mask = np.ones(ids.shape, bool)
  cosines = {}
  for position in ("rope", "rope+learned"):
    model = text_lib.TextEncoder(text_lib.get_text_config(variant, vocab_size=256,
                                                          position=position))
    out = np.asarray(model.apply(model.init(jax.random.key(0), ids, mask), ids, mask))
    a, b = out[0, 6], out[1, 8]  # the same word, before and after the swap
    cosines[position] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
  assert cosines["rope+learned"] < min(0.8, cosines["rope"] - 0.2), cosines



def test_bf16_compute_fp32_params():
  cfg = _tiny_dit(dtype="bfloat16", mlp="swiglu", fps_conditioning=True)
  model = dit.DiT(cfg)
  inputs = dit.dummy_inputs(cfg, batch=1, tokens=8, text_len=4, text_dim=16)
  params = jax.eval_shape(lambda a: model.init(jax.random.key(0), **a), inputs)
  assert {x.dtype for x in jax.tree.leaves(nn.meta.unbox(params))} == {jnp.dtype("float32")}
  jaxpr = jax.make_jaxpr(lambda p, a: model.apply(p, **a))(params, inputs)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  assert dots and all(e.invars[0].aval.dtype == jnp.bfloat16 for e in dots[:4])
  assert jaxpr.out_avals[0].dtype == jnp.float32


def test_logical_axes_shard_on_an_asymmetric_mesh():
  """Params get mesh shardings from logical rules; activations are constrained at block
  boundaries (lowering only: no compile). Without rules the same model runs unsharded."""
  cfg = _tiny_dit(width=64, num_heads=4)
  model = dit.DiT(cfg)
  inputs = dit.dummy_inputs(cfg, batch=2, tokens=8, text_dim=16)
  abstract = jax.eval_shape(lambda a: model.init(jax.random.key(0), **a), inputs)
  mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = (("batch", "fsdp"), ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"),
           ("vocab", "tensor"))  # unlisted names (layers, kv, tokens) stay unsharded
  specs = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
  blocks = specs["params"]["blocks"]
  assert blocks["self_attention"]["query"]["kernel"].spec == P(None, "fsdp", "tensor", None)
  assert blocks["self_attention"]["out"]["kernel"].spec == P(None, "tensor", None, "fsdp")
  assert blocks["mlp"]["down"]["kernel"].spec == P(None, "tensor", "fsdp")
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init = jax.jit(lambda a: model.init(jax.random.key(0), **a), out_shardings=specs)
    lowered = jax.jit(lambda p, a: model.apply(p, **a)).lower(abstract, inputs)
    init.lower(inputs)
  assert lowered.as_text().count("sharding_constraint") >= 2 * cfg.depth


def test_bad_configs_and_inputs():
  with pytest.raises(ValueError, match=r"Unknown DiT variant 'XXL'.*'tiny', 'XS', 'S', 'B', 'L', "):
    dit.get_dit_config("XXL")
  with pytest.raises(ValueError, match=r"Unknown DiTConfig field\(s\) \['widht'\]"):
    dit.get_dit_config("S", widht=3)
  with pytest.raises(ValueError, match="Unknown text encoder variant 'XL'"):
    text_lib.get_text_config("XL")
  with pytest.raises(ValueError, match="width=30 is not divisible by num_heads=4"):
    dit.get_dit_config("tiny", width=30, num_heads=4)
  with pytest.raises(ValueError, match="remat='everything'"):
    dit.get_dit_config("tiny", remat="everything")
  with pytest.raises(ValueError, match=r"patch \(pt, ph, pw\)=\(1, 2, 2\) does not divide "
                     r"the latents sizes \(T', h, w\)=\(5, 6, 7\)"):
    patches.patchify(np.zeros((5, 6, 7, 4)), (1, 2, 2))
  with pytest.raises(ValueError, match=r"\(2, 2, 2\) does not divide .*\(1, 4, 4\)"):
    patches.patchify(jnp.zeros((1, 4, 4, 4)), (2, 2, 2))  # an image with a temporal patch
  cfg = _tiny_dit()
  inputs = dit.dummy_inputs(cfg, tokens=4, text_dim=8)
  inputs["tokens"] = jax.ShapeDtypeStruct((1, 4, 7), jnp.float32)
  with pytest.raises(ValueError, match="tokens have 7 features.*gives 12"):
    jax.eval_shape(lambda a: dit.DiT(cfg).init(jax.random.key(0), **a), inputs)
  with pytest.raises(ValueError, match="fps_conditioning=True but fps was not given"):
    cfg = _tiny_dit(fps_conditioning=True)
    inputs = dit.dummy_inputs(cfg, tokens=4, text_dim=8)
    inputs.pop("fps")
    jax.eval_shape(lambda a: dit.DiT(cfg).init(jax.random.key(0), **a), inputs)


# ----------------------------------------------------------------------------- patches, RoPE


@pytest.mark.parametrize("shape,patch", [((5, 8, 6, 4), (1, 2, 2)), ((1, 4, 4, 3), (1, 2, 2)),
                                         ((4, 6, 3, 2), (2, 3, 1))])
def test_patchify_round_trip(shape, patch):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  tokens, positions = patches.patchify(x, patch)
  grid = [s // p for s, p in zip(shape[:3], patch)]
  assert tokens.shape == (np.prod(grid), np.prod(patch) * shape[-1])
  assert positions.dtype == np.int32 and positions.shape == (tokens.shape[0], 3)
  assert positions.max(0).tolist() == [g - 1 for g in grid]
  np.testing.assert_array_equal(patches.unpatchify(tokens, shape, patch), x)
  # Token i holds the patch at its position; same result on jax arrays.
  t, h, w = positions[-1]
  pt, ph, pw = patch
  block = x[t * pt:(t + 1) * pt, h * ph:(h + 1) * ph, w * pw:(w + 1) * pw]
  np.testing.assert_array_equal(tokens[-1], block.reshape(-1))
  np.testing.assert_array_equal(patches.patchify(jnp.asarray(x), patch)[0], tokens)


def test_rope_relative_position():
  """<rope(q, p1), rope(k, p2)> depends only on p1 - p2."""
  rng = np.random.default_rng(0)
  n, heads, head_dim = 64, 2, 48
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  q = jnp.asarray(unit(rng.normal(size=(1, n, heads, head_dim))), jnp.float32)
  k = jnp.asarray(unit(rng.normal(size=(1, n, heads, head_dim))), jnp.float32)
  p1, p2 = rng.integers(0, 32, (2, 1, n, 3))
  shift = rng.integers(-16, 16, (1, n, 3))
  dot = lambda a, b: jnp.sum(a * b, axis=-1)
  rot = lambda x, p: rope.apply_rope(x, jnp.asarray(p, jnp.int32), rope.VIDEO_PROPORTIONS)
  ref = dot(rot(q, p1), rot(k, p2))
  np.testing.assert_allclose(dot(rot(q, p1 + shift), rot(k, p2 + shift)), ref, **TOL)
  np.testing.assert_allclose(dot(rot(q, p1 - p2), k), ref, **TOL)
  assert not np.allclose(dot(rot(q, p1 + shift), rot(k, p2)), ref, atol=1e-3)
  np.testing.assert_allclose(rot(q, np.zeros_like(p1)), q, **TOL)
  assert rope.axis_pairs(48, (2, 3, 3)) == (6, 9, 9)
  assert rope.axis_pairs(16, (2, 3, 3)) == (2, 3, 3)
  assert sum(rope.axis_pairs(20, (2, 3, 3))) == 10


# ----------------------------------------------------------------------------- attention


def _reference_attention(q, k, v):
  """Plain numpy softmax attention, one sequence: q [N, H, Dh]; k, v [S, H, Dh]."""
  logits = np.einsum("nhd,shd->hns", q, k) / np.sqrt(q.shape[-1])
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  return np.einsum("hns,shd->nhd", probs / probs.sum(-1, keepdims=True), v)


def _qkv(b=2, n=10, s=10, h=2, d=8, seed=0):
  k0, k1, k2 = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(k0, (b, n, h, d)), jax.random.normal(k1, (b, s, h, d)),
          jax.random.normal(k2, (b, s, h, d)))


def test_segment_attention_equals_separate_attention():
  q, k, v = _qkv()
  _, tk, tv = _qkv(s=6, seed=1)
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 3, 0, 0], [1] * 6 + [2] * 4])
  text_seg = jnp.array([[1, 1, 1, 2, 2, 3], [1, 1, 2, 2, 2, 2]])
  text_mask = jnp.array([[1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 0, 1]], bool)

  @_jit
  def both(q, k, v, tk, tv):
    self_attn = attn_lib.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)
    # Cross-attention: queries of segment s see only text of segment s, minus padding.
    cross = attn_lib.attention(q, tk, tv, q_segment_ids=seg, kv_segment_ids=text_seg,
                               kv_mask=text_mask)
    return self_attn, cross

  out, cross = map(np.asarray, both(q, k, v, tk, tv))
  q, k, v, tk, tv = map(np.asarray, (q, k, v, tk, tv))
  seg, text_seg, text_mask = map(np.asarray, (seg, text_seg, text_mask))
  for row in range(2):
    for s in range(4):
      qi = np.nonzero(seg[row] == s)[0]
      if len(qi):
        np.testing.assert_allclose(out[row, qi],
                                   _reference_attention(q[row, qi], k[row, qi], v[row, qi]),
                                   **TOL)
      ki = np.nonzero((text_seg[row] == s) & text_mask[row])[0]
      if len(qi) and len(ki):
        np.testing.assert_allclose(
            cross[row, qi], _reference_attention(q[row, qi], tk[row, ki], tv[row, ki]), **TOL)


def test_rows_that_see_nothing_are_zero_and_finite():
  q, k, v = _qkv()
  kv_mask = jnp.zeros((2, 10), bool).at[1, :3].set(True)  # row 0: all padding
  seg = jnp.array([[0] * 10, [1] * 5 + [7] * 5])  # row 1, segment 7 has no text
  text_seg = jnp.ones((2, 10), jnp.int32)

  def f(q, k, v):
    return attn_lib.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=text_seg,
                              kv_mask=kv_mask)

  out = _jit(f)(q, k, v)
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[0], 0)
  np.testing.assert_array_equal(out[1, 5:], 0)
  assert np.abs(out[1, :5]).min() > 0
  grads = _jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2)))(q, k, v)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_attention_backends():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="'cudnn' needs a GPU.*'cpu'"):
    attn_lib.attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                       v.astype(jnp.bfloat16), backend="cudnn")
  with pytest.raises(ValueError, match="Unknown attention backend 'flash'"):
    attn_lib.attention(q, k, v, backend="flash")
  with pytest.raises(ValueError, match="needs both q_segment_ids and kv_segment_ids"):
    attn_lib.attention(q, k, v, q_segment_ids=jnp.ones((2, 10), jnp.int32))
  both = _jit(lambda q, k, v: (attn_lib.attention(q, k, v, backend="auto"),
                               attn_lib.attention(q, k, v)))
  np.testing.assert_array_equal(*both(q, k, v))


# ----------------------------------------------------------------------------- models


def test_text_encoder_padding_and_packed_layout():
  cfg = _tiny_text()
  model = text_lib.TextEncoder(cfg)
  rng = np.random.default_rng(0)
  ids = rng.integers(2, 64, (2, 3, 6)).astype(np.int32)
  lengths = np.array([[6, 0, 3], [2, 5, 1]])
  mask = np.arange(6) < lengths[..., None]
  ids = np.where(mask, ids, 0)
  params = _random_params(model, ids, mask)
  apply = _jit(model.apply)
  out = apply(params, ids, mask)
  np.testing.assert_array_equal(np.asarray(out)[~mask], 0)
  # Each caption is encoded on its own: packed [B, K, L] == flat [B * K, L].
  flat = apply(params, ids.reshape(6, 6), mask.reshape(6, 6))
  np.testing.assert_allclose(out.reshape(6, 6, -1), flat, **TOL)
  # What sits in the padding does not matter.
  noisy = np.where(mask, ids, rng.integers(2, 64, ids.shape)).astype(np.int32)
  np.testing.assert_allclose(apply(params, noisy, mask), out, **TOL)
  text, text_mask, text_seg = text_lib.flatten_packed_text(out, jnp.asarray(mask))
  assert text.shape == (2, 18, 32) and text_mask.shape == text_seg.shape == (2, 18)
  assert text_seg[0].tolist() == [1] * 6 + [2] * 6 + [3] * 6


@pytest.mark.parametrize("adaln", dit.ADALN_KINDS)
def test_init_is_zero_and_scan_equals_unrolled(adaln):
  cfg = _tiny_dit(adaln=adaln)
  inputs = _random_inputs(cfg)
  scanned, unrolled = dit.DiT(cfg), dit.DiT(_tiny_dit(scan_layers=False, adaln=adaln))
  params = _jit(lambda: scanned.init(jax.random.key(0), **inputs))()
  apply = _jit(scanned.apply)
  np.testing.assert_array_equal(apply(params, **inputs), 0)
  block_params = set(params["params"]["blocks"])
  if adaln == "single":  # one shared modulation layer; each block keeps a [6D] table
    assert "adaln_single" in params["params"] and "adaln" not in block_params
    assert params["params"]["blocks"]["adaln_table"].value.shape == (cfg.depth, 6 * cfg.width)
  else:
    assert "adaln" in block_params and "adaln_single" not in params["params"]
  params = _perturb(params)
  p = params["params"]
  blocks = {f"blocks_{i}": jax.tree.map(lambda x, i=i: x[i], p["blocks"])
            for i in range(cfg.depth)}
  unrolled_params = {"params": {**{k: v for k, v in p.items() if k != "blocks"}, **blocks}}
  ref = _jit(unrolled.apply)(unrolled_params, **inputs)
  assert np.abs(ref).mean() > 1e-3
  np.testing.assert_allclose(apply(params, **inputs), ref, **TOL)


def test_x0_prediction_returns_the_implied_velocity():
  """prediction="x0": v = (x_t - x0_hat) / max(t, X0_MIN_T), x0_hat = the "v" model's output."""
  cfg_v, cfg_x = _tiny_dit(), _tiny_dit(prediction="x0")
  inputs = _random_inputs(cfg_v)
  inputs["t"] = inputs["t"].at[0, :3].set(jnp.array([0.0, 0.01, 1.0]))  # clamp and t = 1
  params = _perturb(_jit(lambda: dit.DiT(cfg_v).init(jax.random.key(0), **inputs))())
  x0_hat = _jit(dit.DiT(cfg_v).apply)(params, **inputs)
  v = _jit(dit.DiT(cfg_x).apply)(params, **inputs)
  t = np.maximum(np.asarray(inputs["t"]), dit.X0_MIN_T)[..., None]
  np.testing.assert_allclose(v, (np.asarray(inputs["tokens"]) - x0_hat) / t, **TOL)
  with pytest.raises(ValueError, match="prediction"):
    _tiny_dit(prediction="eps")


def test_pooled_text_is_zero_without_a_caption():
  """With no caption token (dropped or empty), pooled_text adds exactly nothing: the
  unconditional model is the same with and without it; with a caption it changes v."""
  cfg, plain = _tiny_dit(), _tiny_dit(pooled_text=False)
  inputs = _random_inputs(cfg)
  params = _perturb(_jit(lambda: dit.DiT(cfg).init(jax.random.key(0), **inputs))())
  plain_params = {"params": {k: v for k, v in params["params"].items() if k != "text_pool"}}
  for mask, equal in ((jnp.zeros_like(inputs["text_mask"]), True), (inputs["text_mask"], False)):
    a = _jit(dit.DiT(cfg).apply)(params, **{**inputs, "text_mask": mask})
    b = _jit(dit.DiT(plain).apply)(plain_params, **{**inputs, "text_mask": mask})
    if equal:
      np.testing.assert_array_equal(a, b)
    else:
      assert np.abs(np.asarray(a) - np.asarray(b)).mean() > 1e-3


def _squared_output_grads(model, params, inputs):
  return _jit(jax.grad(lambda p: jnp.sum(jnp.square(model.apply(p, **inputs)))))(params)


@pytest.fixture(scope="module")
def no_remat_grads():
  """(inputs, params, gradients) of the tiny DiT without remat, computed once."""
  plain = dit.DiT(_tiny_dit())
  inputs = _random_inputs(_tiny_dit())
  params = _perturb(_jit(lambda: plain.init(jax.random.key(0), **inputs))())
  return inputs, params, _squared_output_grads(plain, params, inputs)


@pytest.mark.parametrize("policy", [p for p in dit.REMAT_POLICIES if p != "none"])
def test_remat_policies_keep_params_and_gradients(policy, no_remat_grads):
  """A policy only trades memory for recomputation: the parameter tree (so checkpoints move
  between policies) and the gradients are those without remat (float32, rtol 1e-5, atol 1e-6)."""
  inputs, params, expected = no_remat_grads
  model = dit.DiT(_tiny_dit(remat=policy))
  shapes = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs)))
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)
  for a, b in zip(jax.tree.leaves(_squared_output_grads(model, params, inputs)),
                  jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _clips():
  """3 clips of different sizes: a video (3, 4, 4) and a wide image (1, 4, 12) of 12 tokens
  each, and a short video (2, 2, 4) of 4 tokens; captions of 5, 0 (empty) and 3 tokens."""
  rng = np.random.default_rng(0)
  sizes, lengths = [(3, 4, 4, 3), (1, 4, 12, 3), (2, 2, 4, 3)], [5, 0, 3]
  clips = []
  for i, (shape, length) in enumerate(zip(sizes, lengths)):
    ids = np.zeros(6, np.int32)
    ids[:length] = rng.integers(2, 64, length)
    ex = packing.clip_example(rng.normal(size=shape).astype(np.float32), ids, ids > 0,
                              (1, 2, 2), clip_index=i)
    ex["eps"] = rng.normal(size=ex["tokens"].shape).astype(np.float32)
    ex["t"] = np.full(ex["tokens"].shape[:1], rng.uniform(), np.float32)
    clips.append(ex)
  return clips


def test_fractional_positions_are_per_clip_and_resolution_free():
  clips = _clips()
  (packed,) = packing.pack_examples(clips, seq_len=32, max_clips=4)
  seg, pos = packed["segment_ids"], packed["positions"]
  frac = np.asarray(dit.fractional_positions(jnp.asarray(pos[None]), jnp.asarray(seg[None])))[0]
  for s, c in enumerate(clips, start=1):  # grids (h, w): (2, 2), (2, 6), (1, 2) patches
    grid = c["positions"][:, 1:].max(0) + 1
    np.testing.assert_allclose(frac[seg == s], (c["positions"][:, 1:] + 0.5) / grid,
                               rtol=0, atol=1e-6)
  assert frac[seg > 0].min() > 0 and frac[seg > 0].max() < 1
  # fractional_thw: (t, h, w); a clip's time runs over its own frames (an image sits at 0.5).
  thw = np.asarray(dit.fractional_positions(jnp.asarray(pos[None]), jnp.asarray(seg[None]),
                                            dit.FRACTIONAL_AXES["fractional_thw"]))[0]
  for s, c in enumerate(clips, start=1):
    grid = c["positions"].max(0) + 1
    np.testing.assert_allclose(thw[seg == s], (c["positions"] + 0.5) / grid, rtol=0, atol=1e-6)
  assert len({tuple(g) for g in (c["positions"].max(0) + 1 for c in clips)}) == 3
  emb = np.asarray(dit.fractional_embedding(jnp.asarray(thw[None]), 32))[0]
  assert emb.shape == (32, 32) and np.all(emb[:, 30:] == 0)  # 3 axes x 2 x 5 = 30 features
  # The same place (cell centre) in a 2x4 and a 3x larger grid: the same features.
  small = np.array([[[0, 1, 3]]]), np.array([[[0, 4, 10]]])
  grids = [np.stack(np.meshgrid([0], np.arange(g), np.arange(2 * g), indexing="ij"), -1)
           .reshape(1, -1, 3) for g in (2, 6)]
  feats = []
  for grid, (p,) in zip(grids, small):
    f = dit.fractional_positions(jnp.asarray(grid), jnp.ones(grid.shape[:2], jnp.int32))
    index = int(np.flatnonzero((grid[0] == p[0]).all(-1))[0])
    feats.append(np.asarray(dit.fractional_embedding(f, 30))[0, index])
  np.testing.assert_allclose(feats[0], feats[1], rtol=0, atol=1e-6)
  assert feats[0].shape == (30,) and np.all(feats[0][-2:] == 0)  # 30 = 4 * 7 + 2 zeros


def test_packed_equals_unpacked_loss_and_grads():
  """A packed row of 3 clips gives the loss and gradients of the 3 clips on their own.

  The reference is the plain unpacked path (one clip a row, no segment ids, no padding):
  the two 12-token clips as a batch of 2, the 4-token clip alone, losses weighted 2:1.
  """
  # One unrolled block each keeps the compiles affordable on CPU; depth and scan are
  # covered by test_init_is_zero_and_scan_equals_unrolled.
  # Fractional positions are per clip, so packing must not change them either.
  dit_model = dit.DiT(_tiny_dit(depth=1, scan_layers=False, pos_embed="fractional"))
  text_model = text_lib.TextEncoder(_tiny_text(depth=1))
  clips = _clips()
  (packed,) = packing.pack_examples(clips, seq_len=32, max_clips=4)
  seg = packed["segment_ids"]
  assert packing.packing_efficiency(seg) == 28 / 32
  eps, t = np.zeros_like(packed["tokens"]), np.zeros(32, np.float32)
  for s, c in enumerate(clips, start=1):  # pack_examples keeps the input order here
    eps[seg == s], t[seg == s] = c["eps"], c["t"]

  def packed_loss(params):
    emb = text_model.apply(params["text"], packed["text_ids"][None], packed["text_mask"][None])
    text, text_mask, text_seg = text_lib.flatten_packed_text(emb, packed["text_mask"][None])
    xt, target = flow.add_noise(packed["tokens"][None], eps[None], t[None])
    v = dit_model.apply(params["dit"], xt, packed["positions"][None], seg[None], t[None],
                        text, text_mask, text_seg)
    return flow.flow_loss(v, target, seg[None])

  def unpacked_loss(params, batch):
    emb = text_model.apply(params["text"], batch["text_ids"], batch["text_mask"])
    xt, target = flow.add_noise(batch["tokens"], batch["eps"], batch["t"])
    ones = np.ones(batch["t"].shape, np.int32)
    v = dit_model.apply(params["dit"], xt, batch["positions"], ones, batch["t"], emb,
                        batch["text_mask"])
    return flow.flow_loss(v, target, ones)

  stack = lambda cs: {k: np.stack([c[k] for c in cs]) for k in cs[0]}
  pair, single = stack(clips[:2]), stack(clips[2:])
  params = {"text": _random_params(text_model, pair["text_ids"], pair["text_mask"]),
            "dit": _random_params(dit_model, pair["tokens"], pair["positions"],
                                  np.ones((2, 12), np.int32), pair["t"],
                                  jnp.zeros((2, 6, 32)), pair["text_mask"], seed=1)}
  loss, grads = _jit(jax.value_and_grad(packed_loss))(params)
  reference = _jit(jax.value_and_grad(unpacked_loss))
  (pair_loss, pair_grads), (single_loss, single_grads) = reference(params, pair), reference(
      params, single)
  ref_loss = (2 * pair_loss + single_loss) / 3
  ref_grads = jax.tree.map(lambda a, b: (2 * a + b) / 3, pair_grads, single_grads)
  assert ref_loss > 0.1
  np.testing.assert_allclose(loss, ref_loss, **TOL)
  flat, ref_flat = jax.tree.leaves_with_path(grads), jax.tree.leaves(ref_grads)
  assert sum(float(jnp.abs(g).sum()) for g in ref_flat) > 1.0
  for (path, g), r in zip(flat, ref_flat):
    np.testing.assert_allclose(g, r, **TOL, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("adaln", ["per_block", "single"])
def test_per_slot_modulation_equals_per_token(adaln):
  """adaln_slots computes the blocks' modulation once per (clip, given) slot: on packed rows
  where each clip's generated tokens share one t and its given tokens have t = 0, the
  outputs and gradients are the per-token model's."""
  base = _tiny_dit(adaln=adaln)
  inputs = _random_inputs(base, b=2, n=12)
  seg = np.asarray(inputs["segment_ids"])
  clip_t = np.random.default_rng(3).uniform(0.1, 1.0, size=(2, 3))
  t = np.take_along_axis(clip_t, seg, axis=1)
  t[:, :2] = 0.0  # the first tokens of each row are given (conditioning frames)
  inputs["t"] = jnp.asarray(t, jnp.float32)
  per_token, per_slot = dit.DiT(base), dit.DiT(_tiny_dit(adaln=adaln, adaln_slots=8))
  params = _perturb(_random_params(per_token, *inputs.values()))

  def loss(model, p):
    return jnp.sum(jnp.square(model.apply(p, **inputs)) * (seg > 0)[..., None])

  want, want_grads = _jit(jax.value_and_grad(functools.partial(loss, per_token)))(params)
  got, got_grads = _jit(jax.value_and_grad(functools.partial(loss, per_slot)))(params)
  assert float(want) > 1.0
  np.testing.assert_allclose(got, want, **TOL)
  for (path, g), r in zip(jax.tree.leaves_with_path(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, r, **TOL, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("masks", ["none", "segments", "segments+keys"])
def test_blocked_attention_equals_dense(monkeypatch, masks):
  """The blocked backend (online softmax over key blocks, recomputing backward) gives the
  dense reference's outputs and q/k/v gradients: several blocks, a padded last block, packed
  segments, padding keys and a row that sees nothing (0, with finite gradients)."""
  monkeypatch.setattr(attn_lib, "BLOCK", 4)  # 10 keys: blocks of 4, 4 and 2 (+ 2 padded)
  q, k, v = _qkv()
  kw = {}
  if masks != "none":
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 3, 0, 0], [1] * 6 + [2] * 4])
    kw = dict(q_segment_ids=seg, kv_segment_ids=seg)
  if masks == "segments+keys":
    kw["kv_mask"] = jnp.array([[1, 1, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 10], bool)
    kw["q_segment_ids"] = kw["q_segment_ids"].at[1, 9].set(5)  # sees no key

  def loss(backend, q, k, v):
    out = attn_lib.attention(q, k, v, backend=backend, **kw)
    return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape) / out.size), out

  grad = lambda backend: _jit(jax.value_and_grad(functools.partial(loss, backend),
                                                 argnums=(0, 1, 2), has_aux=True))(q, k, v)
  (_, want), want_grads = grad("xla")
  (_, got), got_grads = grad("blocked")
  np.testing.assert_allclose(got, want, **TOL)
  for g, r in zip(got_grads, want_grads):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, r, **TOL)
  if masks == "segments+keys":
    np.testing.assert_array_equal(got[1, 9], 0)
