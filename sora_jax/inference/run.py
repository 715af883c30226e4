"""The one way into a trained run: configs, tokenizer, frozen VAE and params.

  run = Run.load("runs/demo/dit")                 # the latest step, params on the host
  run = Run.load(workdir, step=900)               # any saved step (every one can sample)
  run = Run.load(workdir, mesh=mesh_lib.make_mesh({"fsdp": 2, "context": 4}))  # placed
  vae = load_vae("runs/demo/vae")                 # a VAE run, with its latent statistics

A DiT run directory holds `checkpoints/STEP/{state,config,extra}` (`sora_jax/checkpoints.py`)
and the run's tokenizer. `config` rebuilds the models (`dit_configs`); `extra` names the
VAE the latents came from (`VAE_WORKDIR@STEP`, or `random:...` for runlocal runs) and the
latent normalisation the DiT was trained on. Training (the frozen VAE of a DiT task), latent
encoding, sampling, evaluation, the scaling report and the notebooks all come in here.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import storage
from sora_jax import checkpoints
from sora_jax.interop import pretrained
from sora_jax.interop import safetensors_io
from sora_jax.interop import wan_vae as wan_vae_convert
from sora_jax.models import attention as attn_lib
from sora_jax.models import dit as dit_lib
from sora_jax.models import text as text_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models import wan_vae as wan_vae_lib
from sora_jax.sharding import rules as rules_lib
from sora_jax.text import t5_tokenizer
from sora_jax.text import tokenizer as tok_lib


# ------------------------------------------------------------------------ the VAE
@dataclasses.dataclass(frozen=True, eq=False)
class FrozenVAE:
  """A VAE for encoding and decoding: config, params and the per-channel normalisation.

  Attributes:
    config: `vae.VAEConfig`, or `wan_vae.WanVAEConfig` for Wan2.1's VAE (`vae_functions`
      gives the functions of either).
    params: the VAE's params pytree (host arrays).
    mean, std: float32 [C] latent statistics: normalised latents are (z - mean) / std.
    description: where it came from (`WORKDIR@STEP` or `random:...`; stored with latents
      and DiT checkpoints).
  """
  config: Any
  params: Any
  mean: np.ndarray
  std: np.ndarray
  description: str


WAN_VAE = "wan:"  # a VAE description (checkpoint extra, latent records) of a Wan2.1 folder


def vae_functions(vcfg):
  """The module with the functions (encode, encode_chunked, decode, decode_chunked,
  preprocess, postprocess) of a VAE config: `models/vae.py` or Wan2.1's `models/wan_vae.py`."""
  return wan_vae_lib if isinstance(vcfg, wan_vae_lib.WanVAEConfig) else vae_lib


def load_wan_vae(folder: str, dtype: str = "float32") -> FrozenVAE:
  """Wan2.1's VAE from a diffusers folder, with its latent mean and std."""
  vcfg, params = wan_vae_convert.load(folder, dtype)
  mean, std = wan_vae_lib.latent_stats(vcfg)
  return FrozenVAE(vcfg, params, mean, std, WAN_VAE + storage.absolute(folder))


def load_vae_source(source: str) -> FrozenVAE:
  """A VAE by what a command names: a VAE run directory, or `wan:DIR` (a diffusers Wan2.1
  VAE folder)."""
  if source.startswith(WAN_VAE):
    folder = source[len(WAN_VAE):]
    if not epath.Path(folder, "config.json").exists():
      raise ValueError(f"VAE {source!r}: {folder!r} holds no diffusers config.json.")
    return load_wan_vae(folder)
  return load_vae(source)


def vae_config_from_json(model: Mapping[str, Any]) -> vae_lib.VAEConfig:
  """The VAE config from the `model` section of a VAE run's config (JSON or ConfigDict)."""
  model = dict(model)
  return vae_lib.get_vae_config(model.pop("variant"), **model)


