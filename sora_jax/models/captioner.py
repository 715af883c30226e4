"""A video captioner and a prompt upsampler: an encoder over a source, an autoregressive
caption decoder over the project's tokenizer.

Sora's recaptioning (after DALL-E 3, Betker et al., 2023): a captioner writes descriptive
captions for clips that have only short ones, and at sampling a short prompt is expanded
into a caption of the training distribution. One model serves both, by its `source`:
  "video": spacetime patches of VAE latents (`data_pipelines/patches.py`, as the DiT sees
           them), NaViT-packed with segment ids; a pre-norm transformer encoder with 3D
           RoPE and fractional (t, h, w) features (`dit.fractional_embedding`: where a
           token sits in its own clip, which region and motion words need), block-diagonal
           by segment. Clips of any size and length, images (T = 1) too.
  "text":  a short prompt's token ids, encoded by `text.TextEncoder`.
The decoder (a transformer decoder as in Vaswani et al., 2017): token embedding plus a
learned position table, blocks of causal self-attention (1D RoPE), cross-attention to the
encoder's tokens and a GELU MLP, then logits over `vocab_size` ids. Packed rows carry K
captions `[B, K, L]`, laid side by side (`text.flatten_packed_text`): caption k attends
causally within itself and to the encoder tokens of segment k + 1 only.

Ids: the tokenizer's (0 = padding, which here also ends a caption) plus one BOS per caption
kind, `vocab_size - 1 - kind` (kind 0 = detailed, 1 = short), fed before the first word and
never generated: a captioner trained on detailed captions of a few clips and short ones of
the rest (the alt-text world's data) writes either kind, sharing what it learnt of colour
and shape between them. Teacher forcing feeds `shift_right(ids, bos)` and scores every word
and the first padding after it (end of caption).

  model = Captioner(config)
  logits = model.apply(params, source, shift_right(ids, config.bos_id()))   # [B, K, L, V]
  ids = generate(config, params, source, seeds, length=L, num_slots=K, temperature=0.0)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models import attention as attn_lib
from sora_jax.models import dit as dit_lib
from sora_jax.models import layers
from sora_jax.models import rope
from sora_jax.models import text as text_lib
from sora_jax.models import variants

VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=32, encoder_depth=1, decoder_depth=1, num_heads=2),
    "S": dict(width=128, encoder_depth=4, decoder_depth=3, num_heads=4),
    "B": dict(width=256, encoder_depth=6, decoder_depth=4, num_heads=4),
    "L": dict(width=512, encoder_depth=12, decoder_depth=6, num_heads=8),
}
SOURCES = ("video", "text")
SOURCE_KEYS = {"video": ("tokens", "positions", "segment_ids"),
               "text": ("source_ids", "source_mask")}


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
  """Everything that defines a captioner. Frozen and hashable.

  Attributes:
    variant: name in `VARIANTS` the size fields came from.
    source: "video" (latent patch tokens) or "text" (a short prompt's ids).
    vocab_size: output ids: the tokenizer's plus one BOS per caption kind.
    num_kinds: caption kinds (BOS ids `bos_id(kind)`): 0 detailed, 1 short.
    width, encoder_depth, decoder_depth, num_heads, mlp_ratio: size.
    max_len: longest caption in tokens (the decoder's position table).
    token_dim: features of a latent patch token (video source).
    source_len: longest short prompt in tokens (text source).
    attention_backend: the encoder's non-causal attention (`attention.BACKENDS`); the
      decoder's causal attention runs on the dense "auto" backend.
    dtype, param_dtype: compute and parameter dtype names.
  """
  variant: str = "S"
  source: str = "video"
  vocab_size: int = 512
  num_kinds: int = 2
  width: int = 128
  encoder_depth: int = 4
  decoder_depth: int = 3
  num_heads: int = 4
  mlp_ratio: float = 4.0
  max_len: int = 32
  token_dim: int = 64
  source_len: int = 16
  attention_backend: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"CaptionerConfig.source={self.source!r}; allowed: {SOURCES}.")
    if self.width % self.num_heads:
      raise ValueError(f"CaptionerConfig: width={self.width} is not divisible by "
                       f"num_heads={self.num_heads}.")
    head_dim = self.width // self.num_heads
    rope.axis_pairs(head_dim, rope.TEXT_PROPORTIONS)
    if self.source == "video":
      rope.axis_pairs(head_dim, rope.VIDEO_PROPORTIONS)

  def bos_id(self, kind=0):
    """The BOS id of a caption kind (an int, or an int array of kinds)."""
    return self.vocab_size - 1 - kind

  @property
  def num_ids(self) -> int:
    """Ids below the BOS ids: the most a tokenizer may have."""
    return self.vocab_size - self.num_kinds

  def text_encoder_config(self) -> text_lib.TextEncoderConfig:
    """The short-prompt encoder of the text source."""
    return text_lib.TextEncoderConfig(
        variant="captioner", vocab_size=self.vocab_size, width=self.width,
        depth=self.encoder_depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
        max_len=self.source_len, position="rope+learned",
        attention_backend=self.attention_backend, dtype=self.dtype,
        param_dtype=self.param_dtype)


def get_captioner_config(variant: str = "S", **overrides) -> CaptionerConfig:
  """Config for a named size preset, with overrides (unknown fields are an error)."""
  return variants.resolve(CaptionerConfig, VARIANTS, variant, overrides, "captioner")


class Block(nn.Module):
  """Pre-norm block: x += SelfAttn(LN(x)) [+ CrossAttn(LN(x), context)] + MLP(LN(x))."""
  width: int
  num_heads: int
  mlp_hidden: int
  rope_proportions: tuple[int, ...]
  cross: bool = False
  backend: str = "xla"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, segment_ids, context=None, context_segment_ids=None,
               causal: bool = False):
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name=name)
    attn = lambda name, rope_p, backend: attn_lib.MultiHeadAttention(
        num_heads=self.num_heads, head_dim=self.width // self.num_heads, qk_norm=True,
        rope_proportions=rope_p, backend=backend, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    x = x + attn("attention", self.rope_proportions, "auto" if causal else self.backend)(
        norm("attention_norm")(x), positions=positions, q_segment_ids=segment_ids,
        kv_segment_ids=segment_ids, causal=causal)
    if self.cross:
      x = x + attn("cross_attention", None, "auto")(
          norm("cross_norm")(x), context, q_segment_ids=segment_ids,
          kv_segment_ids=context_segment_ids)
    h = layers.FeedForward(self.mlp_hidden, "gelu", self.dtype, self.param_dtype,
                           name="mlp")(norm("mlp_norm")(x))
    return x + h


class VideoEncoder(nn.Module):
  """Packed latent patch tokens -> encoder tokens [B, N, D] (segment ids kept)."""
  config: CaptionerConfig

  @nn.compact
  def __call__(self, tokens, positions, segment_ids):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if tokens.shape[-1] != cfg.token_dim:
      raise ValueError(f"Captioner: tokens have {tokens.shape[-1]} features, config "
                       f"token_dim={cfg.token_dim}.")
    x = layers.dense(cfg.width, (None, "embed"), dtype, param_dtype, "patch_embed")(
        tokens.astype(dtype))
    frac = dit_lib.fractional_positions(positions, segment_ids, (0, 1, 2))
    x = x + dit_lib.fractional_embedding(frac, cfg.width).astype(dtype)
    for i in range(cfg.encoder_depth):
      x = Block(cfg.width, cfg.num_heads, layers.mlp_hidden(cfg.width, cfg.mlp_ratio, "gelu"),
                rope.VIDEO_PROPORTIONS, backend=cfg.attention_backend, dtype=dtype,
                param_dtype=param_dtype, name=f"blocks_{i}")(x, positions, segment_ids)
    return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
                        name="final_norm")(x)


class CaptionDecoder(nn.Module):
  """Caption ids [B, K, L] and encoder tokens -> logits [B, K, L, V] (float32)."""
  config: CaptionerConfig

  @nn.compact
  def __call__(self, ids, context, context_segment_ids):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    b, k, length = ids.shape
    if length > cfg.max_len:
      raise ValueError(f"Captioner: captions of {length} tokens exceed max_len={cfg.max_len}.")
    x = nn.Embed(cfg.vocab_size, cfg.width, dtype=dtype, param_dtype=param_dtype,
                 embedding_init=nn.with_logical_partitioning(
                     nn.initializers.normal(1.0), ("vocab", "embed")), name="embed")(ids)
    table = self.param("position_embed", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (None, "embed")), (cfg.max_len, cfg.width), param_dtype)
    x = (x + table[:length].astype(dtype)).reshape(b, k * length, cfg.width)
    segment_ids = jnp.repeat(jnp.arange(1, k + 1, dtype=jnp.int32), length)
    segment_ids = jnp.broadcast_to(segment_ids, (b, k * length))
    positions = jnp.broadcast_to(jnp.tile(jnp.arange(length, dtype=jnp.int32), k)[:, None],
                                 (b, k * length, 1))
    for i in range(cfg.decoder_depth):
      x = Block(cfg.width, cfg.num_heads, layers.mlp_hidden(cfg.width, cfg.mlp_ratio, "gelu"),
                rope.TEXT_PROPORTIONS, cross=True, dtype=dtype, param_dtype=param_dtype,
                name=f"blocks_{i}")(x, positions, segment_ids, context.astype(dtype),
                                    context_segment_ids, causal=True)
    x = nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name="final_norm")(x)
    logits = layers.dense(cfg.vocab_size, ("embed", "vocab"), dtype, param_dtype, "logits")(x)
    return logits.astype(jnp.float32).reshape(b, k, length, cfg.vocab_size)


class Captioner(nn.Module):
  """Source -> caption logits; `encode` and `decode` separately for generation."""
  config: CaptionerConfig

  def setup(self):
    cfg = self.config
    if cfg.source == "video":
      self.encoder = VideoEncoder(cfg)
    else:
      self.encoder = text_lib.TextEncoder(cfg.text_encoder_config())
    self.decoder = CaptionDecoder(cfg)

  def encode(self, source: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(context [B, S, D], context segment ids [B, S]): segment k + 1 is caption k's."""
    if self.config.source == "video":
      seg = source["segment_ids"]
      return self.encoder(source["tokens"], source["positions"], seg), seg
    emb = self.encoder(source["source_ids"], source["source_mask"])  # [B, K, Ls, D]
    context, mask, seg = text_lib.flatten_packed_text(emb, source["source_mask"])
    return context, jnp.where(mask, seg, 0)  # padding of a prompt is no caption's

  def decode(self, ids, context, context_segment_ids):
    return self.decoder(ids, context, context_segment_ids)

  def __call__(self, source: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
    """source: `SOURCE_KEYS[config.source]` arrays; ids: decoder input [B, K, L]."""
    return self.decode(ids, *self.encode(source))


def dummy_source(config: CaptionerConfig, batch: int = 1, tokens: int = 8,
                 slots: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract source inputs (shapes only) for init and `jax.eval_shape`."""
  s = jax.ShapeDtypeStruct
  if config.source == "video":
    return {"tokens": s((batch, tokens, config.token_dim), jnp.float32),
            "positions": s((batch, tokens, 3), jnp.int32),
            "segment_ids": s((batch, tokens), jnp.int32)}
  return {"source_ids": s((batch, slots, config.source_len), jnp.int32),
          "source_mask": s((batch, slots, config.source_len), jnp.bool_)}


def init_params(config: CaptionerConfig, rng: jax.Array):
  """Initial variables, unboxed (no partitioning metadata)."""
  source = {k: jnp.zeros(v.shape, v.dtype) for k, v in dummy_source(config).items()}
  ids = jnp.zeros((1, 1, config.max_len), jnp.int32)
  return nn.meta.unbox(Captioner(config).init(rng, source, ids))


# ------------------------------------------------------------------------ loss
def shift_right(ids: jax.Array, bos_id) -> jax.Array:
  """Decoder input of target ids [..., L]: BOS (an int, or one per caption [...]), then the
  targets but the last."""
  bos = jnp.broadcast_to(jnp.asarray(bos_id, ids.dtype)[..., None], ids.shape[:-1] + (1,))
  return jnp.concatenate([bos, ids[..., :-1]], axis=-1)


def target_weights(mask: jax.Array, present: jax.Array) -> jax.Array:
  """float32 [B, K, L]: 1 at each word and at the padding that ends the caption, for the
  captions that exist (`present` [B, K])."""
  length = jnp.sum(mask, axis=-1, keepdims=True)
  scored = jnp.arange(mask.shape[-1]) <= length
  return (scored & present[..., None]).astype(jnp.float32)


def caption_loss(logits, ids, mask, present) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy over scored tokens; also token accuracy and the count."""
  weights = target_weights(mask, present)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], -1)[..., 0]
  count = jnp.maximum(jnp.sum(weights), 1.0)
  correct = (jnp.argmax(logits, -1) == ids).astype(jnp.float32)
  return jnp.sum(ce * weights) / count, {"token_accuracy": jnp.sum(correct * weights) / count,
                                         "target_tokens": jnp.sum(weights)}


def slots_present(config: CaptionerConfig, source: dict[str, jax.Array],
                  num_slots: int) -> jax.Array:
  """bool [B, K]: which caption slots of a batch hold a clip (prompt)."""
  if config.source == "video":
    seg = source["segment_ids"]
    return jnp.stack([jnp.any(seg == k + 1, -1) for k in range(num_slots)], -1)
  return jnp.any(source["source_mask"], -1)


# ------------------------------------------------------------------------ generation
@functools.partial(jax.jit, static_argnames=("config", "length", "num_slots", "num_ids",
                                             "kind"))
def generate(config: CaptionerConfig, params, source: dict[str, jax.Array], seeds: jax.Array,
             *, length: int, num_slots: int, temperature: float | jax.Array = 0.0,
             num_ids: int | None = None, kind: int = 0) -> jax.Array:
  """Captions of a batch, one token a step: int32 [B, K, L] in tokenizer ids (0 after
  the end).

  Args:
    config, params: the captioner.
    source: `SOURCE_KEYS[config.source]` arrays (packed clips, or prompts [B, K, Ls]); a
      slot without a clip (prompt) gets an empty caption.
    seeds: int [B, K]: each caption's sampling seed (a caption does not depend on the
      others in its batch).
    length: L, the longest caption; num_slots: K, captions a row.
    temperature: 0 = greedy; else sampled from softmax(logits / temperature).
    num_ids: the tokenizer's ids (0 .. num_ids - 1): only these are written (the output
      layer may be larger than the tokenizer; None = every id below the BOS ids).
    kind: the kind of caption to write (0 = detailed).
  """
  model = Captioner(config)
  context, context_seg = model.apply(params, source, method=Captioner.encode)
  b = jax.tree.leaves(source)[0].shape[0]
  keys = jax.vmap(jax.vmap(jax.random.key))(seeds.astype(jnp.uint32))
  temperature = jnp.asarray(temperature, jnp.float32)
  allowed = min(num_ids or config.num_ids, config.num_ids)  # never a BOS

  def body(j, carry):
    ids, done = carry
    logits = model.apply(params, shift_right(ids, config.bos_id(kind)), context, context_seg,
                         method=Captioner.decode)[:, :, j]
    logits = jnp.where(jnp.arange(config.vocab_size) < allowed, logits, -jnp.inf)
    step_keys = jax.vmap(jax.vmap(lambda k: jax.random.fold_in(k, j)))(keys)
    sampled = jax.vmap(jax.vmap(jax.random.categorical))(
        step_keys, logits / jnp.maximum(temperature, 1e-6))
    token = jnp.where(temperature > 0, sampled, jnp.argmax(logits, -1)).astype(jnp.int32)
    token = jnp.where(done, 0, token)
    return ids.at[:, :, j].set(token), done | (token == 0)

  ids = jnp.zeros((b, num_slots, length), jnp.int32)
  empty = ~slots_present(config, source, num_slots)  # a slot with no clip writes nothing
  ids, _ = jax.lax.fori_loop(0, length, body, (ids, empty))
  return ids
