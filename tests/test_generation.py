"""Sampling every task from a trained (runlocal) DiT run: exact conditioning, determinism,
bounded long-video memory, the sample and evaluate CLIs and their bad-input errors."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import jax
import numpy as np
import pytest

from configs import dit as dit_config
from data_pipelines import media
from data_pipelines.shapes_world import generator as sw_generator
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


@pytest.fixture(scope="module")
def moved(run):
  """A sampler of the run with every param perturbed (`_perturbed`): its samples depend on
  the prompt, the seed and the shift, which the 4-step run's ~0 predictions hardly do."""
  g = _sampler(run)
  treedef, new = _perturbed(g.run.params, 2)
  return _with_params(g, jax.tree.unflatten(treedef, [jax.device_put(x) for x in new]))


class _Recording(sampler_lib.Sampler):
  """A sampler that records what each `sample_latents` call was given."""

  def __init__(self, run, options):
    super().__init__(run, options)
    self.calls = []

  def sample_latents(self, prompts, latent_shape, seeds, **kwargs):
    self.calls.append(kwargs)
    return super().sample_latents(prompts, latent_shape, seeds, **kwargs)


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


def test_same_seed_same_sample_and_batch_independent(moved):
  """On a model whose samples depend on prompt and seed: the same seed gives the same clip,
  a batch-mate with another prompt and seed does not change it, another seed does."""
  a = tasks.t2v(moved, PROMPT, 5, 32, 32, seed=3)
  mate = tasks.t2v(moved, "", 5, 32, 32, seed=7)
  b = tasks.t2v_batch(moved, ["", PROMPT], 5, 32, 32, [7, 3])
  assert a.shape == (5, 32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, tasks.t2v(moved, PROMPT, 5, 32, 32, seed=3))
  np.testing.assert_allclose(a.astype(int), b[1].astype(int), atol=1)  # batch-mates
  np.testing.assert_allclose(mate.astype(int), b[0].astype(int), atol=1)  # don't matter
  assert np.abs(a.astype(int) - mate.astype(int)).mean() > 5  # a batch-mate is different
  assert np.abs(a.astype(int) - tasks.t2v(moved, PROMPT, 5, 32, 32, seed=4)).mean() > 5


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


def test_the_runs_sample_shift_is_the_default(moved):
  """configs/dit.py sample_shift is the shift of options without one; --shift overrides."""
  assert dit_config.get_config("sample_shift=3").flow.sample_shift == 3.0
  g = moved
  assert g.run.sample_shift is None  # the runlocal run keeps the training rule
  shape = g.latent_shape(9, 32, 32)
  three = g.sample_latents([PROMPT], shape, [5], options=dataclasses.replace(OPTS, shift=3.0))
  config = {**g.run.config, "flow": {**g.run.config["flow"], "sample_shift": 3.0}}
  g = sampler_lib.Sampler(dataclasses.replace(g.run, config=config), OPTS)
  np.testing.assert_array_equal(g.sample_latents([PROMPT], shape, [5]), three)
  other = g.sample_latents([PROMPT], shape, [5], options=dataclasses.replace(OPTS, shift=0.5))
  assert float(np.abs(other - three).mean()) > 1e-2  # the shift matters on this model


def test_every_task_returns_the_promised_frames(gen):
  v = tasks.t2v(gen, PROMPT, 9, 32, 32)
  assert tasks.t2i(gen, PROMPT, 32, 32).shape == (1, 32, 32, 3)
  assert tasks.i2v(gen, PROMPT, v[0], 9).shape == (9, 32, 32, 3)
  assert tasks.extend(gen, PROMPT, v, "forward", 9, 1).shape[0] == 9 + 8
  assert tasks.extend(gen, PROMPT, v, "backward", 9, 1).shape[0] == 9 + 5
  both = tasks.interpolate(gen, PROMPT, v, v[::-1].copy(), 9)
  assert both.shape[0] == 9 + 4 + 9  # a + (9 - 1 - 4) new frames + b
  assert tasks.loop(gen, PROMPT, 9, 32, 32).shape[0] == 9 + 4
  assert tasks.edit(gen, PROMPT, v, 0.5).shape == v.shape


