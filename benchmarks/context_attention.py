"""Context-parallel attention (ring, all-to-all) against dense attention; prints JSON.

  python benchmarks/context_attention.py                  # 8 fake CPU devices
  python benchmarks/context_attention.py --cases 8x1024 --reps 3
  python benchmarks/context_attention.py --gpu            # one GPU: TFLOP/s per backend

CPU mode (default): self-attention over packed sequences (two segments plus padding,
`[B, N, H, Dh]`, cases BxN) on 8 fake CPU devices, with the backends of
`models/attention.py`: "xla" (dense on one device), "ring" and "all_to_all" on meshes with
context 2, 4, 8 (the batch over the other 8 / c devices). Fake devices share the host's
cores, so context parallelism cannot be faster here; what the numbers show is its
overhead, its exactness (max |difference| to dense) and the per-device memory XLA plans
(`memory_analysis().temp_size_in_bytes`), which is what context parallelism is for: the
ring's per-device logits are one [N/c, N/c] block, all-to-all's [N, N] for H/c heads.

GPU mode (`--gpu`): one device, bfloat16, N in 8k..32k tokens, forward and forward +
backward TFLOP/s (4 B H N^2 Dh FLOPs forward, 2.5x that backward) of "xla", "cudnn" and
"auto"; out-of-memory cases are reported, not fatal. Not run on the dev box (no GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

if "--gpu" not in sys.argv:  # 8 fake CPU devices: set before jax is imported
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sora_jax.models import attention  # noqa: E402
from sora_jax.sharding import mesh as mesh_lib  # noqa: E402


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--gpu", action="store_true", help="single-GPU TFLOP/s per backend")
  p.add_argument("--cases", nargs="*", default=["8x1024", "2x4096"],
                 help="CPU: BATCHxTOKENS cases")
  p.add_argument("--tokens", type=int, nargs="*", default=[8192, 16384, 32768],
                 help="GPU: sequence lengths")
  p.add_argument("--batch", type=int, default=1, help="GPU: batch")
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--machine", default="", help="machine description for the record")
  return p.parse_args(argv)


def _inputs(b, n, h, dh, dtype):
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (b, n, h, dh), jnp.float32).astype(dtype)
             for key in keys)
  seg = np.zeros((b, n), np.int32)
  seg[:, : n // 2], seg[:, n // 2: n - n // 8] = 1, 2  # two clips, then padding
  seg = jnp.asarray(seg)
  return q, k, v, seg


def _time(fn, args, reps):
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def _fns(backend):
  """Jitted forward and gradient (w.r.t. q, k, v) of packed self-attention."""

  def fwd(q, k, v, seg):
    return attention.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,
                               kv_mask=seg > 0, backend=backend, self_attention=True)

  def loss(q, k, v, seg):
    return jnp.sum(fwd(q, k, v, seg).astype(jnp.float32) ** 2)

  return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def cpu_rows(args) -> list[dict]:
  rows = []
  for case in args.cases:
    b, n = (int(v) for v in case.split("x"))
    q, k, v, seg = _inputs(b, n, args.heads, args.head_dim, jnp.float32)
    flops = 4 * b * args.heads * n * n * args.head_dim
    ref = None
    # Dense on one device; context c with the batch over the other 8 / c devices (no
    # device idle or duplicating work), where the batch divides.
    cases = [("xla", {"data": 1}, jax.devices()[:1])]
    for c in (2, 4, 8):
      if b % (8 // c) == 0:
        cases += [(name, {"context": c, "data": 8 // c}, None) for name in
                  ("ring", "all_to_all") if name == "ring" or args.heads % c == 0]
    for backend, sizes, devices in cases:
      mesh = mesh_lib.make_mesh(sizes, devices=devices)
      fwd, grad = _fns(backend)
      # Batch over data, sequence over context, as the DiT's activation rules place them.
      inputs = jax.device_put((q, k, v, seg), NamedSharding(mesh, P("data", "context")))
      with jax.set_mesh(mesh):
        out = fwd(*inputs)
        mem = fwd.lower(*inputs).compile().memory_analysis()
        t_fwd = _time(fwd, inputs, args.reps)
        t_bwd = _time(grad, inputs, max(1, args.reps // 2))
      out = np.asarray(out)
      ref = out if ref is None else ref
      rows.append({"backend": backend, "batch": b, "tokens": n, "heads": args.heads,
                   "head_dim": args.head_dim, "mesh": {k_: int(v_) for k_, v_ in
                                                      mesh.shape.items()},
                   "forward_ms": 1e3 * t_fwd, "forward_backward_ms": 1e3 * t_bwd,
                   "forward_gflop_per_s": flops / t_fwd / 1e9,
                   "temp_mib_per_device": (mem.temp_size_in_bytes / 2**20) if mem else None,
                   "max_abs_diff_vs_dense": float(np.max(np.abs(out - ref)))})
      print(json.dumps(rows[-1]), file=sys.stderr)
  return rows


def gpu_rows(args) -> list[dict]:
  rows = []
  b = args.batch
  for n in args.tokens:
    q, k, v, seg = _inputs(b, n, args.heads, args.head_dim, jnp.bfloat16)
    flops = 4 * b * args.heads * n * n * args.head_dim
    for backend in ("cudnn", "auto", "xla"):  # flash first: xla's [N, N] logits may not fit
      row = {"backend": backend, "tokens": n, "batch": b, "heads": args.heads,
             "head_dim": args.head_dim, "dtype": "bfloat16"}
      fwd, grad = _fns(backend)
      try:
        t_fwd = _time(fwd, (q, k, v, seg), args.reps)
        t_bwd = _time(grad, (q, k, v, seg), args.reps)
        row.update(forward_ms=1e3 * t_fwd, forward_tflop_per_s=flops / t_fwd / 1e12,
                   forward_backward_ms=1e3 * t_bwd,
                   forward_backward_tflop_per_s=3.5 * flops / t_bwd / 1e12)
      except Exception as e:  # pylint: disable=broad-except
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      rows.append(row)
      print(json.dumps(row), file=sys.stderr)
  return rows


def main(argv=None) -> None:
  args = _args(argv)
  rows = gpu_rows(args) if args.gpu else cpu_rows(args)
  device = jax.devices()[0]
  print(json.dumps({
      "benchmark": "context_attention", "date": time.strftime("%Y-%m-%d"),
      "backend": jax.default_backend(), "device_kind": device.device_kind,
      "num_devices": len(jax.devices()), "jax": jax.__version__,
      "machine": args.machine or f"{platform.machine()} {os.cpu_count()} cpus",
      "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
