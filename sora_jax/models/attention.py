"""Scaled dot-product attention behind one function, and the multi-head attention layer.

`attention(q, k, v, ...)` (Vaswani et al., 2017) takes `[B, N, H, Dh]` queries and
`[B, S, H, Dh]` keys/values and masks with:
  * segment ids (NaViT packing, Dehghani et al., 2023, arXiv:2307.06304): query i attends to
    key j only where `q_segment_ids[i] == kv_segment_ids[j]`, so attention is block-diagonal
    by segment and packed clips never see each other;
  * `kv_mask`: keys that exist (text padding is False).
A query row that may attend to nothing (padding, an empty caption) outputs exactly 0, never
NaN, in every backend.

Backends, one function each, picked by name through a small dispatcher:
  "xla":   einsum + fp32 softmax; runs everywhere (CPU tests). The reference.
  "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (flash attention); GPU only,
           bf16/fp16 inputs.
  "auto":  "cudnn" on GPU with bf16/fp16 inputs and a head dim cuDNN supports, else "xla".
  "blocked": keys in blocks with an online softmax and a recomputing backward pass
           (`blocked_attention`): never holds [B, H, N, S]; any backend.
  "ring", "all_to_all": context parallelism over the mesh's `context` axis (ring attention
           or DeepSpeed-Ulysses, `sora_jax/sharding/context.py`), with "auto" as the local
           kernel; dense "auto" when there is no mesh or its context axis has size 1.

`MultiHeadAttention` is the Linen layer both the DiT and the text encoder use: q/k/v/out
projections, optional QK RMSNorm (as in SD3, Esser et al., 2024, arXiv:2403.03206) and
optional rotary position embedding (Su et al., 2021, arXiv:2104.09864; see `rope.py`).
"""
from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models import rope
from sora_jax.sharding import context as context_lib

CONTEXT_BACKENDS = ("ring", "all_to_all")
BACKENDS = ("xla", "cudnn", "auto", "blocked") + CONTEXT_BACKENDS
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
QK_NORM_AXES = {"head": ("kv",), "all_heads": ("heads", "kv")}  # what QK RMSNorm spans


def attention_mask(q_len: int, kv_len: int, batch: int, q_segment_ids=None,
                   kv_segment_ids=None, kv_mask=None, causal: bool = False
                   ) -> jax.Array | None:
  """Boolean mask [B, N, S] (True = may attend), or None when nothing is masked.

  Args:
    q_len, kv_len, batch: N, S, B.
    q_segment_ids: [B, N] int, or None.
    kv_segment_ids: [B, S] int, or None. Segment masking needs both segment id arrays.
    kv_mask: [B, S] bool, or None.
    causal: query i sees keys j <= i only (self-attention, N == S). With segment ids this
      is causal within each segment, as long as a segment's tokens are in order.
  """
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Segment masking needs both q_segment_ids and kv_segment_ids; got "
                     f"q_segment_ids={'None' if q_segment_ids is None else 'array'}, "
                     f"kv_segment_ids={'None' if kv_segment_ids is None else 'array'}.")
  mask = None
  if q_segment_ids is not None:
    mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  if kv_mask is not None:
    kv = jnp.broadcast_to(kv_mask[:, None, :].astype(bool), (batch, q_len, kv_len))
    mask = kv if mask is None else mask & kv
  if causal:
    if q_len != kv_len:
      raise ValueError(f"Causal attention needs as many keys as queries; got {q_len} "
                       f"queries and {kv_len} keys.")
    tri = jnp.broadcast_to(jnp.tril(jnp.ones((q_len, kv_len), bool)), (batch, q_len, kv_len))
    mask = tri if mask is None else mask & tri
  return mask


