"""Analytic training FLOPs of one step, for the DiT and the VAE: the one count MFU uses.

Convention (PaLM, Chowdhery et al., 2022, appendix B; Kaplan et al., 2020): count the
matrix multiplies and convolutions, 2 FLOPs per multiply-add, and the attention score and
value products; norms, activations, RoPE, the loss and the optimizer update are not
counted. Training = forward + backward, where the backward of a matmul costs twice its
forward (the input gradient and the weight gradient), so a step costs 3x the forward,
except for layers whose input needs no gradient (the DiT's patch and timestep embeddings,
the VAE's first layers on pixels): they cost 2x (forward + weight gradient). This matches
what XLA compiles after dead-code elimination (`tests/test_scaling.py` checks both counts
against XLA's own): exactly for the DiT and the (2+1)D tiny VAE. For VAEs with full 3D
convs XLA does a little more than the convention: the input gradient of a causal conv runs
over the T + kt - 1 padded frames (6% more over the whole step for 17-frame clips).

The DiT count charges only real tokens (NaViT packing, Dehghani et al., 2023): a clip's
n tokens attend to its own n tokens and its caption's l tokens; padding, empty caption
rows and the cross-segment blocks that a dense attention kernel computes and masks out
are not charged. It is the *useful* compute, so packed and unpacked runs compare.

`hlo_flops` counts the dots and convolutions of a compiled XLA program, the documented
method to cross-check the analytic counts: XLA's `cost_analysis()['flops']` also charges
every elementwise op (1 FLOP per element), which on small models is not negligible.

Typical use:
  flops = dit_train_flops(dcfg, tcfg, batch["segment_ids"], batch["text_mask"])
  flops = vae_train_flops(vcfg, video_shape=(8, 17, 64, 64, 3), disc_config=None)
"""
from __future__ import annotations

import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.diffusion import flow
from sora_jax.models import dit as dit_lib
from sora_jax.models import layers
from sora_jax.models import text as text_lib
from sora_jax.models import vae_blocks

TIME_FREQUENCY_DIM = 256  # dit.ScalarEmbedder.frequency_dim


# ----------------------------------------------------------------------------- DiT
def segment_sizes(segment_ids, xp=np):
  """Tokens of each token's segment, [B, N] float32 (numpy on the host, or jax traced)."""
  if xp is jnp:
    return flow.segment_sizes(segment_ids)
  seg = np.asarray(segment_ids)
  out = np.zeros(seg.shape, np.float32)
  for b in range(seg.shape[0]):
    counts = np.bincount(seg[b], minlength=seg.shape[1] + 1)
    out[b] = counts[seg[b]]
  return out


def dit_matmul_weights(dcfg: dit_lib.DiTConfig, text_dim: int) -> dict[str, int]:
  """Multiply-adds per token of the DiT's dense layers, grouped by what they run on.

  Returns:
    {"token": per image/video token, through all layers;
     "token_no_input_grad": the part of "token" whose input needs no gradient (the patch
       embedding and the timestep MLP's first layer);
     "text": per caption token (text projection and every block's cross-attention K, V);
     "slot": per modulation slot (`DiTConfig.adaln_slots`; 0 when it is per token)}.
  """
  d, din = dcfg.width, dcfg.token_dim
  hidden = dcfg.mlp_hidden
  mlp = (3 if dcfg.mlp == "swiglu" else 2) * d * hidden
  no_grad = din * d + TIME_FREQUENCY_DIM * d  # patch_embed, time_embed.in
  if dcfg.fps_conditioning:
    no_grad += TIME_FREQUENCY_DIM * d
  # The blocks' modulation: per block, or once with adaLN-single; per token, or per slot.
  adaln = 6 * d * d * (dcfg.depth if dcfg.adaln == "per_block" else 1)
  per_block = 4 * d * d + 2 * d * d + mlp  # self-attn, cross q/out, MLP
  token = (no_grad + d * d * (2 if dcfg.fps_conditioning else 1)  # time (fps) MLP out
           + dcfg.depth * per_block + d * din  # final linear
           + (2 * d * d if dcfg.final_adaln == "dense" else 0))  # final adaLN
  slot = adaln if dcfg.adaln_slots else 0
  token += adaln - slot
  if dcfg.pooled_text:  # the pooled caption's MLP, run per token
    token += text_dim * d + d * d
  text = text_dim * d + d * d + dcfg.depth * 2 * d * d
  return {"token": token, "token_no_input_grad": no_grad, "text": text, "slot": slot}