def read_vae_run(workdir: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
  """(latest step, config JSON, extra JSON) of a VAE run; one clear error if unusable."""
  step, config, extra = checkpoints.read_run(
      workdir, "a VAE (configs/vae.py) or pass the right --vae_workdir", "VAE workdir")
  if "model" not in config:
    raise ValueError(f"VAE checkpoint {workdir!r} step {step} has no model config.")
  if not extra or "latent_mean" not in extra:
    raise ValueError(f"VAE checkpoint {workdir!r} step {step} has no latent statistics "
                     "(extra JSON, saved with the last step of a finished VAE run).")
  return step, config, extra


def load_vae(workdir: str) -> FrozenVAE:
  """The trained VAE of a workdir's latest checkpoint, with its saved latent statistics."""
  step, config, extra = read_vae_run(workdir)
  vcfg = vae_config_from_json(config["model"])
  # The VAE is small and frozen: restored whole on the host (no sharding needed).
  params = checkpoints.restore_state_host(workdir, step)["params"]["vae"]
  mean = np.asarray(extra["latent_mean"], np.float32)
  std = np.asarray(extra["latent_std"], np.float32)
  if mean.shape != (vcfg.latent_channels,) or std.shape != mean.shape:
    raise ValueError(f"VAE {workdir!r}: latent stats of shape {mean.shape} do not match "
                     f"its {vcfg.latent_channels} latent channels.")
  return FrozenVAE(vcfg, params, mean, std, f"{storage.absolute(workdir)}@{step}")


def random_vae(model: Mapping[str, Any], seed: int = 0) -> FrozenVAE:
  """A randomly initialised VAE (mean 0, std 1): runlocal and tests only."""
  vcfg = vae_config_from_json(model)
  logging.warning("!!! No VAE workdir: encoding with a RANDOMLY INITIALISED VAE (%s). "
                  "Fine for tests and runlocal, meaningless for real training. !!!", vcfg)
  # Concrete even when first asked for inside a trace (e.g. the DiT's eval_shape'd init).
  with jax.ensure_compile_time_eval():
    params = jax.device_get(vae_lib.init_params(vcfg, jax.random.key(seed)))
  c = vcfg.latent_channels
  return FrozenVAE(vcfg, params, np.zeros(c, np.float32), np.ones(c, np.float32),
                   f"random:{vcfg.variant}:seed={seed}")


# ------------------------------------------------------------------------ the DiT
# DiT options removed from the code (EXPERIMENTS.md), with their off value: runs saved
# before the removal name them in their config and still load when they were off.
REMOVED_DIT_OPTIONS = {"self_condition": False, "mlp_conv": False}


def _dit_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
  out = dict(overrides)
  for key, off in REMOVED_DIT_OPTIONS.items():
    if key in out and out.pop(key) != off:
      raise ValueError(f"The run was trained with model.overrides.{key}={overrides[key]!r}, "
                       "an option since removed (EXPERIMENTS.md); load it with a checkout "
                       "from before its removal.")
  return out


def dit_configs(config: Mapping[str, Any], latent_channels: int
                ) -> tuple[dit_lib.DiTConfig, Any]:
  """(DiT, text encoder) configs of a DiT run config (its ConfigDict or saved JSON); the text
  config is a `TextEncoderConfig`, or a `PretrainedTextConfig` with text.encoder = "t5"."""
  m, t = config["model"], config["text"]
  overrides = _dit_overrides(m.get("overrides") or {})
  # The modulation once per (clip, given) slot of a packed row: exact here (DiTConfig).
  overrides.setdefault("adaln_slots", 2 * (config["packing"]["max_clips"] + 1))
  dcfg = dit_lib.get_dit_config(m["variant"], patch=tuple(m["patch"]),
                                latent_channels=latent_channels, **overrides)
  if t.get("encoder", "joint") == "t5":  # a frozen pretrained encoder
    return dcfg, pretrained.text_config(t, config["packing"]["text_len"])
  tcfg = text_lib.get_text_config(t["variant"], vocab_size=t["vocab_size"],
                                  max_len=config["packing"]["text_len"],
                                  **dict(t.get("overrides") or {}))
  return dcfg, tcfg


def dit_param_specs(dcfg: dit_lib.DiTConfig, tcfg: text_lib.TextEncoderConfig
                    ) -> dict[str, Any]:
  """Logical PartitionSpecs of {"dit": ..., "text": ...} params (`sharding/rules.py`)."""
  ids = jax.ShapeDtypeStruct((1, tcfg.max_len), jnp.int32)
  return {"dit": rules_lib.param_specs(dit_lib.DiT(dcfg),
                                       **dit_lib.dummy_inputs(dcfg, text_dim=tcfg.width)),
          "text": rules_lib.param_specs(text_lib.text_module(tcfg), ids,
                                        jax.ShapeDtypeStruct(ids.shape, jnp.bool_))}


def read_dit_run(workdir: str, step: int | None = None
                 ) -> tuple[int, dict[str, Any], dict[str, Any]]:
  """(step, config JSON, extra JSON) of a DiT run; one clear error if it cannot sample.

  `step` None is the latest. A step saved without sampling metadata (older runs kept it
  with the last step only) borrows the latest step's: a DiT run's tokenizer and latent
  statistics do not change while it trains.
  """
  train_what = "a DiT run (python -m sora_jax.main --config configs/dit.py ...)"
  step, config, extra = checkpoints.read_run(workdir, train_what, step=step)
  if config.get("task") != "dit":
    raise ValueError(f"{workdir!r} step {step} is not a DiT run (config task="
                     f"{config.get('task')!r}); sampling needs a DiT workdir.")
  if not extra or "latent_mean" not in extra:
    extra = checkpoints.read_run(workdir, train_what)[2]
  if not extra or "latent_mean" not in extra:
    raise ValueError(f"{workdir!r} step {step}: the checkpoint has no sampling metadata "
                     "(older runs saved it with the last step only); let the run finish "
                     "first.")
  return step, config, extra


def _run_vae_source(workdir: str, config: Mapping[str, Any], extra: Mapping[str, Any]
                    ) -> tuple[str | None, Any]:
  """(the VAE's workdir or Wan folder, or None for a random VAE; its config) of a DiT run:
  JSON only."""
  desc = str(extra.get("vae", ""))
  if desc.startswith("random:"):
    return None, vae_config_from_json(config["vae"]["random_model"])
  if desc.startswith(WAN_VAE):
    path = desc[len(WAN_VAE):]
    if not epath.Path(path, "config.json").exists():
      raise ValueError(f"The DiT run {workdir!r} was trained on latents of the Wan2.1 VAE in "
                       f"{path!r}, which does not exist here.")
    return desc, wan_vae_convert.config_from_diffusers(
        safetensors_io.read_json(epath.Path(path, "config.json")))
  path = desc.rsplit("@", 1)[0] if "@" in desc else config["vae"]["workdir"]
  if not epath.Path(path).is_dir():
    raise ValueError(f"The DiT run {workdir!r} was trained on latents of the VAE in "
                     f"{path!r}, which does not exist here.")
  return path, vae_config_from_json(read_vae_run(path)[1]["model"])


def read_dit_configs(workdir: str, step: int | None = None
                     ) -> tuple[dit_lib.DiTConfig, vae_lib.VAEConfig]:
  """The DiT and VAE configs of a run, from its JSON files alone (no params are read)."""
  step, config, extra = read_dit_run(workdir, step)
  vcfg = _run_vae_source(workdir, config, extra)[1]
  return dit_configs(config, vcfg.latent_channels)[0], vcfg


TOKENIZER_KINDS = ("sentencepiece", "t5")


def run_tokenizer(workdir: str, extra: Mapping[str, Any]):
  """The tokenizer a run's checkpoint names (a relative path is the run's own file): the
  project's `Tokenizer`, or a pretrained encoder's `T5Tokenizer` (tokenizer_kind "t5")."""
  path = extra.get("tokenizer", "tokenizer.model")
  if not (os.path.isabs(path) or "://" in path):
    path = storage.join(workdir, path)
  if extra.get("tokenizer_kind", "sentencepiece") == "t5":
    return t5_tokenizer.T5Tokenizer.load(path)
  return tok_lib.Tokenizer.load(path)


def vae_of_run(workdir: str, config: Mapping[str, Any], extra: Mapping[str, Any]) -> FrozenVAE:
  """The VAE a DiT run's latents came from, with the normalisation it trained on."""
  path, _ = _run_vae_source(workdir, config, extra)
  if path is None:
    vae = random_vae(config["vae"]["random_model"])
  elif path.startswith(WAN_VAE):
    vae = load_wan_vae(path[len(WAN_VAE):])
  else:
    vae = load_vae(path)
  return dataclasses.replace(vae, mean=np.asarray(extra["latent_mean"], np.float32),
                             std=np.asarray(extra["latent_std"], np.float32))


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
  """A trained DiT run, loaded: everything sampling needs.

  Attributes:
    workdir: the run directory.
    step: the checkpoint step loaded.
    config: the run's config (saved JSON).
    dit_config, text_config: the model configs (on a mesh, `dit_config` carries the
      attention backend the mesh needs); `text_config` is a `PretrainedTextConfig` for a
      frozen T5 / UMT5 encoder.
    tokenizer: the run's tokenizer (`Tokenizer` or `T5Tokenizer`).
    vae: the frozen VAE with the latent normalisation the DiT trained on.
    params: {"dit", "text"} params (EMA unless loaded with use_ema=False): on the default
      device, or placed on `mesh` by the sharding preset `rules`.
    mesh, rules: the mesh and preset (None without a mesh).
  """
  workdir: str
  step: int
  config: dict[str, Any]
  dit_config: dit_lib.DiTConfig
  text_config: Any
  tokenizer: Any
  vae: FrozenVAE
  params: Any
  mesh: jax.sharding.Mesh | None = None
  rules: str | None = None

  @property
  def text_len(self) -> int:
    """Caption tokens per prompt."""
    return int(self.config["packing"]["text_len"])

  @property
  def base_tokens(self) -> int | None:
    """The training timestep-shift reference (None = no shift)."""
    return self.config["flow"].get("base_tokens") or None

  @property
  def sample_shift(self) -> float | None:
    """The run's default sampling shift (None = the training rule by token count)."""
    return self.config["flow"].get("sample_shift") or None

  @classmethod
  def load(cls, workdir: str, step: int | None = None,
           mesh: jax.sharding.Mesh | None = None, *, use_ema: bool = True, rules: str = "",
           attention: str = "") -> Run:
    """Loads the DiT run in `workdir` at `step` (None = the latest).

    Args:
      workdir: a DiT run directory.
      step: a saved step; None = the latest.
      mesh: place the params on this mesh (None: the default device).
      use_ema: the EMA params (default) or the raw ones.
      rules: the sharding preset on `mesh` ('' = "fsdp_context" when the mesh has a
        context axis > 1, else "fsdp").
      attention: the DiT attention backend on `mesh` ('' = "ring" with a context axis,
        else the run's).
    """
    step, config, extra = read_dit_run(workdir, step)
    vae = vae_of_run(workdir, config, extra)
    dcfg, tcfg = dit_configs(config, vae.config.latent_channels)
    tokenizer = run_tokenizer(workdir, extra)
    state = checkpoints.restore_state_host(workdir, step)
    # A converted checkpoint (sora_jax.convert) holds the DiT's params only; its
    # frozen text encoder is read from the folder the config names.
    params = state["ema_params" if use_ema and "ema_params" in state else "params"]
    if "text" not in params and "text" in state["params"]:  # frozen: no EMA of its own
      params = {**params, "text": state["params"]["text"]}
    if "text" not in params:
      params = {**params, **pretrained.load_params(config, dcfg, tcfg, parts=("text",))}
    if mesh is None:
      return cls(workdir, step, config, dcfg, tcfg, tokenizer, vae, jax.device_put(params))
    context = dict(mesh.shape).get("context", 1)
    rules = rules or ("fsdp_context" if context > 1 else "fsdp")
    rules_lib.get(rules)  # an unknown preset is one clear error, before any compile
    attention = attention or ("ring" if context > 1 else dcfg.attention_backend)
    if context > 1 and attention not in attn_lib.CONTEXT_BACKENDS:
      raise ValueError(f"A mesh with context={context} needs a context-parallel attention "
                       f"backend {attn_lib.CONTEXT_BACKENDS}; got attention={attention!r}.")
    dcfg = dataclasses.replace(dcfg, attention_backend=attention)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shardings = rules_lib.state_shardings(mesh, abstract, rules, dit_param_specs(dcfg, tcfg))
    return cls(workdir, step, config, dcfg, tcfg, tokenizer, vae,
               jax.device_put(params, shardings), mesh, rules)
