"""The pretrained parts a DiT run config names, loaded and converted (no torch, no hub).

A DiT config (configs/dit.py, configs/wan.py) may name:
  model.pretrained   a diffusers Wan2.1 transformer folder: the DiT starts from its weights
                     (the layout and sizes must be the config's: `check_dit_folder`);
  text.encoder="t5"  a frozen T5 / UMT5 encoder, its weights from `text.path` (a transformers
                     folder) or, with `text.path` empty, a seeded random init of `text.t5`
                     (smoke tests: the demo's pipeline on a small random T5);
  vae.wan            a diffusers Wan2.1 VAE folder in place of a project VAE run;
  tokenizer.kind="t5" the T5 tokenizer of a sentencepiece model (`tokenizer.path`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from etils import epath

from sora_jax.interop import safetensors_io as io
from sora_jax.interop import t5 as t5_convert
from sora_jax.interop import wan_dit
from sora_jax.models import dit as dit_lib
from sora_jax.models import t5 as t5_lib
from sora_jax.models import text as text_lib

TEXT_ENCODERS = ("joint", "t5")


def text_config(text: Mapping[str, Any], max_len: int) -> text_lib.PretrainedTextConfig:
  """The frozen encoder's config of a config's `text` section (encoder = "t5")."""
  dtype = text.get("dtype", "float32")
  if text.get("path"):
    folder = epath.Path(text["path"])
    t5cfg = t5_convert.config_from_hf(io.read_json(folder / "config.json"), dtype=dtype)
  else:
    t5cfg = t5_lib.T5Config(**{**dict(text.get("t5") or {}), "dtype": dtype})
  return text_lib.PretrainedTextConfig(t5cfg, max_len=max_len,
                                       zero_padding=bool(text.get("zero_padding", True)))


def check_sources(config: Mapping[str, Any]) -> None:
  """One ConversionError for a pretrained folder a config names that is not there."""
  text = config["text"]
  encoder = text.get("encoder", "joint")
  if encoder not in TEXT_ENCODERS:
    raise io.ConversionError(f"config.text.encoder={encoder!r}; allowed: {TEXT_ENCODERS}.")
  named = [("config.model.pretrained", config["model"].get("pretrained", ""), "config.json"),
           ("config.vae.wan", config["vae"].get("wan", ""), "config.json")]
  if encoder == "t5":
    named.append(("config.text.path", text.get("path", ""), "config.json"))
  if config.get("tokenizer", {}).get("kind", "sentencepiece") == "t5":
    named.append(("config.tokenizer.path", config["tokenizer"].get("path", ""), None))
  for key, path, inside in named:
    if not path:
      continue
    p = epath.Path(path)
    if not p.exists() or (inside and not (p / inside).exists()):
      what = f"folder with {inside}" if inside else "file or folder"
      raise io.ConversionError(f"{key}={path!r}: no such {what}.")


def check_dit_folder(folder: str, dcfg: dit_lib.DiTConfig, text_dim: int) -> None:
  """Raises ConversionError unless the diffusers transformer in `folder` has `dcfg`'s sizes."""
  want, want_text = wan_dit.config_from_diffusers(
      io.read_json(epath.Path(folder) / "config.json"))
  for field in ("width", "depth", "num_heads", "mlp_hidden", "patch", "latent_channels"):
    if getattr(want, field) != getattr(dcfg, field):
      raise io.ConversionError(
          f"{folder}: the transformer's {field} is {getattr(want, field)} but the run's DiT "
          f"config has {getattr(dcfg, field)} (set the config from the same folder).")
  if want_text != text_dim:
    raise io.ConversionError(f"{folder}: the transformer reads text of width {want_text}, the "
                             f"run's text encoder gives {text_dim}.")


def load_params(config: Mapping[str, Any], dcfg: dit_lib.DiTConfig, tcfg,
                dtype: str | None = None, parts: tuple[str, ...] = ("dit", "text")
                ) -> dict[str, Any]:
  """{"dit": variables, "text": variables} of the pretrained parts the config names (only
  those it names, among `parts`), as host arrays in `dtype` (None: the model's param
  dtype)."""
  out = {}
  if "dit" in parts and (folder := config["model"].get("pretrained", "")):
    check_dit_folder(folder, dcfg, tcfg.width)
    tensors = io.read_tensors(folder)
    out["dit"] = {"params": wan_dit.convert(tensors, dcfg, tcfg.width, dtype, source=folder)}
  if ("text" in parts and text_lib.is_frozen(tcfg)
      and (folder := config["text"].get("path", ""))):
    _, params = t5_convert.load(folder, dtype=dtype or tcfg.t5.param_dtype,
                                scan_layers=tcfg.t5.scan_layers)
    out["text"] = {"params": params}
  return out