def dit_param_count(dcfg: dit_lib.DiTConfig, text_dim: int) -> dict[str, int]:
  """Parameters of the DiT: {"blocks": the depth x block part, "total": all}.

  `blocks` (the non-embedding count of Kaplan et al., 2020) is what the scaling ladder
  (`configs/scaling.py`) scales. Checked against `jax.eval_shape` of the init in the tests.
  """
  d, din, dh = dcfg.width, dcfg.token_dim, dcfg.head_dim
  hidden = dcfg.mlp_hidden
  dense = lambda i, o: i * o + o
  mlp = (2 if dcfg.mlp == "swiglu" else 1) * dense(d, hidden) + dense(hidden, d)
  qk = (2 * (d if dcfg.qk_norm_scope == "all_heads" else dh)) if dcfg.qk_norm else 0
  adaln_single = dcfg.adaln == "single"
  block = ((6 * d if adaln_single else dense(d, 6 * d)) + 4 * dense(d, d) + qk  # adaLN, attn
           + 2 * d + 4 * dense(d, d) + qk + mlp)  # cross norm, cross-attention, MLP
  embed = (dense(din, d) + dense(TIME_FREQUENCY_DIM, d) + dense(d, d)
           + dense(text_dim, d) + dense(d, d)  # text projection
           + (2 * d if dcfg.final_adaln == "table" else dense(d, 2 * d))  # final adaLN
           + dense(d, din))  # final linear
  if adaln_single:
    embed += dense(d, 6 * d)
  if dcfg.fps_conditioning:
    embed += dense(TIME_FREQUENCY_DIM, d) + dense(d, d)
  if dcfg.pooled_text:
    embed += dense(text_dim, d) + dense(d, d)
  return {"blocks": dcfg.depth * block, "total": dcfg.depth * block + embed}


def dit_train_flops(dcfg: dit_lib.DiTConfig, tcfg: text_lib.TextEncoderConfig, segment_ids,
                    text_mask, text_dim: int | None = None):
  """Analytic FLOPs of one DiT + text encoder training step, of real tokens only.

  See the module docstring for what is counted. Per step:
    DiT: 2 * (3 W_token - W_no_grad) * tokens + 6 * W_text * caption tokens
         + 6 * W_slot * rows * adaln_slots                 (modulation computed per slot)
         + 12 * depth * D * (sum_clips n^2 + sum_clips n l)            (attention)
         + 4 * Dt * sum_clips n l                          (pooled caption, if pooled_text)
    text encoder: 6 * depth * (4 Dt^2 + 2 Dt H) * caption tokens + 12 * depth * Dt * sum l^2
  with W the multiply-adds per token of `dit_matmul_weights`. With self-conditioning, the
  first estimate (a forward pass, ~1/3 of a step, on half the steps) is not counted: MFU
  is then understated by about a seventh.

  Args:
    dcfg, tcfg: the DiT and text encoder configs.
    segment_ids: int [B, N] (0 = padding); text_mask: bool [B, K, L] (caption row k is
      segment k + 1). numpy (host) or jax (traced) arrays.
    text_dim: width of the text embeddings (default: the text encoder's width).

  Returns:
    Scalar FLOPs (numpy or jax float).
  """
  xp = jnp if isinstance(segment_ids, jax.Array) else np
  d = dcfg.width
  weights = dit_matmul_weights(dcfg, text_dim or tcfg.width)
  real = segment_ids > 0
  n_tok = xp.sum(real).astype(xp.float32)
  n_sq = xp.sum(xp.where(real, segment_sizes(segment_ids, xp), 0.0))  # sum_clips n^2
  cap_len = xp.sum(text_mask, axis=-1).astype(xp.float32)  # [B, K]
  k = xp.clip(segment_ids - 1, 0, text_mask.shape[1] - 1)
  n_l = xp.sum(xp.where(real, xp.take_along_axis(cap_len, k, axis=1), 0.0))  # sum n l
  l_tok, l_sq = xp.sum(cap_len), xp.sum(cap_len ** 2)
  dit = (2.0 * (3 * weights["token"] - weights["token_no_input_grad"]) * n_tok
         + 6.0 * weights["text"] * l_tok + 12.0 * dcfg.depth * d * (n_sq + n_l)
         + 6.0 * weights["slot"] * segment_ids.shape[0] * dcfg.adaln_slots)  # every slot
  if dcfg.pooled_text:  # each token's caption mean: forward + the text's gradient
    dit = dit + 4.0 * (text_dim or tcfg.width) * n_l
  if isinstance(tcfg, text_lib.PretrainedTextConfig):  # frozen: a forward pass only
    c = tcfg.t5
    inner, ffn = c.num_heads * c.d_kv, (3 if "gated" in c.feed_forward_proj else 2) * c.d_ff
    return dit + c.num_layers * (2 * (4 * c.d_model * inner + ffn * c.d_model) * l_tok
                                 + 4 * inner * l_sq)
  w = tcfg.width
  th = layers.mlp_hidden(w, tcfg.mlp_ratio, "gelu")
  text = 3.0 * tcfg.depth * (2 * (4 * w * w + 2 * w * th) * l_tok + 4 * w * l_sq)
  return dit + text


