"""Training entry point, for the VAE and the DiT alike.

  python -m sora_jax.main --config configs/vae.py:variant=tiny --workdir runs/vae_tiny

Running the same command again resumes from the latest checkpoint in --workdir.
Override any config field with --config.FIELD=VALUE (configs are locked: typos fail).
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (path[:args]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  import jax  # pylint: disable=g-import-not-at-top
  from sora_jax.train import loop  # pylint: disable=g-import-not-at-top
  logging.info("JAX devices: %s", jax.devices())
  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
