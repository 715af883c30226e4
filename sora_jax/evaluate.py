"""Score a DiT run on Shapes World prompts with the analytic evaluator, plus task checks.

  python -m sora_jax.evaluate --workdir runs/demo/dit --split test --n 200
  python -m sora_jax.evaluate --workdir W --split test,compositional --n 200 --level basic

For each split: the detailed captions of the split's first `n` scenes (the generator's,
at the run's level unless `--level`), sampled by the batch sampler (`sample.sample_batch`)
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
Prints the JSON and writes it to `OUT_DIR/eval.json`.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from absl import app
from absl import flags
import numpy as np
from tqdm import tqdm

from data_pipelines.shapes_world import evaluator
from data_pipelines.shapes_world import generator as sw_generator
from data_pipelines.shapes_world import world as W
from sora_jax import generation
from sora_jax import sample as sample_cli
from sora_jax.scaling import report as scaling_report

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "A DiT run directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
  flags.DEFINE_string("split", "test", "Shapes World split(s), comma-separated.")
  flags.DEFINE_integer("n", 200, "Prompts per split.")
  flags.DEFINE_string("level", "", "Shapes World level of the prompts ('' = the run's).")
  flags.DEFINE_integer("frames", 17, "T.")
  flags.DEFINE_integer("height", 64, "H.")
  flags.DEFINE_integer("width", 64, "W.")
  flags.DEFINE_integer("seed", 0, "First noise seed (prompt i uses seed + i).")
  flags.DEFINE_integer("steps", 32, "Solver steps.")
  flags.DEFINE_string("sampler", "dpmpp_2m", "ODE solver.")
  flags.DEFINE_float("guidance", 4.0, "Classifier-free guidance scale.")
  flags.DEFINE_float("shift", 0.0, "Timestep shift (0 = the run's sample_shift, else the "
                     "training rule by token count).")
  flags.DEFINE_string("guidance_interval", "0,1", "lo,hi: guidance only at steps with "
                      "lo < t <= hi (t = 1 is noise); the conditional prediction elsewhere.")
  flags.DEFINE_integer("batch", 16, "Clips sampled together.")
  flags.DEFINE_bool("mp4", True, "Also write each sample as mp4 (scores read the .npy; "
                    "--nomp4 where imageio-ffmpeg is missing, or to save the time).")
  flags.DEFINE_integer("task_clips", 4, "Clips per task check (0 = no task checks).")
  flags.DEFINE_string("out_dir", "", "Where samples and eval.json go ('' = WORKDIR/eval, "
                      "or WORKDIR/eval_step<N> with --step).")
  flags.DEFINE_string("adherence_json", "", "Also write the first split's adherence here "
                      "(the scaling report's per-run figure; '' = no).")


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
  scores = [evaluator.score_clip(np.load(os.path.join(out_dir, m["file"])), m["prompt"])
            for m in manifest]
  return evaluator.aggregate(scores)


def _consecutive_psnr(clips: list[np.ndarray]) -> float:
  return float(np.mean([generation.psnr(c[i], c[i + 1]) for c in clips
                        for i in range(c.shape[0] - 1)]))


def _other_color_prompt(prompt: str) -> str:
  """The prompt with its (first) object colour replaced by another palette colour."""
  colors = list(W.OBJECT_COLORS)
  for c in colors:
    if f" {c} " in prompt:
      new = colors[(colors.index(c) + 3) % len(colors)]
      return prompt.replace(f" {c} ", f" {new} ", 1)
  return prompt


def task_checks(gen: generation.Generator, split: str, level: str, num: int, frames: int,
                height: int, width: int, seed: int) -> dict:
  """Conditioning-task checks on `num` ground-truth clips (see the module docstring)."""
  clips = [sw_generator.make_clip(split, i, frames, height, width, level) for i in range(num)]
  out: dict[str, float] = {"consecutive_psnr": _consecutive_psnr([c.video for c in clips])}
  i2v, seam, ext_all, loop_seam, starts, ends, middles, edits = ([] for _ in range(8))
  t_lat = gen.latent_shape(frames, height, width)[0]
  if t_lat < 2:
    raise ValueError(f"Task checks need videos of >= 2 latent frames; {frames} frames "
                     f"give {t_lat}. Use --task_clips 0 or more frames.")
  for i, c in enumerate(tqdm(clips, desc="task checks", unit="clip")):
    s = seed + 1000 + i
    v = gen.i2v(c.caption, c.video[0], frames, s)
    i2v.append(generation.psnr(v[0], c.video[0]))
    ext = gen.extend(c.caption, c.video, "forward", frames, min(2, t_lat - 1), s)
    n = c.video.shape[0]
    seam.append(generation.psnr(ext[n - 1], ext[n]))
    ext_all.append(evaluator.score_clip(ext, c.caption)["all"])
    if t_lat >= 3:  # a bridge needs a latent frame between its two given ends
      start, end = gen.overlap_frames(1)  # pixel frames of 1 given latent frame at each end
      a, b = c.video[:start], c.video[frames - end:]
      mid = gen.bridge(c.caption, a, b, frames, 1, 1, s)
      starts.append(generation.psnr(mid[0], a[-1]))
      ends.append(generation.psnr(mid[-1], b[0]))
      middles.append(generation.psnr(mid, c.video[start:frames - end]))
      loop = gen.loop(c.caption, frames, height, width, s)
      loop_seam.append(generation.psnr(loop[-1], loop[0]))
    new_prompt = _other_color_prompt(c.caption)
    edited = gen.edit(new_prompt, c.video, 0.7, s)
    edits.append(evaluator.score_clip(edited, new_prompt).get("color", False))
  mean = lambda xs: float(np.mean(xs)) if xs else None
  out.update(i2v_first_frame_psnr=mean(i2v), extend_seam_psnr=mean(seam),
             extend_all=mean(ext_all), loop_seam_psnr=mean(loop_seam),
             interpolate_start_psnr=mean(starts), interpolate_end_psnr=mean(ends),
             interpolate_middle_psnr=mean(middles),
             edit_color=mean(edits), n=len(clips))
  return out


def evaluate(gen: generation.Generator, out_dir: str, splits: Sequence[str], n: int,
             level: str, frames: int = 17, height: int = 64, width: int = 64,
             seed: int = 0, batch: int = 16, task_clips: int = 4, mp4: bool = True) -> dict:
  """Samples and scores every split (and the task checks); writes OUT_DIR/eval.json."""
  t0 = time.time()
  result = {"workdir": gen.workdir, "step": gen.step, "level": level,
            "size": [frames, height, width], "seed": seed,
            "sampling": {"steps": gen.options.steps, "method": gen.options.method,
                         "guidance": gen.options.guidance,
                         "shift": gen.options.shift or gen.sample_shift,  # None: by tokens
                         "guidance_interval": list(gen.options.guidance_interval)},
            "splits": {}}
  for split in splits:
    rows = split_prompts(split, n, level, frames, height, width)
    d = os.path.join(out_dir, split)
    manifest = sample_cli.sample_batch(gen, rows, d, frames, height, width, seed, batch,
                                       mp4=mp4)
    result["splits"][split] = score_dir(d, manifest)
  result["sample_seconds"] = round(time.time() - t0, 1)
  if task_clips:
    result["tasks"] = task_checks(gen, splits[0], level, task_clips, frames, height, width,
                                  seed)
  result["seconds"] = round(time.time() - t0, 1)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "eval.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def run_level(workdir: str) -> str:
  """The Shapes World level a DiT run trained on (from its saved config)."""
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    name = json.load(f)["data"]["name"]
  return name.get("level", "full") if isinstance(name, dict) else "full"


def main(argv: Sequence[str]) -> None:
  del argv
  generation.start_cli(FLAGS.workdir, FLAGS["verbosity"].present, FLAGS.step)
  splits = [s.strip() for s in FLAGS.split.split(",") if s.strip()]
  level = FLAGS.level or run_level(FLAGS.workdir)
  for s in splits:  # bad split / level / n: an error before the model loads
    split_prompts(s, 1, level, FLAGS.frames, FLAGS.height, FLAGS.width)
  if FLAGS.n < 1:
    raise app.UsageError(f"--n={FLAGS.n}; expected >= 1.")
  if FLAGS.shift < 0:
    raise app.UsageError(f"--shift={FLAGS.shift}; expected > 0 (or 0 = the run's default).")
  try:
    interval = generation.parse_guidance_interval(FLAGS.guidance_interval)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  options = generation.SamplingOptions(steps=FLAGS.steps, method=FLAGS.sampler,
                                       guidance=FLAGS.guidance, shift=FLAGS.shift or None,
                                       guidance_interval=interval)
  gen = generation.Generator(FLAGS.workdir, step=FLAGS.step, options=options)
  gen.latent_shape(FLAGS.frames, FLAGS.height, FLAGS.width)
  default_dir = "eval" if FLAGS.step is None else f"eval_step{FLAGS.step}"
  out_dir = FLAGS.out_dir or os.path.join(FLAGS.workdir, default_dir)
  result = evaluate(gen, out_dir, splits, FLAGS.n, level, FLAGS.frames, FLAGS.height,
                    FLAGS.width, FLAGS.seed, FLAGS.batch, FLAGS.task_clips,
                    mp4=FLAGS.mp4)
  print(json.dumps(result, indent=2))
  if FLAGS.adherence_json:  # {"all", "rates", "n", ...}: sora_jax/scaling/report.py
    scaling_report.write_adherence(FLAGS.adherence_json, result, splits[0])


if __name__ == "__main__":
  define_flags()
  app.run(main)