# ----------------------------------------------------------------------------- VAE
class _ConvCounter:
  """Walks the VAE's layers on shapes (no arrays), charging each matmul or conv.

  `fwd` sums forward FLOPs; `train` sums training FLOPs (3x forward, 2x where the layer's
  input needs no gradient). Shapes are (T, H, W, C) per clip.
  """

  def __init__(self):
    self.fwd, self.train = 0.0, 0.0

  def charge(self, flops: float, input_grad: bool = True) -> None:
    self.fwd += flops
    self.train += flops * (3 if input_grad else 2)

  def conv(self, shape, features, kernel=(3, 3, 3), strides=(1, 1, 1), factorized=False,
           input_grad=True):
    """`vae_blocks.CausalConv3d`: returns the output shape."""
    t, h, w, c = shape
    (kt, kh, kw), (st, sh, sw) = kernel, strides
    ho, wo = h // sh, w // sw
    tn = (t - 1) // st + 1
    if not factorized:
      self.charge(2.0 * tn * ho * wo * features * kt * kh * kw * c, input_grad)
      return (tn, ho, wo, features)
    if (kh, kw) != (1, 1) or (sh, sw) != (1, 1) or kt == 1:
      self.charge(2.0 * t * ho * wo * features * kh * kw * c, input_grad)  # per frame
      c, input_grad = features, True
    if kt > 1:
      self.charge(2.0 * tn * ho * wo * kt * c * features, input_grad)  # temporal matmul
    return (tn, ho, wo, features)

  def dense(self, shape, features, input_grad=True):
    self.charge(2.0 * math.prod(shape[:-1]) * shape[-1] * features, input_grad)
    return tuple(shape[:-1]) + (features,)

  def resblock(self, shape, features, factorized):
    h = self.conv(shape, features, factorized=factorized)
    h = self.conv(h, features, factorized=factorized)
    if shape[-1] != features:
      self.conv(shape, features, kernel=(1, 1, 1))  # skip projection (never factorized)
    return h

  def frame_attention(self, shape):
    t, h, w, c = shape
    self.dense(shape, 3 * c)
    self.charge(4.0 * t * (h * w) ** 2 * c)  # per-frame scores and values, one head
    self.dense(shape, c)
    return shape

  def mid_block(self, shape, features, attention, factorized):
    shape = self.resblock(shape, features, factorized)
    if attention:
      shape = self.frame_attention(shape)
    return self.resblock(shape, features, factorized)


def _vae_structure(vcfg) -> dict[str, Any]:
  return {"patched": vcfg.patch_frames > 1 or vcfg.patch_size > 1,
          "stem_only": vae_blocks.stem_only(vcfg.level_mults, vcfg.temporal_downsamples)}


