"""Context-parallel attention (ring, all-to-all) against dense attention, on 8 fake CPUs.

Every shard_map has a dense reference here: outputs and gradients equal the "xla" backend
to 1e-5 (fp32) with packing segment ids and a key mask (padding rows must be exactly 0),
for self-attention split over context 2, 4 and 8 and for cross-attention to a short,
replicated text sequence with text segment ids and a dropped caption.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.models import attention
from sora_jax.sharding import context as context_lib
from sora_jax.sharding import mesh as mesh_lib

B, N, H, DH, L = 4, 32, 4, 8, 12


def _packed(seed=0):
  """q, k, v [B, N, H, Dh]; seg [B, N] with 2-3 clips and padding (0)."""
  r = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(r.normal(size=(B, N, H, DH)), jnp.float32) for _ in range(3))
  seg = np.zeros((B, N), np.int32)
  seg[:, :9], seg[:, 9:20], seg[:, 20:27] = 1, 2, 3
  seg[1, 20:] = 0  # a row with more padding
  seg[2, :] = 1  # a row holding one clip, no padding
  return q, k, v, jnp.asarray(seg)


def _self(backend, q, k, v, seg):
  return attention.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,
                             kv_mask=seg > 0, backend=backend)


def _loss(fn):
  # A nonlinear read-out so every output element has its own cotangent.
  return lambda q, k, v, *rest: jnp.sum(jnp.sin(fn(q, k, v, *rest)) * (1 + q))


@pytest.mark.parametrize("backend, sizes", [
    ("ring", {"context": 2, "data": 4}),
    ("ring", {"context": 4, "fsdp": 2}),
    ("ring", {"context": 8}),
    ("all_to_all", {"context": 2, "fsdp": 4}),
    ("all_to_all", {"context": 4, "data": 2}),
])
def test_context_self_attention_equals_dense_with_packing(backend, sizes):
  q, k, v, seg = _packed()
  fn = lambda be: (lambda q, k, v: _self(be, q, k, v, seg))
  ref = jax.jit(fn("xla"))(q, k, v)
  ref_grads = jax.jit(jax.grad(_loss(fn("xla")), argnums=(0, 1, 2)))(q, k, v)
  with jax.set_mesh(mesh_lib.make_mesh(sizes)):
    assert context_lib.context_size() == sizes["context"]
    out = jax.jit(fn(backend))(q, k, v)
    grads = jax.jit(jax.grad(_loss(fn(backend)), argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  for g, g_ref in zip(grads, ref_grads):
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)
  padding = np.asarray(seg) == 0  # queries whose every key is masked
  assert padding.any() and np.all(np.asarray(out)[padding] == 0)


@pytest.mark.parametrize("backend", ["ring", "all_to_all"])
def test_context_cross_attention_to_replicated_text(backend):
  """Queries split over context; text K/V replicated; each clip sees only its caption."""
  q, _, _, seg = _packed(1)
  r = np.random.default_rng(2)
  k, v = (jnp.asarray(r.normal(size=(B, 3 * L, H, DH)), jnp.float32) for _ in range(2))
  text_seg = jnp.asarray(np.repeat(np.arange(1, 4), L)[None].repeat(B, 0), jnp.int32)
  text_mask = np.ones((B, 3 * L), bool)
  text_mask[:, 5:L] = False  # caption 1 is 5 tokens long
  text_mask[0, L:2 * L] = False  # row 0, clip 2: caption dropped (CFG) -> exactly 0
  text_mask = jnp.asarray(text_mask)

  def fn(be):
    return lambda q, k, v: attention.attention(
        q, k, v, q_segment_ids=seg, kv_segment_ids=text_seg, kv_mask=text_mask,
        backend=be, self_attention=False)

  ref = jax.jit(fn("xla"))(q, k, v)
  ref_grads = jax.jit(jax.grad(_loss(fn("xla")), argnums=(0, 1, 2)))(q, k, v)
  with jax.set_mesh(mesh_lib.make_mesh({"context": 4, "data": 2})):
    out = jax.jit(fn(backend))(q, k, v)
    grads = jax.jit(jax.grad(_loss(fn(backend)), argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  for g, g_ref in zip(grads, ref_grads):
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)
  dropped = np.asarray(seg[0]) == 2
  assert np.all(np.asarray(out)[0][dropped] == 0)
  assert np.all(np.asarray(out)[np.asarray(seg) == 0] == 0)  # padding sees no caption


def test_context_falls_back_to_dense_without_context_axis():
  q, k, v, seg = _packed(3)
  ref = _self("xla", q, k, v, seg)
  for backend in ("ring", "all_to_all"):
    assert context_lib.context_size() == 1
    np.testing.assert_array_equal(_self(backend, q, k, v, seg), ref)  # no mesh
    with jax.set_mesh(mesh_lib.make_mesh({"data": 8})):  # a mesh, context size 1
      np.testing.assert_array_equal(jax.jit(lambda *a: _self(backend, *a))(q, k, v, seg),
                                    jax.jit(lambda *a: _self("xla", *a))(q, k, v, seg))


def test_context_without_masks_and_in_bfloat16():
  q, k, v, _ = _packed(4)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  ref = attention.attention(q, k, v).astype(jnp.float32)
  with jax.set_mesh(mesh_lib.make_mesh({"context": 4, "data": 2})):
    for backend in ("ring", "all_to_all"):
      out = jax.jit(lambda q, k, v: attention.attention(q, k, v, backend=backend))(q, k, v)
      assert out.dtype == jnp.bfloat16
      np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=2e-2)


@pytest.mark.parametrize("backend, sizes, shape, match", [
    ("ring", {"context": 8}, (B, 36, H, DH), r"query tokens N=36 is not divisible by .* 8"),
    ("all_to_all", {"context": 8}, (B, N, H, DH), r"num_heads=4 is not divisible by .* 8"),
])
def test_context_bad_shapes_give_clear_errors(backend, sizes, shape, match):
  x = jnp.zeros(shape, jnp.float32)
  with jax.set_mesh(mesh_lib.make_mesh(sizes)):
    with pytest.raises(ValueError, match=match):
      jax.jit(lambda x: attention.attention(x, x, x, backend=backend))(x)
