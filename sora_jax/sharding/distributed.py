"""Joining the processes of a multi-host run (`jax.distributed.initialize`).

`sora_jax.main` calls `initialize_distributed` first, before anything touches a device.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from absl import logging


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
  if env.get("JAX_NUM_PROCESSES") and "JAX_PROCESS_ID" not in env:
    raise ValueError(f"JAX_NUM_PROCESSES={env['JAX_NUM_PROCESSES']} is set but JAX_PROCESS_ID "
                     "is not, so every process would claim rank 0: set both (or neither, "
                     "and let the launcher, e.g. SLURM, supply them).")
  import jax  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
    kwargs = dict(num_processes=int(env["JAX_NUM_PROCESSES"]),
                  process_id=int(env.get("JAX_PROCESS_ID", "0")))
  jax.distributed.initialize(**kwargs)
  logging.warning("Joined %d processes (%s); this is process %d.", jax.process_count(),
                  launcher or "--distributed=on", jax.process_index())
  return True