def _vae_counts(vcfg, clip: tuple[int, int, int]) -> _ConvCounter:
  """Per-clip forward and training FLOPs of encoder + decoder (`vae_blocks`)."""
  t, h, w = clip
  fz, base, mults = vcfg.factorized, vcfg.base_channels, vcfg.level_mults
  pf, ps = vcfg.patch_frames, vcfg.patch_size
  s = _vae_structure(vcfg)
  cnt = _ConvCounter()
  # Encoder.
  if s["patched"]:
    n = (t + (pf - 1 if t % pf else 0)) // pf
    patches = (n, h // ps, w // ps, pf * ps * ps * 3)
  if vcfg.encoder == "dct":  # a fixed patch transform: forward only (no params, no gradient)
    flops = 2.0 * math.prod(patches) * vcfg.latent_channels
    cnt.fwd, cnt.train = cnt.fwd + flops, cnt.train + flops
    z = patches[:3]
  elif s["patched"]:
    x = cnt.conv(patches, base, kernel=(1, 1, 1), factorized=fz, input_grad=False)
  else:
    x = cnt.conv((t, h, w, 3), base, factorized=fz, input_grad=False)
  if vcfg.encoder != "dct":
    for level, mult in enumerate(mults):
      for _ in range(vcfg.num_res_blocks):
        x = cnt.resblock(x, base * mult, fz)
      if level < len(mults) - 1:
        temporal = level < vcfg.temporal_downsamples
        x = cnt.conv(x, base * mult, kernel=(3 if temporal else 1, 3, 3),
                     strides=(2 if temporal else 1, 2, 2), factorized=fz)
    x = cnt.mid_block(x, x[-1], vcfg.attention, fz)
    z = cnt.conv(x, 2 * vcfg.latent_channels, factorized=fz)
    if s["patched"] and s["stem_only"]:
      cnt.dense(patches, vcfg.latent_channels, input_grad=False)  # patch shortcut
  # Decoder, on the sampled latents [T', h, w, C].
  z = z[:3] + (vcfg.latent_channels,)
  top = base * mults[-1]
  x = cnt.conv(z, top, factorized=fz)
  x = cnt.mid_block(x, top, vcfg.attention, fz)
  for level in reversed(range(len(mults))):
    for _ in range(vcfg.num_res_blocks):
      x = cnt.resblock(x, base * mults[level], fz)
    if level > 0:
      temporal = level - 1 < vcfg.temporal_downsamples
      up = (x[0], 2 * x[1], 2 * x[2], x[3])
      feats = base * mults[level]
      x = cnt.conv(up, 2 * feats if temporal else feats, factorized=fz)
      x = (2 * x[0] if temporal else x[0], x[1], x[2], feats)
  out = 3 * pf * ps * ps
  if pf == ps == 1:
    cnt.conv(x, 3, factorized=fz)
  else:
    cnt.conv(x, out, kernel=(1, 3, 3), factorized=fz)
    if s["stem_only"]:
      cnt.dense(z, out)  # the decoder's patch shortcut from the latents
  return cnt


def discriminator_forward_flops(disc_config, clip: tuple[int, int, int]) -> tuple[float, float]:
  """(forward FLOPs per clip, of which the first conv) of `PatchDiscriminator3D`."""
  shape, total, first = tuple(clip), 0.0, 0.0
  cin = 3
  for i in range(disc_config.num_layers):
    shape = tuple(-(-v // 2) for v in shape)  # stride 2, SAME padding
    feats = disc_config.base_channels * 2 ** i
    flops = 2.0 * math.prod(shape) * feats * 3 * 4 * 4 * cin
    first = flops if i == 0 else first
    total, cin = total + flops, feats
  return total + 2.0 * math.prod(shape) * 27 * cin, first


def vae_train_flops(vcfg, video_shape: tuple[int, ...], disc_config=None) -> float:
  """Analytic FLOPs of one VAE training step (encoder + decoder, + discriminator).

  Encoder and decoder: every conv and dense layer of `vae_blocks` (per-frame attention
  included), 3x forward, 2x for layers on the pixels (no input gradient). With the GAN
  (`disc_config` not None), with F the discriminator's forward on one clip and F_1 that
  of its first conv: three forwards (real, reconstruction) of which the one on the
  reconstruction is shared by both losses (2F, as XLA's CSE computes it), the generator's
  gradient back to the reconstruction (2F), the discriminator's weight gradients on both
  (2F) and its input gradients below the first conv (2 (F - F_1)): 7F - 2F_1. The
  optional perceptual network (a user-supplied file) is not counted.

  Args:
    vcfg: the `vae.VAEConfig`.
    video_shape: the batch's [B, T, H, W, 3] (or [B, T, H, W]).
    disc_config: the `discriminator.DiscriminatorConfig`, or None without the GAN.

  Returns:
    FLOPs (float).
  """
  if len(video_shape) not in (4, 5):
    raise ValueError(f"vae_train_flops: video_shape={tuple(video_shape)}; expected "
                     "[B, T, H, W, 3].")
  b, clip = video_shape[0], tuple(int(v) for v in video_shape[1:4])
  total = _vae_counts(vcfg, clip).train
  if disc_config is not None:
    f, f_first = discriminator_forward_flops(disc_config, clip)
    total += 7 * f - 2 * f_first
  return float(b * total)


def vae_forward_flops(vcfg, video_shape: tuple[int, ...]) -> float:
  """Analytic forward FLOPs of encode + decode of a batch [B, T, H, W, 3] (a reconstruction)."""
  return float(video_shape[0] * _vae_counts(vcfg, tuple(video_shape[1:4])).fwd)


# ----------------------------------------------------------------------------- XLA
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\][^ ]*\s+(\w[\w\-]*)\((.*)$")
_DIMS = lambda text, key: [int(v) for v in re.search(
    key + r"=\{([\d,]*)\}", text).group(1).split(",") if v]


def hlo_flops(hlo_text: str) -> dict[str, float]:
  """Dot and convolution FLOPs of an (optimised) HLO module's text, 2 per multiply-add.

  Reads every `dot` and `convolution` instruction (fused or not) with its operand shapes.
  A while loop's body (e.g. a `nn.scan` over layers) is charged once per instruction, not
  times its trip count: compare unrolled programs.

  Args:
    hlo_text: `jax.jit(f).lower(...).compile().as_text()`.

  Returns:
    {"dot": FLOPs of dots, "conv": FLOPs of convolutions, "total": their sum}.
  """
  shapes, out = {}, {"dot": 0.0, "conv": 0.0}
  lines = hlo_text.splitlines()
  parsed = []
  for line in lines:
    m = _INSTR.match(line)
    if m:
      name, _, dims, op, rest = m.groups()
      shapes[name] = [int(v) for v in dims.split(",") if v]
      parsed.append((name, op, rest))
  for name, op, rest in parsed:
    if op not in ("dot", "convolution"):
      continue
    operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
    lhs, rhs = shapes[operands[0]], shapes[operands[1]]
    result = math.prod(shapes[name])
    if op == "dot":
      contract = math.prod(lhs[i] for i in _DIMS(rest, "lhs_contracting_dims"))
      out["dot"] += 2.0 * result * contract
    else:
      labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest).group(2)
      kernel_out = rhs[labels.index("o")]
      # A transposed conv (the input gradient of a strided conv) dilates its input with
      # zeros; only 1 / prod(lhs_dilate) of its taps multiply data.
      dilate = re.search(r"lhs_dilate=([\dx]+)", rest)
      holes = math.prod(int(v) for v in dilate.group(1).split("x")) if dilate else 1
      out["conv"] += 2.0 * result * math.prod(rhs) / kernel_out / holes
  out["total"] = out["dot"] + out["conv"]
  return out


def xla_step_flops(fn, *args, fast_compile: bool = True) -> dict[str, float]:
  """Compiles `fn(*args)` and returns XLA's counts: {"cost_analysis", "dot", "conv", "total"}.

  `cost_analysis` is XLA's `compiled.cost_analysis()['flops']` (elementwise ops included);
  the others are `hlo_flops` of the compiled module. `args` may be abstract
  (`jax.ShapeDtypeStruct`). `fast_compile` skips the backend's (LLVM's) optimisations,
  which do not change the HLO program counted here, to compile about twice as fast.
  """
  options = {"xla_backend_optimization_level": 0} if fast_compile else None
  compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per device program
    cost = cost[0]
  return {"cost_analysis": float(cost["flops"]), **hlo_flops(compiled.as_text())}
