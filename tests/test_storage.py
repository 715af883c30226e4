"""Run files on a file system that is not the local one: train -> evaluate -> resume with
`--workdir gs://bucket/...`, and the clip writers `sora_jax.sample` uses, with gs:// served
by `tests/fake_gcs.py` (epath's fsspec backend and orbax's TensorStore kvstore, both
pointed at a local root).

Every run file must land under the bucket's root; code that opened "gs://..." with `os` or
`open` would instead make a `gs:` folder in the working directory, which the test checks for.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import media
from data_pipelines import storage
from data_pipelines import usage
from sora_jax import sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_gcs(cwd, root, module: str, *args: str) -> str:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(JAX_PLATFORMS="cpu", FAKE_GCS_ROOT=str(root),
             PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]))
  done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "fake_gcs.py"), module,
                         *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=900)
  assert done.returncode == 0, done.stdout[-4000:]
  return done.stdout


def test_train_evaluate_resume_on_a_gs_workdir(tmp_path):
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


def test_clip_writers_and_output_checks_on_gs(tmp_path, monkeypatch):
  """What `sora_jax.sample` writes (npy, mp4, gif; a streamed long video) and checks (--out)
  with gs:// paths, in this process (fake_gcs registers gs:// here)."""
  import fake_gcs  # pylint: disable=g-import-not-at-top  # tests/ is on sys.path
  monkeypatch.setenv("FAKE_GCS_ROOT", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  fake_gcs.install()
  video = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), np.uint8)
  paths = media.write_clip("gs://b/s/clip", video, npy=True, mp4=True, gif=True)
  assert paths == ["gs://b/s/clip.npy", "gs://b/s/clip.mp4", "gs://b/s/clip.gif"]
  np.testing.assert_array_equal(media.read_clip("gs://b/s/clip.npy"), video)
  assert media.read_clip("gs://b/s/clip.mp4").shape == video.shape  # decoded from the bucket
  with media.StreamWriter("gs://b/s/long", 10, 32, 32, npy=True) as writer:
    writer.write(video)
    writer.write(video)
  np.testing.assert_array_equal(np.load(tmp_path / "b" / "s" / "long.npy")[5:], video)
  assert (tmp_path / "b" / "s" / "long.mp4").stat().st_size > 0
  sample.check_args("t2v", 0.5, 0, "gs://b/s/new/out.mp4", "a prompt")
  with pytest.raises(ValueError, match="is a file"):
    usage.check_directory("--out_dir", "gs://b/s/clip.npy")
  assert sorted(os.listdir(tmp_path)) == ["b"]  # no local gs: folder
