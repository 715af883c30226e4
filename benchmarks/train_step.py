"""DiT train-step speed: step time, tokens/s, analytic FLOPs and MFU; prints JSON.

  python benchmarks/train_step.py                    # the CPU cases, float32, this machine
  python benchmarks/train_step.py --cases ref128 --steps 5
  python benchmarks/train_step.py --cases B,L --dtype bfloat16 --attention auto --peer  # GPU
  python benchmarks/train_step.py --cases ref128 --adaln single   # PixArt-alpha's adaLN-single
  python benchmarks/train_step.py --cases demo320 --remat save_attention  # or --unrolled

DiT only (random init, float32, no text encoder: random caption embeddings of 32 tokens),
one clip of N tokens per row, AdamW update included. FLOPs are `dit_task.train_flops`
(matmuls + attention of real tokens, forward + backward = 3x forward). MFU's peak is a
measured float32 matmul rate of this machine (`cpu_matmul_flops`, a 2048^3 jitted matmul,
best of several), stated in the output; on a GPU it is a measured 8192^3 matmul in the
compute dtype (bf16 tensor cores for `--dtype bfloat16`), or pass --peak_flops.

`--dtype bfloat16` computes in bf16 with float32 parameters (the DiT's `dtype` field) and the
peer then runs under `torch.autocast(bfloat16)`, also with float32 parameters: the same mixed
precision on both sides. On a GPU the peer runs on the GPU (PyTorch's SDPA attention). The
peer's subprocesses run first, and with --peer this process does not preallocate device
memory (XLA_PYTHON_CLIENT_PREALLOCATE=false), so each side has the accelerator to itself.

`--peer` also times the PyTorch peer in the same run: diffusers' `WanTransformer3DModel` at
equal width, depth, heads, tokens, batch and caption length (`peer_wan.py`, run in a
subprocess before our cases, float32, all cores), and reports `peer_tokens_per_s` and
`ours_over_peer`. It needs the optional `peer` extra (`pip install -e '.[peer]'`: torch and
diffusers, never core dependencies). The peer has no pooled-caption MLP and computes its
adaLN modulation once per sample, not per token and block, so it does fewer FLOPs per token
than our DiT at the same shape (`train_flops` counts ours); `--adaln single` runs our
DiT with one shared modulation layer (DiTConfig.adaln), closer to the peer's.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

if "--peer" in sys.argv:  # no up-front grab of GPU memory: the peer runs first (no-op on CPU)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines import patches
from sora_jax.diffusion import flow
from sora_jax.models import dit as dit_lib
from sora_jax.models import text as text_lib
from sora_jax.train import dit_task

# name: (DiT overrides, latent grid (T', h, w) -> tokens at patch 1x2x2, batch)
CASES = {
    "tiny": (dict(variant="tiny"), (4, 16, 16), 4),       # 256 tokens
    "S": (dict(variant="S"), (4, 16, 16), 2),             # 256 tokens (batch 2: CPU time)
    "ref128": (dict(variant="tiny", width=128, depth=4, num_heads=2), (4, 16, 16), 4),
    "ref256": (dict(variant="tiny", width=256, depth=6, num_heads=4), (8, 16, 16), 4),
    # The CPU demo's DiT shape until 2026-11-23 (XS, 4 rows of 640 tokens), unpacked, and
    # its shape since 2026-11-24 (configs/demo.py: 2 rows of 320 tokens, one clip each).
    "demo": (dict(variant="XS"), (10, 16, 16), 4),                # 640 tokens
    "demo320": (dict(variant="XS"), (5, 16, 16), 2),              # 320 tokens
    # GPU cases: 2048 tokens a clip (17x256x256 video at 4x8x8 compression, patch 1x2x2).
    "B": (dict(variant="B"), (8, 32, 32), 8),
    "L": (dict(variant="L"), (8, 32, 32), 4),
}
CPU_CASES, GPU_CASES = ("tiny", "S", "ref128", "ref256"), ("B", "L")
TEXT_LEN, CHANNELS = 32, 16


def matmul_flops(n: int = 2048, reps: int = 5, dtype: str = "float32") -> float:
  """Best matmul FLOP/s of an n^3 jitted matmul in `dtype` (random data, not zeros)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def _inputs(dcfg, grid, batch):
  latents = np.random.default_rng(0).standard_normal((*grid, CHANNELS), np.float32)
  tokens, positions = patches.patchify(latents, dcfg.patch)
  n = tokens.shape[0]
  rep = lambda x: np.broadcast_to(x, (batch, *x.shape)).copy()
  return {"tokens": rep(tokens), "positions": rep(positions),
          "segment_ids": np.ones((batch, n), np.int32),
          "text": np.random.default_rng(1).standard_normal(
              (batch, TEXT_LEN, dcfg.width), np.float32),
          "text_mask": np.ones((batch, TEXT_LEN), bool)}


