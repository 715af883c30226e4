"""A real multi-process run: two JAX processes on this machine join through
`jax.distributed` (CPU collectives over gloo), 4 fake devices each, and train the runlocal DiT
on one 8-device global mesh, resuming a checkpoint a single 8-device process wrote.

Slow (each process compiles the train step; minutes on 2 cores): `pytest -m slow -k shard`.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             **extra)
  return env


def _main(workdir: str, data: str, steps: int, extra: str = "", flags=()) -> list[str]:
  return [sys.executable, "-m", "sora_jax.main", "--config",
          f"configs/dit.py:runlocal=True,steps={steps},data_dir={data}{extra}",
          "--workdir", workdir, *flags]


def _two_processes(cmd: list[str]) -> list[str]:
  """Runs `cmd` as processes 0 and 1 of one jax.distributed job; returns their logs."""
  port = _free_port()
  procs = [subprocess.Popen(
      cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=_env(4, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i))) for i in range(2)]
  logs = [p.communicate(timeout=1200)[0] for p in procs]
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    assert f"Joined 2 processes (JAX_COORDINATOR_ADDRESS); this is process {i}" in log
  return logs


def _train_steps(workdir: str) -> list[int]:
  return [r["step"] for r in _train_rows(workdir)]


def _train_rows(workdir: str) -> list[dict]:
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in rows if "train/loss" in r]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
  """One process, 8 devices: builds the data set (once, before processes share it) and
  writes the step-2 checkpoint."""
  root = tmp_path_factory.mktemp("multiprocess")
  workdir, data = str(root / "dit"), str(root / "data")
  subprocess.run(_main(workdir, data, 2), cwd=ROOT, env=_env(8), check=True, timeout=900,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  return workdir, data


@pytest.mark.slow
def test_two_process_shard_run_resumes_a_one_process_checkpoint(one_process_run):
  workdir, data = one_process_run
  logs = _two_processes(_main(workdir, data, 4))
  for log in logs:
    assert "Resuming from step 2" in log, log[-4000:]
    # grain wrote one iterator file for one process: the pair restarts the data (warned).
    assert "holds the data iterator of 1 process(es), this run has 2" in log, log[-4000:]
  # Steps 1-2 from the single process, 3-4 from the pair, each written once (process 0).
  assert _train_steps(workdir) == [1, 2, 3, 4]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))


@pytest.mark.slow
def test_two_process_context_ring_shard_run(one_process_run, tmp_path):
  """Mesh context=8 over both processes (data x fsdp = 1 row block): both processes load the
  same batch rows (`process_row_shards` = 1) and ring attention passes K/V blocks between
  the processes. Its losses and gradient norms are those of the same run in one process
  (the same 8-device mesh): 4 steps (runlocal's most), so the blocks' zero-initialised gates
  have moved and attention shapes the later losses (rtol 1e-4)."""
  _, data = one_process_run
  args = (",rules=fsdp_context,attention=ring",
          ["--config.mesh.data=1", "--config.mesh.context=8"])
  pair, single = str(tmp_path / "ring_pair"), str(tmp_path / "ring_single")
  _two_processes(_main(pair, data, 4, *args))
  subprocess.run(_main(single, data, 4, *args), cwd=ROOT, env=_env(8), check=True,
                 timeout=900, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  assert _train_steps(pair) == _train_steps(single) == [1, 2, 3, 4]
  for a, b in zip(_train_rows(pair), _train_rows(single)):
    for key in ("train/loss", "train/grad_norm"):
      assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key)
