"""The end-to-end demo on the embedded Shapes World: README's first command.

  python -m sora_jax.demo --workdir runs/demo

Runs the stages of `configs/demo.py` in order, each skipped or resumed when its output is
already there, and writes `WORKDIR/report.json` (results and timings of every stage).
"""
from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"),
    "Demo config (path[:args]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where the demo writes everything.")


def _stage_check_evaluator(config, workdir: str) -> dict:
  """Exports generator clips and scores them: the evaluator's own sanity figure."""
  from data_pipelines.shapes_world import evaluate  # pylint: disable=g-import-not-at-top
  from data_pipelines.shapes_world import export  # pylint: disable=g-import-not-at-top
  out = os.path.join(workdir, "shapes_world_check")
  export.export(out, "test", "full", config.check_clips, 17, 64, 64, mp4=True)
  return evaluate.evaluate_dir(out)


def _stage_vae(config, workdir: str) -> dict:
  from sora_jax.train import loop  # pylint: disable=g-import-not-at-top
  return loop.train_and_evaluate(config.vae, os.path.join(workdir, "vae"))


STAGES = (("shapes_world_check", _stage_check_evaluator), ("vae", _stage_vae))


def run(config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  report_path = os.path.join(workdir, "report.json")
  report = {"stages": {}}
  if os.path.exists(report_path):
    with open(report_path) as f:
      report = json.load(f)
  for name, fn in STAGES:
    t0 = time.time()
    print(f"== demo stage: {name}", flush=True)
    result = fn(config, workdir)
    report["stages"][name] = {"result": result, "seconds": round(time.time() - t0, 1)}
    with open(report_path, "w") as f:  # after every stage: nothing finished is lost
      json.dump(report, f, indent=2)
  print(json.dumps(report["stages"], indent=2))
  return report


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
