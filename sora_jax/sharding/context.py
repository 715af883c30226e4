"""Context-parallel attention: the token sequence split over the mesh's `context` axis.

Long videos give sequences of 10^5 tokens whose attention does not fit one device. With a
`context` mesh axis of size c, every device holds N / c queries (and, for self-attention,
N / c keys and values), and one of two schemes computes exact attention, both written
with `jax.shard_map` over the `context` axis only (the other mesh axes stay automatic, so
batch sharding over `data`/`fsdp` is untouched):

  ring (Ring Attention; Liu, Zaharia & Abbeel, 2023, arXiv:2310.01889): each device keeps
    its query block and the K/V blocks travel around the ring (`jax.lax.ppermute`), c
    steps; softmax is accumulated online in float32 (Milakov & Gimelshein, 2018; as in
    FlashAttention, Dao et al., 2022). Logits memory per device is one [N/c, N/c] block
    (steps are rematerialised in the backward pass); no head-count limit.
    Attention here is bidirectional, so every step does the same work (no zig-zag needed).
  all_to_all (DeepSpeed-Ulysses; Jacobs et al., 2023, arXiv:2309.14509): an all-to-all
    turns "sequence split, all heads" into "full sequence, H / c heads", any dense kernel
    attends, and a second all-to-all turns it back. Needs H divisible by c; moves q, k, v
    and the output once each, which is cheaper than the ring when the network is fast.

Masks travel with the data: query segment ids are split like the queries; key segment ids
and the key mask like the keys (rotated with them in the ring, gathered in all-to-all).
Cross-attention to text (K/V a short separate sequence) replicates K/V over the context
axis and splits only the queries, so it needs no communication at all. A query row that
may attend to nothing outputs exactly 0, as in every backend (`models/attention.py`).

The mesh comes from the ambient `jax.set_mesh(...)` (`jax.sharding.get_abstract_mesh()`).
Without a mesh, without a `context` axis, or with context size 1, both fall back to the
dense local attention they are given, so the same model code runs on a laptop.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

CONTEXT_AXIS = "context"
# Masked logits; finite so that no inf - inf (or 0 * inf in a gradient) can appear.
_NEG = -1e30

# local(q, k, v, q_segment_ids, kv_segment_ids, kv_mask) -> [B, N, H, Dh]: dense attention
# with the masking contract of `models.attention.attention`.
LocalAttention = Callable[..., jax.Array]


def context_size() -> int:
  """Size of the `context` axis of the ambient mesh (1 without a mesh or the axis)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or CONTEXT_AXIS not in mesh.axis_names:
    return 1
  return int(mesh.shape[CONTEXT_AXIS])


def _check_divisible(what: str, size: int, c: int, backend: str) -> None:
  if size % c:
    raise ValueError(f"attention backend {backend!r}: {what}={size} is not divisible by the "
                     f"mesh's context axis size {c}; pad the sequence (e.g. "
                     f"config.packing.seq_len) to a multiple of {c} or change mesh.context.")


def _defaults(q, k, q_segment_ids, kv_segment_ids, kv_mask):
  """Explicit segment ids and key mask (ones / True where not given), so every path of the
  shard_map sees arrays: q_seg [B, N] int32, kv_seg [B, S] int32, kv_mask [B, S] bool."""
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Segment masking needs both q_segment_ids and kv_segment_ids; got "
                     f"q_segment_ids={'None' if q_segment_ids is None else 'array'}, "
                     f"kv_segment_ids={'None' if kv_segment_ids is None else 'array'}.")
  b, n, s = q.shape[0], q.shape[1], k.shape[1]
  if q_segment_ids is None:
    q_segment_ids = jnp.ones((b, n), jnp.int32)
    kv_segment_ids = jnp.ones((b, s), jnp.int32)
  if kv_mask is None:
    kv_mask = jnp.ones((b, s), bool)
  return (q_segment_ids.astype(jnp.int32), kv_segment_ids.astype(jnp.int32),
          kv_mask.astype(bool))


def _context_map(body, q, k, v, q_seg, kv_seg, kv_mask, self_attention: bool):
  """shard_map over `context`: q (and k/v for self-attention) split along dim 1."""
  split = P(None, CONTEXT_AXIS)
  kv = split if self_attention else P()
  return jax.shard_map(body, in_specs=(split, kv, kv, split, kv, kv), out_specs=split,
                       axis_names={CONTEXT_AXIS})(q, k, v, q_seg, kv_seg, kv_mask)


# ----------------------------------------------------------------------------- ring


