"""Adherence: a DiT run scored on Shapes World prompts by the analytic evaluator, plus task
checks. The library behind `python -m sora_jax.evaluate` (its CLI).

  result = evaluate(Sampler(Run.load(workdir)), out_dir, ["test"], n=200, level="basic")

For each split: the detailed captions of the split's first `n` scenes (the generator's,
at the run's level unless `--level`), sampled by the batch sampler (`tasks.sample_batch`)
into `OUT_DIR/<split>/` (npy, mp4 unless --nomp4, manifest.jsonl; re-running reuses what
exists) and scored attribute by attribute (`data_pipelines/shapes_world/evaluator.py`): the
rate of each attribute, of `all`, and `n`. `compositional` measures unseen colour-shape
pairs.

Task checks (`--task_clips` generator clips of the first split as inputs):
  i2v_first_frame_psnr    the sampled first frame vs the given image (dB)
  extend_seam_psnr        forward extension: last given frame vs first new frame (dB), next
                          to `consecutive_psnr`, the same for consecutive frames of the
                          ground-truth clips (a seam as smooth as real motion scores alike)
  extend_all              evaluator `all` of the extended clips (given frames included, so
                          lenient: half the frames are the ground truth) against their caption
  loop_seam_psnr          a loop's last frame vs its first
  interpolate_start_psnr, interpolate_end_psnr   a bridge between the start and the end of
                          one ground-truth clip (its first frame as the video to leave, its
                          last latent frame's pixel frames as the video to reach): the
                          bridge's first frame vs the frame before it, its last vs the frame
                          after it; a bridge as smooth as the real motion scores like
                          `consecutive_psnr`
  interpolate_middle_psnr the bridge vs the clip's real middle frames (Shapes World motion
                          is determined by the caption, so the true middle is the target)
  edit_color              SDEdit (strength 0.7) to another object colour: the new colour's
                          evaluator rate
`evaluate` writes the result to `OUT_DIR/eval.json`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from data_pipelines import media
from data_pipelines import storage
from data_pipelines.shapes_world import evaluator
from data_pipelines.shapes_world import generator as sw_generator
from data_pipelines.shapes_world import world as W
from sora_jax.inference import tasks
from sora_jax.inference.sampler import Sampler


def split_prompts(split: str, n: int, level: str, frames: int, height: int,
                  width: int) -> list[dict]:
  """The detailed captions of a split's first n scenes (no rendering)."""
  sw_generator.validate_args(split, 0, frames, height, width, level)
  if n < 1:
    raise ValueError(f"n={n}; expected >= 1.")
  rows = []
  for i in range(n):
    scene = sw_generator.sample_scene(split, i, frames, height, width, level)
    rows.append({"prompt": W.detailed_caption(scene), "name": f"{split}_{i:04d}",
                 "task": "t2v", "split": split})
  return rows


def score_dir(out_dir: str, manifest: list[dict]) -> dict:
  scores = [evaluator.score_clip(media.read_clip(storage.join(out_dir, m["file"])),
                                 m["prompt"]) for m in manifest]
  return evaluator.aggregate(scores)


def consecutive_psnr(clips: list[np.ndarray]) -> float:
  return float(np.mean([psnr(c[i], c[i + 1]) for c in clips
                        for i in range(c.shape[0] - 1)]))


def other_color_prompt(prompt: str) -> str:
  """The prompt with its (first) object colour replaced by another palette colour."""
  colors = list(W.OBJECT_COLORS)
  for c in colors:
    if f" {c} " in prompt:
      new = colors[(colors.index(c) + 3) % len(colors)]
      return prompt.replace(f" {c} ", f" {new} ", 1)
  return prompt


