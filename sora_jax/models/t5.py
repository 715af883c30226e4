"""T5 and UMT5 encoders (Raffel et al., 2020, arXiv:1910.10683; Chung et al., 2023, UniMax,
arXiv:2304.09151), matching `transformers`' `T5EncoderModel` / `UMT5EncoderModel`.

Frozen text encoders for pretrained video models: Wan2.1 reads UMT5-XXL, CogVideoX T5-XXL
v1.1. Weights come from a transformers checkpoint (`sora_jax.interop.t5.load`); inputs from
`sora_jax.text.t5_tokenizer`.

The architecture, as the reference computes it:
  * token embedding (no scaling, no absolute positions);
  * pre-norm blocks x += SelfAttn(Norm(x)); x += FFN(Norm(x)), then a final Norm. Norm is
    T5's RMSNorm: no mean subtraction, no bias, the mean square in float32;
  * attention without biases and without the 1/sqrt(d) scale; positions enter only as a
    learned bias per (bucketed relative distance, head) added to the logits. T5 learns one
    table (in layer 0) shared by all layers; UMT5 one per layer (`per_layer_position_bias`);
  * FFN "relu" (D -> d_ff -> D) or "gated-gelu" (act(x W0) * (x W1) -> D, with the tanh
    GELU), no biases. The heads' width num_heads * d_kv may differ from d_model.

Padded positions (mask False) are never attended to but still get outputs, as in the
reference (callers mask them downstream).

  params = init_params(config, jax.random.key(0))       # or interop.t5.load(path)
  hidden = encode(params, ids, mask, config)             # [B, L, d_model]
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

EMBED_AXES = ("batch", "tokens", "embed")
# feed_forward_proj's activation names, as transformers' ACT2FN defines them.
ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "silu": nn.silu,
}
DTYPES = ("float32", "bfloat16")


def parse_feed_forward_proj(spec: str) -> tuple[bool, str]:
  """'gated-gelu' -> (True, 'gelu_new'); 'relu' -> (False, 'relu'), as transformers does.

  Raises:
    ValueError: a spec transformers would reject, or an activation not in ACTIVATIONS.
  """
  parts = spec.split("-")
  gated = len(parts) == 2 and parts[0] == "gated"
  if len(parts) > 2 or (len(parts) == 2 and not gated):
    raise ValueError(f"feed_forward_proj={spec!r}: expected '<act>' or 'gated-<act>'.")
  # transformers maps "gated-gelu" to the tanh approximation (T5 v1.1 was trained with it).
  act = "gelu_new" if spec == "gated-gelu" else parts[-1]
  if act not in ACTIVATIONS:
    raise ValueError(f"feed_forward_proj={spec!r}: activation {act!r} is not supported; "
                     f"known: {sorted(ACTIVATIONS)}.")
  return gated, act


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Everything that defines a T5 / UMT5 encoder. Frozen and hashable.

  Defaults are UMT5-XXL (Wan2.1's text encoder).

  Attributes:
    vocab_size: embedding rows (may exceed the tokenizer's ids: UMT5-XXL pads to 256384).
    d_model: residual width D.
    d_kv: per-head width; num_heads * d_kv need not equal d_model.
    d_ff: FFN hidden width.
    num_layers, num_heads: depth, heads.
    relative_attention_num_buckets, relative_attention_max_distance: the position buckets.
    feed_forward_proj: "relu", "gated-gelu", "gated-relu", ... (`parse_feed_forward_proj`).
    layer_norm_epsilon: RMSNorm epsilon.
    per_layer_position_bias: one position table per layer (UMT5) or one shared (T5).
    dtype, param_dtype: compute and parameter dtype names. The residual stream, the norms'
      statistics and the attention softmax stay float32 either way.
    scan_layers: the blocks as one `nn.scan` (params stacked on a leading "layers" axis;
      compiles once per block instead of num_layers times).
  """
  vocab_size: int = 256384
  d_model: int = 4096
  d_kv: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  num_heads: int = 64
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward_proj: str = "gated-gelu"
  layer_norm_epsilon: float = 1e-6
  per_layer_position_bias: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False

  def __post_init__(self):
    parse_feed_forward_proj(self.feed_forward_proj)
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in DTYPES:
        raise ValueError(f"T5Config.{field}={getattr(self, field)!r}; allowed: {DTYPES}.")
    if self.relative_attention_num_buckets < 4:
      raise ValueError(f"T5Config.relative_attention_num_buckets="
                       f"{self.relative_attention_num_buckets} must be >= 4.")


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets of key - query distances: int32 [q_len, k_len].

  Half the buckets per direction; distances below a quarter of num_buckets get a bucket
  each, longer ones log-spaced buckets up to max_distance, beyond it the last bucket.
  Computed in numpy float32 at trace time, the same arithmetic as the reference's torch
  code, so bucket edges fall on the same distances.
  """
  rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  ratio = np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)
  scaled = (np.log(ratio) / np.float32(math.log(max_distance / max_exact))
            * np.float32(half - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
  return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


class RMSNorm(nn.Module):
  """T5LayerNorm: x / rms(x) * scale, without mean subtraction or bias; stats in float32."""
  epsilon: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D] -> [B, L, D] in dtype."""
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return scale.astype(self.dtype) * x.astype(self.dtype)


