"""The catalogue of bad inputs: each CLI answers one line naming the value, exit code 2, no
traceback, before any model loads, and leaves every file already in the run as it was."""
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import dit as dit_config
from data_pipelines import usage
from sora_jax import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A DiT run directory as far as the CLIs' checks read it (a saved step with its config
  and sampling metadata), a VAE-looking run, a file, an image and a prompts file."""
  root = tmp_path_factory.mktemp("bad")
  config = json.loads(dit_config.get_config("runlocal=True").to_json_best_effort())
  extra = {"latent_mean": [0.0] * 8, "latent_std": [1.0] * 8, "tokenizer": "tokenizer.model",
           "vae": "random:tiny:seed=0"}
  for name, task in (("dit", "dit"), ("vae", "vae")):
    ckpt = checkpoints.Checkpointer(str(root / name), async_save=False)
    ckpt.save(2, {"w": np.zeros(3, np.float32)}, config=dict(config, task=task), extra=extra)
    ckpt.close()
  (root / "dit" / "config.json").write_text(json.dumps(config))
  (root / "a_file").write_text("not a directory")
  (root / "not_an_image.png").write_text("not a png")
  np.save(root / "image.npy", np.zeros((32, 32, 3), np.uint8))
  (root / "prompts.txt").write_text("a red circle\n")
  return root


def _cases(r):
  """(cli, arguments, a fragment the one line must hold)."""
  w = ["--workdir", str(r / "dit")]
  dit = "configs/dit.py:runlocal=True"
  out = ["--out", str(r / "out.mp4")]
  t2v = w + ["--prompt", "a red circle"] + out
  main, sample, evaluate = "sora_jax.main", "sora_jax.sample", "sora_jax.evaluate"
  return [
      # training
      (main, ["--config", f"{dit},widht=3", "--workdir", str(r / "m")],
       "Unknown config argument 'widht'"),
      (main, ["--config", dit, "--config.train.stepz=3", "--workdir", str(r / "m")],
       'Did you mean "steps"'),
      (main, ["--config", dit, "--config.train.steps=abc", "--workdir", str(r / "m")],
       "--config.train.steps=abc"),
      (main, ["--config", "configs/nope.py", "--workdir", str(r / "m")],
       "no such config file 'configs/nope.py'"),
      (main, ["--config", dit, "--workdir", str(r / "m"), "extra"], "Unexpected arguments"),
      (main, ["--config", f"{dit},steps=0", "--workdir", str(r / "m")],
       "config.train.steps=0; expected >= 1"),
      (main, ["--config", dit, "--config.train.steps=-5", "--workdir", str(r / "m")],
       "config.train.steps=-5; expected >= 1"),
      (main, ["--config", dit, "--workdir", str(r / "a_file")], "is a file"),
      (main, ["--config", dit, "--workdir", str(r / "a_file" / "run")],
       "so no directory can be made there"),
      (main, ["--config", dit, f"--config.data.data_dir={r / 'a_file'}", "--workdir",
              str(r / "m")], "config.data.data_dir="),
      (main, ["--config", dit], "--workdir"),
      (main, ["--config", "configs/vae.py:preset=nope", "--workdir", str(r / "m")],
       "Unknown preset 'nope'"),
      (main, ["--config", f"{dit},optimizer=sgd", "--workdir", str(r / "m")], "sgd"),
      (main, ["--config", dit, "--distributed=maybe", "--workdir", str(r / "m")],
       "--distributed"),
      (main, ["--config", dit, "--config.mesh.data=3", "--workdir", str(r / "m")],
       "mesh"),
      (main, ["--config", f"{dit},width=33", "--workdir", str(r / "m")],
       "width=33 is not divisible by num_heads=2"),
      (main, ["--config", f"{dit},lr=nan", "--workdir", str(r / "m")],
       "config.optim.lr=nan; expected a finite number"),
      (main, ["--config", f"{dit},lr=-1", "--workdir", str(r / "m")],
       "config.optim.lr=-1.0 must be > 0"),
      (main, ["--config", dit, "--config.optim.b2=1.5", "--workdir", str(r / "m")],
       "b2=1.5; expected each in [0, 1)"),
      (main, ["--config", "configs/vae.py:runlocal=True,lr=inf", "--workdir", str(r / "m")],
       "config.optim.lr=inf"),
      (main, ["--config", dit, "--config.train.batch_size=0", "--workdir", str(r / "m")],
       "train.batch_size=0; expected >= 1"),
      (main, ["--config", "configs/vae.py:runlocal=True,sizes=5x30x30", "--workdir",
                str(r / "m")], "30"),
      # sampling
      (sample, ["--workdir", str(r / "none")] + t2v[2:], "has no checkpoints/ directory"),
      (sample, ["--workdir", str(r / "vae")] + t2v[2:], "is not a DiT run"),
      (sample, t2v + ["--step", "99"], "no checkpoint at step 99"),
      (sample, w + ["--prompt", "x", "--out", str(r / "x.avi")], "ending in .mp4"),
      (sample, t2v + ["--sampler", "bogus"], "--sampler=bogus"),
      (sample, w + ["--prompt", "a beheading"] + out, "refused by the prompt policy"),
      (sample, t2v + ["--task", "bogus"], "--task=bogus"),
      (sample, t2v + ["--task", "edit", "--strength", "2"], "--strength=2.0"),
      (sample, t2v + ["--seconds", "-1"], "--seconds=-1.0"),
      (sample, w + out, "--prompt is required"),
      (sample, t2v + ["--shift", "-1"], "--shift=-1.0"),
      (sample, t2v + ["--steps", "0"], "--steps=0"),
      (sample, t2v + ["--guidance", "nan"], "--guidance=nan"),
      (sample, t2v + ["--frames", "0"], "--frames=0"),
      (sample, t2v + ["--width", "-8"], "--width=-8"),
      (sample, t2v + ["--guidance_interval", "0.9,0.1"], "guidance_interval"),
      (sample, t2v + ["--mesh", "fsdp=two"], "--mesh='fsdp=two'"),
      (sample, t2v + ["--task", "i2v"], "--task=i2v needs --image"),
      (sample, t2v + ["--task", "i2v", "--image", str(r / "missing.png")], "no such file"),
      (sample, t2v + ["--task", "i2v", "--image", str(r / "not_an_image.png")],
       "cannot be read as an image or video"),
      (sample, t2v + ["--task", "i2v", "--image", str(r / "image.npy"), "--height", "48"],
       "--image="),
      (sample, w + ["--prompts_file", str(r / "prompts.txt")], "needs both --prompts_file"),
      (sample, w + ["--prompts_file", str(r / "nope.txt"), "--out_dir", str(r / "o")],
       "no such file"),
      (sample, w + ["--prompts_file", str(r / "prompts.txt"), "--out_dir", str(r / "o"),
                      "--batch", "0"], "--batch=0"),
      (sample, t2v + ["--bogus_flag", "1"], "bogus_flag"),
      (sample, t2v + ["--seconds", "1e9"], "expected <= 3600"),
      (sample, t2v + ["--frames", "100001"], "needs at least"),
      (evaluate, w + ["--frames", "100001"], "needs at least"),
      (sample, w + ["--prompt", ""] + out, "pass --unconditional"),
      (sample, t2v + ["--task", "extend", "--video", str(r / "image.npy"), "--given", "0"],
       "--given=0; expected >= 1"),
      (sample, w + ["--prompt", "x", "--out", str(r / "a_file" / "x.mp4")],
       "its directory="),
      (sample, w + ["--prompts_file", str(r / "prompts.txt"), "--out_dir",
                      str(r / "a_file" / "o")], "so no directory can be made there"),
      # evaluation
      (evaluate, w + ["--split", ","], "names no split"),
      (evaluate, w + ["--n", "0"], "--n=0"),
      (evaluate, w + ["--batch", "0"], "--batch=0"),
      (evaluate, w + ["--task_clips", "-1"], "--task_clips=-1"),
      (evaluate, w + ["--split", "bogus"], "bogus"),
      (evaluate, w + ["--level", "bogus"], "bogus"),
      (evaluate, ["--workdir", str(r / "none")], "has no checkpoints/ directory"),
      (evaluate, w + ["--steps", "-3"], "--steps=-3"),
      (evaluate, w + ["--frames", "0"], "--frames=0"),
      # data tools and the demo
      ("data_pipelines.shapes_world.score", [str(r / "none")], "does not exist"),
      ("data_pipelines.shapes_world.score", [], "expected one directory"),
      ("data_pipelines.shapes_world.export", ["--out", str(r / "x"), "--frames", "6"],
       "4k+1"),
      ("data_pipelines.shapes_world.export", ["--num", "0", "--out", str(r / "x")], "--num"),
      ("data_pipelines.shapes_world.export", [], "--out"),
      ("data_pipelines.video_folder.build", ["--folder", str(r / "none"), "--data_dir",
                                             str(r / "d")], "none"),
      ("data_pipelines.video_folder.build", ["--folder", str(r), "--data_dir", str(r / "d"),
                                             "--sizes", "64by64"], "--sizes='64by64'"),
      ("sora_jax.data.encode_latents", ["--vae_workdir", str(r / "none"), "--out_dir",
                                        str(r / "l")], "has no checkpoints/ directory"),
      ("sora_jax.data.encode_latents", ["--vae_workdir", f"wan:{r / 'none'}", "--out_dir",
                                        str(r / "l")], "name the pixel data"),
      ("sora_jax.convert", ["--config", f"configs/wan.py:model_dir={r / 'none'}",
                            "--workdir", str(r / "c")], "transformer/config.json: no such"),
      ("sora_jax.convert", w + ["--export_to", str(r / "e")],
       "qk_norm_scope='head' is not Wan2.1's"),
      ("sora_jax.demo", ["--config", "configs/demo.py:quick=True,quality=True"],
       "exclude each other"),
      ("sora_jax.demo", ["--config", "configs/demo.py:bogus=1"], "bogus"),
      # launch scripts (argparse)
      ("launch/sweep.py", ["configs/scaling.py:bogus=1", "--dry_run"],
       "Unknown config argument 'bogus'"),
      ("launch/sweep.py", ["configs/scaling.py", "--parallel", "0"], "--parallel=0"),
      ("launch/sweep.py", ["configs/scaling.py", "--target", "mars"], "invalid choice: 'mars'"),
      ("launch/aot_compile.py", [], "the following arguments are required"),
  ]


def _snapshot(root: pathlib.Path) -> dict:
  return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _run_cli(cli, args):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env["JAX_PLATFORMS"] = "cpu"
  command = [cli] if cli.endswith(".py") else ["-m", cli]  # a script or a module
  return subprocess.run([sys.executable, *command, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_every_bad_input_is_one_line_and_exit_code_2(run):
  cases = _cases(run)
  before = _snapshot(run)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda c: _run_cli(c[0], c[1]), cases))
  problems = []
  for (cli, args, fragment), proc in zip(cases, results):
    # jax and absl may log warnings before the check; the error is the last line, alone.
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if f"{os.path.basename(cli)}: error: " in l]
    if (proc.returncode != 2 or len(errors) != 1 or errors[0] != lines[-1]
        or fragment not in errors[0] or "Traceback" in proc.stderr):
      problems.append(f"{cli} {' '.join(args)}: rc={proc.returncode}, stderr tail: "
                      f"{proc.stderr[-600:]!r}")
  assert not problems, "\n".join(problems)
  assert _snapshot(run) == before  # nothing already written changed
  assert len(cases) >= 70


def test_check_directory_names_what_is_in_the_way(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("x")
  usage.check_directory("--d", str(tmp_path / "new" / "deeper"))  # can be made: fine
  with pytest.raises(ValueError, match=r"--d='.*file' is a file; expected a directory"):
    usage.check_directory("--d", str(tmp_path / "file"))
  with pytest.raises(ValueError, match="is a file, so no directory can be made there"):
    usage.check_directory("--d", str(tmp_path / "file" / "sub"))
  # Root ignores permission bits, so the read-only case stands in os.access's answer.
  monkeypatch.setattr(os, "access", lambda path, mode: False)
  with pytest.raises(ValueError, match=r"--d='.*new': '.*' is not writable"):
    usage.check_directory("--d", str(tmp_path / "new"))
  with pytest.raises(ValueError, match="is not writable"):
    usage.check_directory("--d", str(tmp_path / "sub"), writable=False)  # must be made
  usage.check_directory("--d", str(tmp_path), writable=False)  # exists: read is enough
