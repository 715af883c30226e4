"""Real multi-process runs: two JAX processes on this machine join through
`jax.distributed` (CPU collectives over gloo), 4 fake devices each, and train on one
8-device global mesh: the runlocal DiT resuming a checkpoint a single 8-device process
wrote; the DiT and the VAE with params split over both processes (fsdp=8) to the end and
back to one process; a SIGTERM to one process of two.

Each process compiles the train step (a minute or more on 2 cores): the VAE's FSDP test and
the SIGTERM one run by default, the rest with `pytest -m slow tests/test_multiprocess.py`.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

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


def _start_two(cmd: list[str]) -> list[subprocess.Popen]:
  """Starts `cmd` as processes 0 and 1 of one jax.distributed job."""
  port = _free_port()
  return [subprocess.Popen(
      cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=_env(4, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i))) for i in range(2)]


def _two_processes(cmd: list[str]) -> list[str]:
  """Runs `cmd` as processes 0 and 1 of one jax.distributed job; returns their logs."""
  procs = _start_two(cmd)
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


# --------------------------------------------------------------------- FSDP across processes
_FSDP = ["--config.mesh.data=1", "--config.mesh.fsdp=8"]


def _vae_main(workdir: str, data: str, steps: int) -> list[str]:
  return [sys.executable, "-m", "sora_jax.main", "--config",
          f"configs/vae.py:variant=tiny,runlocal=True,sizes=5x32x32,rules=vae_fsdp,"
          f"data_dir={data}", f"--config.train.steps={steps}", "--workdir", workdir, *_FSDP]


def _dit_main(workdir: str, data: str, steps: int) -> list[str]:
  return _main(workdir, data, 4, flags=[f"--config.train.steps={steps}", *_FSDP])


def _one_process(cmd: list[str]) -> str:
  done = subprocess.run(cmd, cwd=ROOT, env=_env(8), timeout=900, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
  assert done.returncode == 0, done.stdout[-4000:]
  return done.stdout


def _final_step(workdir: str) -> int:
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    return json.load(f)["step"]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
  """The runlocal VAE (fsdp=8) trained to step 2 by one 8-device process, which also
  builds its data set before processes share it: (workdir, data)."""
  root = tmp_path_factory.mktemp("vae_fsdp")
  workdir, data = str(root / "vae"), str(root / "data")
  _one_process(_vae_main(workdir, data, 2))
  return workdir, data


# The DiT's (2 minutes here) in `slow`; the VAE's runs by default.
@pytest.mark.parametrize("model", [pytest.param("dit", marks=pytest.mark.slow), "vae"])
def test_fsdp_over_two_processes_trains_to_the_end_and_moves_between_process_counts(
    model, request, tmp_path):
  """Params split over the devices of both processes (mesh fsdp=8): the pair resumes a
  one-process checkpoint, trains to its end with the final evaluation (no host gather of
  arrays another process holds) and checkpoint, and one process resumes that."""
  if model == "dit":
    _, data = request.getfixturevalue("one_process_run")
    main, workdir = _dit_main, str(tmp_path / model)
    _one_process(main(workdir, data, 2))
  else:
    (workdir, data), main = request.getfixturevalue("vae_run"), _vae_main
  logs = _two_processes(main(workdir, data, 4))
  for log in logs:
    assert "Resuming from step 2" in log, log[-4000:]
  assert _final_step(workdir) == 4
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
  log = _one_process(main(workdir, data, 6))
  assert "Resuming from step 4" in log, log[-4000:]
  assert _final_step(workdir) == 6
  # Every step trained once, the evaluation at each leg's end written (process 0).
  assert _train_steps(workdir) == [1, 2, 3, 4, 5, 6]
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  key = "final/val_loss" if model == "dit" else "final/psnr_db"
  assert [r["step"] for r in rows if key in r] == [2, 4, 6]


def test_sigterm_to_one_process_stops_both_at_the_same_step(vae_run, tmp_path):
  """A preemption notice to process 1 only: both processes stop at the same step, which is
  saved once (jax's preemption sync point), and exit 0."""
  _, data = vae_run
  workdir = str(tmp_path / "preempted")
  procs = _start_two(_vae_main(workdir, data, 100000)
                     + ["--config.train.checkpoint_every=100000", "--config.train.eval_every=0"])
  deadline = time.time() + 600
  while len(_train_rows_if_any(workdir)) < 3 and time.time() < deadline:
    assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i}:\n{log[-4000:]}"
  stops = [re.findall(r"Stopping at step (\d+)", log) for log in logs]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  step = int(stops[0][0])
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]
  assert _train_steps(workdir) == list(range(1, step + 1))


def _train_rows_if_any(workdir: str) -> list[dict]:
  try:
    return _train_rows(workdir)
  except (OSError, ValueError):  # not written yet, or a line half written
    return []