class PositionBias(nn.Module):
  """Learned bias per (relative position bucket, head): [1, H, L, L] float32."""
  num_buckets: int
  max_distance: int
  num_heads: int
  d_model: int
  param_dtype: Any

  @nn.compact
  def __call__(self, length: int) -> jax.Array:
    table = self.param("embedding", nn.with_logical_partitioning(
        _normal(self.d_model ** -0.5), (None, "heads")),
        (self.num_buckets, self.num_heads), self.param_dtype)
    buckets = relative_position_buckets(length, length, self.num_buckets, self.max_distance)
    bias = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # [L, L, H]
    return jnp.transpose(bias, (2, 0, 1))[None]


class Attention(nn.Module):
  """T5 self-attention: no biases, no 1/sqrt(d) scale, an additive position bias."""
  num_heads: int
  d_kv: int
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array) -> jax.Array:
    """x: [B, L, D] (dtype); mask: [B, L] bool; bias: [1, H, L, L] f32 -> [B, L, D] (dtype)."""
    d, h, dk = x.shape[-1], self.num_heads, self.d_kv
    # transformers' init (Mesh TF): the query std folds in the missing 1/sqrt(d_kv).
    stds = {"q": (d * dk) ** -0.5, "k": d ** -0.5, "v": d ** -0.5}
    qkv = []
    for name, std in stds.items():
      w = self.param(name, nn.with_logical_partitioning(_normal(std), ("embed", "heads", "kv")),
                     (d, h, dk), self.param_dtype)
      qkv.append(jnp.einsum("bld,dhk->blhk", x, w.astype(self.dtype)))
    q, k, v = qkv
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32) + bias
    # Masked keys get the float32 minimum (not -inf): a row with no key left then averages
    # all values, as the reference does, instead of producing NaN.
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqs,bshk->bqhk", probs, v)
    w = self.param("o", nn.with_logical_partitioning(
        _normal((h * dk) ** -0.5), ("heads", "kv", "embed")), (h, dk, d), self.param_dtype)
    return jnp.einsum("blhk,hkd->bld", out, w.astype(self.dtype))