def task_checks(sampler: Sampler, split: str, level: str, num: int, frames: int,
                height: int, width: int, seed: int) -> dict:
  """Conditioning-task checks on `num` ground-truth clips (see the module docstring)."""
  clips = [sw_generator.make_clip(split, i, frames, height, width, level) for i in range(num)]
  out: dict[str, float] = {"consecutive_psnr": consecutive_psnr([c.video for c in clips])}
  i2v, seam, ext_all, loop_seam, starts, ends, middles, edits = ([] for _ in range(8))
  t_lat = sampler.latent_shape(frames, height, width)[0]
  if t_lat < 2:
    raise ValueError(f"Task checks need videos of >= 2 latent frames; {frames} frames "
                     f"give {t_lat}. Use --task_clips 0 or more frames.")
  for i, c in enumerate(tqdm(clips, desc="task checks", unit="clip")):
    s = seed + 1000 + i
    v = tasks.i2v(sampler, c.caption, c.video[0], frames, s)
    i2v.append(psnr(v[0], c.video[0]))
    ext = tasks.extend(sampler, c.caption, c.video, "forward", frames, min(2, t_lat - 1), s)
    n = c.video.shape[0]
    seam.append(psnr(ext[n - 1], ext[n]))
    ext_all.append(evaluator.score_clip(ext, c.caption)["all"])
    if t_lat >= 3:  # a bridge needs a latent frame between its two given ends
      start, end = sampler.overlap_frames(1)  # pixel frames of 1 given latent frame a side
      a, b = c.video[:start], c.video[frames - end:]
      mid = tasks.bridge(sampler, c.caption, a, b, frames, 1, 1, s)
      starts.append(psnr(mid[0], a[-1]))
      ends.append(psnr(mid[-1], b[0]))
      middles.append(psnr(mid, c.video[start:frames - end]))
      loop = tasks.loop(sampler, c.caption, frames, height, width, s)
      loop_seam.append(psnr(loop[-1], loop[0]))
    new_prompt = other_color_prompt(c.caption)
    edited = tasks.edit(sampler, new_prompt, c.video, 0.7, s)
    edits.append(evaluator.score_clip(edited, new_prompt).get("color", False))
  mean = lambda xs: float(np.mean(xs)) if xs else None
  out.update(i2v_first_frame_psnr=mean(i2v), extend_seam_psnr=mean(seam),
             extend_all=mean(ext_all), loop_seam_psnr=mean(loop_seam),
             interpolate_start_psnr=mean(starts), interpolate_end_psnr=mean(ends),
             interpolate_middle_psnr=mean(middles),
             edit_color=mean(edits), n=len(clips))
  return out


def evaluate(sampler: Sampler, out_dir: str, splits: Sequence[str], n: int,
             level: str, frames: int = 17, height: int = 64, width: int = 64,
             seed: int = 0, batch: int = 16, task_clips: int = 4, mp4: bool = True) -> dict:
  """Samples and scores every split (and the task checks); writes OUT_DIR/eval.json."""
  t0 = time.time()
  opts = sampler.options
  result = {"workdir": sampler.run.workdir, "step": sampler.run.step, "level": level,
            "size": [frames, height, width], "seed": seed,
            "sampling": {"steps": opts.steps, "method": opts.method,
                         "guidance": opts.guidance,
                         "shift": opts.shift or sampler.run.sample_shift,  # None: by tokens
                         "guidance_interval": list(opts.guidance_interval)},
            "splits": {}}
  for split in splits:
    rows = split_prompts(split, n, level, frames, height, width)
    d = storage.join(out_dir, split)
    manifest = tasks.sample_batch(sampler, rows, d, frames, height, width, seed, batch,
                                  mp4=mp4)
    result["splits"][split] = score_dir(d, manifest)
  result["sample_seconds"] = round(time.time() - t0, 1)
  if task_clips:
    result["tasks"] = task_checks(sampler, splits[0], level, task_clips, frames, height,
                                  width, seed)
  result["seconds"] = round(time.time() - t0, 1)
  storage.write_json(storage.join(out_dir, "eval.json"), result, indent=2)
  return result


def run_level(workdir: str) -> str:
  """The Shapes World level a DiT run trained on (from its saved config)."""
  name = storage.read_json(storage.join(workdir, "config.json"))["data"]["name"]
  return name.get("level", "full") if isinstance(name, dict) else "full"


PSNR_CAP_DB = 60.0  # identical frames (a static object) would be +inf


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB between two uint8 arrays of one shape, capped at PSNR_CAP_DB."""
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
  if mse == 0:
    return PSNR_CAP_DB
  return float(min(PSNR_CAP_DB, 10 * math.log10(255.0 ** 2 / mse)))
