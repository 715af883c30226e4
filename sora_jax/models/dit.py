"""Diffusion transformer over spacetime patches of video latents, conditioned on text.

DiT (Peebles & Xie, 2023, arXiv:2212.09748) as the Sora report uses it: latents
`[T', h, w, C]` are cut into `(pt, ph, pw)` patches (`data_pipelines/patches.py`), each
patch is a token, and a token knows its place through 3D RoPE over its integer `(t, h, w)`
patch position (Su et al., 2021; `rope.py`), so any duration, resolution and aspect ratio
is just another set of positions. RoPE is relative only; with `pos_embed="fractional"` each
token also gets fixed sin-cos features of where it sits in its own clip's frame, (h, w) as
fractions of the clip's patch grid (NaViT's fractional positions), so captions that name a
place ("in the top left") have an absolute position to attend from at every resolution.
Clips of different sizes are packed into one sequence with segment ids (NaViT, Dehghani et
al., 2023, arXiv:2307.06304; `data_pipelines/packing.py`); all attention is block-diagonal
by segment.

Block (pre-norm):
  x += gate1 * SelfAttn(modulate(LN(x), shift1, scale1))   QK RMSNorm, 3D RoPE, segment mask
  x += CrossAttn(LN(x), text)                               QK RMSNorm, text mask, segments
  x += gate2 * MLP(modulate(LN(x), shift2, scale2))         GELU or SwiGLU
`(shift, scale, gate) x 2` come from the conditioning embedding c = TimeEmbed(t) [+
FpsEmbed(fps)] through a zero-initialised linear layer (adaLN-Zero). With
`adaln="single"` (PixArt-alpha's adaLN-single, Chen et al., 2023, arXiv:2310.00426) that
linear layer runs once, outside the blocks, and each block adds its own learned
(zero-initialised) 6D-vector: since the modulation is per token here, this removes
(depth - 1) x 6 D^2 multiply-adds per token, a quarter of a block's matmuls. The
cross-attention output projection and the final linear layer are zero-initialised too, so
every block starts as the identity and an initialised model predicts v = 0 (x0-prediction:
x0_hat = 0, so v = x_t / t).

Conditioning is per token: `t: [B, N]` (and `fps: [B, N]`). Packed clips get different
noise levels by repeating each clip's t over its tokens, and conditioning frames (clean
latents for image-to-video, extension) can carry t = 0 inside a noisy clip. The price is
that adaLN's modulation is computed per token (6 D^2 multiply-adds per token per block,
about half an MLP) instead of once per clip.

Text: embeddings `[B, L, Dt]` from any encoder (the jointly trained `text.TextEncoder` or
a frozen external one) are projected to the DiT width by a small MLP (as in PixArt-alpha).
With `pooled_text` (the default), the masked mean of each clip's caption embeddings also
goes through an MLP into c, as SD3 adds its pooled text vector: global attributes (colours,
motion, camera) then reach every block's modulation directly, not only through
cross-attention, which a small model trained briefly learns much more slowly.
A packed row's captions are laid side by side (`text.flatten_packed_text`) with
`text_segment_ids`, so each token's cross-attention sees only its own clip's caption. An
all-False text mask (empty or dropped caption) makes cross-attention and the pooled
text term contribute exactly 0: that is the unconditional model for classifier-free guidance.

Typical use:
  config = get_dit_config("B", patch=(1, 2, 2), latent_channels=16)
  tokens, positions = patches.patchify(latents, config.patch)   # data_pipelines/patches.py
  model = DiT(config)
  v = model.apply(params, tokens, positions, segment_ids, t, text, text_mask)  # [B, N, Din]
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
from jax.ad_checkpoint import checkpoint_name

from sora_jax.models import attention as attn_lib
from sora_jax.models import layers
from sora_jax.models import rope
from sora_jax.models import variants

# Size presets (DiT paper's S/B/L/XL; tiny for tests and laptops). Patch size and the rest
# are separate config fields.
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=64, depth=2, num_heads=2, mlp_ratio=4.0),
    "XS": dict(width=128, depth=4, num_heads=4, mlp_ratio=4.0),  # the CPU demo's
    "S": dict(width=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "B": dict(width=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "XL": dict(width=1152, depth=28, num_heads=16, mlp_ratio=4.0),
}
# Wan2.1's text-to-video transformers as layouts of this DiT; their weights load through
# `sora_jax/interop/wan_dit.py` (rope_proportions: Wan's pair split for head dim 128).
WAN_LAYOUT = dict(mlp="gelu", qk_norm=True, qk_norm_scope="all_heads", adaln="single",
                  final_adaln="table", pooled_text=False, pos_embed="none", prediction="v",
                  fps_conditioning=False, rope_proportions=(22, 21, 21), rope_base=10_000.0)
VARIANTS.update({
    "wan2.1-1.3b": dict(width=1536, depth=30, num_heads=12, mlp_ratio=8960 / 1536,
                        mlp_dim=8960, **WAN_LAYOUT),
    "wan2.1-14b": dict(width=5120, depth=40, num_heads=40, mlp_ratio=13824 / 5120,
                       mlp_dim=13824, **WAN_LAYOUT),
})

# Rematerialisation policies by name: what a scanned block keeps for the backward pass.
REMAT_POLICIES = {
    "none": None,  # no remat: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention": jax.checkpoint_policies.save_only_these_names("self_attention",
                                                                    "cross_attention"),
}
EMBED_AXES = ("batch", "tokens", "embed")  # logical axes of activations between blocks


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Everything that defines a DiT. Frozen and hashable (usable as a static jit argument).

  Attributes:
    variant: name in `VARIANTS` the size fields came from.
    width, depth, num_heads, mlp_ratio: size (D, blocks, H, MLP hidden = ratio * D).
    patch: (pt, ph, pw) latent patch size; pt = 1 keeps images (T' = 1) and videos together.
    latent_channels: C of the VAE latents; a token holds pt * ph * pw * C values.
    mlp: "gelu" (tanh GELU, as DiT) or "swiglu" (hidden 2/3 * ratio * D, rounded to 8).
    mlp_dim: the MLP's hidden width when > 0 (pretrained layouts: Wan2.1-1.3B's 8960);
      0 derives it from mlp_ratio.
    qk_norm: RMSNorm on queries and keys in every attention.
    qk_norm_scope: "head" (per head) or "all_heads" (over all heads together, Wan2.1).
    rope_proportions: split of the rotary pairs over (t, h, w); see `rope.axis_pairs`.
    rope_base: RoPE frequency base.
    fps_conditioning: add an fps embedding to the timestep embedding (then `fps` is required).
    pooled_text: add an MLP of each clip's mean caption embedding to the conditioning c.
    pos_embed: "none" (RoPE only), "fractional" (also add sin-cos features of each token's
      (h, w) as a fraction of its clip's patch grid; see `fractional_positions`) or
      "fractional_thw" (the same for (t, h, w): the token's time as a fraction of its
      clip's duration too, which a caption's motion ("from left to right") is a function
      of, and which RoPE (relative) and cross-attention (no positions) cannot give).
    adaln: "per_block" (DiT's adaLN-Zero: a modulation layer in every block) or "single"
      (one shared modulation layer plus a learned table per block; see the module docstring).
    final_adaln: the final layer's (shift, scale): "dense" (a zero-initialised linear map of
      SiLU(c), as DiT) or "table" (a learned [2, D] table plus c itself, as Wan2.1).
    prediction: what the network's last layer predicts; the model always returns the
      velocity. "v": the velocity itself. "x0": the clean latents x0_hat, returned as
      v = (x_t - x0_hat) / max(t, X0_MIN_T) (JiT: Li & He, 2025, "Back to Basics: Let
      Denoising Generative Models Denoise"): the network never has to carry the noise
      through its width, which matters when a token holds about as many values as the
      width (e.g. 2x2 patches of 32 channels into width 128), where v-prediction learns
      far more slowly.
    adaln_slots: 0 computes the blocks' modulation for every token. S > 0 computes it once
      per (packed clip, given or not) slot, `2 * segment + (t == 0)` (S >= 2 * (clips a row
      + 1)), and gathers it per token: the same result when every clip's generated tokens
      share one t (training and sampling here do), for ~6 D^2 fewer FLOPs a token and block.
    scan_layers: `nn.scan` over blocks (params get a leading "layers" axis); False unrolls.
    remat: a key of REMAT_POLICIES.
    attention_backend: see `attention.BACKENDS`.
    dtype: compute dtype name ("float32", "bfloat16"); params use `param_dtype`.
    param_dtype: parameter dtype name.
  """
  variant: str = "B"
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  patch: tuple[int, int, int] = (1, 2, 2)
  latent_channels: int = 16
  mlp: str = "gelu"
  mlp_dim: int = 0
  qk_norm: bool = True
  qk_norm_scope: str = "head"
  rope_proportions: tuple[int, ...] = rope.VIDEO_PROPORTIONS
  rope_base: float = 10_000.0
  fps_conditioning: bool = False
  pooled_text: bool = True
  pos_embed: str = "none"
  adaln: str = "per_block"
  final_adaln: str = "dense"
  adaln_slots: int = 0
  prediction: str = "v"
  scan_layers: bool = True
  remat: str = "none"
  attention_backend: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
    object.__setattr__(self, "rope_proportions", tuple(self.rope_proportions))
    if len(self.patch) != 3 or min(self.patch) < 1:
      raise ValueError(f"patch={self.patch}; expected three positive ints (pt, ph, pw).")
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}.")
    rope.axis_pairs(self.head_dim, self.rope_proportions)  # raises on a bad head dim
    _check_choice("mlp", self.mlp, ("gelu", "swiglu"))
    _check_choice("prediction", self.prediction, PREDICTIONS)
    _check_choice("pos_embed", self.pos_embed, POS_EMBEDS)
    _check_choice("adaln", self.adaln, ADALN_KINDS)
    _check_choice("final_adaln", self.final_adaln, FINAL_ADALN_KINDS)
    _check_choice("qk_norm_scope", self.qk_norm_scope, tuple(attn_lib.QK_NORM_AXES))
    if self.mlp_dim < 0:
      raise ValueError(f"DiTConfig.mlp_dim={self.mlp_dim}; expected 0 (from mlp_ratio) or > 0.")
    if self.adaln_slots < 0 or self.adaln_slots % 2:
      raise ValueError(f"adaln_slots={self.adaln_slots}; expected 0 or an even count.")
    _check_choice("remat", self.remat, tuple(REMAT_POLICIES))
    _check_choice("attention_backend", self.attention_backend, attn_lib.BACKENDS)

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def mlp_hidden(self) -> int:
    """The MLP's hidden width: mlp_dim, else from mlp_ratio (`layers.mlp_hidden`)."""
    return self.mlp_dim or layers.mlp_hidden(self.width, self.mlp_ratio, self.mlp)

  @property
  def token_dim(self) -> int:
    """Din = pt * ph * pw * C."""
    return math.prod(self.patch) * self.latent_channels