def test_every_task_gives_the_sampler_its_encoded_inputs(run):
  """What each task hands `sample_latents`: the latents of the window it assembles from its
  inputs (`tasks.py`: known frames, filled with copies of the nearest one), and which
  latent frames are given (`conditioning.condition_frames`, T' = 3 here)."""
  rec = _Recording(run_lib.Run.load(run), OPTS)
  rng = np.random.default_rng(0)
  a, b = (rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8) for _ in range(2))
  rep = lambda frame, n: np.repeat(frame[None], n, axis=0)
  cases = [  # (task, the window it must assemble, its given latent frames)
      (lambda: tasks.i2v(rec, PROMPT, a[0], 9), rep(a[0], 9), [1, 0, 0]),
      (lambda: tasks.extend(rec, PROMPT, a, "forward", 9, 1),
       np.concatenate([a[-1:], rep(a[-1], 8)]), [1, 0, 0]),
      (lambda: tasks.extend(rec, PROMPT, a, "backward", 9, 1),
       np.concatenate([rep(a[0], 5), a[:4]]), [0, 0, 1]),
      (lambda: tasks.interpolate(rec, PROMPT, a, b, 9),
       np.concatenate([a[-1:], rep(a[-1], 4), b[:4]]), [1, 0, 1]),
  ]
  for make, window, given in cases:
    rec.calls.clear()
    make()
    (call,) = rec.calls
    np.testing.assert_array_equal(call["given"], given)
    np.testing.assert_allclose(call["cond_latents"][0], rec.encode(window), rtol=0, atol=1e-6)
  # SDEdit starts from the video's own latents noised to t = strength; 0 samples nothing.
  rec.calls.clear()
  tasks.edit(rec, PROMPT, a, 0.5)
  (call,) = rec.calls
  assert call["t_start"] == 0.5
  np.testing.assert_allclose(call["init_latents"][0], rec.encode(a), rtol=0, atol=1e-6)
  rec.calls.clear()
  np.testing.assert_array_equal(tasks.edit(rec, PROMPT, a, 0.0), a)
  assert not rec.calls
  # A loop bridges its clip's end back to its start.
  rec.calls.clear()
  looped = tasks.loop(rec, PROMPT, 9, 32, 32)
  clip = looped[:9]
  np.testing.assert_allclose(rec.calls[1]["cond_latents"][0], rec.encode(
      np.concatenate([clip[-1:], rep(clip[-1], 4), clip[:4]])), rtol=0, atol=1e-6)
  # i2v's first frame is the image through the VAE (its latent frame is given, and the
  # causal decoder's first frame reads that latent frame alone).
  first = tasks.i2v(rec, PROMPT, a[0], 9)[0]
  roundtrip = rec.decode(rec.encode(rep(a[0], 9)))[0]
  other = rec.decode(rec.encode(rep(b[0], 9)))[0]  # another image's round trip
  assert adherence.psnr(first, roundtrip) >= 40.0
  assert adherence.psnr(first, other) < adherence.psnr(first, roundtrip) - 10.0


