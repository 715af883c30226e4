"""Caption accuracy of a trained captioner (or upsampler) on Shapes World; prints JSON.

  python benchmarks/captioner.py --captioner runs/captioner --n 200 \
      [--splits test,compositional] [--sizes 17x64x64,1x64x64] [--level basic]
  python benchmarks/captioner.py --captioner runs/upsampler --n 200   # source=text

Video captioner: renders the first `--n` clips of each split and size with the Shapes
World generator, encodes them with the captioner's own VAE (the latent space it trained
on), captions them greedily and scores each caption against the clip's detailed caption
with the caption grammar (`data_pipelines/shapes_world/captions.py`): the rate of every
attribute, of `all` (every attribute right), `exact` and `unparseable`, per split and
size and pooled over sizes. Upsampler: expands the clips' short captions (greedy and at
`--temperature`) and scores the expansions against the short prompt (colour and shape
kept, parseable) and how many distinct expansions one prompt gives over seeds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top
from data_pipelines import usage
from data_pipelines.shapes_world import captions as caption_scores
from data_pipelines.shapes_world import generator
from data_pipelines.shapes_world import world
from sora_jax.data import encode_latents
from sora_jax.inference import captioning
from sora_jax.inference import run as run_lib


class MemoryRecords:
  """Latent records in memory (the interface `CaptionerRun.caption_records` reads)."""

  def __init__(self, rows: list[dict]):
    self.rows = rows
    self.shapes = np.asarray([r["latents"].shape for r in rows], np.int32)

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, i: int) -> dict:
    return self.rows[int(i)]


def rendered_records(vae, split: str, n: int, size: tuple[int, int, int],
                     level: str) -> MemoryRecords:
  rows = []
  for lo in range(0, n, 32):
    clips = [generator.make_clip(split, i, *size, level) for i in range(lo, min(lo + 32, n))]
    for i, (clip, z) in enumerate(zip(clips, encode_latents.encode_clips(
        vae, [c.video for c in clips]))):
      rows.append({"latents": z, "caption": clip.caption, "short_caption": clip.short_caption,
                   "index": lo + i})
  return MemoryRecords(rows)


def score_captioner(cap: captioning.CaptionerRun, splits, sizes, n: int, level: str,
                    batch: int) -> dict:
  _, config, extra = captioning.read_captioner_run(cap.workdir, cap.step)
  vae = run_lib.vae_of_run(cap.workdir, config, extra)
  out = {}
  for split in splits:
    pooled = []
    for size in sizes:
      records = rendered_records(vae, split, n, size, level)
      t0 = time.time()
      got = cap.caption_records(records, batch_size=batch)
      seconds = time.time() - t0
      scores = [caption_scores.compare(got[i], records[i]["caption"]) for i in range(n)]
      pooled += scores
      key = "x".join(map(str, size))
      out[f"{split}/{key}"] = {**caption_scores.aggregate(scores),
                               "clips_per_s": round(n / seconds, 1),
                               "examples": [{"truth": records[i]["caption"],
                                             "caption": got[i]} for i in range(2)]}
    out[split] = caption_scores.aggregate(pooled)
  return out


def score_upsampler(up: captioning.CaptionerRun, splits, sizes, n: int, level: str,
                    temperature: float, seeds: int) -> dict:
  out = {}
  for split in splits:
    for size in sizes:
      shorts = [world.short_caption(generator.sample_scene(split, i, *size, level))
                for i in range(n)]
      key = f"{split}/{'x'.join(map(str, size))}"
      greedy = up.upsample(shorts, 0, 0.0)
      out[f"{key}/greedy"] = caption_scores.aggregate(
          [caption_scores.against_short(g, s) for g, s in zip(greedy, shorts)])
      sampled = [up.upsample(shorts, s, temperature) for s in range(seeds)]
      flat = [(g, s) for run in sampled for g, s in zip(run, shorts)]
      distinct = np.mean([len({run[i] for run in sampled}) for i in range(n)])
      out[f"{key}/t{temperature:g}"] = {
          **caption_scores.aggregate([caption_scores.against_short(g, s) for g, s in flat]),
          "distinct_per_prompt": float(distinct), "seeds": seeds,
          "examples": [{"prompt": shorts[0], "upsampled": run[0]} for run in sampled[:3]]}
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--captioner", required=True)
  parser.add_argument("--n", type=int, default=200, help="clips per split and size")
  parser.add_argument("--splits", default="test,compositional")
  parser.add_argument("--sizes", default="17x64x64,1x64x64")
  parser.add_argument("--level", default="basic")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--seeds", type=int, default=4, help="upsampler: seeds per prompt")
  parser.add_argument("--machine", default=platform.node())
  args = parser.parse_args(argv)
  try:
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    if any(len(s) != 3 for s in sizes) or args.n < 1:
      raise ValueError(f"--sizes {args.sizes!r} (TxHxW[,TxHxW...]) and --n {args.n} (>= 1)")
    cap = captioning.CaptionerRun.load(args.captioner)
  except ValueError as e:  # bad input: one line, exit code 2
    usage.fail(str(e))
  splits = args.splits.split(",")
  t0 = time.time()
  if cap.source == "video":
    result = score_captioner(cap, splits, sizes, args.n, args.level, args.batch)
  else:
    result = score_upsampler(cap, splits, sizes, args.n, args.level, args.temperature,
                             args.seeds)
  print(json.dumps({"benchmark": "captioner", "captioner": f"{cap.workdir}@{cap.step}",
                    "source": cap.source, "labelled": cap.config["data"].get("labelled", 0),
                    "level": args.level, "n": args.n, "results": result,
                    "seconds": round(time.time() - t0, 1), "machine": args.machine,
                    "date": datetime.date.today().isoformat()}))


if __name__ == "__main__":
  main()
