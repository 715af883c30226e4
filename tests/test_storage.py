"""A run whose workdir is not on the local file system: train -> evaluate -> sample ->
resume with `--workdir gs://bucket/...`, gs:// served by `tests/fake_gcs.py` (epath's
fsspec backend and orbax's TensorStore kvstore, both pointed at a local root).

Every run file must land under the bucket's root; code that opened "gs://..." with `os` or
`open` would instead make a `gs:` folder in the working directory, which the test checks for.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "A large red circle moving to the right on a black background. The camera is still."


def _fake_gcs(cwd, root, module: str, *args: str) -> str:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(JAX_PLATFORMS="cpu", FAKE_GCS_ROOT=str(root),
             PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]))
  done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "fake_gcs.py"), module,
                         *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=900)
  assert done.returncode == 0, done.stdout[-4000:]
  return done.stdout


def test_train_evaluate_sample_resume_on_a_gs_workdir(tmp_path):
  root, cwd, data = tmp_path / "bucket_root", tmp_path / "cwd", tmp_path / "data"
  root.mkdir()
  cwd.mkdir()
  run = "gs://bucket/runs/dit"
  config = os.path.join(ROOT, "configs", "dit.py") + f":runlocal=True,data_dir={data}"
  _fake_gcs(cwd, root, "sora_jax.main", "--config", config, "--workdir", run,
            "--config.train.profile_start=2", "--config.train.profile_steps=1")
  _fake_gcs(cwd, root, "sora_jax.evaluate", "--workdir", run, "--split", "test", "--n", "2",
            "--batch", "2", "--frames", "5", "--height", "32", "--width", "32",
            "--steps", "2", "--task_clips", "0", "--adherence_json", run + "/adherence.json")
  _fake_gcs(cwd, root, "sora_jax.sample", "--workdir", run, "--task", "t2v", "--prompt",
            PROMPT, "--frames", "5", "--height", "32", "--width", "32", "--steps", "2",
            "--npy", "--out", "gs://bucket/samples/red.mp4")
  log = _fake_gcs(cwd, root, "sora_jax.main", "--config", config, "--workdir", run,
                  "--config.train.steps=6")
  assert "Resuming from step 4" in log, log[-3000:]

  assert not os.listdir(cwd), os.listdir(cwd)  # nothing went to a local "gs:" folder
  local = root / "bucket" / "runs" / "dit"
  for name in ("config.json", "tokenizer.model", "final_metrics.json", "adherence.json",
               "eval/eval.json", "eval/test/manifest.jsonl", "eval/test/test_0000.npy",
               "eval/test/test_0000.mp4", "checkpoints/4/state/_METADATA",
               "checkpoints/6/state/_METADATA"):
    assert (local / name).is_file(), name
  assert json.loads((local / "final_metrics.json").read_text())["step"] == 6
  rows = [json.loads(l) for l in (local / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]  # appended
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(local / "tensorboard"))
  assert list((local / "profile").glob("plugins/profile/*/*.xplane.pb"))  # traced, uploaded
  samples = root / "bucket" / "samples"
  assert np.load(samples / "red.npy").shape == (5, 32, 32, 3)
  assert (samples / "red.mp4").stat().st_size > 0 and (samples / "red.gif").stat().st_size > 0


def test_storage_helpers_on_local_paths(tmp_path):
  """The same helpers on a local path: append, JSON, a library's local file."""
  path = tmp_path / "a" / "m.jsonl"
  f = storage.AppendFile(path)
  f.write("1\n")
  f.close()
  f = storage.AppendFile(path)
  f.write(b"2\n")
  f.close()
  assert path.read_text() == "1\n2\n"
  storage.write_json(tmp_path / "b" / "x.json", {"a": 1})
  assert storage.read_json(tmp_path / "b" / "x.json") == {"a": 1}
  with storage.local_file(tmp_path / "c" / "y.bin") as name:
    assert name == str(tmp_path / "c" / "y.bin")
    with open(name, "wb") as out:
      out.write(b"x")
  assert (tmp_path / "c" / "y.bin").read_bytes() == b"x"
  assert storage.join("gs://b/r", "x", "y") == "gs://b/r/x/y"
  assert storage.absolute("gs://b/r") == "gs://b/r" and storage.is_local("rel/dir")
  with pytest.raises(ValueError, match="is a file"):
    from data_pipelines import usage  # pylint: disable=g-import-not-at-top
    usage.check_directory("--workdir", str(path))