PREDICTIONS = ("v", "x0")
FRACTIONAL_AXES = {"fractional": (1, 2), "fractional_thw": (0, 1, 2)}  # of (t, h, w)
POS_EMBEDS = ("none",) + tuple(FRACTIONAL_AXES)
ADALN_KINDS = ("per_block", "single")
FINAL_ADALN_KINDS = ("dense", "table")
FRACTIONAL_CELLS = 64  # the fractional sinusoids' finest wavelength is 2 cells of a 64-grid
X0_MIN_T = 0.05  # x0-prediction divides by max(t, X0_MIN_T)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"DiTConfig.{name}={value!r}; allowed: {allowed}.")


def get_dit_config(variant: str = "B", **overrides) -> DiTConfig:
  """Config for a named size preset, with overrides (e.g. `patch=(1, 2, 2)`, `depth=2`).

  Raises:
    ValueError: unknown variant, or an override that is not a DiTConfig field.
  """
  return variants.resolve(DiTConfig, VARIANTS, variant, overrides, "DiT")


# ----------------------------------------------------------------------------- blocks


class ScalarEmbedder(nn.Module):
  """A real scalar per token (timestep, fps) -> [B, N, D]: sinusoids then a 2-layer MLP.

  Attributes:
    width: D.
    scale: the scalar is multiplied by this before the sinusoids (1000 for t in [0, 1]).
  """
  width: int
  scale: float = 1.0
  frequency_dim: int = 256
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = layers.sinusoidal_embedding(x * self.scale, self.frequency_dim).astype(self.dtype)
    h = layers.dense(self.width, (None, "embed"), self.dtype, self.param_dtype, "in")(h)
    return layers.dense(self.width, ("embed", "mlp"), self.dtype, self.param_dtype, "out")(nn.silu(h))


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale) + shift


