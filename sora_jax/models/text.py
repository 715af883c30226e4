"""Small transformer text encoder, trained jointly with the DiT, and packed-text layout.

A pre-norm transformer encoder (Vaswani et al., 2017; pre-norm as in Xiong et al., 2020)
over sentencepiece ids (`sora_jax.text.tokenizer`): token embedding, positions by 1D RoPE
(Su et al., 2021), a learned table of absolute places (as GPT-2 and CLIP) or both, blocks
of masked self-attention (QK RMSNorm) and a GELU MLP, a final LayerNorm. Padding (id 0,
mask False) is never attended and its outputs are zeroed. A frozen external encoder can
replace it: the DiT only sees `[B, L, Dt]` embeddings and a mask (`dit.TextProjection` maps
any Dt to the DiT width).

Packed rows (NaViT, Dehghani et al., 2023) carry one caption per clip, `ids [B, K, L]`.
The encoder treats every caption on its own (leading axes are flattened), and
`flatten_packed_text` lays a row's K captions side by side as `[B, K * L, D]` with text
segment ids `k + 1`, matching the clips' token segment ids: caption row k belongs to
segment k + 1, so cross-attention with q/kv segment ids sends each token to its own caption.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models import attention as attn_lib
from sora_jax.models import layers
from sora_jax.models import rope
from sora_jax.models import t5 as t5_lib
from sora_jax.models import variants

VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=64, depth=2, num_heads=2, mlp_ratio=4.0),
    "S": dict(width=256, depth=4, num_heads=4, mlp_ratio=4.0),
    "B": dict(width=512, depth=8, num_heads=8, mlp_ratio=4.0),
    "L": dict(width=768, depth=12, num_heads=12, mlp_ratio=4.0),
}
POSITIONS = ("rope", "learned", "rope+learned")


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """Everything that defines a text encoder. Frozen and hashable.

  Attributes:
    variant: name in `VARIANTS` the size fields came from.
    vocab_size: must cover the tokenizer's ids (`Tokenizer.vocab_size`).
    width, depth, num_heads, mlp_ratio: size.
    max_len: longest caption in tokens (the learned position table's size).
    position: "rope" (1D RoPE in every attention), "learned" (an added table, init std
      0.02) or "rope+learned" (both; the table initialised at `embed_std`, as strong as the
      words). The DiT's cross-attention sees the text tokens without positions, so word
      order reaches it only through the encoder's outputs: with RoPE alone a jointly
      trained tiny encoder stayed a bag of words ("moves from left to right" and "... from
      right to left": each token's output at cosine 0.9996 across the two after 3600 steps)
      and the DiT moved objects sideways in a random direction. An absolute table at the
      words' scale makes "left" after "from" another input than "left" after "to" from
      the first step.
    embed_std: std of the token embedding init. 1.0, as T5 (and flax's nn.Embed default):
      at GPT-2's 0.02 each block's O(1) attention output, which mixes the whole caption,
      drowns a token's own embedding in the residual stream, and a jointly trained encoder
      kept "top left" and "bottom right" captions at pooled cosine 0.999 after 4500 steps.
    attention_backend: see `attention.BACKENDS`.
    dtype, param_dtype: compute and parameter dtype names.
  """
  variant: str = "S"
  vocab_size: int = 512
  width: int = 256
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  max_len: int = 64
  position: str = "rope"
  embed_std: float = 1.0
  attention_backend: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"TextEncoderConfig: width={self.width} is not divisible by "
                       f"num_heads={self.num_heads}.")
    if self.position not in POSITIONS:
      raise ValueError(f"TextEncoderConfig.position={self.position!r}; allowed: {POSITIONS}.")
    rope.axis_pairs(self.width // self.num_heads, rope.TEXT_PROPORTIONS)


def get_text_config(variant: str = "S", **overrides) -> TextEncoderConfig:
  """Config for a named size preset, with overrides (e.g. `vocab_size=tok.vocab_size`).

  Raises:
    ValueError: unknown variant, or an override that is not a TextEncoderConfig field.
  """
  return variants.resolve(TextEncoderConfig, VARIANTS, variant, overrides, "text encoder")


class EncoderBlock(nn.Module):
  """Pre-norm block: x += SelfAttn(LN(x)); x += MLP(LN(x))."""
  width: int
  num_heads: int
  mlp_hidden: int
  use_rope: bool
  backend: str = "xla"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
    """x: [B, L, D]; mask: [B, L] bool; positions: [B, L, 1] int. Returns [B, L, D]."""
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name=name)
    h = attn_lib.MultiHeadAttention(
        num_heads=self.num_heads, head_dim=self.width // self.num_heads, qk_norm=True,
        rope_proportions=rope.TEXT_PROPORTIONS if self.use_rope else None,
        backend=self.backend, dtype=self.dtype, param_dtype=self.param_dtype,
        name="attention")(norm("attention_norm")(x), positions=positions, kv_mask=mask)
    x = x + h
    h = layers.FeedForward(self.mlp_hidden, "gelu", self.dtype, self.param_dtype,
                           name="mlp")(norm("mlp_norm")(x))
    return x + h


class TextEncoder(nn.Module):
  """Caption ids -> per-token embeddings."""
  config: TextEncoderConfig

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Encodes captions; each caption (last axis) is encoded on its own.

    Args:
      ids: [..., L] int token ids (0 = padding), e.g. [B, L] or packed [B, K, L].
      mask: [..., L] bool, False at padding.

    Returns:
      [..., L, width] in the compute dtype; zero at padding.
    """
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    lead, length = ids.shape[:-1], ids.shape[-1]
    if length > cfg.max_len:
      raise ValueError(f"TextEncoder: captions of {length} tokens exceed max_len="
                       f"{cfg.max_len}.")
    ids, mask = ids.reshape(-1, length), mask.reshape(-1, length).astype(bool)
    x = nn.Embed(cfg.vocab_size, cfg.width, dtype=dtype, param_dtype=param_dtype,
                 embedding_init=nn.with_logical_partitioning(
                     nn.initializers.normal(cfg.embed_std), ("vocab", "embed")),
                 name="embed")(ids)
    if cfg.position in ("learned", "rope+learned"):
      std = 0.02 if cfg.position == "learned" else cfg.embed_std
      table = self.param("position_embed", nn.with_logical_partitioning(
          nn.initializers.normal(std), (None, "embed")), (cfg.max_len, cfg.width),
                         param_dtype)
      x = x + table[:length].astype(dtype)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None, :, None],
                                 (ids.shape[0], length, 1))
    for i in range(cfg.depth):
      x = EncoderBlock(cfg.width, cfg.num_heads,
                       layers.mlp_hidden(cfg.width, cfg.mlp_ratio, "gelu"),
                       cfg.position != "learned", cfg.attention_backend, dtype, param_dtype,
                       name=f"blocks_{i}")(x, mask, positions)
    x = nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name="final_norm")(x)
    x = jnp.where(mask[..., None], x, 0)
    return x.reshape(*lead, length, cfg.width)