class FeedForward(nn.Module):
  """T5 FFN without biases: act(x wi) wo, or act(x wi_0) * (x wi_1) wo when gated."""
  d_ff: int
  feed_forward_proj: str
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D] (dtype) -> [B, L, D] (dtype)."""
    d = x.shape[-1]
    gated, act = parse_feed_forward_proj(self.feed_forward_proj)

    def proj(name, shape, names, std):
      w = self.param(name, nn.with_logical_partitioning(_normal(std), names), shape,
                     self.param_dtype)
      return w.astype(self.dtype)

    up = lambda name: x @ proj(name, (d, self.d_ff), ("embed", "mlp"), d ** -0.5)
    h = ACTIVATIONS[act](up("wi_0")) * up("wi_1") if gated else ACTIVATIONS[act](up("wi"))
    return h @ proj("wo", (self.d_ff, d), ("mlp", "embed"), self.d_ff ** -0.5)


class Block(nn.Module):
  """x += Attn(Norm(x)); x += FFN(Norm(x)). The residual stream x stays float32."""
  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, shared_bias: jax.Array | None):
    """x: [B, L, D] f32; mask: [B, L]; shared_bias: [1, H, L, L] (T5) or None (UMT5).

    Returns:
      (x [B, L, D] f32, None), the shape `nn.scan` expects.
    """
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    x = nn.with_logical_constraint(x, EMBED_AXES)
    bias = shared_bias
    if c.per_layer_position_bias:
      bias = PositionBias(c.relative_attention_num_buckets, c.relative_attention_max_distance,
                          c.num_heads, c.d_model, param_dtype,
                          name="position_bias")(x.shape[1])
    h = RMSNorm(c.layer_norm_epsilon, dtype, param_dtype, name="attention_norm")(x)
    h = Attention(c.num_heads, c.d_kv, dtype, param_dtype, name="attention")(h, mask, bias)
    x = x + h.astype(jnp.float32)
    h = RMSNorm(c.layer_norm_epsilon, dtype, param_dtype, name="mlp_norm")(x)
    h = FeedForward(c.d_ff, c.feed_forward_proj, dtype, param_dtype, name="mlp")(h)
    x = x + h.astype(jnp.float32)
    return nn.with_logical_constraint(x, EMBED_AXES), None


class T5Encoder(nn.Module):
  """The encoder stack: embed, blocks, final norm (= the reference's last_hidden_state)."""
  config: T5Config

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids: int [B, L]; mask: bool [B, L] (True at real tokens) -> [B, L, d_model] (dtype)."""
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    table = self.param("embedding", nn.with_logical_partitioning(
        _normal(1.0), ("vocab", "embed")), (c.vocab_size, c.d_model), param_dtype)
    x = jnp.take(table, ids, axis=0).astype(jnp.float32)
    mask = mask.astype(bool)
    shared_bias = None
    if not c.per_layer_position_bias:
      shared_bias = PositionBias(c.relative_attention_num_buckets,
                                 c.relative_attention_max_distance, c.num_heads, c.d_model,
                                 param_dtype, name="position_bias")(ids.shape[1])
    if c.scan_layers:
      blocks = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast, nn.broadcast), length=c.num_layers,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = blocks(c, name="blocks")(x, mask, shared_bias)
    else:
      for i in range(c.num_layers):
        x, _ = Block(c, name=f"block_{i}")(x, mask, shared_bias)
    return RMSNorm(c.layer_norm_epsilon, dtype, param_dtype, name="final_norm")(x)


@functools.partial(jax.jit, static_argnames="config")
def init_params(config: T5Config, rng: jax.Array) -> Any:
  """Fresh params (unboxed; `sharding.rules.param_specs(T5Encoder(config), ids, mask)` gives
  their logical specs); `rng` is any JAX key."""
  ids = jnp.zeros((1, 2), jnp.int32)
  variables = T5Encoder(config).init(rng, ids, jnp.ones((1, 2), bool))
  return nn.meta.unbox(variables["params"])


@functools.lru_cache(maxsize=16)
def param_shapes(config: T5Config) -> Any:
  """Abstract param tree (ShapeDtypeStruct leaves) for `config`, via `jax.eval_shape`."""
  return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


@functools.partial(jax.jit, static_argnames="config")
def encode(params: Any, ids: jax.Array, mask: jax.Array, config: T5Config) -> jax.Array:
  """ids: int [B, L]; mask: bool [B, L] -> hidden states [B, L, d_model] in config.dtype."""
  return T5Encoder(config).apply({"params": params}, ids, mask)