def _plain_norm(dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype)


class DiTBlock(nn.Module):
  """adaLN-Zero block: self-attention, cross-attention to text, MLP. Scannable.

  Attributes:
    width, num_heads, mlp_hidden, mlp: sizes and MLP kind.
    qk_norm, qk_norm_scope, rope_proportions, rope_base, backend: attention settings.
    adaln: "per_block" (c is the conditioning embedding [B, N, D]) or "single" (c is the
      shared modulation [B, N, 6D], to which the block adds its own table).
  """
  width: int
  num_heads: int
  mlp_hidden: int
  mlp: str = "gelu"
  qk_norm: bool = True
  qk_norm_scope: str = "head"
  rope_proportions: tuple[int, ...] = rope.VIDEO_PROPORTIONS
  rope_base: float = 10_000.0
  backend: str = "xla"
  adaln: str = "per_block"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _attention(self, name: str, rope_proportions, zero_init_out: bool):
    return attn_lib.MultiHeadAttention(
        num_heads=self.num_heads, head_dim=self.width // self.num_heads, qk_norm=self.qk_norm,
        qk_norm_scope=self.qk_norm_scope, rope_proportions=rope_proportions, rope_base=self.rope_base, backend=self.backend,
        zero_init_out=zero_init_out, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name)

  @nn.compact
  def __call__(self, x, c, positions, segment_ids, text, text_mask, text_segment_ids,
               c_index=None):
    """One block.

    Args:
      x: [B, N, D] tokens.
      c: [B, N, D] conditioning embedding (timestep [+ fps]); [B, N, 6D] shared modulation
        with adaln="single".
      positions: [B, N, 3] int; segment_ids: [B, N] int (0 = padding).
      text: [B, L, D] projected text; text_mask: [B, L] bool;
      text_segment_ids: [B, L] int or None (None: every token sees all of its row's text).
      c_index: [B, N] int or None: c holds one row per slot ([B, S, .]) and token i takes
        slot c_index[i] (DiTConfig.adaln_slots); None: c is per token.

    Returns:
      (x [B, N, D], None), the shape `nn.scan` expects.
    """
    x = nn.with_logical_constraint(x, EMBED_AXES)
    if self.adaln == "single":
      table = self.param("adaln_table", nn.with_logical_partitioning(
          nn.initializers.zeros, ("mlp",)), (6 * self.width,), self.param_dtype)
      mod = c + table.astype(self.dtype)
    else:
      mod = layers.dense(6 * self.width, ("embed", "mlp"), self.dtype, self.param_dtype,
                   "adaln", zero=True)(nn.silu(c))
    if c_index is not None:  # per slot -> per token
      mod = jnp.take_along_axis(mod, c_index[..., None], axis=1)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)

    h = _modulate(_plain_norm(self.dtype)(x), shift1, scale1)
    h = self._attention("self_attention", self.rope_proportions, False)(
        h, positions=positions, q_segment_ids=segment_ids, kv_segment_ids=segment_ids)
    x = x + gate1 * checkpoint_name(h, "self_attention")

    h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="cross_norm")(x)
    h = self._attention("cross_attention", None, True)(
        h, text, q_segment_ids=None if text_segment_ids is None else segment_ids,
        kv_segment_ids=text_segment_ids, kv_mask=text_mask)
    x = x + checkpoint_name(h, "cross_attention")

    h = _modulate(_plain_norm(self.dtype)(x), shift2, scale2)
    h = layers.FeedForward(self.mlp_hidden, self.mlp, self.dtype, self.param_dtype,
                           name="mlp")(h)
    x = x + gate2 * h
    return nn.with_logical_constraint(x, EMBED_AXES), None


