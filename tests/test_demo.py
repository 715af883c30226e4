"""The README's main job, in its one-minute `quick` form: every stage runs and reports."""
import json
import os

import numpy as np
import pytest

from configs import demo as demo_config
from sora_jax import demo


def test_quick_demo_runs_every_stage_and_resumes(tmp_path):
  cfg = demo_config.get_config(f"quick=True,data_dir={tmp_path / 'data'}")
  cfg.vae.train.progress = False
  cfg.dit.train.progress = False
  workdir = str(tmp_path / "demo")
  report = demo.run(cfg, workdir)
  stages = report["stages"]
  assert set(stages) == {name for name, _ in demo.STAGES}
  assert stages["shapes_world_check"]["result"]["all"] == 1.0  # generator clips score 100%
  assert 0 < stages["vae"]["result"]["final/psnr_db"] < 60
  dit = stages["dit"]["result"]  # 4 steps: any finite loss (39.98 measured), per t too
  assert all(0 < dit[f"final/val_loss{k}"] < 1e3 for k in ("", "_t0.1", "_t0.5", "_t0.9"))
  # One sample of every task, with a manifest and a contact sheet.
  samples = os.path.join(workdir, "samples")
  manifest = [json.loads(l) for l in open(os.path.join(samples, "manifest.jsonl"))]
  assert {m["task"] for m in manifest} == {"t2v", "t2i", "i2v", "extend", "interpolate",
                                           "loop", "edit"}
  t, hw = cfg.sample.frames, cfg.sample.size  # 9 frames of 32x32: 3 latent frames
  frames = {"t2v": t, "t2i": 1, "i2v": t, "extend_forward": t + 4, "extend_backward": t + 1,
            "interpolate": t + 4 + t, "loop": t + 4, "edit": t,
            "long": int(cfg.sample.long_seconds * 8)}  # extend by 2 given latent frames
  assert {m["file"][:-4]: m["frames"] for m in manifest} == frames
  for m in manifest:
    assert {"file", "prompt", "task", "seed"} <= set(m)
    assert np.load(os.path.join(samples, m["file"])).shape == (m["frames"], hw, hw, 3)
    for ext in (".npy", ".mp4", ".gif"):
      assert os.path.getsize(os.path.join(samples, m["file"][:-4] + ext)) > 0
  assert os.path.getsize(os.path.join(samples, "contact_sheet.png")) > 0
  adherence = stages["evaluate"]["result"]["adherence"]
  assert adherence["n"] == cfg.eval.n and "shape" in adherence and "motion" in adherence
  assert all(0 <= v <= 1 for k, v in adherence.items() if k != "n")
  # Every basic prompt states these, so no clip scores `all` without them.
  assert adherence["all"] <= min(adherence[k] for k in ("color", "shape", "background"))
  figures = stages["evaluate"]["result"]["tasks"]
  assert figures["n"] == cfg.eval.task_clips and 0 < figures["i2v_first_frame_psnr"] <= 60
  images = stages["evaluate"]["result"]["adherence_t2i"]  # scored as images: no motion
  assert images["n"] == cfg.eval.t2i_n and "motion" not in images and "color" in images
  assert len(os.listdir(os.path.join(workdir, "eval_t2i", cfg.eval.split))) >= cfg.eval.t2i_n
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["stages"].keys() == stages.keys()
  # Running again resumes: finished stages are skipped, no step is trained twice.
  os.remove(os.path.join(workdir, "samples", "loop.npy"))
  report = json.load(open(os.path.join(workdir, "report.json")))
  del report["stages"]["samples"], report["stages"]["evaluate"]  # as if interrupted there
  json.dump(report, open(os.path.join(workdir, "report.json"), "w"))
  again = demo.run(cfg, workdir)["stages"]
  assert again["vae"] == stages["vae"] and again["dit"] == stages["dit"]
  assert os.path.exists(os.path.join(samples, "loop.npy"))
  lines = [json.loads(l) for l in open(os.path.join(workdir, "vae", "metrics.jsonl"))]
  trained = [l["step"] for l in lines if "train/loss" in l]
  assert trained == sorted(set(trained))


def test_demo_refuses_a_workdir_with_another_vae(tmp_path):
  workdir = tmp_path / "demo"
  (workdir / "vae").mkdir(parents=True)
  demo_cfg = demo_config.get_config(f"data_dir={tmp_path / 'data'}")
  with open(workdir / "vae" / "config.json", "w") as f:
    json.dump({"model": json.loads(demo_cfg.vae.model.to_json_best_effort())}, f)
  demo.check_resume(demo_cfg, str(workdir))  # the same VAE: resumes
  quality = demo_config.get_config(f"quality=True,data_dir={tmp_path / 'data'}")
  with pytest.raises(ValueError, match="holds a VAE trained with model .*latent_channels"):
    demo.run(quality, str(workdir))  # dct21 asked, dct10 there: before any stage runs
  assert sorted(os.listdir(workdir)) == ["vae"]