def case_config(name: str, dtype: str = "float32", attention: str = "xla",
                adaln: str = "per_block", remat: str = "none", scan_layers: bool = True,
                adaln_slots: int = 4):
  """(DiTConfig, latent grid, batch) of case `name`."""
  overrides, grid, batch = CASES[name]
  overrides = dict(overrides)
  dcfg = dit_lib.get_dit_config(overrides.pop("variant"), latent_channels=CHANNELS,
                                patch=(1, 2, 2), dtype=dtype, attention_backend=attention,
                                adaln=adaln, adaln_slots=adaln_slots, remat=remat,
                                scan_layers=scan_layers,
                                **overrides)
  return dcfg, grid, batch


def peer_case(name: str, steps: int, dtype: str, gpu: bool) -> dict:
  """Times the PyTorch peer at case `name`'s shape in a subprocess; returns its JSON."""
  dcfg, grid, batch = case_config(name)
  cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_wan.py"),
         "--width", str(dcfg.width), "--depth", str(dcfg.depth), "--heads", str(dcfg.num_heads),
         "--grid", ",".join(map(str, grid)), "--batch", str(batch),
         "--channels", str(CHANNELS), "--text_len", str(TEXT_LEN), "--steps", str(steps),
         "--dtype", dtype, "--device", "cuda" if gpu else "cpu"]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def bench_case(name: str, steps: int, peak: float, dtype: str, attention: str,
               adaln: str = "per_block", remat: str = "none",
               scan_layers: bool = True, adaln_slots: int = 4) -> dict:
  dcfg, grid, batch = case_config(name, dtype, attention, adaln, remat, scan_layers,
                                  adaln_slots)
  model, tx = dit_lib.DiT(dcfg), optax.adamw(1e-4)
  b = _inputs(dcfg, grid, batch)
  params = model.init(jax.random.key(0), b["tokens"], b["positions"], b["segment_ids"],
                      jnp.zeros(b["segment_ids"].shape), b["text"], b["text_mask"])
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, b, rng):
    t = flow.sample_clip_timesteps(rng, b["segment_ids"])
    xt, target = flow.add_noise(b["tokens"], jax.random.normal(rng, b["tokens"].shape), t)
    def loss_fn(p):
      v = model.apply(p, xt, b["positions"], b["segment_ids"], t, b["text"], b["text_mask"])
      return flow.flow_loss(v, target, b["segment_ids"])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  t0 = time.perf_counter()
  params, opt, loss = step(params, opt, b, jax.random.key(0))
  loss.block_until_ready()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    params, opt, loss = step(params, opt, b, jax.random.key(i + 1))
    loss.block_until_ready()
    times.append(time.perf_counter() - t0)
  # No text encoder here: a depth-0 text config makes train_flops count the DiT only.
  tcfg = text_lib.get_text_config("tiny", depth=0, width=dcfg.width, num_heads=2)
  flops = float(dit_task.train_flops(dcfg, tcfg, b["segment_ids"],
                                     b["text_mask"][:, None], text_dim=dcfg.width))
  step_s = float(np.median(times))
  tokens = int(b["segment_ids"].size)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  return {"case": name, "params": int(n_params), "width": dcfg.width, "depth": dcfg.depth, "heads": dcfg.num_heads,
          "tokens_per_row": tokens // batch, "batch": batch, "dtype": dtype,
          "attention": attention, "adaln": adaln, "adaln_slots": adaln_slots, "remat": remat, "scan_layers": scan_layers,
          "compile_s": round(compile_s, 2), "step_s": round(step_s, 4),
          "step_s_all": [round(t, 4) for t in times], "tokens_per_s": round(tokens / step_s, 1),
          "train_flops": flops, "flops_per_s": flops / step_s, "mfu": flops / step_s / peak,
          "peer_tokens_per_s": None}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="",
                      help=f"comma-separated; default {','.join(CPU_CASES)} on CPU, "
                           f"{','.join(GPU_CASES)} on GPU")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--peer", action="store_true",
                      help="also time diffusers' WanTransformer3DModel (needs the peer extra)")
  parser.add_argument("--peak_flops", type=float, default=0.0,
                      help="peak FLOP/s for MFU (0 = measure a matmul in --dtype here)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype (parameters stay float32)")
  parser.add_argument("--attention", default="xla", choices=("xla", "cudnn", "auto", "blocked"),
                      help="attention backend (models/attention.py)")
  parser.add_argument("--adaln", default="per_block", choices=dit_lib.ADALN_KINDS,
                      help="adaLN kind of our DiT (DiTConfig.adaln)")
  parser.add_argument("--adaln_slots", type=int, default=4,
                      help="DiTConfig.adaln_slots (training's default: one clip a row gives "
                           "4 slots); 0 = the modulation per token")
  parser.add_argument("--remat", default="none", choices=tuple(dit_lib.REMAT_POLICIES),
                      help="what each block keeps for the backward pass (DiTConfig.remat)")
  parser.add_argument("--unrolled", action="store_true",
                      help="unroll the blocks instead of nn.scan (DiTConfig.scan_layers=False)")
  args = parser.parse_args()
  gpu = jax.default_backend() == "gpu"
  cases = (args.cases or ",".join(GPU_CASES if gpu else CPU_CASES)).split(",")
  unknown = [c for c in cases if c not in CASES]
  if unknown:
    parser.error(f"unknown case(s) {unknown}; known: {sorted(CASES)}")
  if args.peer and not all(importlib.util.find_spec(m) for m in ("torch", "diffusers")):
    parser.error("--peer needs torch and diffusers: pip install -e '.[peer]'")
  peers = {}
  for c in cases if args.peer else ():  # before this process allocates device memory
    try:
      peers[c] = peer_case(c, args.steps, args.dtype, gpu)
    except subprocess.CalledProcessError as e:
      peers[c] = {"error": (e.stderr or "")[-800:]}
  peak = args.peak_flops or matmul_flops(8192 if gpu else 2048, dtype=args.dtype)
  results = []
  for c in cases:
    try:
      row = bench_case(c, args.steps, peak, args.dtype, args.attention, args.adaln,
                       args.remat, not args.unrolled, adaln_slots=args.adaln_slots)
    except Exception as e:  # pylint: disable=broad-except
      row = {"case": c, "error": f"{type(e).__name__}: {str(e)[:500]}"}  # e.g. out of memory
    if args.peer:
      peer = peers[c]
      if "error" in peer:
        row["peer_error"] = peer["error"]
      else:
        row.update(peer_tokens_per_s=peer["tokens_per_s"], peer_step_s=peer["step_s"],
                   peer_params=peer["params"], peer_versions={
                       k: peer[k] for k in ("torch", "diffusers", "device", "dtype")})
        if "tokens_per_s" in row:
          row["ours_over_peer"] = round(row["tokens_per_s"] / peer["tokens_per_s"], 3)
    results.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  print(json.dumps({
      "benchmark": "dit_train_step", "date": time.strftime("%Y-%m-%d"),
      "machine": f"{platform.machine()} {jax.devices()[0].device_kind}, "
                 f"{jax.local_device_count()} device(s)",
      "backend": jax.default_backend(), "jax": jax.__version__,
      "peak_flops": peak, "peak_source": "given" if args.peak_flops else
      f"measured {args.dtype} {8192 if gpu else 2048}^3 matmul (best of 5)",
      "peer": "diffusers.WanTransformer3DModel (benchmarks/peer_wan.py)" if args.peer else None,
      "results": results}, indent=2))


if __name__ == "__main__":
  main()