def _block_update(q, k, v, q_seg, kv_seg, kv_mask, o, m, l):
  """Online-softmax update of (o, m, l) with one K/V block (fp32 statistics).

  q: [B, n, H, Dh]; k, v: [B, s, H, Dh]; q_seg [B, n]; kv_seg, kv_mask [B, s];
  o: [B, n, H, Dh] float32 numerator; m, l: [B, H, n] running max and denominator.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bnhd,bshd->bhns", q, k, preferred_element_type=jnp.float32) * scale
  mask = ((q_seg[:, :, None] == kv_seg[:, None, :]) & kv_mask[:, None, :])[:, None]
  logits = jnp.where(mask, logits, _NEG)
  # The max only stabilises exp; the result does not depend on it, so no gradient.
  m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(logits, axis=-1)))
  p = jnp.where(mask, jnp.exp(logits - m_new[..., None]), 0.0)  # [B, H, n, s]
  corr = jnp.exp(m - m_new)
  l = l * corr + jnp.sum(p, axis=-1)
  pv = jnp.einsum("bhns,bshd->bnhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  o = o * jnp.transpose(corr, (0, 2, 1))[..., None] + pv
  return o, m_new, l


def _ring_body(q, k, v, q_seg, kv_seg, kv_mask, *, axis_size: int):
  """One device's view. q: [B, n, H, Dh]; k, v: [B, s, H, Dh]; q_seg [B, n]; kv_seg,
  kv_mask [B, s] (n = N / c, s = S / c). Returns [B, n, H, Dh] in q's dtype.

  The local block first, then c - 1 steps of (receive the neighbour's K/V block, update),
  a `scan` whose step is rematerialised: the backward pass recomputes each block's logits
  instead of keeping c of them, so memory stays one [n, s] block per device.
  """
  b, n, h, dh = q.shape
  perm = [(i, (i + 1) % axis_size) for i in range(axis_size)]
  o = jnp.zeros((b, n, h, dh), jnp.float32)
  m = jnp.full((b, h, n), _NEG, jnp.float32)
  l = jnp.zeros((b, h, n), jnp.float32)
  o, m, l = _block_update(q, k, v, q_seg, kv_seg, kv_mask, o, m, l)

  @jax.checkpoint
  def step(carry, _):
    o, m, l, kv = carry
    kv = jax.lax.ppermute(kv, CONTEXT_AXIS, perm)
    o, m, l = _block_update(q, *kv[:2], q_seg, *kv[2:], o, m, l)
    return (o, m, l, kv), None

  (o, _, l, _), _ = jax.lax.scan(step, (o, m, l, (k, v, kv_seg, kv_mask)), None,
                                 length=axis_size - 1)
  l = jnp.transpose(l, (0, 2, 1))[..., None]  # [B, n, H, 1]
  out = jnp.where(l > 0, o / jnp.where(l > 0, l, 1.0), 0.0)  # no key at all -> exactly 0
  return out.astype(q.dtype)


def ring_attention(q, k, v, q_segment_ids=None, kv_segment_ids=None, kv_mask=None, *,
                   self_attention: bool, local: LocalAttention) -> jax.Array:
  """Ring attention over the `context` axis (dense `local` when context size is 1).

  Args:
    q: [B, N, H, Dh] queries.
    k, v: [B, S, H, Dh]; self-attention: the same sequence as q (S == N), split over
      `context` like q; cross-attention: a short sequence, replicated over `context`.
    q_segment_ids: [B, N] int or None; kv_segment_ids: [B, S] int or None (both or none).
    kv_mask: [B, S] bool or None.
    self_attention: whether k/v are split along the sequence with q (see above).
    local: dense attention used for cross-attention and as the single-device fallback.

  Returns:
    [B, N, H, Dh] in q's dtype; rows with no key to attend to are exactly 0.
  """
  return _over_context("ring", lambda c: functools.partial(_ring_body, axis_size=c),
                       q, k, v, q_segment_ids, kv_segment_ids, kv_mask,
                       self_attention=self_attention, local=local)


def _over_context(backend: str, make_body, q, k, v, q_segment_ids, kv_segment_ids, kv_mask,
                  *, self_attention: bool, local: LocalAttention) -> jax.Array:
  """What both backends share: the dense fallback at context size 1, the checks, and
  cross-attention (queries split, text K/V replicated: `local` on each query block).

  Args:
    backend: the backend's name (for errors).
    make_body: context size c -> the self-attention body run under `shard_map`.
  """
  c = context_size()
  if c == 1:
    return local(q, k, v, q_segment_ids, kv_segment_ids, kv_mask)
  q_seg, kv_seg, kv_mask = _defaults(q, k, q_segment_ids, kv_segment_ids, kv_mask)
  _check_divisible("query tokens N", q.shape[1], c, backend)
  if not self_attention:
    return _context_map(local, q, k, v, q_seg, kv_seg, kv_mask, False)
  if backend == "all_to_all" and q.shape[2] % c:
    raise ValueError(f"attention backend 'all_to_all' splits the heads over the context "
                     f"axis: num_heads={q.shape[2]} is not divisible by its size {c}; use "
                     f"backend 'ring' or a context size dividing the heads.")
  if k.shape[1] != q.shape[1]:
    raise ValueError(f"attention backend '{backend}' self-attention needs as many keys as "
                     f"queries; got N={q.shape[1]}, S={k.shape[1]}.")
  return _context_map(make_body(c), q, k, v, q_seg, kv_seg, kv_mask, True)


# ----------------------------------------------------------------------------- all-to-all


def _all_to_all_body(q, k, v, q_seg, kv_seg, kv_mask, *, local: LocalAttention):
  """One device's view: [B, n, H, Dh] blocks -> full sequence, H / c heads -> back."""
  to_heads = lambda x: jax.lax.all_to_all(x, CONTEXT_AXIS, 2, 1, tiled=True)  # [B, N, H/c, Dh]
  gather = lambda x: jax.lax.all_gather(x, CONTEXT_AXIS, axis=1, tiled=True)  # [B, N]
  out = local(to_heads(q), to_heads(k), to_heads(v), gather(q_seg), gather(kv_seg),
              gather(kv_mask))
  return jax.lax.all_to_all(out, CONTEXT_AXIS, 1, 2, tiled=True)  # [B, n, H, Dh]


def all_to_all_attention(q, k, v, q_segment_ids=None, kv_segment_ids=None, kv_mask=None, *,
                         self_attention: bool, local: LocalAttention) -> jax.Array:
  """DeepSpeed-Ulysses attention over the `context` axis; same contract as `ring_attention`.

  Raises:
    ValueError: the head count or sequence length is not divisible by the context size.
  """
  return _over_context("all_to_all",
                       lambda c: functools.partial(_all_to_all_body, local=local),
                       q, k, v, q_segment_ids, kv_segment_ids, kv_mask,
                       self_attention=self_attention, local=local)
