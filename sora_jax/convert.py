"""Released weights in and out: a DiT run directory from a diffusers folder, and back.

  python -m sora_jax.convert --config configs/wan.py:model_dir=MODEL_DIR --workdir runs/wan
  python -m sora_jax.sample --workdir runs/wan --prompt "..." --frames 81 --height 480 --width 832
  python -m sora_jax.main --config configs/wan.py:model_dir=MODEL_DIR,videos=F --workdir runs/wan
  python -m sora_jax.convert --workdir runs/wan --export_to out/transformer [--step N] \
      [--dtype bfloat16]     # a (fine-tuned) Wan-layout DiT as a diffusers folder

The config names the pretrained parts (`sora_jax/interop/pretrained.py`). The run directory
gets checkpoint step 0 with the DiT's converted params (in the config's DiT dtype), the
config, and the sampling metadata (the tokenizer, copied in; the VAE folder and its latent
statistics). The frozen text encoder is not copied: `Run.load` reads it from the folder the
config names. `python -m sora_jax.main` in this directory starts a fresh fine-tuning run
from its DiT (so does a new --workdir: the config's `model.pretrained` loads the weights).
Reads safetensors with numpy (no torch); refuses a --workdir that already holds checkpoints.
`--export_to` writes a run's DiT (EMA params of `--step`, default the latest) as diffusers'
`WanTransformer3DModel` (config.json + safetensors), for the PyTorch tools.
"""
import json

from absl import flags
from absl import logging
from etils import epath
from ml_collections import config_flags

from data_pipelines import usage

CONVERTED = "converted_from"  # the checkpoint extra's key naming the released weights


def convert(config, workdir: str) -> epath.Path:
  """Writes the run directory (see the module docstring); returns the checkpoint path."""
  import jax  # pylint: disable=g-import-not-at-top  (after flag parsing)
  from sora_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from sora_jax.inference import run as run_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.interop import pretrained  # pylint: disable=g-import-not-at-top
  from sora_jax.train import dit_task  # pylint: disable=g-import-not-at-top

  with usage.checking():
    if config.get("task") != "dit" or not config.model.get("pretrained"):
      raise ValueError("--config names no pretrained DiT (config.model.pretrained); use "
                       "e.g. configs/wan.py:model_dir=DIR.")
    pretrained.check_sources(config)
    usage.check_directory("--workdir", workdir)
    if epath.Path(workdir, "checkpoints").exists():
      raise ValueError(f"--workdir {workdir!r} already holds checkpoints/; convert into a "
                       "new directory.")
  task = dit_task.DiTTask(config)
  vae = task.vae
  dcfg, tcfg = run_lib.dit_configs(config, vae.config.latent_channels)
  params = pretrained.load_params(config, dcfg, tcfg, parts=("dit",))
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  task.save_tokenizer(workdir)
  extra = {**task.tokenizer_extra(), "latents": "on_the_fly",
           "vae": vae.description, "latent_mean": vae.mean.tolist(),
           "latent_std": vae.std.tolist(), CONVERTED: config.model.pretrained}
  config_json = json.loads(config.to_json_best_effort())
  ckpt = checkpoints.Checkpointer(workdir, async_save=False)
  ckpt.save(0, {"params": params}, config=config_json, extra=extra)
  ckpt.wait()
  ckpt.close()
  if jax.process_index() == 0:
    epath.Path(workdir, "config.json").write_text(json.dumps(config_json, indent=2))
  logging.warning("Wrote %s/checkpoints/0 from %s", workdir, config.model.pretrained)
  return epath.Path(workdir, "checkpoints", "0")


def export(workdir: str, out: str, step: int | None = None, dtype: str = "") -> epath.Path:
  """Writes the DiT of the run in `workdir` as a diffusers Wan2.1 transformer folder."""
  from sora_jax.inference import run as run_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.interop import wan_dit  # pylint: disable=g-import-not-at-top

  with usage.checking():
    if dtype not in ("", "float32", "bfloat16"):
      raise ValueError(f"--dtype={dtype!r}; allowed: float32, bfloat16 ('' = as stored).")
    usage.check_directory("--export_to", out)
    dcfg, _ = run_lib.read_dit_configs(workdir, step)
    wan_dit.check_layout(dcfg)  # only Wan-layout DiTs have a diffusers equivalent
  run = run_lib.Run.load(workdir, step)
  return wan_dit.save_diffusers(out, run.params["dit"]["params"], run.dit_config,
                                run.text_config.width, dtype or None)


def main(argv):
  if len(argv) > 1:
    raise usage.InputError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  f = flags.FLAGS
  if not f.workdir:
    raise usage.InputError("--workdir is required.")
  if f.export_to:
    path = export(f.workdir, f.export_to, f.step, f.dtype)
    print(json.dumps({"exported": str(path)}))
    return
  if f.step is not None or f.dtype:
    raise usage.InputError("--step and --dtype go with --export_to.")
  with usage.checking():
    config = f["config"].value  # evaluating the config file may raise
    if config is None:
      raise ValueError("--config is required (e.g. configs/wan.py:model_dir=DIR), or "
                       "--export_to DIR to export a run.")
  path = convert(config, f.workdir)
  print(json.dumps({"checkpoint": str(path)}))


def _define_flags() -> None:
  config_flags.DEFINE_config_file(
      "config", None, "A config naming pretrained weights, e.g. configs/wan.py:model_dir=DIR.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "The run directory to write (or to export from).")
  flags.DEFINE_string("export_to", "", "Export the run's DiT to this diffusers folder.")
  flags.DEFINE_integer("step", None, "With --export_to: the step (default: the latest).")
  flags.DEFINE_string("dtype", "", "With --export_to: float32 or bfloat16 ('' = as stored).")


if __name__ == "__main__":
  _define_flags()
  usage.run(main)