@dataclasses.dataclass(frozen=True)
class PretrainedTextConfig:
  """A frozen pretrained T5 / UMT5 encoder in place of the jointly trained one.

  Its weights come from a transformers folder (`sora_jax.interop.t5`) or, for smoke tests,
  a seeded random init; training never updates them (`is_frozen`).

  Attributes:
    t5: the encoder's config.
    max_len: caption tokens per clip (Wan2.1: 512).
    zero_padding: as Wan2.1's pipeline: embeddings at padded positions are set to 0 and the
      DiT attends to all `max_len` of them (the mask becomes all True), so a caption always
      has `max_len` text tokens; False keeps the mask (padding never attended).
  """
  t5: t5_lib.T5Config
  max_len: int = 512
  zero_padding: bool = True
  variant = "t5"

  @property
  def width(self) -> int:
    return self.t5.d_model


def is_frozen(tcfg) -> bool:
  """True for a pretrained encoder the DiT's training does not update."""
  return isinstance(tcfg, PretrainedTextConfig)


def text_module(tcfg) -> nn.Module:
  """The Linen encoder of a text config: `TextEncoder` or the T5 encoder."""
  return t5_lib.T5Encoder(tcfg.t5) if is_frozen(tcfg) else TextEncoder(tcfg)


def encode_text(tcfg, variables, ids: jax.Array, mask: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """Captions ids/mask [..., L] -> (embeddings [..., L, Dt], the mask the DiT reads).

  Either encoder; a frozen one gets no gradient, and with `zero_padding` its padded
  positions are zeros the DiT attends to (see `PretrainedTextConfig`).
  """
  if not is_frozen(tcfg):
    return TextEncoder(tcfg).apply(variables, ids, mask), mask
  lead, length = ids.shape[:-1], ids.shape[-1]
  emb = t5_lib.T5Encoder(tcfg.t5).apply(jax.lax.stop_gradient(variables),
                                        ids.reshape(-1, length), mask.reshape(-1, length))
  emb = emb.reshape(*lead, length, emb.shape[-1])
  if tcfg.zero_padding:
    return jnp.where(mask[..., None], emb, 0).astype(emb.dtype), jnp.ones_like(mask)
  return emb, mask


def flatten_packed_text(text: jax.Array, mask: jax.Array):
  """A packed row's K captions side by side, with the segment each text token belongs to.

  Args:
    text: [B, K, L, D] embeddings of caption row k of each packed row.
    mask: [B, K, L] bool.

  Returns:
    text [B, K * L, D], mask [B, K * L], text_segment_ids [B, K * L] int32 (= k + 1), the
    DiT's `text`, `text_mask` and `text_segment_ids`.
  """
  b, k, l, d = text.shape
  segment_ids = jnp.broadcast_to(jnp.arange(1, k + 1, dtype=jnp.int32)[None, :, None],
                                 (b, k, l))
  return text.reshape(b, k * l, d), mask.reshape(b, k * l), segment_ids.reshape(b, k * l)
