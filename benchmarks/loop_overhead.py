"""The training loop's host overhead: its steps/s against the bare jitted step; prints JSON.

  python benchmarks/loop_overhead.py                          # 2k and 64k records
  python benchmarks/loop_overhead.py --records 2000 --steps 40 --out benchmarks/results/x.json

For each record count: writes that many synthetic latent records (`data_pipelines/latents.py`
format: random float16 latents of one shape, Shapes World-like captions) to a temporary
directory, then times
  * `loop`: `sora_jax.train.loop.train_and_evaluate` on them (the tiny DiT of configs/dit.py,
    precomputed latents, no mid-run evaluation or checkpoint), seconds a step from its own
    `train/sec_per_step` log lines after the first (which holds the compile);
  * `bare`: the same jitted train step (`DiTTask.make_train_step`) fed one fixed device batch
    in a loop, state donated, synchronised once at the end;
and reports `ratio` = bare s/step over loop s/step (1.0: the loop adds nothing). The target
(issue 37) is >= 0.95 on a 2-core CPU, flat from 2k to 64k records.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np

from configs import dit as dit_config
from data_pipelines import latents as latents_lib
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.train import dit_task
from sora_jax.train import loop

LATENT_SHAPE = (2, 8, 8, 8)  # 32 tokens at patch 1x2x2: 8 clips a packed row of 256
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
SHAPES = ("circle", "square", "triangle", "star")
MOTIONS = ("moves left", "moves right", "moves up", "moves down", "stays still")


def write_records(root: str, count: int) -> str:
  """`count` train records and 64 validation records under `root`; returns `root`."""
  rng = np.random.default_rng(0)
  for split, n in (("train", count), ("validation", 64)):
    def records(n=n):
      for i in range(n):
        colour, shape, motion = (rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(MOTIONS))
        yield {"latents": rng.standard_normal(LATENT_SHAPE).astype(np.float16),
               "caption": f"a {colour} {shape} on a black background {motion}",
               "short_caption": f"a {colour} {shape}",
               "size": np.asarray((5, 64, 64), np.int32), "index": i}
    latents_lib.write_records(os.path.join(root, split), records(),
                              {"vae": "random:tiny:seed=0", "latent_mean": [0.0] * 8,
                               "latent_std": [1.0] * 8})
  return root


def bench_config(latents: str, steps: int, log_every: int, batch: int):
  config = dit_config.get_config(
      f"variant=tiny,text=tiny,latents={latents},steps={steps},batch={batch},seq_len=256,"
      "max_clips=16,text_len=32,eval_every=0,warmup=1")
  config.unlock()
  config.tokenizer.update({"vocab_size": 256, "num_clips": 256})
  config.text.vocab_size = 256
  config.train.update({"log_every": log_every, "checkpoint_every": 10 ** 6,
                       "progress": True})
  config.eval.update({"num_clips": 8, "batch_size": 4, "timesteps": (0.5,)})
  config.lock()
  return config


def loop_seconds(config, workdir: str) -> list[float]:
  """Seconds a step of each log interval after the first, from the run's metrics."""
  loop.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  times = [r["train/sec_per_step"] for r in rows if "train/sec_per_step" in r]
  return times[1:]


def bare_seconds(config, steps: int) -> float:
  """Seconds a step of the jitted step alone on one fixed device batch."""
  task = dit_task.DiTTask(config)
  mesh = mesh_lib.make_mesh(config.get("mesh"))
  state = jax.jit(task.init_state)(jax.random.key(0))
  batch = task.device_batch(next(iter(task.make_train_data())), mesh)
  step = jax.jit(task.make_train_step(), donate_argnums=(0,))
  rng = jax.random.key(1)
  for _ in range(5):  # the compile, then the first steps' allocations
    state, metrics = step(state, batch, rng)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch, rng)
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - t0) / steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--records", default="2000,64000",
                      help="Comma-separated training record counts.")
  parser.add_argument("--steps", type=int, default=60, help="Timed steps of each side.")
  parser.add_argument("--batch", type=int, default=8, help="Packed rows of 256 tokens.")
  parser.add_argument("--out", default="", help="Also append the JSON rows to this file.")
  args = parser.parse_args()
  log_every = 10
  rows = []
  for count in (int(c) for c in args.records.split(",")):
    with tempfile.TemporaryDirectory() as tmp:
      t0 = time.perf_counter()
      latents = write_records(os.path.join(tmp, "latents"), count)
      write_s = time.perf_counter() - t0
      config = bench_config(latents, log_every + args.steps, log_every, args.batch)
      # bare, loop, bare: a drift of the machine's speed shows as two different bares.
      bare_runs = [bare_seconds(config, args.steps)]
      loop_s = float(np.mean(loop_seconds(config, os.path.join(tmp, "run"))))
      bare_runs.append(bare_seconds(config, args.steps))
      bare_s = float(np.mean(bare_runs))
    rows.append({"benchmark": "loop_overhead", "records": count, "steps": args.steps,
                 "batch": args.batch, "tokens_per_row": 256, "latent_shape": LATENT_SHAPE,
                 "loop_s_per_step": round(loop_s, 5), "bare_s_per_step": round(bare_s, 5),
                 "bare_s_runs": [round(b, 5) for b in bare_runs],
                 "ratio": round(bare_s / loop_s, 3), "write_records_s": round(write_s, 1),
                 "machine": f"{platform.machine()} {os.cpu_count()} cores, "
                            f"{jax.devices()[0].device_kind}",
                 "jax": jax.__version__, "date": time.strftime("%Y-%m-%d")})
    print(json.dumps(rows[-1]), flush=True)
  if args.out:
    with open(args.out, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  sys.exit(main())