class FinalLayer(nn.Module):
  """adaLN (shift, scale) + LayerNorm + zero-initialised linear to the token dim.

  Attributes:
    adaln: "dense" ((shift, scale) = Dense(SiLU(c))) or "table" (= table + c, Wan2.1).
  """
  out_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  adaln: str = "dense"

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    """x, c: [B, N, D] -> [B, N, out_dim]."""
    if self.adaln == "table":
      table = self.param("adaln_table", nn.with_logical_partitioning(
          nn.initializers.zeros, (None, "embed")), (2, x.shape[-1]), self.param_dtype)
      mod = table.astype(self.dtype) + c[..., None, :]  # [B, N, 2, D]
      shift, scale = mod[..., 0, :], mod[..., 1, :]
    else:
      mod = layers.dense(2 * x.shape[-1], ("embed", "mlp"), self.dtype, self.param_dtype,
                         "adaln", zero=True)(nn.silu(c))
      shift, scale = jnp.split(mod, 2, axis=-1)
    h = _modulate(_plain_norm(self.dtype)(x), shift, scale)
    return layers.dense(self.out_dim, ("embed", None), self.dtype, self.param_dtype, "linear",
                  zero=True)(h)


class TextProjection(nn.Module):
  """Text embeddings [..., Dt] (any encoder) -> [..., D]: Dense, GELU, Dense (PixArt).

  The pooled caption goes through the same MLP with SiLU (`activation`).
  """
  width: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  activation: Any = functools.partial(nn.gelu, approximate=True)

  @nn.compact
  def __call__(self, text: jax.Array) -> jax.Array:
    h = layers.dense(self.width, (None, "embed"), self.dtype, self.param_dtype, "in")(text)
    h = self.activation(h)
    return layers.dense(self.width, ("embed", "mlp"), self.dtype, self.param_dtype, "out")(h)


