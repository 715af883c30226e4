"""Sampling every task from a trained (runlocal) DiT run: exact conditioning, determinism,
bounded long-video memory, the sample and evaluate CLIs and their bad-input errors."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import dit as dit_config
from data_pipelines import media
from sora_jax import sample as sample_cli
from sora_jax.diffusion import conditioning
from sora_jax.inference import adherence
from sora_jax.inference import run as run_lib
from sora_jax.inference import sampler as sampler_lib
from sora_jax.inference import tasks
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.train import loop

PROMPT = "A large red circle moving to the right on a black background. The camera is still."
OPTS = sampler_lib.SamplingOptions(steps=3, method="euler", guidance=3.0)


def _sampler(workdir, step=None, mesh=None, options=OPTS, **kwargs):
  return sampler_lib.Sampler(run_lib.Run.load(workdir, step, mesh, **kwargs), options)


def _with_params(sampler, params):
  """A sampler of the same run with other params."""
  return sampler_lib.Sampler(dataclasses.replace(sampler.run, params=params), sampler.options)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("gen")
  cfg = dit_config.get_config(f"runlocal=True,data_dir={root / 'data'}")
  cfg.train.progress = False
  workdir = str(root / "dit")
  loop.train_and_evaluate(cfg, workdir)
  return workdir


@pytest.fixture(scope="module")
def gen(run):
  return _sampler(run)


@pytest.mark.parametrize("task, kwargs", [
    ("i2v", {}), ("extend", {"given": 2}), ("extend", {"given": 1, "direction": "backward"}),
    ("interpolate", {"given": 1, "given_end": 1})])
def test_conditioned_latent_frames_are_left_exactly_as_given(gen, task, kwargs):
  shape = gen.latent_shape(9, 32, 32)  # T' = 3
  given = conditioning.condition_frames(task, shape[0], **kwargs)
  cond = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
  out = gen.sample_latents([PROMPT, ""], shape, [0, 1], given=given, cond_latents=cond)
  np.testing.assert_array_equal(out[:, given], cond[:, given])
  assert not np.allclose(out[:, ~given], cond[:, ~given], atol=1e-3)


def test_any_saved_step_samples_and_a_missing_step_is_one_clear_error(run, gen, tmp_path):
  # runlocal saves steps 2 and 4; every DiT checkpoint carries the sampling metadata.
  early = _sampler(run, step=2)
  assert (early.run.step, gen.run.step) == (2, 4)
  assert run_lib.read_dit_run(run, 2)[2] == run_lib.read_dit_run(run)[2]
  assert not np.array_equal(tasks.t2v(early, PROMPT, 5, 32, 32, seed=3),
                            tasks.t2v(gen, PROMPT, 5, 32, 32, seed=3))
  with pytest.raises(ValueError, match=r"no checkpoint at step 3; saved steps: \[2, 4\]"):
    run_lib.read_dit_run(run, 3)
  # A run whose earlier steps were saved without it borrows the latest step's metadata.
  old = tmp_path / "old"
  shutil.copytree(run, old)
  shutil.rmtree(old / "checkpoints" / "2" / "extra")
  assert run_lib.read_dit_run(str(old), 2)[2] == run_lib.read_dit_run(run)[2]


def test_same_seed_same_sample_and_batch_independent(gen):
  a = tasks.t2v(gen, PROMPT, 5, 32, 32, seed=3)
  b = tasks.t2v_batch(gen, ["", PROMPT], 5, 32, 32, [7, 3])[1]
  assert a.shape == (5, 32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, tasks.t2v(gen, PROMPT, 5, 32, 32, seed=3))
  np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)  # batch-mates don't matter
  assert not np.array_equal(a, tasks.t2v(gen, PROMPT, 5, 32, 32, seed=4))


def _perturbed(params, seed: int):
  """(treedef, numpy leaves + 0.05 N(0, 1)): a 4-step run predicts ~0 (zero-initialised
  output layers), so comparisons of samples perturb it into a model that does something."""
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return treedef, [np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
                   for x in leaves]


def test_generator_on_a_mesh_gives_the_one_device_sample(run):
  """fsdp x ring context parallelism on 8 devices: the same latents as on one device."""
  one_dev = _sampler(run)
  mesh = mesh_lib.make_mesh({"fsdp": 2, "context": 4})
  sharded = _sampler(run, mesh=mesh)
  assert (sharded.run.rules, sharded.run.dit_config.attention_backend) == ("fsdp_context",
                                                                           "ring")
  # Perturb every parameter alike on both (`_perturbed`).
  treedef, new = _perturbed(one_dev.run.params, 0)
  one_dev = _with_params(one_dev, jax.tree.unflatten(treedef, [jax.device_put(x) for x in new]))
  sharded = _with_params(sharded, jax.tree.unflatten(treedef, [
      jax.device_put(x, old.sharding)
      for x, old in zip(new, jax.tree.leaves(sharded.run.params))]))
  shape = one_dev.latent_shape(9, 32, 32)  # 3 x 4 x 4 = 48 tokens: 12 per context shard
  one = one_dev.sample_latents([PROMPT], shape, [5])
  assert float(np.std(one)) > 0.1
  np.testing.assert_allclose(sharded.sample_latents([PROMPT], shape, [5]), one,
                             rtol=1e-5, atol=1e-5)
  no_cfg = sampler_lib.SamplingOptions(steps=3, method="euler", guidance=1.0)
  with pytest.raises(ValueError, match="Sampling 1 rows .* give a multiple of 2 rows"):
    sharded.sample_latents([PROMPT], shape, [5], options=no_cfg)
  with pytest.raises(ValueError, match="needs a context-parallel attention backend"):
    _sampler(run, mesh=mesh, attention="xla")
  assert mesh_lib.parse_sizes("fsdp=2, context=4") == {"fsdp": 2, "context": 4}
  with pytest.raises(ValueError, match=r"--mesh='fsdp=2,ctx=4': 'ctx=4' is not axis=size"):
    mesh_lib.parse_sizes("fsdp=2,ctx=4")


def test_guidance_interval_guides_only_the_steps_inside_it(run):
  """3 unshifted Euler steps at t = 1, 2/3, 1/3: an interval holding none of them samples exactly as
  guidance 1; (0.5, 1] guides the first two only, so it differs from both."""
  g = _sampler(run)
  treedef, new = _perturbed(g.run.params, 1)
  g = _with_params(g, jax.tree.unflatten(treedef, [jax.device_put(x) for x in new]))
  shape = g.latent_shape(9, 32, 32)

  def sample(guidance, interval=(0.0, 1.0)):
    opts = sampler_lib.SamplingOptions(steps=3, method="euler", guidance=guidance, shift=1.0,
                                      guidance_interval=interval)
    return g.sample_latents([PROMPT], shape, [5], options=opts)

  plain, guided = sample(1.0), sample(3.0)
  assert float(np.abs(guided - plain).max()) > 1e-2
  np.testing.assert_allclose(sample(3.0, (0.0, 0.2)), plain, rtol=1e-5, atol=1e-5)
  part = sample(3.0, (0.5, 1.0))
  assert float(np.abs(part - plain).max()) > 1e-3
  assert float(np.abs(part - guided).max()) > 1e-3
  with pytest.raises(ValueError, match=r"--guidance_interval='0.5': .* not two numbers"):
    sampler_lib.parse_guidance_interval("0.5")
  with pytest.raises(ValueError, match=r"\(0.6, 0.2\); expected 0 <= lo < hi <= 1"):
    sampler_lib.SamplingOptions(guidance_interval=(0.6, 0.2))


def test_the_runs_sample_shift_is_the_default(run):
  """configs/dit.py sample_shift is the shift of options without one; --shift overrides."""
  assert dit_config.get_config("sample_shift=3").flow.sample_shift == 3.0
  g = _sampler(run)
  assert g.run.sample_shift is None  # the runlocal run keeps the training rule
  shape = g.latent_shape(9, 32, 32)
  three = g.sample_latents([PROMPT], shape, [5], options=dataclasses.replace(OPTS, shift=3.0))
  config = {**g.run.config, "flow": {**g.run.config["flow"], "sample_shift": 3.0}}
  g = sampler_lib.Sampler(dataclasses.replace(g.run, config=config), OPTS)
  np.testing.assert_array_equal(g.sample_latents([PROMPT], shape, [5]), three)
  other = g.sample_latents([PROMPT], shape, [5], options=dataclasses.replace(OPTS, shift=0.5))
  assert float(np.abs(other - three).max()) > 1e-4


def test_every_task_returns_the_promised_frames(gen):
  v = tasks.t2v(gen, PROMPT, 9, 32, 32)
  assert tasks.t2i(gen, PROMPT, 32, 32).shape == (1, 32, 32, 3)
  assert tasks.i2v(gen, PROMPT, v[0], 9).shape == (9, 32, 32, 3)
  np.testing.assert_array_equal(tasks.extend(gen, PROMPT, v, "forward", 9, 1)[:9], v)
  np.testing.assert_array_equal(tasks.extend(gen, PROMPT, v, "backward", 9, 1)[-9:], v)
  assert tasks.extend(gen, PROMPT, v, "backward", 9, 1).shape[0] == 9 + 5
  both = tasks.interpolate(gen, PROMPT, v, v[::-1].copy(), 9)
  assert both.shape[0] == 9 + 4 + 9  # a + (9 - 1 - 4) new frames + b
  assert tasks.loop(gen, PROMPT, 9, 32, 32).shape[0] == 9 + 4
  assert tasks.edit(gen, PROMPT, v, 0.5).shape == v.shape
  np.testing.assert_array_equal(tasks.edit(gen, PROMPT, v, 0.0), v)


def test_long_video_memory_does_not_grow_with_length(run):
  peaks, lengths = [], []
  for total in (20, 60):
    g = _sampler(run)
    lengths.append(sum(c.shape[0] for c in tasks.long_video(g, PROMPT, total, 32, 32, 9, 1)))
    peaks.append(g.peak_window_bytes)
  assert lengths == [20, 60]
  assert peaks[0] == peaks[1] > 0  # the largest sampled buffer is one window


@pytest.mark.slow  # a subprocess that imports and compiles everything again
def test_sample_cli_single_task_writes_mp4_gif_npy(run, tmp_path):
  out = tmp_path / "clip.mp4"
  subprocess.run([sys.executable, "-m", "sora_jax.sample", "--workdir", run, "--task", "t2v",
                  "--prompt", PROMPT, "--frames", "5", "--height", "32", "--width", "32",
                  "--steps", "2", "--npy", "--out", str(out)], check=True, timeout=600)
  for ext in (".mp4", ".gif", ".npy"):
    assert (tmp_path / f"clip{ext}").stat().st_size > 0
  assert np.load(tmp_path / "clip.npy").shape == (5, 32, 32, 3)


def test_batch_mode_manifest_and_evaluate(gen, tmp_path):
  prompts = tmp_path / "p.jsonl"
  prompts.write_text(json.dumps({"prompt": PROMPT, "name": "red"}) + "\n"
                     + json.dumps({"prompt": PROMPT, "task": "t2i", "seed": 9}) + "\n")
  rows = sample_cli.read_prompts(str(prompts))
  manifest = tasks.sample_batch(gen, rows, str(tmp_path / "out"), 5, 32, 32, 0, 2,
                                     progress=False)
  lines = [json.loads(l) for l in open(tmp_path / "out" / "manifest.jsonl")]
  assert lines == manifest and [l["file"] for l in lines] == ["red.npy", "0001.npy"]
  assert {"file", "prompt", "task", "seed"} <= set(lines[0])
  assert np.load(tmp_path / "out" / "0001.npy").shape == (1, 32, 32, 3)
  assert (tmp_path / "out" / "red.mp4").exists()
  result = adherence.evaluate(gen, str(tmp_path / "eval"), ["test"], 2, "basic", 9, 32,
                                 32, batch=2, task_clips=1, mp4=False)
  assert result["splits"]["test"]["n"] == 2 and "all" in result["splits"]["test"]
  written = os.listdir(tmp_path / "eval" / "test")  # --nomp4: the scores read the .npy
  assert sum(f.endswith(".npy") for f in written) == 2 and not any(
      f.endswith(".mp4") for f in written)
  for key in ("i2v_first_frame_psnr", "extend_seam_psnr", "loop_seam_psnr",
              "interpolate_start_psnr", "interpolate_middle_psnr", "edit_color"):
    assert result["tasks"][key] is not None, key
  assert json.load(open(tmp_path / "eval" / "eval.json")) == result


def test_bad_input_gets_one_clear_error(run, tmp_path):
  with pytest.raises(ValueError, match="needs --image"):
    sample_cli.read_inputs("i2v", {"image": None}, 32, 32)
  with pytest.raises(ValueError, match="needs --video and --video_end"):
    sample_cli.read_inputs("interpolate", {}, 32, 32)
  with pytest.raises(ValueError, match="no such file"):
    sample_cli.read_inputs("edit", {"video": str(tmp_path / "nope.mp4")}, 32, 32)
  media.write_clip(str(tmp_path / "big"), np.zeros((5, 48, 48, 3), np.uint8))
  with pytest.raises(ValueError, match=r"is 48x48 \(HxW\) but --height=32 --width=32"):
    sample_cli.read_inputs("extend", {"video": str(tmp_path / "big.npy")}, 32, 32)
  (tmp_path / "junk.mp4").write_text("not a video")
  with pytest.raises(ValueError, match="cannot be read"):
    sample_cli.read_inputs("edit", {"video": str(tmp_path / "junk.mp4")}, 32, 32)
  with pytest.raises(ValueError, match=r"--strength=1.5; expected a value in \[0, 1\]"):
    sample_cli.check_args("edit", 1.5, 0, "a.mp4", PROMPT)
  with pytest.raises(ValueError, match="has no checkpoints"):
    run_lib.read_dit_run(str(tmp_path))
  g = _sampler(run)
  with pytest.raises(ValueError, match="T must be 1 \\+ a multiple of 4"):
    g.latent_shape(6, 32, 32)
  with pytest.raises(ValueError, match=r"strength=-0.1"):
    tasks.edit(g, PROMPT, np.zeros((5, 32, 32, 3), np.uint8), -0.1)


def test_runs_saved_with_a_removed_option_off_still_load():
  """A config saved before self_condition and mlp_conv left the code names them: off, it
  loads as before; on, it is one clear error."""
  cfg = json.loads(dit_config.get_config("runlocal=True").to_json_best_effort())
  new = run_lib.dit_configs(cfg, 8)
  cfg["model"]["overrides"].update(self_condition=False, mlp_conv=False)
  assert run_lib.dit_configs(cfg, 8) == new
  cfg["model"]["overrides"]["self_condition"] = True
  with pytest.raises(ValueError, match="self_condition=True, an option since removed"):
    run_lib.dit_configs(cfg, 8)
