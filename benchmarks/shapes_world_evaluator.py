"""Accuracy of the Shapes World analytic evaluator on generator clips and on noise.

  python benchmarks/shapes_world_evaluator.py [--num 200]

Prints one JSON object: per (level, T, H, W, split) the rate of each attribute on the
generator's own clips with their detailed captions (the contract asks >= 99% at 48 px or
more on the short side), the same with short captions, the rates on uniform noise (should
be near chance), and the seconds per scored clip.
"""
import argparse
import datetime
import json
import platform
import time

import numpy as np

from data_pipelines.shapes_world import evaluator as ev
from data_pipelines.shapes_world import generator as gen

CASES = [("basic", 17, 64, 64, "test"), ("full", 17, 64, 64, "test"),
         ("basic", 1, 64, 64, "test"), ("full", 1, 64, 64, "test"),
         ("full", 17, 48, 80, "test"), ("full", 17, 80, 48, "test"),
         ("full", 5, 64, 64, "test"), ("full", 9, 48, 80, "test"),
         ("full", 33, 128, 128, "test"), ("full", 17, 64, 64, "compositional"),
         ("full", 17, 32, 32, "test")]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num", type=int, default=200)
  args = parser.parse_args()
  rows, seconds, n_scored = [], 0.0, 0
  rng = np.random.default_rng(0)
  for level, t, h, w, split in CASES:
    detailed, short, noise = [], [], []
    for i in range(args.num):
      clip = gen.make_clip(split, i, t, h, w, level)
      t0 = time.perf_counter()
      detailed.append(ev.score_clip(clip.video, clip.caption))
      seconds += time.perf_counter() - t0
      n_scored += 1
      short.append(ev.score_clip(clip.video, clip.short_caption))
      if i < args.num // 4:
        noisy = rng.integers(0, 256, clip.video.shape, dtype=np.uint8)
        noise.append(ev.score_clip(noisy, clip.caption))
    rows.append({"level": level, "frames": t, "height": h, "width": w, "split": split,
                 "detailed": ev.aggregate(detailed), "short": ev.aggregate(short),
                 "noise": ev.aggregate(noise)})
  print(json.dumps({
      "benchmark": "shapes_world_evaluator", "num_per_case": args.num, "cases": rows,
      "seconds_per_clip": round(seconds / n_scored, 4),
      "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
      "date": datetime.date.today().isoformat()}))


if __name__ == "__main__":
  main()
