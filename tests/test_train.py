"""The shared training loop, driven by the VAE task on a shrunken config."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import vae as vae_config
from sora_jax import checkpoints
from sora_jax.train import loop
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
  state = vae_task.init_state(cfg, jax.random.key(0))
  channel = vae_task.checkpoint_extra(cfg, state)
  with cfg.unlocked():
    cfg.eval.latent_norm = "global"
  glob = vae_task.checkpoint_extra(cfg, state)
  std = np.asarray(channel["latent_std"])
  assert std.std() > 0.05 * std.mean()  # the channels differ, so the two norms differ
  np.testing.assert_allclose(glob["latent_std"], np.sqrt(np.mean(std ** 2)), rtol=1e-6)
  np.testing.assert_allclose(glob["latent_mean"], channel["latent_mean"], rtol=1e-6)
  assert (channel["latent_norm"], glob["latent_norm"]) == ("channel", "global")


def test_nan_guard_fails_fast(tmp_path, monkeypatch):
  cfg = _config(tmp_path, steps=3)

  def poisoned(config):  # the guard is the loop's: a step that only returns NaN suffices
    del config             # (and skips compiling the VAE's real step)
    def nan_step(state, batch, rng):
      del batch, rng
      return state, {"loss": jnp.full((), jnp.nan)}
    return nan_step

  monkeypatch.setattr(vae_task, "make_train_step", poisoned)
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
    vae_task.validate(odd)


def _write_video_folder(folder):
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
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
  assert np.isfinite(final["final/psnr_db"])
  assert "final/eval_all_ratio" not in final  # adherence is for Shapes World only