def slot_mean(x: jax.Array, index: jax.Array, slots: int) -> jax.Array:
  """[B, N, D] per token -> [B, S, D]: the mean of each slot's tokens (0 for an empty one)."""
  onehot = jax.nn.one_hot(index, slots, dtype=x.dtype)
  count = jnp.sum(onehot, axis=1)[..., None]
  return jnp.einsum("bns,bnd->bsd", onehot, x) / jnp.maximum(count, 1)


def fractional_positions(positions: jax.Array, segment_ids: jax.Array,
                         axes: tuple[int, ...] = (1, 2)) -> jax.Array:
  """Each token's place along `axes` of (t, h, w) as a fraction of its own clip's patch grid:
  float32 [B, N, len(axes)]; the default is (h, w).

  (position + 0.5) / extent, where the extent is 1 + the largest position among the tokens of
  the token's segment, so the values lie in (0, 1) whatever the clip's size and packing (an
  image's single frame sits at t = 0.5).

  Args:
    positions: [B, N, 3] int (t, h, w) patch positions; segment_ids: [B, N] int.
    axes: which of (t, h, w), by index.
  """
  pos = positions[..., list(axes)].astype(jnp.int32)
  n = segment_ids.shape[1]
  def extent(p, s):  # one row: [N, K] largest position of each token's segment, per axis
    return jax.ops.segment_max(p, s, num_segments=n, indices_are_sorted=False)[s]
  size = jax.vmap(extent)(pos, segment_ids.astype(jnp.int32)) + 1
  return (pos.astype(jnp.float32) + 0.5) / jnp.maximum(size, 1).astype(jnp.float32)


