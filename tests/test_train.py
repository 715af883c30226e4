"""The shared training loop, driven by the VAE task on a shrunken config."""
import glob
import json
import os
import sys

import imageio.v3 as iio
import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import vae as vae_config
from sora_jax import checkpoints
from sora_jax.train import loop
from sora_jax.train import registry
from sora_jax.train import stepping
from sora_jax.train import throughput
from sora_jax.train import vae_task


def _config(tmp_path, steps=4):
  cfg = vae_config.get_config(
      f"variant=tiny,runlocal=True,sizes=5x32x32+1x32x32,data_dir={tmp_path / 'data'}")
  cfg.train.steps = steps
  cfg.train.progress = False
  return cfg


def _final_params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.PyTreeCheckpointer().restore(path)["params"]


# Slow (~50 s): the loop's exact resume is task-independent and is checked in the default
# suite by test_dit_train.py's resume test; the VAE stage's outputs by test_demo.py.
@pytest.mark.slow
def test_train_resume_equals_uninterrupted(tmp_path):
  cfg = _config(tmp_path)
  split_dir, straight_dir = str(tmp_path / "split"), str(tmp_path / "straight")
  assert loop.train_and_evaluate(cfg, split_dir, stop_at=2) == {"stopped_at": 2}
  final = loop.train_and_evaluate(cfg, split_dir)  # resumes at step 2
  loop.train_and_evaluate(cfg, straight_dir)
  # Same params bit for bit only if the data iterator resumed exactly where it stopped.
  a, b = _final_params(split_dir, 4), _final_params(straight_dir, 4)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), a, b)

  steps = [json.loads(l)["step"] for l in open(os.path.join(split_dir, "metrics.jsonl"))
           if "train/loss" in l]
  assert steps == [1, 2, 3, 4]  # each step trained once across the two runs
  for key in ("final/psnr_db", "final/ssim", "final/eval_all_ratio"):
    assert np.isfinite(final[key])
  assert os.path.exists(os.path.join(split_dir, "recon", "step_0000004.png"))
  assert os.path.exists(os.path.join(split_dir, "config.json"))
  ckpt = checkpoints.Checkpointer(split_dir)
  stats = ckpt.restore_json(4, "extra")
  assert len(stats["latent_mean"]) == len(stats["latent_std"]) == cfg.model.latent_channels
  assert all(s > 0 for s in stats["latent_std"])
  assert ckpt.restore_json(4, "config")["task"] == "vae"
  ckpt.close()


def test_latent_statistics_channel_and_global(tmp_path):
  """`latent_norm=global` gives every channel the RMS of the per-channel stds; same means."""
  cfg = _config(tmp_path)
  state = vae_task.VAETask(cfg).init_state(jax.random.key(0))
  channel = vae_task.VAETask(cfg).checkpoint_extra(state)
  with cfg.unlocked():
    cfg.eval.latent_norm = "global"
  glob = vae_task.VAETask(cfg).checkpoint_extra(state)
  std = np.asarray(channel["latent_std"])
  assert std.std() > 0.05 * std.mean()  # the channels differ, so the two norms differ
  np.testing.assert_allclose(glob["latent_std"], np.sqrt(np.mean(std ** 2)), rtol=1e-6)
  np.testing.assert_allclose(glob["latent_mean"], channel["latent_mean"], rtol=1e-6)
  assert (channel["latent_norm"], glob["latent_norm"]) == ("channel", "global")


def test_nan_guard_fails_fast(tmp_path, monkeypatch):
  cfg = _config(tmp_path, steps=3)

  def poisoned(self):  # the guard is the loop's: a step that only returns NaN suffices
    del self            # (and skips compiling the VAE's real step)
    def nan_step(state, batch, rng):
      del batch, rng
      return state, {"loss": jnp.full((), jnp.nan)}
    return nan_step

  monkeypatch.setattr(vae_task.VAETask, "make_train_step", poisoned)
  with pytest.raises(FloatingPointError, match="Non-finite loss nan at step 1"):
    loop.train_and_evaluate(cfg, str(tmp_path / "nan"))
  assert not os.path.exists(tmp_path / "nan" / "checkpoints" / "1")


