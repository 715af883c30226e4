"""Kill a short run at random points (SIGKILL, often during an async checkpoint write; and
SIGTERM), run it again until it finishes, and compare its final params bit for bit with an
uninterrupted run. Slow (a fresh process per try): `pytest -m slow tests/test_fault_injection.py`.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _command(workdir: str, data: str) -> list[str]:
  return [sys.executable, "-m", "sora_jax.main", "--config",
          f"configs/vae.py:variant=tiny,runlocal=True,sizes=5x32x32,data_dir={data}",
          f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=1",
          "--config.train.eval_every=1000", "--config.train.progress=False",
          "--workdir", workdir]


def _env() -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _trained_steps(workdir: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum("train/loss" in line for line in f)


def _params(workdir: str):
  path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
  return ocp.PyTreeCheckpointer().restore(path)["params"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp("faults")
  data, workdir = str(root / "data"), str(root / "straight")
  subprocess.run(_command(workdir, data), cwd=ROOT, env=_env(), check=True, timeout=900,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return data, _params(workdir)


def _interrupted_run(workdir, data, sig, rng) -> int:
  """Kills the run once after a random step with `sig`, then runs it to the end; returns
  the step count logged before the kill."""
  proc = subprocess.Popen(_command(workdir, data), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  target = rng.randint(1, STEPS - 1)
  deadline = time.time() + 600
  while _trained_steps(workdir) < target and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  time.sleep(rng.uniform(0, 0.3))  # somewhere in the next step or checkpoint write
  proc.send_signal(sig)
  code = proc.wait(timeout=300)
  # It died (SIGKILL) or stopped with a checkpoint (SIGTERM, the preemption path), early.
  assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0), code
  assert _trained_steps(workdir) < STEPS
  subprocess.run(_command(workdir, data), cwd=ROOT, env=_env(), check=True, timeout=900,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return target


@pytest.mark.slow
@pytest.mark.parametrize("sig, tries", [(signal.SIGKILL, 8), (signal.SIGTERM, 2)],
                         ids=["SIGKILL", "SIGTERM"])
def test_killed_runs_resume_to_the_same_params(reference, tmp_path, sig, tries):
  data, expected = reference
  rng = random.Random(int(sig))
  report = []
  for k in range(tries):
    workdir = str(tmp_path / f"try{k}")
    killed_after = _interrupted_run(workdir, data, sig, rng)
    got = _params(workdir)
    same = all(np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)))
    report.append({"killed_after_step": killed_after, "bit_identical": same})
  print(json.dumps({"signal": sig.name, "tries": report}))
  assert all(r["bit_identical"] for r in report), report