def fractional_embedding(fractions: jax.Array, dim: int) -> jax.Array:
  """Fixed sin-cos features of K fractions (e.g. (h, w)) [B, N, K] -> float32 [B, N, dim].

  dim / K per axis; wavelengths from 2 frames down to 2 cells of a FRACTIONAL_CELLS-cell
  grid, geometrically spaced (dim not divisible by 2K: zero-padded).
  """
  k = fractions.shape[-1]
  part = dim // (2 * k)
  freqs = np.pi * np.geomspace(1.0, FRACTIONAL_CELLS, max(part, 1)).astype(np.float32)
  args = fractions[..., None] * freqs[:part]  # [B, N, K, part]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  emb = emb.reshape(*fractions.shape[:-1], 2 * k * part)
  return jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, dim - 2 * k * part)])


def pool_text(text: jax.Array, text_mask: jax.Array, text_segment_ids, segment_ids):
  """Masked mean of each token's caption and whether it has one.

  Returns:
    (pooled [B, N, Dt], has_text bool [B, N]); N is 1 when text_segment_ids is None (one
    clip a row). A clip with no caption token (dropped or empty) gets 0 and False.
  """
  if text_segment_ids is None:
    w = text_mask[:, None, :]  # [B, 1, L]
  else:
    w = text_mask[:, None, :] & (text_segment_ids[:, None, :] == segment_ids[:, :, None])
  w = w.astype(text.dtype)
  count = jnp.sum(w, -1)
  total = jnp.einsum("bnl,bld->bnd", w, text)
  return total / jnp.maximum(count, 1.0)[..., None], count > 0


