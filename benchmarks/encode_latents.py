"""Latent encoding throughput on 1 and 2 processes (`sora_jax.data.encode_latents`); JSON.

  make demo    # once: the demo's VAE (runs/demo/vae) and its Shapes World data
  python benchmarks/encode_latents.py --vae_workdir runs/demo/vae --data_dir data/tfds \
      --num 1024 \
      --out benchmarks/results/DATE_encode_latents_cpu.json

For each process count P the command encodes the same first `--num` training clips into
2 x P shards: P = 1 as one process; P = 2 as two processes joined by jax.distributed
(JAX_COORDINATOR_ADDRESS, as on two hosts), each writing its shards. A row per P:
`wall_s` (start to the last process's exit, imports and compiles included), `encode_s`
(the slowest process's own time in the command: load, compile, encode, write),
`clips_per_s` (= num / encode_s), and whether the records equal P = 1's record for record.
Both processes share this machine's cores: on one 2-core host the second process adds no
compute, so this measures that the work splits and joins, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data_pipelines import latents as latents_lib  # pylint: disable=g-import-not-at-top


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def encode(vae_workdir: str, data_dir: str, out_dir: str, num: int, processes: int) -> dict:
  cmd = [sys.executable, "-m", "sora_jax.data.encode_latents", "--vae_workdir", vae_workdir,
         "--out_dir", out_dir, "--split", "train", "--num", str(num),
         "--num_shards", str(2 * processes)] + (["--data_dir", data_dir] if data_dir else [])
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  port = _free_port()
  t0 = time.time()
  procs = []
  for i in range(processes):
    extra = ({} if processes == 1 else
             {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
              "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(i)})
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**env, **extra}, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  outputs = [p.communicate() for p in procs]
  wall = time.time() - t0
  for p, (out, err) in zip(procs, outputs):
    if p.returncode:
      raise SystemExit(f"encode_latents failed ({p.returncode}):\n{err[-3000:]}")
  rows = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  encode_s = max(r["seconds"] for r in rows)
  return {"processes": processes, "clips": num, "shards": 2 * processes,
          "wall_s": round(wall, 1), "encode_s": encode_s,
          "clips_per_s": round(num / encode_s, 1)}


def same_records(a: str, b: str) -> bool:
  ra, rb = latents_lib.LatentRecords(a), latents_lib.LatentRecords(b)
  return len(ra) == len(rb) and all(
      np.array_equal(ra[i]["latents"], rb[i]["latents"]) and ra[i]["caption"] == rb[i]["caption"]
      for i in range(len(ra)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--vae_workdir", default="runs/demo/vae")
  parser.add_argument("--data_dir", default="", help="the VAE run's data ('' = its own)")
  parser.add_argument("--num", type=int, default=1024)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for processes in (1, 2):
      data_dir = os.path.abspath(args.data_dir) if args.data_dir else ""
      row = encode(os.path.abspath(args.vae_workdir), data_dir,
                   os.path.join(tmp, str(processes)), args.num, processes)
      row["same_records_as_1"] = same_records(os.path.join(tmp, "1", "train"),
                                              os.path.join(tmp, str(processes), "train"))
      rows.append({"benchmark": "encode_latents", "date": time.strftime("%Y-%m-%d"),
                   "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
                   "vae_workdir": args.vae_workdir, **row})
      print(json.dumps(rows[-1]), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