def test_long_video_memory_does_not_grow_with_length(run):
  """Streaming a long video holds one window: the host memory it allocates (traced by
  tracemalloc) peaks for 100 frames less than half of 80 frames' bytes above its peak for 20
  (a video kept whole, or windows that grow, would add all of them; jax's own caches add a
  little), and every window after the first is conditioned on the last frame already
  streamed (the seam)."""
  peaks, lengths = [], []
  rec = _Recording(run_lib.Run.load(run), OPTS)
  for _ in tasks.long_video(rec, PROMPT, 100, 32, 32, 9, 1):  # compiles every shape it uses
    rec.calls.clear()
  for total in (20, 100):
    length, last = 0, None
    tracemalloc.start()
    for chunk in tasks.long_video(rec, PROMPT, total, 32, 32, 9, 1):
      if last is not None:  # this chunk's window was given the previous chunk's last frame
        np.testing.assert_allclose(rec.calls[-1]["cond_latents"][0], rec.encode(
            np.repeat(last[None], 9, axis=0)), rtol=0, atol=1e-6)
      length, last = length + chunk.shape[0], chunk[-1].copy()
      rec.calls.clear()  # the recorder itself would otherwise grow with the length
    peaks.append(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
    lengths.append(length)
  assert lengths == [20, 100] and peaks[0] > 0
  assert peaks[1] - peaks[0] < 0.5 * 80 * last.nbytes, (peaks, last.nbytes)


def test_a_long_video_streams_to_its_files(gen, tmp_path):
  """`sample --task t2v --seconds` writes window by window: the files hold exactly the
  frames `long_video` yields, in order (npy bit for bit; mp4 frame count), and the writer
  refuses frames beyond the total it announced."""
  stem = str(tmp_path / "long")
  paths, total = sample_cli.stream_long_video(gen, PROMPT, 5.0, 8, stem, 9, 32, 32, 1, 3,
                                              npy=True)
  assert total == 40 and paths == [stem + ".mp4", stem + ".npy"]
  expected = np.concatenate(list(tasks.long_video(gen, PROMPT, 40, 32, 32, 9, 1, 3)))
  np.testing.assert_array_equal(np.load(stem + ".npy"), expected)
  assert media.read_clip(stem + ".mp4").shape == (40, 32, 32, 3)
  # `--task extend --seconds` streams too: the video, then the windows chained extension
  # gives (each window seeded one more).
  video, stem = expected[:9], str(tmp_path / "extended")
  _, total = sample_cli.stream_long_video(gen, PROMPT, 3.0, 8, stem, 9, 0, 0, 1, 3,
                                          npy=True, video=video)
  chained = video
  for i in range(2):
    chained = tasks.extend(gen, PROMPT, chained, "forward", 9, 1, 3 + i)
  assert total == 24
  np.testing.assert_array_equal(np.load(stem + ".npy"), chained[:24])
  with media.StreamWriter(str(tmp_path / "short"), 2, 32, 32) as writer:
    with pytest.raises(ValueError, match="more than the 2 announced"):
      writer.write(expected[:3])


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
  figures = result["tasks"]
  assert figures["n"] == 1
  # The ground truth's own figure, and i2v's first frame: the image through the VAE.
  clip = sw_generator.make_clip("test", 0, 9, 32, 32, "basic")
  assert figures["consecutive_psnr"] == pytest.approx(adherence.consecutive_psnr([clip.video]))
  roundtrip = gen.decode(gen.encode(np.repeat(clip.video[:1], 9, axis=0)))[0]
  assert figures["i2v_first_frame_psnr"] == pytest.approx(
      adherence.psnr(roundtrip, clip.video[0]), abs=0.5)
  for key in ("extend_seam_psnr", "loop_seam_psnr", "interpolate_start_psnr",
              "interpolate_end_psnr", "interpolate_middle_psnr"):
    assert 0 < figures[key] <= adherence.PSNR_CAP_DB, key
  for key in ("extend_all", "edit_color"):
    assert figures[key] in (0.0, 1.0), key  # one clip: its verdict
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


def test_psnr_of_uint8_clips_on_known_inputs():
  """10 grey levels off everywhere: 10 log10(255^2 / 100) dB; identical clips: the cap."""
  a = np.full((2, 4, 4, 3), 100, np.uint8)
  assert adherence.psnr(a, a + 10) == pytest.approx(10 * np.log10(255 ** 2 / 100))
  assert adherence.psnr(a, a) == adherence.PSNR_CAP_DB
  assert adherence.consecutive_psnr([np.stack([a[0], a[0] + 10])]) == pytest.approx(
      adherence.psnr(a, a + 10))



def test_sample_with_an_upsampler_samples_the_expansion_and_keeps_the_users_prompt(
    run, tmp_path):
  """--upsampler: each prompt is expanded with its row's seed (the same expansion as the
  Python API's), the clip is sampled from it, and the manifest carries both prompts; a
  DiT run given as --upsampler is one line, exit 2, before any model loads."""
  from configs import captioner as captioner_config  # pylint: disable=import-outside-toplevel
  from sora_jax.inference import captioning  # pylint: disable=import-outside-toplevel
  data_dir = json.load(open(os.path.join(run, "config.json")))["data"]["data_dir"]
  cfg = captioner_config.get_config(f"runlocal=True,source=text,data_dir={data_dir}")
  cfg.train.progress = False
  up = str(tmp_path / "up")
  loop.train_and_evaluate(cfg, up)
  prompts = tmp_path / "p.txt"
  prompts.write_text("a red circle\na blue square\n")
  base = [sys.executable, "-m", "sora_jax.sample", "--workdir", run, "--frames", "5",
          "--height", "32", "--width", "32", "--steps", "2", "--prompts_file", str(prompts),
          "--seed", "3"]
  subprocess.run(base + ["--upsampler", up, "--out_dir", str(tmp_path / "out")], check=True,
                 timeout=600)
  lines = [json.loads(l) for l in open(tmp_path / "out" / "manifest.jsonl")]
  expected = captioning.CaptionerRun.load(up).upsample(["a red circle", "a blue square"],
                                                       [3, 4], 1.0)
  assert [l["user_prompt"] for l in lines] == ["a red circle", "a blue square"]
  assert [l["prompt"] for l in lines] == expected and [l["seed"] for l in lines] == [3, 4]
  proc = subprocess.run(base + ["--upsampler", run, "--out_dir", str(tmp_path / "o2")],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2 and "is not a captioner run" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o2").exists()
