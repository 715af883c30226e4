"""The README's main job, in its one-minute `quick` form: every stage runs and reports."""
import json
import os

from configs import demo as demo_config
from sora_jax import demo


def test_quick_demo_runs_every_stage_and_resumes(tmp_path):
  cfg = demo_config.get_config(f"quick=True,data_dir={tmp_path / 'data'}")
  cfg.vae.train.progress = False
  workdir = str(tmp_path / "demo")
  report = demo.run(cfg, workdir)
  stages = report["stages"]
  assert set(stages) == {name for name, _ in demo.STAGES}
  assert stages["shapes_world_check"]["result"]["all"] == 1.0  # generator clips score 100%
  assert "final/psnr_db" in stages["vae"]["result"]
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["stages"].keys() == stages.keys()
  # Running again resumes: the VAE's checkpoint is reused, no step is trained twice.
  demo.run(cfg, workdir)
  lines = [json.loads(l) for l in open(os.path.join(workdir, "vae", "metrics.jsonl"))]
  trained = [l["step"] for l in lines if "train/loss" in l]
  assert trained == sorted(set(trained))