def _xla_attention(q, k, v, mask):
  """Reference: fp32 logits and softmax. q: [B, N, H, Dh]; k, v: [B, S, H, Dh]; mask [B, N, S]."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bnhd,bshd->bhns", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhns,bshd->bnhd", probs, v)


def _cudnn_attention(q, k, v, mask):
  """cuDNN flash attention (GPU). Same contract as `_xla_attention`."""
  if jax.default_backend() != "gpu":
    raise ValueError(f"attention backend 'cudnn' needs a GPU, but JAX's default backend is "
                     f"{jax.default_backend()!r}; use backend='xla' or 'auto'.")
  if q.dtype not in _CUDNN_DTYPES:
    raise ValueError(f"attention backend 'cudnn' needs bfloat16 or float16 q/k/v; got "
                     f"{q.dtype}. Set the model dtype to bfloat16 or use backend='auto'.")
  mask = None if mask is None else mask[:, None]  # [B, 1, N, S], broadcast over heads
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


BLOCK = 128  # keys a step of the blocked backend


def _block_mask(q_seg, kv_seg, kv_mask, j0: int, size: int):
  """[B, 1, N, size] bool of keys j0..j0+size, or None (the masks of `attention_mask`)."""
  mask = None
  if q_seg is not None:
    kv = jax.lax.dynamic_slice_in_dim(kv_seg, j0, size, axis=1)
    mask = q_seg[:, None, :, None] == kv[:, None, None, :]
  if kv_mask is not None:
    kv = jax.lax.dynamic_slice_in_dim(kv_mask, j0, size, axis=1)[:, None, None, :]
    mask = kv if mask is None else mask & kv
  return mask


def _scaled_queries(q):
  """[B, N, H, Dh] -> [B, H, N, Dh] float32, times Dh^-1/2."""
  return jnp.swapaxes(q, 1, 2).astype(jnp.float32) * q.shape[-1] ** -0.5


def _key_block(qt, k, v, q_seg, kv_seg, kv_mask, j0):
  """(keys, values, logits [B, H, N, BLOCK], mask or None) of the key block at j0."""
  kj = jax.lax.dynamic_slice_in_dim(k, j0, BLOCK, axis=1).astype(jnp.float32)
  vj = jax.lax.dynamic_slice_in_dim(v, j0, BLOCK, axis=1).astype(jnp.float32)
  logits = jnp.einsum("bhnd,bshd->bhns", qt, kj)
  return kj, vj, logits, _block_mask(q_seg, kv_seg, kv_mask, j0, BLOCK)


def _blocked_forward(q, k, v, q_seg, kv_seg, kv_mask):
  """(out [B, H, N, Dh] f32, logsumexp [B, H, N] f32): online softmax over key blocks."""
  b, n, h, d = q.shape
  qt = _scaled_queries(q)
  neg = jnp.finfo(jnp.float32).min

  def body(carry, j0):
    m, l, acc = carry
    _, vj, logits, mask = _key_block(qt, k, v, q_seg, kv_seg, kv_mask, j0)
    if mask is not None:
      logits = jnp.where(mask, logits, neg)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    p = jnp.exp(logits - m_new[..., None])
    if mask is not None:  # a masked key adds exactly 0, also while a row has seen nothing
      p = jnp.where(mask, p, 0.0)
    corr = jnp.exp(m - m_new)
    l = l * corr + jnp.sum(p, axis=-1)
    acc = acc * corr[..., None] + jnp.einsum("bhns,bshd->bhnd", p, vj)
    return (m_new, l, acc), None

  init = (jnp.full((b, h, n), neg, jnp.float32), jnp.zeros((b, h, n), jnp.float32),
          jnp.zeros((b, h, n, d), jnp.float32))
  (m, l, acc), _ = jax.lax.scan(body, init, jnp.arange(0, k.shape[1], BLOCK))
  out = acc / jnp.maximum(l, 1e-30)[..., None]  # a row that saw nothing: acc = 0 -> 0
  return out, m + jnp.log(jnp.maximum(l, 1e-30))


@jax.custom_vjp
def _blocked_core(q, k, v, q_seg, kv_seg, kv_mask):
  return _blocked_forward(q, k, v, q_seg, kv_seg, kv_mask)[0]


def _blocked_fwd(q, k, v, q_seg, kv_seg, kv_mask):
  out, lse = _blocked_forward(q, k, v, q_seg, kv_seg, kv_mask)
  return out, (q, k, v, q_seg, kv_seg, kv_mask, out, lse)


def _blocked_bwd(res, g):
  """Recomputes each key block's probabilities from the saved logsumexp (FlashAttention-2)."""
  q, k, v, q_seg, kv_seg, kv_mask, out, lse = res
  qt = _scaled_queries(q)
  g = g.astype(jnp.float32)
  delta = jnp.sum(g * out, axis=-1)  # [B, H, N]

  def body(dq, j0):
    kj, vj, logits, mask = _key_block(qt, k, v, q_seg, kv_seg, kv_mask, j0)
    p = jnp.exp(logits - lse[..., None])
    if mask is not None:
      p = jnp.where(mask, p, 0.0)
    dv = jnp.einsum("bhns,bhnd->bshd", p, g)
    dp = jnp.einsum("bhnd,bshd->bhns", g, vj)
    ds = p * (dp - delta[..., None])
    dq = dq + jnp.einsum("bhns,bshd->bhnd", ds, kj)
    dk = jnp.einsum("bhns,bhnd->bshd", ds, qt)  # qt holds the scale
    return dq, (dk, dv)

  dq, (dk, dv) = jax.lax.scan(body, jnp.zeros(qt.shape, jnp.float32),
                              jnp.arange(0, k.shape[1], BLOCK))
  s_len = k.shape[1]
  # [nb, B, BLOCK, H, Dh] -> [B, S, H, Dh]
  unblock = lambda x: jnp.moveaxis(x, 0, 1).reshape(x.shape[1], s_len, *x.shape[3:])
  dq = jnp.swapaxes(dq * q.shape[-1] ** -0.5, 1, 2)
  none = lambda x: None if x is None else np.zeros(x.shape, jax.dtypes.float0)
  return (dq.astype(q.dtype), unblock(dk).astype(k.dtype), unblock(dv).astype(v.dtype),
          none(q_seg), none(kv_seg), none(kv_mask))