class DiT(nn.Module):
  """Text-conditioned diffusion transformer over (packed) spacetime patch tokens."""
  config: DiTConfig

  def _blocks(self):
    cfg = self.config
    block_cls = DiTBlock
    if cfg.remat != "none":
      block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[cfg.remat],
                           prevent_cse=not cfg.scan_layers)
    kwargs = dict(width=cfg.width, num_heads=cfg.num_heads,
                  mlp_hidden=cfg.mlp_hidden, mlp=cfg.mlp,
                  qk_norm=cfg.qk_norm, qk_norm_scope=cfg.qk_norm_scope, rope_proportions=cfg.rope_proportions,
                  rope_base=cfg.rope_base, backend=cfg.attention_backend, adaln=cfg.adaln,
                  dtype=jnp.dtype(cfg.dtype),
                  param_dtype=jnp.dtype(cfg.param_dtype))
    if cfg.scan_layers:
      stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast,) * 7, length=cfg.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      return [stack(**kwargs, name="blocks")]
    return [block_cls(**kwargs, name=f"blocks_{i}") for i in range(cfg.depth)]

  @nn.compact
  def __call__(self, tokens, positions, segment_ids, t, text, text_mask,
               text_segment_ids=None, fps=None) -> jax.Array:
    """Predicts the flow velocity of every token.

    Args:
      tokens: [B, N, Din] noisy latent patches (Din = config.token_dim).
      positions: [B, N, 3] int (t, h, w) patch positions (from `patches.patchify`).
      segment_ids: [B, N] int; 1..k = which packed clip, 0 = padding. An unpacked batch
        passes ones.
      t: [B, N] float timestep of each token (see module docstring).
      text: [B, L, Dt] text embeddings from any encoder.
      text_mask: [B, L] bool, False = padding (all False = unconditional).
      text_segment_ids: [B, L] int, the segment whose caption each text token belongs to
        (packed rows); None when each row holds one clip.
      fps: [B, N] float frames per second; required iff config.fps_conditioning.

    Returns:
      [B, N, Din] float32 velocity.
    """
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if tokens.shape[-1] != cfg.token_dim:
      raise ValueError(f"DiT: tokens have {tokens.shape[-1]} features, but patch "
                       f"{cfg.patch} x {cfg.latent_channels} channels gives {cfg.token_dim}.")
    if cfg.fps_conditioning == (fps is None):
      raise ValueError(f"DiT: fps_conditioning={cfg.fps_conditioning} but fps was "
                       f"{'not ' if fps is None else ''}given.")
    c = ScalarEmbedder(cfg.width, 1000.0, dtype=dtype, param_dtype=param_dtype,
                       name="time_embed")(t)
    if fps is not None:
      c = c + ScalarEmbedder(cfg.width, 1.0, dtype=dtype, param_dtype=param_dtype,
                             name="fps_embed")(fps)
    if cfg.pooled_text:
      pooled, has_text = pool_text(text.astype(dtype), text_mask, text_segment_ids,
                                   segment_ids)
      h = TextProjection(cfg.width, dtype, param_dtype, nn.silu, name="text_pool")(pooled)
      c = c + jnp.where(has_text[..., None], h, 0.0).astype(dtype)  # 0 without a caption
    x = layers.dense(cfg.width, (None, "embed"), dtype, param_dtype, "patch_embed")(
        tokens.astype(dtype))
    if cfg.pos_embed != "none":
      frac = fractional_positions(positions, segment_ids, FRACTIONAL_AXES[cfg.pos_embed])
      x = x + fractional_embedding(frac, cfg.width).astype(dtype)
    text = TextProjection(cfg.width, dtype, param_dtype, name="text_proj")(text.astype(dtype))
    block_c, c_index = c, None
    if cfg.adaln_slots:  # the blocks' modulation once per slot, not per token
      c_index = jnp.minimum(2 * segment_ids + (t == 0), cfg.adaln_slots - 1)
      block_c = slot_mean(c, c_index, cfg.adaln_slots)
    if cfg.adaln == "single":  # the blocks' shared modulation, computed once
      block_c = layers.dense(6 * cfg.width, ("embed", "mlp"), dtype, param_dtype, "adaln_single",
                       zero=True)(nn.silu(block_c))
    for block in self._blocks():
      x, _ = block(x, block_c, positions, segment_ids, text, text_mask, text_segment_ids,
                   c_index)
    out = FinalLayer(cfg.token_dim, dtype, param_dtype, cfg.final_adaln, name="final")(x, c)
    out = out.astype(jnp.float32)
    if cfg.prediction == "x0":  # the velocity that x0_hat implies at x_t
      t = t.astype(jnp.float32)[..., None]
      out = (tokens.astype(jnp.float32) - out) / jnp.maximum(t, X0_MIN_T)
    return out


def dummy_inputs(config: DiTConfig, batch: int = 1, tokens: int = 16, text_len: int = 8,
                 text_dim: int = 64) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract inputs for `jax.eval_shape` / init (shapes only)."""
  s = jax.ShapeDtypeStruct
  inputs = dict(tokens=s((batch, tokens, config.token_dim), jnp.float32),
                positions=s((batch, tokens, 3), jnp.int32),
                segment_ids=s((batch, tokens), jnp.int32),
                t=s((batch, tokens), jnp.float32),
                text=s((batch, text_len, text_dim), jnp.float32),
                text_mask=s((batch, text_len), jnp.bool_))
  if config.fps_conditioning:
    inputs["fps"] = s((batch, tokens), jnp.float32)
  return inputs
