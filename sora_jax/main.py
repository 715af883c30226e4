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
from __future__ import annotations

import os
from collections.abc import Mapping

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (path[:args]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): 'auto' when a multi-process launch is detected.")
flags.mark_flags_as_required(["config", "workdir"])


def _count(env: Mapping[str, str], key: str) -> int:
  try:
    return int(env.get(key, "1"))
  except ValueError:
    return 1


def multi_process_launcher(env: Mapping[str, str] = os.environ) -> str | None:
  """The launcher that started this process as one of several, or None (one process).

  Args:
    env: the environment (default `os.environ`).
  """
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if env.get("SLURM_JOB_ID") and _count(env, "SLURM_NTASKS") > 1:
    return "SLURM"
  if env.get("OMPI_MCA_orte_hnp_uri") and _count(env, "OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "TPU pod"
  return None


def initialize_distributed(mode: str = "auto", env: Mapping[str, str] = os.environ) -> bool:
  """Joins the processes of a multi-host run; call before anything touches a device.

  Args:
    mode: "auto" (join when `multi_process_launcher` finds one), "on" or "off".
    env: the environment; JAX_NUM_PROCESSES and JAX_PROCESS_ID complete
      JAX_COORDINATOR_ADDRESS (jax reads only the address itself).

  Returns:
    Whether `jax.distributed.initialize` was called.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"--distributed={mode!r}; expected auto, on or off.")
  launcher = multi_process_launcher(env)
  if mode == "off" or (mode == "auto" and launcher is None):
    return False
  import jax  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
    kwargs = dict(num_processes=int(env["JAX_NUM_PROCESSES"]),
                  process_id=int(env.get("JAX_PROCESS_ID", "0")))
  jax.distributed.initialize(**kwargs)
  logging.warning("Joined %d processes (%s); this is process %d.", jax.process_count(),
                  launcher or "--distributed=on", jax.process_index())
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  initialize_distributed(_DISTRIBUTED.value)
  import jax  # pylint: disable=g-import-not-at-top
  from sora_jax.train import loop  # pylint: disable=g-import-not-at-top
  logging.info("JAX devices: %s", jax.devices())
  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