_blocked_core.defvjp(_blocked_fwd, _blocked_bwd)


def blocked_attention(q, k, v, q_segment_ids=None, kv_segment_ids=None,
                      kv_mask=None) -> jax.Array:
  """Attention that never holds [B, H, N, S]: keys in blocks of BLOCK with an online softmax,
  and a backward pass that recomputes each block (FlashAttention-2, Dao 2023, in plain XLA).

  Same contract as `attention`; S is padded to a multiple of BLOCK with masked keys.
  """
  s_len = k.shape[1]
  pad = -s_len % BLOCK
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    k, v = jnp.pad(k, widths), jnp.pad(v, widths)
    kv_mask = jnp.ones(k.shape[:1] + (s_len,), bool) if kv_mask is None else kv_mask
    kv_mask = jnp.pad(kv_mask.astype(bool), ((0, 0), (0, pad)))
    if kv_segment_ids is not None:
      kv_segment_ids = jnp.pad(kv_segment_ids, ((0, 0), (0, pad)))
  if kv_mask is not None:
    kv_mask = kv_mask.astype(bool)
  out = _blocked_core(q, k, v, q_segment_ids, kv_segment_ids, kv_mask)
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def _auto_backend(q) -> Callable:
  head_dim = q.shape[-1]
  if (jax.default_backend() == "gpu" and q.dtype in _CUDNN_DTYPES and head_dim <= 128
      and head_dim % 8 == 0):
    return _cudnn_attention
  return _xla_attention


def _masked(fn: Callable, q, k, v, q_segment_ids, kv_segment_ids, kv_mask,
            causal: bool = False) -> jax.Array:
  """Runs one dense backend `fn(q, k, v, mask)` with the masks and the zero-row contract."""
  b, n, _, _ = q.shape
  mask = attention_mask(n, k.shape[1], b, q_segment_ids, kv_segment_ids, kv_mask, causal)
  out = fn(q, k, v, mask)
  if mask is not None:  # a row that sees nothing gets 0 instead of a mean over masked keys
    out = jnp.where(jnp.any(mask, axis=-1)[:, :, None, None], out, 0)
  return out.astype(q.dtype)


def _local_auto(q, k, v, q_segment_ids, kv_segment_ids, kv_mask) -> jax.Array:
  """Dense "auto" attention: the local kernel of the context-parallel backends."""
  return _masked(_auto_backend(q), q, k, v, q_segment_ids, kv_segment_ids, kv_mask)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segment_ids=None,
              kv_segment_ids=None, kv_mask=None, backend: str = "xla",
              self_attention: bool | None = None, causal: bool = False) -> jax.Array:
  """Multi-head scaled dot-product attention with segment, key and causal masks.

  Args:
    q: [B, N, H, Dh] queries.
    k, v: [B, S, H, Dh] keys and values.
    q_segment_ids: [B, N] int; with `kv_segment_ids`, query i sees key j only where the ids
      are equal (block-diagonal attention over packed segments).
    kv_segment_ids: [B, S] int.
    kv_mask: [B, S] bool; False keys are never attended (text padding).
    backend: one of BACKENDS.
    self_attention: for the context-parallel backends only: True when k/v are the same
      sequence as q (split over the context axis with it), False for cross-attention to a
      short sequence (text; replicated over the context axis). None: S == N.
    causal: query i sees keys j <= i only (an autoregressive decoder); dense backends only.

  Returns:
    [B, N, H, Dh] in q's dtype; rows with no key to attend to are exactly 0.
  """
  if backend not in BACKENDS:
    raise ValueError(f"Unknown attention backend {backend!r}; known backends: {BACKENDS}.")
  if causal and backend not in ("xla", "cudnn", "auto"):
    raise ValueError(f"Causal attention runs on the dense backends (xla, cudnn, auto), not "
                     f"{backend!r}.")
  if backend in CONTEXT_BACKENDS:
    fn = {"ring": context_lib.ring_attention,
          "all_to_all": context_lib.all_to_all_attention}[backend]
    if self_attention is None:
      self_attention = k.shape[1] == q.shape[1]
    return fn(q, k, v, q_segment_ids, kv_segment_ids, kv_mask,
              self_attention=self_attention, local=_local_auto)
  if backend == "blocked":
    return blocked_attention(q, k, v, q_segment_ids, kv_segment_ids, kv_mask)
  fns = {"xla": _xla_attention, "cudnn": _cudnn_attention}
  fn = _auto_backend(q) if backend == "auto" else fns[backend]
  return _masked(fn, q, k, v, q_segment_ids, kv_segment_ids, kv_mask, causal)


