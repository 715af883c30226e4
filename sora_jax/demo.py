"""The end-to-end demo on the embedded Shapes World: README's first command.

  python -m sora_jax.demo --workdir runs/demo

Runs the stages of `configs/demo.py` in order and writes `WORKDIR/report.json` (results and
timings of every stage) after each one. Running it again skips the stages the report
holds and resumes the interrupted one (training resumes from its last checkpoint).
"""
from __future__ import annotations

import json
import os
import time

from absl import flags
from absl import logging
from etils import epath
from ml_collections import config_flags
import numpy as np

from data_pipelines import latents as latents_lib
from data_pipelines import media
from data_pipelines import storage
from data_pipelines import usage
from data_pipelines.shapes_world import export
from data_pipelines.shapes_world import generator as sw
from data_pipelines.shapes_world import score
from sora_jax.data import encode_latents
from sora_jax.inference import adherence
from sora_jax.inference import run as run_lib
from sora_jax.inference import sampler as sampler_lib
from sora_jax.inference import tasks
from sora_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"),
    "Demo config (path[:args]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where the demo writes everything.")


def _stage_check_evaluator(config, workdir: str) -> dict:
  """Exports generator clips and scores them: the evaluator's own sanity figure."""
  out = storage.join(workdir, "shapes_world_check")
  export.export(out, "test", "full", config.check_clips, 17, 64, 64, mp4=True)
  return score.evaluate_dir(out)


def _stage_vae(config, workdir: str) -> dict:
  return loop.train_and_evaluate(config.vae, storage.join(workdir, "vae"))


def _dit_config(config, workdir: str):
  """The DiT config with the demo's VAE and latent directories filled in."""
  cfg = config.dit
  cfg.vae.workdir = storage.join(workdir, "vae")
  cfg.data.latents = storage.join(workdir, "latents")
  return cfg


def _stage_latents(config, workdir: str) -> dict:
  """Encodes the DiT's training and evaluation clips once with the trained VAE."""
  cfg = _dit_config(config, workdir)
  splits = ("train", cfg.eval.split)
  encode_latents.encode_splits(cfg.data.to_dict(), cfg.vae.workdir, splits, cfg.data.latents)
  return {"num_records": {split: latents_lib.LatentRecords(storage.join(
      cfg.data.latents, split)).metadata["num_records"] for split in splits}}


def _stage_dit(config, workdir: str) -> dict:
  return loop.train_and_evaluate(_dit_config(config, workdir), storage.join(workdir, "dit"))


def _sampler(config, workdir: str) -> sampler_lib.Sampler:
  s = config.sample
  return sampler_lib.Sampler(run_lib.Run.load(storage.join(workdir, "dit")),
                           sampler_lib.SamplingOptions(steps=s.steps, method=s.method,
                                                     guidance=s.guidance))


def _stage_samples(config, workdir: str) -> dict:
  """One sample of every task (npy + mp4 + gif), a manifest and a contact sheet."""
  sampler, s = _sampler(config, workdir), config.sample
  t, hw, level = s.frames, s.size, config.eval.level
  clips = [sw.make_clip("test", i, t, hw, hw, level) for i in range(3)]
  a, b = clips[0], clips[1]
  edit_prompt = adherence.other_color_prompt(a.caption)
  given = min(2, sampler.latent_shape(t, hw, hw)[0] - 1)
  jobs = [  # (name, task, prompt, seed, make)
      ("t2v", "t2v", a.caption, 0, lambda p, k: tasks.t2v(sampler, p, t, hw, hw, k)),
      ("t2i", "t2i", sw.make_clip("test", 3, 1, hw, hw, level).caption, 0,
       lambda p, k: tasks.t2i(sampler, p, hw, hw, k)),
      ("i2v", "i2v", a.caption, 0, lambda p, k: tasks.i2v(sampler, p, a.video[0], t, k)),
      ("extend_forward", "extend", a.caption, 0,
       lambda p, k: tasks.extend(sampler, p, a.video, "forward", t, given, k)),
      ("extend_backward", "extend", a.caption, 0,
       lambda p, k: tasks.extend(sampler, p, a.video, "backward", t, given, k)),
      ("interpolate", "interpolate", b.caption, 0,
       lambda p, k: tasks.interpolate(sampler, p, a.video, b.video, t, seed=k)),
      ("loop", "loop", clips[2].caption, 0, lambda p, k: tasks.loop(sampler, p, t, hw, hw, k)),
      ("edit", "edit", edit_prompt, 0, lambda p, k: tasks.edit(sampler, p, a.video, 0.7, k)),
      ("long", "t2v", clips[2].caption, 0, lambda p, k: np.concatenate(list(tasks.long_video(
          sampler, p, int(s.long_seconds * media.DEFAULT_FPS), hw, hw, t, given, k)))),
  ]
  out_dir = storage.join(workdir, "samples")
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  manifest, videos = [], []
  for name, task, prompt, seed, make in jobs:
    path = storage.join(out_dir, name + ".npy")
    video = media.read_clip(path) if epath.Path(path).exists() else make(prompt, seed)
    media.write_clip(storage.join(out_dir, name), video, npy=True, mp4=True, gif=True)
    manifest.append({"file": name + ".npy", "prompt": prompt, "task": task, "seed": seed,
                     "frames": int(video.shape[0])})
    videos.append(video)
  epath.Path(out_dir, "manifest.jsonl").write_text(
      "".join(json.dumps(m) + "\n" for m in manifest))
  sheet = media.write_contact_sheet(storage.join(out_dir, "contact_sheet.png"),
                                     {"samples": videos}, frames=8,
                                     row_labels=[j[0] for j in jobs])
  return {"num": len(manifest), "tasks": sorted({m["task"] for m in manifest}),
          "contact_sheet": sheet}


