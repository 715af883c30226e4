"""Wan2.1's text-to-video transformer (diffusers `WanTransformer3DModel`) as a DiT layout.

Wan2.1's DiT is the project's DiT (`sora_jax/models/dit.py`) with these settings, so packing,
any-size clips, the sharding presets and context parallelism all work with its weights:
  adaLN-single (`adaln="single"`: one shared modulation layer, a [6, D] table per block),
  the final layer's (shift, scale) = table + time embedding (`final_adaln="table"`),
  QK RMSNorm over all heads together (`qk_norm_scope="all_heads"`), tanh-GELU MLP of width
  `ffn_dim` (`mlp_dim`), 3D RoPE with Wan's split of a head's rotary pairs over (t, h, w)
  (`wan_rope_pairs`), the PixArt text projection, no pooled caption, v-prediction, and the
  same flow convention (t = 1 noise, v = eps - x0, the time embedding of 1000 t).

The key map below is the only place that knows diffusers' names. Two layout facts:
  * diffusers rotates interleaved pairs (x[2i], x[2i+1]); `rope.apply_rope` rotates halves
    (x[i], x[i + Dh/2]). Queries, keys and their norm scales are permuted within each head
    on the way in (and back on export): q.k is unchanged by a permutation applied to both.
  * the Conv3d patch embedding is a Dense layer over tokens whose features are ordered
    (pt, ph, pw, C) (`data_pipelines/patches.py`), as is the output projection's.

  dcfg, text_dim, params = load("Wan2.1-T2V-1.3B-Diffusers/transformer", dtype="bfloat16")
  save_diffusers(out_dir, params, dcfg, text_dim)     # back to a diffusers folder
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from sora_jax.interop import safetensors_io as io
from sora_jax.models import dit as dit_lib

WEIGHTS = "diffusion_pytorch_model.safetensors"
CLASS_NAME = "WanTransformer3DModel"
# The diffusers config values this layout reproduces; anything else is refused by name.
_REQUIRED = {"cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
             "freq_dim": 256, "image_dim": None, "added_kv_proj_dim": None,
             "pos_embed_seq_len": None}


def wan_rope_pairs(head_dim: int) -> tuple[int, int, int]:
  """Wan's rotary pairs over (t, h, w): h and w get Dh // 6 each, t the rest (22, 21, 21
  for Dh = 128). Frequencies per axis are base^(-i / n_axis), as `rope.rope_angles`."""
  hw = head_dim // 6
  return (head_dim // 2 - 2 * hw, hw, hw)


def dit_config(*, width: int, depth: int, num_heads: int, ffn_dim: int,
               patch=(1, 2, 2), latent_channels: int = 16, **overrides) -> dit_lib.DiTConfig:
  """The DiT config of a Wan2.1 transformer of this size (`overrides`: dtype, remat, ...)."""
  return dit_lib.get_dit_config(**size_overrides(width, depth, num_heads, ffn_dim),
                                patch=tuple(patch), latent_channels=latent_channels,
                                **overrides)


def size_overrides(width: int, depth: int, num_heads: int, ffn_dim: int) -> dict[str, Any]:
  """{variant, size fields} of a Wan-layout DiT: the 1.3B preset with these sizes."""
  return dict(variant="wan2.1-1.3b", width=width, depth=depth, num_heads=num_heads,
              mlp_ratio=ffn_dim / width, mlp_dim=ffn_dim,
              rope_proportions=wan_rope_pairs(width // num_heads))


def config_from_diffusers(cfg: Mapping[str, Any], **overrides) -> tuple[dit_lib.DiTConfig, int]:
  """(DiT config, text_dim) of a diffusers `transformer/config.json`.

  Raises:
    ConversionError: a value this layout does not reproduce (image-to-video's image
      embedding, other norms), named with its key.
  """
  if cfg.get("_class_name", CLASS_NAME) != CLASS_NAME:
    raise io.ConversionError(f"_class_name={cfg['_class_name']!r}; expected {CLASS_NAME!r}.")
  for key, want in _REQUIRED.items():
    if cfg.get(key, want) != want:
      raise io.ConversionError(f"{key}={cfg[key]!r} is not supported (Wan2.1 text-to-video "
                               f"layout needs {want!r}).")
  if cfg.get("out_channels", cfg["in_channels"]) not in (None, cfg["in_channels"]):
    raise io.ConversionError(f"out_channels={cfg['out_channels']} differs from in_channels="
                             f"{cfg['in_channels']}; the DiT predicts the latent's velocity.")
  heads, head_dim = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
  dcfg = dit_config(width=heads * head_dim, depth=int(cfg["num_layers"]), num_heads=heads,
                    ffn_dim=int(cfg["ffn_dim"]), patch=tuple(cfg["patch_size"]),
                    latent_channels=int(cfg["in_channels"]), **overrides)
  return dcfg, int(cfg["text_dim"])


def diffusers_config(dcfg: dit_lib.DiTConfig, text_dim: int) -> dict[str, Any]:
  """The diffusers config.json of a Wan-layout DiT (for export)."""
  return dict(_class_name=CLASS_NAME, patch_size=list(dcfg.patch),
              num_attention_heads=dcfg.num_heads, attention_head_dim=dcfg.head_dim,
              in_channels=dcfg.latent_channels, out_channels=dcfg.latent_channels,
              text_dim=text_dim, freq_dim=256, ffn_dim=dcfg.mlp_hidden, num_layers=dcfg.depth,
              cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
              added_kv_proj_dim=None, rope_max_seq_len=1024, pos_embed_seq_len=None)


def check_layout(dcfg: dit_lib.DiTConfig) -> None:
  """Raises ValueError unless `dcfg` is a Wan2.1 layout (so the key map applies)."""
  want = dict(dit_lib.WAN_LAYOUT, rope_proportions=wan_rope_pairs(dcfg.head_dim))
  for field, value in want.items():
    if getattr(dcfg, field) != value:
      raise ValueError(f"DiT {field}={getattr(dcfg, field)!r} is not Wan2.1's {value!r}; "
                       "this DiT has no diffusers equivalent.")


# ------------------------------------------------------------------------ the key map
def _rope_perm(head_dim: int) -> np.ndarray:
  """Feature order that turns interleaved rotary pairs into rotate-half ones."""
  return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def _maps(dcfg: dit_lib.DiTConfig):
  """[(our param path, diffusers name or [names per layer], to_ours, to_theirs)]."""
  d, h, dh, din = dcfg.width, dcfg.num_heads, dcfg.head_dim, dcfg.token_dim
  perm = _rope_perm(dh)
  pt, ph, pw = dcfg.patch
  c = dcfg.latent_channels
  lin = (io.linear, io.linear)
  same = (lambda x: x, lambda x: x)
  def heads_in(p):  # torch [H*Dh, D] -> [D, H, Dh], optionally permuted within heads
    return (lambda w: w.T.reshape(d, h, dh)[..., p],
            lambda k: k[..., np.argsort(p)].reshape(d, h * dh).T)
  def heads_vec(p):  # [H*Dh] -> [H, Dh]
    return (lambda b: b.reshape(h, dh)[..., p], lambda b: b[..., np.argsort(p)].reshape(-1))
  ident = np.arange(dh)
  maps = [
      ("patch_embed/kernel", "patch_embedding.weight",
       lambda w: w.transpose(2, 3, 4, 1, 0).reshape(din, d),
       lambda k: k.reshape(pt, ph, pw, c, d).transpose(4, 3, 0, 1, 2)),
      ("patch_embed/bias", "patch_embedding.bias", *same),
      ("time_embed/in/kernel", "condition_embedder.time_embedder.linear_1.weight", *lin),
      ("time_embed/in/bias", "condition_embedder.time_embedder.linear_1.bias", *same),
      ("time_embed/out/kernel", "condition_embedder.time_embedder.linear_2.weight", *lin),
      ("time_embed/out/bias", "condition_embedder.time_embedder.linear_2.bias", *same),
      ("adaln_single/kernel", "condition_embedder.time_proj.weight", *lin),
      ("adaln_single/bias", "condition_embedder.time_proj.bias", *same),
      ("text_proj/in/kernel", "condition_embedder.text_embedder.linear_1.weight", *lin),
      ("text_proj/in/bias", "condition_embedder.text_embedder.linear_1.bias", *same),
      ("text_proj/out/kernel", "condition_embedder.text_embedder.linear_2.weight", *lin),
      ("text_proj/out/bias", "condition_embedder.text_embedder.linear_2.bias", *same),
      ("final/adaln_table", "scale_shift_table", lambda t: t.reshape(2, d),
       lambda t: t.reshape(1, 2, d)),
      ("final/linear/kernel", "proj_out.weight", *lin),
      ("final/linear/bias", "proj_out.bias", *same),
  ]
  block = [("adaln_table", "scale_shift_table", lambda t: t.reshape(6 * d),
            lambda t: t.reshape(1, 6, d)),
           ("cross_norm/scale", "norm2.weight", *same),
           ("cross_norm/bias", "norm2.bias", *same),
           ("mlp/up/kernel", "ffn.net.0.proj.weight", *lin),
           ("mlp/up/bias", "ffn.net.0.proj.bias", *same),
           ("mlp/down/kernel", "ffn.net.2.weight", *lin),
           ("mlp/down/bias", "ffn.net.2.bias", *same)]
  for ours, theirs, rotary in (("self_attention", "attn1", True),
                               ("cross_attention", "attn2", False)):
    p = perm if rotary else ident
    for name, src, q_or_k in (("query", "to_q", True), ("key", "to_k", True),
                              ("value", "to_v", False)):
      pp = p if q_or_k else ident
      block += [(f"{ours}/{name}/kernel", f"{theirs}.{src}.weight", *heads_in(pp)),
                (f"{ours}/{name}/bias", f"{theirs}.{src}.bias", *heads_vec(pp))]
    block += [(f"{ours}/query_norm/scale", f"{theirs}.norm_q.weight", *heads_vec(p)),
              (f"{ours}/key_norm/scale", f"{theirs}.norm_k.weight", *heads_vec(p)),
              (f"{ours}/out/kernel", f"{theirs}.to_out.0.weight",
               lambda w: w.T.reshape(h, dh, d), lambda k: k.reshape(h * dh, d).T),
              (f"{ours}/out/bias", f"{theirs}.to_out.0.bias", *same)]
  for ours, theirs, to_ours, to_theirs in block:
    maps.append((f"blocks/{ours}", [f"blocks.{i}.{theirs}" for i in range(dcfg.depth)],
                 to_ours, to_theirs))
  return maps


def abstract_params(dcfg: dit_lib.DiTConfig, text_dim: int) -> Any:
  """ShapeDtypeStructs of the DiT's params (unboxed, no 'params' wrapper)."""
  inputs = dit_lib.dummy_inputs(dcfg, text_dim=text_dim)
  variables = jax.eval_shape(lambda: dit_lib.DiT(dcfg).init(jax.random.key(0), **{
      k: jnp.zeros(v.shape, v.dtype) for k, v in inputs.items()}))
  return nn.unbox(variables)["params"]


