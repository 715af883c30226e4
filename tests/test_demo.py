"""The README's main job, in its one-minute `quick` form: every stage runs and reports."""
import json
import os

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
  assert "final/psnr_db" in stages["vae"]["result"]
  assert "final/val_loss" in stages["dit"]["result"]
  # One sample of every task, with a manifest and a contact sheet.
  samples = os.path.join(workdir, "samples")
  manifest = [json.loads(l) for l in open(os.path.join(samples, "manifest.jsonl"))]
  assert {m["task"] for m in manifest} == {"t2v", "t2i", "i2v", "extend", "interpolate",
                                           "loop", "edit"}
  for m in manifest:
    assert {"file", "prompt", "task", "seed"} <= set(m)
    for ext in (".npy", ".mp4", ".gif"):
      assert os.path.getsize(os.path.join(samples, m["file"][:-4] + ext)) > 0
  assert os.path.getsize(os.path.join(samples, "contact_sheet.png")) > 0
  adherence = stages["evaluate"]["result"]["adherence"]
  assert adherence["n"] == cfg.eval.n and 0 <= adherence["all"] <= 1
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
