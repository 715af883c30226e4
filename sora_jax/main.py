"""Training entry point, for the VAE and the DiT alike, on one process or many.

  python -m sora_jax.main --config configs/vae.py:variant=tiny --workdir runs/vae_tiny

Running the same command again resumes from the latest checkpoint in --workdir.
Override any config field with --config.FIELD=VALUE (configs are locked: typos fail),
e.g. --config.mesh.fsdp=8 --config.mesh.data=1.

Several processes (a TPU pod slice, a SLURM job, an MPI launch, or any launcher that sets
JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID) run the same command on
every host; `jax.distributed.initialize()` joins them before JAX touches a device, every
process feeds its own shard of the data into global arrays, and only process 0 writes
metrics and run files. `--distributed=on` forces the join where the launcher is not
recognised (e.g. GCE TPU VMs, which jax finds through the metadata server); `off` skips it.
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from data_pipelines import usage
from sora_jax.sharding import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (path[:args]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): 'auto' when a multi-process launch is detected.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  config_file = flags.FLAGS["config"].config_filename.split(":", 1)[0]
  if not os.path.isfile(config_file):  # config_flags defers this error to the first read
    raise usage.InputError(f"--config: no such config file {config_file!r}; expected e.g. "
                           "--config=configs/dit.py:runlocal=True.")
  with usage.checking():
    distributed.initialize_distributed(_DISTRIBUTED.value)
  import jax  # pylint: disable=g-import-not-at-top
  from sora_jax.train import loop  # pylint: disable=g-import-not-at-top
  logging.info("JAX devices: %s", jax.devices())
  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  usage.run(main)