class RMSNorm(nn.Module):
  """RMS normalisation over the last axes with a learned scale (Zhang & Sennrich, 2019).

  Attributes:
    axis_names: logical names of the normalised (last) axes, for the scale's partitioning;
      ("kv",) normalises each head, ("heads", "kv") all heads together (Wan's QK norm).
  """
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  axis_names: tuple[str, ...] = ("kv",)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    axes = tuple(range(-len(self.axis_names), 0))
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             self.axis_names),
                       x.shape[len(x.shape) + axes[0]:], self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=axes, keepdims=True) + self.epsilon)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


class HeadsProjection(nn.Module):
  """Linear map between [..., D] and per-head [..., H, Dh] features.

  A full-rank kernel with logical axes, instead of `nn.DenseGeneral` (which initialises a
  flattened 2D kernel and so cannot carry 3 logical axis names under a mesh).

  Attributes:
    num_heads, head_dim: H, Dh.
    to_heads: True maps [..., D] -> [..., H, Dh]; False maps [..., H, Dh] -> [..., features].
    features: output D when `to_heads` is False.
    zero_init: zero kernel (layers that start as a no-op).
  """
  num_heads: int
  head_dim: int
  to_heads: bool = True
  features: int | None = None
  zero_init: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h, dh = self.num_heads, self.head_dim
    if self.to_heads:
      shape, names, fans = (x.shape[-1], h, dh), ("embed", "heads", "kv"), (0, (1, 2))
      bias_shape, bias_names, eq = (h, dh), ("heads", "kv"), "...d,dhk->...hk"
    else:
      shape, names, fans = (h, dh, self.features), ("heads", "kv", "embed"), ((0, 1), 2)
      bias_shape, bias_names, eq = (self.features,), ("embed",), "...hk,hkd->...d"
    init = (nn.initializers.zeros if self.zero_init else
            nn.initializers.xavier_uniform(in_axis=fans[0], out_axis=fans[1]))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, names), shape,
                        self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_names),
                      bias_shape, self.param_dtype)
    y = jnp.einsum(eq, x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """Self-attention (`context=None`) or cross-attention to `context`.

  Attributes:
    num_heads: H.
    head_dim: Dh.
    qk_norm: RMSNorm on q and k before the dot product (stabilises bf16 training).
    qk_norm_scope: "head" (each head normalised on its own, as SD3) or "all_heads" (q and k
      normalised over all heads together, as Wan2.1).
    rope_proportions: split of the head dim's rotary pairs over position axes (see
      `rope.axis_pairs`); None disables RoPE. Needs `positions` at call time.
    rope_base: RoPE frequency base.
    backend: attention backend name (see `attention`).
    zero_init_out: zero-init the output projection, so the layer starts as a no-op.
    dtype, param_dtype: compute and parameter dtypes.
  """
  num_heads: int
  head_dim: int
  qk_norm: bool = True
  qk_norm_scope: str = "head"
  rope_proportions: tuple[int, ...] | None = None
  rope_base: float = 10_000.0
  backend: str = "xla"
  zero_init_out: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _proj(self, name: str) -> HeadsProjection:
    return HeadsProjection(self.num_heads, self.head_dim, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *, positions=None,
               q_segment_ids=None, kv_segment_ids=None, kv_mask=None,
               causal: bool = False) -> jax.Array:
    """x: [B, N, D]; context: [B, S, Dc] or None (self-attention); positions: [B, N, A] int;
    causal: each query sees only keys at or before it (self-attention).

    Returns:
      [B, N, D].
    """
    is_self = context is None
    context = x if context is None else context
    q, k, v = self._proj("query")(x), self._proj("key")(context), self._proj("value")(context)
    if self.qk_norm:
      names = QK_NORM_AXES[self.qk_norm_scope]
      q = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, axis_names=names,
                  name="query_norm")(q)
      k = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, axis_names=names,
                  name="key_norm")(k)
    if self.rope_proportions is not None:
      if positions is None:
        raise ValueError("MultiHeadAttention with RoPE needs `positions` [B, N, A].")
      q = rope.apply_rope(q, positions, self.rope_proportions, self.rope_base)
      k = rope.apply_rope(k, positions, self.rope_proportions, self.rope_base)
    out = attention(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                    kv_mask=kv_mask, backend=self.backend, self_attention=is_self,
                    causal=causal)
    return HeadsProjection(self.num_heads, self.head_dim, to_heads=False,
                           features=x.shape[-1], zero_init=self.zero_init_out,
                           dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