def _stage_evaluate(config, workdir: str) -> dict:
  e, s = config.eval, config.sample
  sampler = _sampler(config, workdir)
  result = adherence.evaluate(sampler, storage.join(workdir, "eval"), [e.split], e.n, e.level,
                             s.frames, s.size, s.size, batch=s.batch, task_clips=e.task_clips)
  out = {"adherence": result["splits"][e.split], "tasks": result.get("tasks"),
         "level": e.level, "sampling": result["sampling"]}
  if e.t2i_n:  # the split's first t2i_n image prompts (T = 1): the t2i task's adherence
    images = adherence.evaluate(sampler, storage.join(workdir, "eval_t2i"), [e.split], e.t2i_n,
                               e.level, 1, s.size, s.size, batch=s.batch, task_clips=0)
    out["adherence_t2i"] = images["splits"][e.split]
  return out


STAGES = (("shapes_world_check", _stage_check_evaluator), ("vae", _stage_vae),
          ("latents", _stage_latents), ("dit", _stage_dit), ("samples", _stage_samples),
          ("evaluate", _stage_evaluate))


def check_resume(config, workdir: str) -> None:
  """A workdir holding a VAE of another model (e.g. another vae_preset) is an error."""
  path = storage.join(workdir, "vae", "config.json")
  if not epath.Path(path).exists():
    return
  saved = storage.read_json(path).get("model", {})
  asked = json.loads(config.vae.model.to_json_best_effort())
  if saved != asked:
    raise ValueError(f"{workdir!r} holds a VAE trained with model {saved}, but this config "
                     f"asks for {asked}; use another --workdir, or the vae_preset that VAE "
                     "was trained with (configs/demo.py). Nothing was changed.")


def run(config, workdir: str) -> dict:
  check_resume(config, workdir)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  report_path = storage.join(workdir, "report.json")
  report = {"stages": {}}
  if epath.Path(report_path).exists():
    report = storage.read_json(report_path)
  for name, fn in STAGES:
    if name in report["stages"]:  # finished in an earlier run: resume after it
      print(f"== demo stage: {name} (done, {report['stages'][name]['seconds']} s)", flush=True)
      continue
    t0 = time.time()
    print(f"== demo stage: {name}", flush=True)
    result = fn(config, workdir)
    if isinstance(result, dict) and "stopped_at" in result:  # preempted (SIGTERM)
      print(f"== demo stopped in stage {name} at step {result['stopped_at']}; run the same "
            "command again to resume.", flush=True)
      return report
    report["stages"][name] = {"result": result, "seconds": round(time.time() - t0, 1)}
    # After every stage: nothing finished is lost.
    storage.write_json(report_path, report, indent=2)
  print(json.dumps(report["stages"], indent=2))
  return report


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  with usage.checking():
    check_resume(_CONFIG.value, _WORKDIR.value)
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  usage.run(main)
