"""Score a DiT run on Shapes World prompts with the analytic evaluator, plus task checks.

  python -m sora_jax.evaluate --workdir runs/demo/dit --split test --n 200
  python -m sora_jax.evaluate --workdir W --split test,compositional --n 200 --level basic

Samples each split's first `n` detailed captions into `OUT_DIR/<split>/` (npy, mp4 unless
--nomp4, manifest.jsonl), scores them attribute by attribute, runs the task checks (i2v,
extension, loop and bridge seams, edit colour) and prints the JSON it writes to
`OUT_DIR/eval.json`. What each figure means: `sora_jax/inference/adherence.py`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from absl import flags

from data_pipelines import storage
from data_pipelines import usage
from sora_jax.inference import adherence
from sora_jax.inference import cli
from sora_jax.inference import run as run_lib
from sora_jax.inference import sampler as sampler_lib
from sora_jax.scaling import report as scaling_report

FLAGS = flags.FLAGS


def define_flags():
  cli.define_flags()
  flags.DEFINE_string("split", "test", "Shapes World split(s), comma-separated.")
  flags.DEFINE_integer("n", 200, "Prompts per split.")
  flags.DEFINE_string("level", "", "Shapes World level of the prompts ('' = the run's).")
  flags.DEFINE_integer("frames", 17, "T.")
  flags.DEFINE_integer("height", 64, "H.")
  flags.DEFINE_integer("width", 64, "W.")
  flags.DEFINE_integer("seed", 0, "First noise seed (prompt i uses seed + i).")
  flags.DEFINE_integer("batch", 16, "Clips sampled together.")
  flags.DEFINE_bool("mp4", True, "Also write each sample as mp4 (scores read the .npy; "
                    "--nomp4 where imageio-ffmpeg is missing, or to save the time).")
  flags.DEFINE_integer("task_clips", 4, "Clips per task check (0 = no task checks).")
  flags.DEFINE_string("out_dir", "", "Where samples and eval.json go ('' = WORKDIR/eval, "
                      "or WORKDIR/eval_step<N> with --step).")
  flags.DEFINE_string("adherence_json", "", "Also write the first split's adherence here "
                      "(the scaling report's per-run figure; '' = no).")


def main(argv: Sequence[str]) -> None:
  del argv
  with usage.checking():  # every input, before the model loads
    cli.check_run()
    splits = [s.strip() for s in FLAGS.split.split(",") if s.strip()]
    if not splits:
      raise usage.InputError(f"--split={FLAGS.split!r} names no split; expected e.g. "
                             "--split=test or --split=test,compositional.")
    level = FLAGS.level or adherence.run_level(FLAGS.workdir)
    for s in splits:  # bad split / level: an error before the model loads
      adherence.split_prompts(s, 1, level, FLAGS.frames, FLAGS.height, FLAGS.width)
    for name in ("n", "batch"):
      if FLAGS[name].value < 1:
        raise usage.InputError(f"--{name}={FLAGS[name].value}; expected >= 1.")
    if FLAGS.task_clips < 0:
      raise usage.InputError(f"--task_clips={FLAGS.task_clips}; expected >= 0.")
    cli.check_prompts(r["prompt"] for s in splits for r in adherence.split_prompts(
        s, FLAGS.n, level, FLAGS.frames, FLAGS.height, FLAGS.width))
    options = cli.sampling_options()
    cli.check_window(FLAGS.batch)
  sampler = sampler_lib.Sampler(run_lib.Run.load(FLAGS.workdir, FLAGS.step), options)
  default_dir = "eval" if FLAGS.step is None else f"eval_step{FLAGS.step}"
  out_dir = FLAGS.out_dir or storage.join(FLAGS.workdir, default_dir)
  result = adherence.evaluate(sampler, out_dir, splits, FLAGS.n, level, FLAGS.frames,
                              FLAGS.height, FLAGS.width, FLAGS.seed, FLAGS.batch,
                              FLAGS.task_clips, mp4=FLAGS.mp4)
  print(json.dumps(result, indent=2))
  if FLAGS.adherence_json:  # {"all", "rates", "n", ...}: sora_jax/scaling/report.py
    scaling_report.write_adherence(FLAGS.adherence_json, result, splits[0])


if __name__ == "__main__":
  define_flags()
  usage.run(main)
