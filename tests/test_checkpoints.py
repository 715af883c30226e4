"""Damaged checkpoints fall back to the step before; resuming checks steps and shapes first."""
import json
import logging
import os
import pathlib
import shutil

import grain
import jax
import numpy as np
import pytest

from configs import vae as vae_config
from sora_jax import checkpoints
from sora_jax.train import loop
from sora_jax.train import registry


def _truncate_arrays(step_dir: pathlib.Path):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for p in files:
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2])


DAMAGE = {  # the damage -> what it does to a step directory
    "truncated array data": _truncate_arrays,
    "missing _METADATA": lambda d: (d / "state" / "_METADATA").unlink(),
    "empty data iterator JSON": lambda d: (d / "data" / "process_0-of-1.json").write_text(""),
    "missing state item": lambda d: os.rename(d / "state", d / "state_gone"),
}


def _saved_run(workdir):
  """Steps 1 and 2 of a small state, each with a data iterator, config and extra."""
  ckpt = checkpoints.Checkpointer(workdir, async_save=False)
  it = iter(grain.MapDataset.range(10).to_iter_dataset())
  for step in (1, 2):
    next(it)
    state = {"params": {"w": np.full((3, 4), step, np.float32)}, "step": np.int32(step)}
    ckpt.save(step, state, it, config={"task": "dit"}, extra={"n": step})
  ckpt.close()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_step_is_moved_aside_and_the_one_before_restored(tmp_path, damage,
                                                                         caplog):
  workdir = str(tmp_path / "run")
  _saved_run(workdir)
  step_dir = tmp_path / "run" / "checkpoints" / "2"
  DAMAGE[damage](step_dir)
  before = sorted(p.relative_to(step_dir) for p in step_dir.rglob("*"))
  ckpt = checkpoints.Checkpointer(workdir)
  abstract = {"params": {"w": jax.ShapeDtypeStruct((3, 4), np.float32)},
              "step": jax.ShapeDtypeStruct((), np.int32)}
  make_iter = lambda: iter(grain.MapDataset.range(10).to_iter_dataset())
  with caplog.at_level(logging.WARNING):
    step, state, it = ckpt.restore_latest(abstract, make_iter)
  assert step == 1 and ckpt.all_steps() == [1]
  np.testing.assert_array_equal(state["params"]["w"], np.ones((3, 4)))
  assert next(it) == 1  # step 1's data position: one element consumed
  ckpt.close()
  moved = tmp_path / "run" / "checkpoints_damaged" / "2"
  assert not step_dir.exists()
  assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == before  # nothing lost
  warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(warnings) == 1 and "step 2" in warnings[0] and str(moved) in warnings[0]


@pytest.mark.parametrize("damage", ["missing _METADATA", "empty data iterator JSON",
                                    "missing state item"])
def test_readers_pick_the_latest_whole_step(tmp_path, damage):
  """Sampling and evaluation (`read_run`) skip a step the cheap checks find damaged, and
  name the damage when that step is asked for; they do not move anything."""
  workdir = str(tmp_path / "run")
  _saved_run(workdir)
  DAMAGE[damage](tmp_path / "run" / "checkpoints" / "2")
  assert checkpoints.read_run(workdir, "a run")[:2] == (1, {"task": "dit"})
  with pytest.raises(ValueError, match=r"step 2 is damaged: "):
    checkpoints.read_run(workdir, "a run", step=2)
  assert (tmp_path / "run" / "checkpoints" / "2").exists()


# ----------------------------------------------------------------------------- the loop


def _config(tmp_path, extra=""):
  cfg = vae_config.get_config(f"variant=tiny,runlocal=True,sizes=5x32x32,"
                              f"data_dir={tmp_path / 'data'}{extra}")
  cfg.train.progress = False
  return cfg


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
  """A runlocal VAE run that saved steps 2 and 4."""
  root = tmp_path_factory.mktemp("ckpt")
  workdir = str(root / "run")
  loop.train_and_evaluate(_config(root), workdir)
  return root, workdir


@pytest.mark.parametrize("extra, steps, message", [
    ("", 0, r"config.train.steps=0; expected >= 1\."),
    ("", -5, r"config.train.steps=-5; expected >= 1\."),
    ("", 3, r"config.train.steps=3, but .* holds step 4: pass steps >= 4 to resume"),
    (",c=4", 4, r"params of other shapes than this config's .*model\.latent_channels: 8 -> "
                r"4.*Resume with the saved values"),
    (",level=basic", 4, r"trained on other data: data\.name\.level: 'full' -> 'basic'.*"
                        r"--config\.train\.accept_data_change=True"),
])
def test_resume_guards_fail_before_anything_is_rewritten(vae_run, extra, steps, message):
  root, workdir = vae_run
  cfg = _config(root, extra)
  cfg.unlock()
  cfg.train.steps = steps
  files = {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("*") if p.is_file()}
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(cfg, workdir)
  assert {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("*")
          if p.is_file()} == files


def test_training_resumes_from_the_step_before_a_damaged_one(vae_run, tmp_path, caplog):
  root, source = vae_run
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  _truncate_arrays(workdir / "checkpoints" / "4")
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(_config(root), str(workdir))
  assert "Resuming from step 2" in caplog.text and "Checkpoint step 4 is damaged" in caplog.text
  assert (workdir / "checkpoints_damaged" / "4" / "state").is_dir()
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl") if "train/loss" in l]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 3, 4]  # 3 and 4 trained again
  assert checkpoints.read_run(str(workdir), "a VAE")[0] == 4



def test_other_data_on_purpose_passes_the_guard(vae_run):
  root, workdir = vae_run
  cfg = _config(root, ",level=basic")
  cfg.unlock()
  cfg.train.accept_data_change = True
  ckpt = checkpoints.Checkpointer(workdir)
  abstract = jax.eval_shape(registry.make(cfg).init_state, jax.random.key(0))
  loop.check_resume(cfg, ckpt, abstract)  # no error
  ckpt.close()