def convert(tensors: Mapping[str, np.ndarray], dcfg: dit_lib.DiTConfig, text_dim: int,
            dtype: str | None = None, source: str = WEIGHTS) -> Any:
  """diffusers tensors -> the DiT's params (scanned or unrolled blocks as `dcfg` says).

  Raises:
    ConversionError: a missing, misshapen or unused tensor, named.
  """
  check_layout(dcfg)
  placer = io.Placer(tensors, abstract_params(dcfg, text_dim), source, dtype)
  for ours, theirs, to_ours, _ in _maps(dcfg):
    if isinstance(theirs, str):
      placer.put(ours, theirs, to_ours)
    elif dcfg.scan_layers:  # one stacked array, layers first
      placer.put(ours, np.stack([placer.transformed(n, to_ours, ours) for n in theirs]))
    else:
      block, rest = ours.split("/", 1)
      for i, name in enumerate(theirs):
        placer.put(f"{block}_{i}/{rest}", name, to_ours)
  return placer.finish()


def export(params: Any, dcfg: dit_lib.DiTConfig, dtype: str | None = None
           ) -> dict[str, np.ndarray]:
  """The DiT's params -> diffusers `WanTransformer3DModel` tensors (inverse of `convert`)."""
  check_layout(dcfg)
  flat = {k: np.asarray(v) for k, v in _flat(params).items()}
  out = {}
  cast = (lambda x: x) if dtype is None else (lambda x: np.asarray(jnp.asarray(x, dtype)))
  for ours, theirs, _, to_theirs in _maps(dcfg):
    if isinstance(theirs, str):
      out[theirs] = cast(to_theirs(flat[ours]))
      continue
    block, rest = ours.split("/", 1)
    for i, name in enumerate(theirs):
      x = flat[ours][i] if dcfg.scan_layers else flat[f"{block}_{i}/{rest}"]
      out[name] = cast(to_theirs(x))
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _flat(params: Any) -> dict[str, Any]:
  params = params.get("params", params) if isinstance(params, Mapping) else params
  return {k: v for k, v in zip(io.param_shapes(params),
                               jax.tree_util.tree_leaves(params))}


def load(path: str | epath.PathLike, dtype: str | None = None, **overrides
         ) -> tuple[dit_lib.DiTConfig, int, Any]:
  """(DiT config, text_dim, params) of a diffusers transformer folder (config.json and
  diffusion_pytorch_model*.safetensors). `overrides` go to the DiT config (e.g. remat)."""
  folder = epath.Path(path)
  dcfg, text_dim = config_from_diffusers(io.read_json(folder / "config.json"), **overrides)
  tensors = io.read_tensors(folder)
  return dcfg, text_dim, convert(tensors, dcfg, text_dim, dtype, source=str(folder))


def save_diffusers(path: str | epath.PathLike, params: Any, dcfg: dit_lib.DiTConfig,
                   text_dim: int, dtype: str | None = None) -> epath.Path:
  """Writes a diffusers transformer folder (config.json + one safetensors file)."""
  folder = epath.Path(path)
  folder.mkdir(parents=True, exist_ok=True)
  io.write_tensors(folder / WEIGHTS, export(params, dcfg, dtype),
                   metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(diffusers_config(dcfg, text_dim), indent=2))
  return folder
