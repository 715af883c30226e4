"""transformers T5 / UMT5 checkpoints -> `sora_jax.models.t5` encoder params.

Reads a transformers model folder (config.json + model*.safetensors) of `T5EncoderModel`,
`UMT5EncoderModel` or a full encoder-decoder (`T5ForConditionalGeneration`, ...): only the
encoder is converted, `decoder.*` and `lm_head.*` are skipped. The token table may be stored
as `shared.weight`, `encoder.embed_tokens.weight` or both (transformers ties them).

  config, params = load("/ckpt/Wan2.1-T2V-14B-Diffusers/text_encoder", dtype="bfloat16")
  hidden = t5.encode(params, ids, mask, config)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from etils import epath

from sora_jax.interop import safetensors_io as st_io
from sora_jax.interop.safetensors_io import ConversionError
from sora_jax.models import t5

# transformers' defaults for keys a config.json may leave out.
_DEFAULTS = {
    "t5": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
               feed_forward_proj="relu"),
    "umt5": dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8,
                 num_heads=6, feed_forward_proj="gated-gelu"),
}
_COMMON_DEFAULTS = dict(relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        layer_norm_epsilon=1e-6)
_EMBEDDINGS = ("shared.weight", "encoder.embed_tokens.weight")


def _skipped(name: str) -> bool:
  """Tensors of a full checkpoint the encoder does not use."""
  return name.startswith(("decoder.", "lm_head."))


def config_from_hf(cfg: dict[str, Any], dtype: str = "float32",
                   scan_layers: bool = False) -> t5.T5Config:
  """A transformers T5Config / UMT5Config dict (config.json) -> T5Config.

  Raises:
    ConversionError: a model_type other than "t5"/"umt5", or a value the encoder does not
      support (named by its key).
  """
  model_type = cfg.get("model_type")
  if model_type not in _DEFAULTS:
    raise ConversionError(f"config.json: model_type={model_type!r}; expected one of "
                          f"{sorted(_DEFAULTS)}.")
  values = {**_COMMON_DEFAULTS, **_DEFAULTS[model_type]}
  values.update({k: cfg[k] for k in values if cfg.get(k) is not None})
  try:
    t5.parse_feed_forward_proj(values["feed_forward_proj"])
  except ValueError as e:
    raise ConversionError(f"config.json: {e}") from None
  if cfg.get("is_decoder"):
    raise ConversionError("config.json: is_decoder=True; only encoders (bidirectional "
                          "position buckets) are supported.")
  for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
              "relative_attention_num_buckets", "relative_attention_max_distance"):
    if not isinstance(values[key], int) or values[key] < 1:
      raise ConversionError(f"config.json: {key}={values[key]!r}; expected a positive int.")
  try:
    return t5.T5Config(**values, per_layer_position_bias=model_type == "umt5", dtype=dtype,
                       param_dtype=dtype, scan_layers=scan_layers)
  except ValueError as e:
    raise ConversionError(f"config.json: {e}") from None


def _checked(placer: st_io.Placer, name: str, shape: tuple[int, ...]) -> np.ndarray:
  """Source tensor `name`, which must have `shape` (checked before any reshape)."""
  x = placer.get(name)
  if tuple(x.shape) != shape:
    raise ConversionError(f"{placer.source}: tensor {name!r} has shape {tuple(x.shape)} but "
                          f"the config needs {shape} (a config that does not match the "
                          "weights?).")
  return x


def _place_block(placer: st_io.Placer, config: t5.T5Config, i: int) -> None:
  """Block i's tensors (encoder.block.{i}.*) into block_{i}/*."""
  d, h, dk = config.d_model, config.num_heads, config.d_kv
  src, dst = f"encoder.block.{i}.layer", f"block_{i}"
  attn = f"{src}.0.SelfAttention"
  for name in ("q", "k", "v"):  # torch [H * Dk, D] -> [D, H, Dk]
    w = _checked(placer, f"{attn}.{name}.weight", (h * dk, d))
    placer.put(f"{dst}/attention/{name}", st_io.linear(w).reshape(d, h, dk))
  w = _checked(placer, f"{attn}.o.weight", (d, h * dk))  # -> [H, Dk, D]
  placer.put(f"{dst}/attention/o", st_io.linear(w).reshape(h, dk, d))
  if config.per_layer_position_bias:
    placer.put(f"{dst}/position_bias/embedding", f"{attn}.relative_attention_bias.weight")
  placer.put(f"{dst}/attention_norm/scale", f"{src}.0.layer_norm.weight")
  placer.put(f"{dst}/mlp_norm/scale", f"{src}.1.layer_norm.weight")
  gated, _ = t5.parse_feed_forward_proj(config.feed_forward_proj)
  for name in ("wi_0", "wi_1", "wo") if gated else ("wi", "wo"):
    placer.put(f"{dst}/mlp/{name}", f"{src}.1.DenseReluDense.{name}.weight",
               transform=st_io.linear)


def convert(tensors: dict[str, np.ndarray], config: t5.T5Config, dtype: str | None = None,
            source: str = "T5 checkpoint") -> Any:
  """transformers T5 / UMT5 tensors (by name) -> params of `T5Encoder(config)`.

  Args:
    tensors: name -> array (`safetensors_io.read_tensors`).
    config: the encoder's config (`config_from_hf`).
    dtype: params' dtype name; None: config.param_dtype.
    source: how errors name the checkpoint.

  Raises:
    ConversionError: a missing or misshapen tensor (named), or an encoder tensor nothing used.
  """
  flat = dataclasses.replace(config, scan_layers=False)
  placer = st_io.Placer(tensors, t5.param_shapes(flat), source,
                        dtype=dtype or config.param_dtype)
  embedding = next((k for k in _EMBEDDINGS if placer.has(k)), _EMBEDDINGS[0])
  placer.put("embedding", embedding)
  if not config.per_layer_position_bias:
    placer.put("position_bias/embedding",
               "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
  for i in range(config.num_layers):
    _place_block(placer, config, i)
  placer.put("final_norm/scale", "encoder.final_layer_norm.weight")
  params = placer.finish(allow_unused=lambda k: _skipped(k) or k in _EMBEDDINGS)
  if config.scan_layers:  # block_{i}/... -> blocks/... stacked on a leading layer axis
    blocks = [params.pop(f"block_{i}") for i in range(config.num_layers)]
    params["blocks"] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
  return params


def load(path: str | epath.PathLike, dtype: str | None = None,
         scan_layers: bool = False) -> tuple[t5.T5Config, Any]:
  """(config, params) from a transformers T5 / UMT5 folder (config.json + *.safetensors).

  Args:
    path: the model folder (for Wan2.1 diffusers checkpoints: `<ckpt>/text_encoder`).
    dtype: compute and parameter dtype name ("float32", "bfloat16"); None: float32.
    scan_layers: see `T5Config.scan_layers`.
  """
  folder = epath.Path(path)
  dtype = dtype or "float32"
  config = config_from_hf(st_io.read_json(folder / "config.json"), dtype, scan_layers)
  tensors = st_io.read_tensors(folder, dtype, select=lambda k: not _skipped(k))
  return config, convert(tensors, config, dtype, source=str(folder))