def test_bad_config_fails_before_any_work(tmp_path):
  cfg = _config(tmp_path)
  cfg.model.variant = "huge"
  with pytest.raises(ValueError, match="Unknown VAE variant 'huge'"):
    loop.train_and_evaluate(cfg, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")
  odd = vae_config.get_config(f"variant=tiny,runlocal=True,sizes=5x48x48,s=16,scale_eq=0.5,"
                              f"data_dir={tmp_path / 'data'}")
  with pytest.raises(ValueError, match=r"48x48 gives latents of odd height or width.*"
                                       r"scale_eq=0.5.*divisible by 32"):
    vae_task.VAETask(odd).validate()


def _write_video_folder(folder):
  folder.mkdir()
  rows = []
  for k in range(3):
    video = np.zeros((24, 48, 64, 3), np.uint8)
    for t in range(24):
      video[t, 10:26, 4 + 2 * t:20 + 2 * t] = (220, 40 + 60 * k, 40)
    iio.imwrite(folder / f"v{k}.mp4", video, plugin="FFMPEG", fps=8, macro_block_size=1)
    rows.append({"file": f"v{k}.mp4", "caption": f"a moving square {k}"})
  (folder / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_vae_trains_on_a_video_folder(tmp_path):
  _write_video_folder(tmp_path / "videos")
  cfg = vae_config.get_config(
      f"variant=tiny,runlocal=True,video_folder={tmp_path / 'videos'},sizes=5x32x32,"
      f"data_dir={tmp_path / 'data'}")
  cfg.train.steps = 2
  cfg.train.progress = False
  final = loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert 0 < final["final/psnr_db"] < 60 and -1 <= final["final/ssim"] <= 1
  assert "final/eval_all_ratio" not in final  # adherence is for Shapes World only
  # The clips it trained and evaluated on are the folder's, cut to 5x32x32: a red square on
  # black (the reconstruction grid's first column holds the originals' first frames).
  sheet = iio.imread(tmp_path / "run" / "recon" / "step_0000002.png")
  original = sheet[:, :32].astype(int)
  assert sheet.shape[0] % 32 == 0 and np.mean(original.max(-1) < 30) > 0.5
  assert np.any((original[..., 0] > 150) & (original[..., 2] < 100))


def test_throughput_times_the_intervals_between_steps_and_skips_other_work():
  """Charged: each step's FLOPs and tokens over the interval since the previous step; not:
  the first interval (compile) and one marked `skip` (evaluation, checkpoint)."""
  now = [0.0]
  t = throughput.Throughput(clock=lambda: now[0])
  for clock, flops in ((0.0, 5.0), (10.0, 4.0), (12.0, 6.0)):  # start, 2 s, then eval
    now[0] = clock
    t.step({"flops": flops, "tokens": 8})
  t.skip()
  for clock in (50.0, 53.0):  # after the skip: a reference, then 3 s
    now[0] = clock
    t.step({"flops": 2.0, "tokens": 4})
  # intervals 0->10 (4 flops), 10->12 (6) and 50->53 (2): 12 FLOPs, 20 tokens in 15 s
  assert t.report(peak=4.0) == pytest.approx(
      {"flops_per_s": 12 / 15, "tokens_per_s": 20 / 15, "mfu": 12 / 15 / 4})
  assert t.report(peak=4.0) == {}  # reset: nothing timed since


def test_peak_flops_from_the_config_or_the_device_table():
  class Device:
    device_kind = "NVIDIA H100 80GB HBM3"

  assert throughput.peak_flops(3e9, [Device()]) == 3e9
  assert throughput.peak_flops(0.0, [Device()] * 8) == 8 * 989e12
  Device.device_kind = "cpu"
  assert throughput.peak_flops(0.0, [Device()]) == 0.0


def test_tasks_are_per_run_objects_behind_the_protocol(tmp_path):
  cfg = _config(tmp_path)
  task = registry.make(cfg)
  assert isinstance(task, vae_task.VAETask) and task.config is cfg
  assert registry.make(cfg) is not task  # nothing shared through the module
  for name in ("validate", "prepare", "make_train_data", "init_state", "state_shardings",
               "device_batch", "abstract_batch", "make_train_step", "evaluate",
               "checkpoint_extra"):
    assert callable(getattr(task, name)), name
  assert task.abstract_batch()["video"].shape == (cfg.train.batch_size, 5, 32, 32, 3)


def test_reconstruction_psnr_and_ssim_on_known_inputs():
  """PSNR on [0, 1]: an error of 0.1 everywhere (0.2 in [-1, 1]) is 20 dB exactly, a perfect
  reconstruction hits the 100 dB floor of the MSE; SSIM is 1 for identical frames and drops
  for noise; a reconstruction outside [-1, 1] is clipped first."""
  rng = np.random.default_rng(0)
  video = rng.uniform(-0.5, 0.5, (3, 16, 16, 3)).astype(np.float32)
  psnr, ssim = vae_task.reconstruction_quality(video, video + 0.2)
  assert psnr == pytest.approx(20.0, abs=1e-3) and 0.5 < ssim < 1.0
  assert vae_task.reconstruction_quality(video, video) == pytest.approx((100.0, 1.0), abs=1e-4)
  noisy = video + rng.normal(0, 0.3, video.shape).astype(np.float32)
  assert vae_task.reconstruction_quality(video, noisy)[1] < min(0.8, ssim)  # 0.65 measured
  clipped = vae_task.reconstruction_quality(np.ones_like(video), np.full_like(video, 5.0))
  assert clipped == pytest.approx((100.0, 1.0), abs=1e-4)




@flax.struct.dataclass
class _State:
  step: jax.Array
  w: jax.Array


def test_guarded_step_skips_a_non_finite_update_and_folds_the_rng_in_jit():
  """A step whose loss or grad norm is not finite leaves the state's arrays as they were
  (the counter advances); step s gets fold_in(base, s) for a state at step s - 1."""
  def task_step(state, batch, rng):
    w = state.w + batch["delta"]
    return _State(state.step + 1, w), {"loss": jnp.sum(w), "grad_norm": batch["norm"],
                                       "key": jax.random.key_data(rng)}

  step = jax.jit(stepping.guarded(task_step))
  base, state = jax.random.key(7), _State(jnp.int32(4), jnp.ones(3))
  new, metrics = step(state, {"delta": jnp.full(3, 0.5), "norm": 1.0}, base)
  np.testing.assert_array_equal(new.w, 1.5)
  assert int(new.step) == 5
  np.testing.assert_array_equal(metrics["key"], jax.random.key_data(jax.random.fold_in(base, 5)))
  for delta, norm in ((jnp.full(3, jnp.nan), 1.0), (jnp.zeros(3), jnp.inf)):
    skipped, metrics = step(new, {"delta": delta, "norm": norm}, base)
    np.testing.assert_array_equal(skipped.w, 1.5)  # the update was not applied
    assert int(skipped.step) == 6


def test_profiled_steps_host_time_breakdown_and_wandb(tmp_path, monkeypatch):
  """`train.profile_start` traces those steps (xplane files under WORKDIR/profile); train
  rows carry the host's input and device-wait seconds a step; `train.wandb` logs the same
  scalars to Weights & Biases (a stand-in module here: no network)."""
  cfg = _config(tmp_path, steps=4)
  cfg.train.update(profile_start=2, profile_steps=2, wandb="sora-test")
  logged, inits = [], []

  class FakeRun:
    def log(self, values, step):
      logged.append((step, dict(values)))

    def finish(self):
      logged.append(("finished", {}))

  fake = type(sys)("wandb")
  fake.init = lambda **kw: inits.append(kw) or FakeRun()
  fake.Image = lambda array: array
  monkeypatch.setitem(sys.modules, "wandb", fake)

  def trivial(self):  # the loop's work only: no model to compile
    del self
    return lambda state, batch, rng: (state, {"loss": jnp.mean(batch["video"])})

  monkeypatch.setattr(vae_task.VAETask, "make_train_step", trivial)
  monkeypatch.setattr(vae_task.VAETask, "evaluate", lambda *a, **k: {"psnr_db": 1.0})
  monkeypatch.setattr(vae_task.VAETask, "checkpoint_extra", lambda self, state: {})
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(cfg, workdir)

  traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1, traces
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  for r in train:
    assert 0 <= r["train/data_s"] + r["train/wait_s"] <= r["train/sec_per_step"] * 1.01, r
  assert inits[0]["project"] == "sora-test" and inits[0]["config"]["train"]["steps"] == 4
  assert [s for s, v in logged if "train/loss" in v] == [1, 2, 3, 4]
  assert logged[-1][0] == "finished" and any("final/psnr_db" in v for _, v in logged)


def test_bad_profile_steps_fail_before_any_work(tmp_path):
  cfg = _config(tmp_path)
  cfg.train.profile_start = -1
  with pytest.raises(ValueError, match="profile_start=-1"):
    loop.train_and_evaluate(cfg, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")
