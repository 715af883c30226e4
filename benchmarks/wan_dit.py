"""Wan2.1's DiT forward (one sampling step's model call): ours vs diffusers, same weights.

  python benchmarks/wan_dit.py                                   # cpu_small, float32
  python benchmarks/wan_dit.py --cases cpu_tiny --repeats 2      # seconds; the test's case
  python benchmarks/wan_dit.py --cases wan1.3b_480p --dtype bfloat16 --out r.json  # GPU only
  bash benchmarks/gpu_wan.sh                                     # the GPU run, JSON in $OUT

Expected (2026-12-08, 2-core CPU VM shared with other jobs, so indicative):
  cpu_small fp32 (2304 tokens a row): ours 1.30 s a guided step vs diffusers 1.91 s,
  ours_over_peer 1.47, max_abs_diff 3.8e-6 (benchmarks/results/2026-12-08_wan_dit_cpu.json).

Both sides get the same random weights: the peer (diffusers' `WanTransformer3DModel`,
torch.manual_seed(0) init, cast to --dtype) saves its state dict, and our DiT loads it with
`interop/wan_dit.convert`. The peer runs first, in a subprocess of this script
(`--side peer`), so torch and JAX never hold the accelerator at once.

A classifier-free-guided sampling step is two forward calls over the same latents, one with
the caption and one with the negative prompt: ours is one batch-2 call (both rows in one
batch, as `inference/sampler.py` does), diffusers' is two batch-1 calls (as its WanPipeline
does). tokens/s counts the tokens of both rows. Text is random [L, text_dim] embeddings with
no padding mask (Wan pads T5 output with zeros and attends to all of it). Our DiT runs jitted
with the params as arguments, the blocks' modulation once per slot (`--adaln_slots`, the
sampler's value for one clip a row) and, in bfloat16 on a GPU, cuDNN attention; diffusers
uses its default attention (torch SDPA: flash attention on an H100 in bf16).

Timings: `compile_s` (ours: lower + compile) and `warmup_s` (the first step), then the
median of --repeats steps, each synchronized (block_until_ready / torch.cuda.synchronize).
`max_abs_diff` is between the two sides' outputs of one step; `rel_diff` divides it by
max(1, max |diffusers output|), the parity tests' scale (fp32 on CPU: ~1e-6).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

# The peer runs first, in its own process; no up-front grab of GPU memory either way.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402  (JAX and torch are imported by the side that needs them)

DTYPES = ("float32", "bfloat16")
TIME = 0.5  # flow time of the step (diffusers' timestep 1000 t)


@dataclasses.dataclass(frozen=True)
class Case:
  """A Wan2.1-layout transformer and one clip's size (Wan VAE: 4x time, 8x space)."""
  width: int
  num_heads: int
  depth: int
  ffn_dim: int
  text_dim: int
  text_len: int
  video: tuple[int, int, int]  # frames, height, width in pixels
  channels: int = 16
  patch: tuple[int, int, int] = (1, 2, 2)
  gpu_only: bool = False

  @property
  def latents(self) -> tuple[int, int, int, int]:
    f, h, w = self.video
    return ((f - 1) // 4 + 1, h // 8, w // 8, self.channels)

  @property
  def tokens(self) -> int:
    t, h, w, _ = self.latents
    return t // self.patch[0] * (h // self.patch[1]) * (w // self.patch[2])


CASES = {
    "cpu_tiny": Case(32, 2, 2, 64, 32, 8, (5, 32, 96), channels=4),        # 24 tokens
    # Wan's head dim (128) and rotary split (22, 21, 21); ~1 s a call on 2 CPU cores.
    "cpu_small": Case(512, 4, 6, 2048, 512, 128, (33, 256, 256)),          # 2304 tokens
    # Wan2.1-T2V-1.3B at 81 frames of 480x832: latents 21 x 60 x 104, 32760 tokens.
    "wan1.3b_480p": Case(1536, 12, 30, 8960, 4096, 512, (81, 480, 832), gpu_only=True),
}


def diffusers_config(case: Case) -> dict:
  return dict(patch_size=case.patch, num_attention_heads=case.num_heads,
              attention_head_dim=case.width // case.num_heads, in_channels=case.channels,
              out_channels=case.channels, text_dim=case.text_dim, ffn_dim=case.ffn_dim,
              num_layers=case.depth)


def _gpu_present() -> bool:
  """An NVIDIA GPU on this machine, asked without initializing JAX or torch on it."""
  return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


def _sig(x: float) -> float:
  return float(f"{x:.4g}")


def _median_steps(step, repeats: int, sync) -> tuple[float, list[float]]:
  """(median, all) seconds of `repeats` synchronized calls of `step`."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(step())
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), [_sig(t) for t in times]


# --------------------------------------------------------------------------- the peer
def run_peer(case: Case, dtype: str, repeats: int, workdir: str) -> dict:
  """diffusers' side (in its own process): saves weights and outputs into `workdir`."""
  import torch
  import diffusers
  from safetensors import torch as safetensors_torch

  device = "cuda" if _gpu_present() else "cpu"
  if device == "cuda" and not torch.cuda.is_available():
    raise SystemExit(f"a GPU is present but torch {torch.__version__} cannot use it.")
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  t0 = time.perf_counter()
  with torch.device(device):
    model = diffusers.WanTransformer3DModel(**diffusers_config(case))
  model = model.to(getattr(torch, dtype)).eval()
  init_s = time.perf_counter() - t0
  safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                              os.path.join(workdir, "weights.safetensors"))
  inputs = np.load(os.path.join(workdir, "inputs.npz"))
  tt = lambda x: torch.from_numpy(x).to(device, getattr(torch, dtype))
  x = tt(np.ascontiguousarray(inputs["latents"].transpose(3, 0, 1, 2))[None])  # [1,C,F,H,W]
  texts = [tt(inputs["text"][i][None]) for i in range(2)]  # caption, negative prompt
  timestep = torch.full((1,), 1000.0 * TIME, device=device)
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)

  @torch.inference_mode()
  def step():  # WanPipeline's guided step: a conditional and an unconditional call
    return [model(x, timestep, text, return_dict=False)[0] for text in texts]

  t0 = time.perf_counter()
  sync(step())
  warmup_s = time.perf_counter() - t0
  step_s, step_s_all = _median_steps(step, repeats, sync)
  out = torch.cat(step()).float().cpu().numpy().transpose(0, 2, 3, 4, 1)  # [2, F, H, W, C]
  np.save(os.path.join(workdir, "peer_out.npy"), out)
  return {"torch": torch.__version__, "diffusers": diffusers.__version__, "device": device,
          "device_kind": torch.cuda.get_device_name() if device == "cuda" else "cpu",
          "threads": torch.get_num_threads(), "calls_per_step": 2, "batch_per_call": 1,
          "init_s": _sig(init_s), "warmup_s": _sig(warmup_s), "step_s": step_s,
          "step_s_all": step_s_all}


def peer_subprocess(name: str, dtype: str, repeats: int, workdir: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--side", "peer", "--cases", name,
         "--dtype", dtype, "--repeats", str(repeats), "--workdir", workdir]
  out = subprocess.run(cmd, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f"peer failed (exit {out.returncode}): {out.stderr[-1500:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------- ours
def run_ours(case: Case, dtype: str, repeats: int, workdir: str, attention: str,
             adaln_slots: int) -> tuple[dict, np.ndarray, object]:
  """Our DiT on the peer's weights: (timings, output [2, F, H, W, C], DiT config)."""
  import jax
  import jax.numpy as jnp
  from data_pipelines import patches
  from sora_jax.interop import safetensors_io as io
  from sora_jax.interop import wan_dit
  from sora_jax.models import dit as dit_lib

  dcfg = wan_dit.dit_config(width=case.width, depth=case.depth, num_heads=case.num_heads,
                            ffn_dim=case.ffn_dim, patch=case.patch,
                            latent_channels=case.channels, dtype=dtype, param_dtype=dtype,
                            attention_backend=attention, adaln_slots=adaln_slots)
  t0 = time.perf_counter()
  tensors = io.read_tensors(os.path.join(workdir, "weights.safetensors"))
  params = jax.device_put(wan_dit.convert(tensors, dcfg, case.text_dim, dtype))
  del tensors
  jax.block_until_ready(params)
  load_s = time.perf_counter() - t0
  inputs = np.load(os.path.join(workdir, "inputs.npz"))
  tokens, positions = patches.patchify(inputs["latents"], dcfg.patch)
  two = lambda x: np.stack([x, x])  # both rows see the same latents
  n = tokens.shape[0]
  args = [jnp.asarray(a) for a in (
      two(tokens), two(positions).astype(np.int32), np.ones((2, n), np.int32),
      np.full((2, n), TIME, np.float32), inputs["text"],
      np.ones(inputs["text"].shape[:2], bool))]
  model = dit_lib.DiT(dcfg)
  fwd = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
  t0 = time.perf_counter()
  compiled = fwd.lower(params, *args).compile()
  compile_s = time.perf_counter() - t0
  step = lambda: compiled(params, *args)
  t0 = time.perf_counter()
  jax.block_until_ready(step())
  warmup_s = time.perf_counter() - t0
  step_s, step_s_all = _median_steps(step, repeats, jax.block_until_ready)
  out = np.asarray(step())
  out = np.stack([patches.unpatchify(o, case.latents, dcfg.patch) for o in out])
  dev = jax.devices()[0]
  return ({"jax": jax.__version__, "backend": jax.default_backend(),
           "device_kind": dev.device_kind, "attention": attention,
           "params": int(sum(x.size for x in jax.tree.leaves(params))),
           "adaln_slots": adaln_slots, "calls_per_step": 1, "batch_per_call": 2,
           "load_convert_s": _sig(load_s), "compile_s": _sig(compile_s),
           "warmup_s": _sig(warmup_s), "step_s": step_s, "step_s_all": step_s_all}, out, dcfg)


# ---------------------------------------------------------------------------- one case
def bench_case(name: str, dtype: str, repeats: int, attention: str | None,
               adaln_slots: int, gpu: bool) -> dict:
  case = CASES[name]
  # cuDNN flash attention needs bf16; in fp32 on a GPU the full [N, N] scores of 32760
  # tokens would not fit, so keys go in blocks with an online softmax.
  attention = attention or (("cudnn" if dtype == "bfloat16" else "blocked") if gpu else "xla")
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory(prefix="wan_dit_") as workdir:
    np.savez(os.path.join(workdir, "inputs.npz"),
             latents=rng.standard_normal(case.latents, np.float32),
             text=rng.standard_normal((2, case.text_len, case.text_dim), np.float32))
    peer = peer_subprocess(name, dtype, repeats, workdir)  # before JAX touches the device
    ours, out, dcfg = run_ours(case, dtype, repeats, workdir, attention, adaln_slots)
    want = np.load(os.path.join(workdir, "peer_out.npy"))
  tokens = 2 * case.tokens  # both rows of a guided step
  for side in (ours, peer):
    side["call_s"] = _sig(side["step_s"] / side["calls_per_step"])
    side["tokens_per_s"] = _sig(tokens / side["step_s"])
  ratio = _sig(peer["step_s"] / ours["step_s"])  # = ours' tokens/s over the peer's
  for side in (ours, peer):
    side["step_s"] = _sig(side["step_s"])
  if gpu and ours["backend"] != "gpu":
    raise RuntimeError(f"the peer ran on the GPU but JAX's backend is {ours['backend']!r}: "
                       "install jax with CUDA, or run where neither sees a GPU.")
  diff, scale = float(np.abs(out - want).max()), float(np.abs(want).max())
  return {"case": name, "dtype": dtype,
          "config": dict(diffusers_config(case), text_len=case.text_len,
                         video_frames_hw=case.video, latents=case.latents,
                         tokens_per_row=case.tokens, rows=2, flow_t=TIME),
          "cfg_step": "ours: one batch-2 call (caption + negative-prompt rows); diffusers: "
                      "two batch-1 calls, as WanPipeline",
          "ours": ours, "peer": peer,
          "ours_over_peer": ratio,
          "max_abs_diff": diff, "output_max_abs": scale, "rel_diff": diff / max(1.0, scale)}


def machine(description: str | None) -> dict:
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
  return {"description": description, "platform": platform.platform(),
          "processor": platform.machine(), "cpu_count": os.cpu_count(),
          "memory_gib": round(mem, 1), "python": platform.python_version()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="cpu_small",
                      help=f"comma-separated, of {', '.join(CASES)}")
  parser.add_argument("--dtype", default="float32",
                      help=f"compute and weight dtype of both sides: {', '.join(DTYPES)}")
  parser.add_argument("--repeats", type=int, default=5, help="timed steps per side")
  parser.add_argument("--attention", default=None,
                      help="our attention backend (default: on a GPU cudnn in bfloat16, "
                           "blocked in float32; xla on CPU)")
  parser.add_argument("--adaln_slots", type=int, default=4,
                      help="DiTConfig.adaln_slots (the sampler's value for one clip a row)")
  parser.add_argument("--machine", default=None, help="a description for the JSON")
  parser.add_argument("--out", default="", help="also write the JSON to this file")
  parser.add_argument("--side", default="both", choices=("both", "peer"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()

  def bad(msg: str):
    print(f"wan_dit.py: {msg}", file=sys.stderr)
    sys.exit(2)

  cases = args.cases.split(",")
  unknown = [c for c in cases if c not in CASES]
  if unknown:
    bad(f"unknown case(s) {unknown}; known: {list(CASES)}")
  if args.dtype not in DTYPES:
    bad(f"--dtype {args.dtype!r}; expected one of {list(DTYPES)}")
  if args.repeats < 1:
    bad(f"--repeats {args.repeats}; expected >= 1")
  if args.attention is not None and args.attention not in ("xla", "cudnn", "auto", "blocked"):
    bad(f"--attention {args.attention!r}; expected one of ['xla', 'cudnn', 'auto', 'blocked']")
  if args.adaln_slots < 0 or args.adaln_slots % 2:
    bad(f"--adaln_slots {args.adaln_slots}; expected 0 or an even count >= 2")
  gpu = _gpu_present()
  gpu_only = [c for c in cases if CASES[c].gpu_only]
  if gpu_only and not gpu:
    bad(f"case(s) {gpu_only} need a GPU and this machine has none; CPU cases: "
        f"{[c for c in CASES if not CASES[c].gpu_only]}")
  missing = [m for m in ("torch", "diffusers") if importlib.util.find_spec(m) is None]
  if missing:
    bad(f"the peer needs {missing}: pip install -e '.[peer]'")

  if args.side == "peer":
    print(json.dumps(run_peer(CASES[cases[0]], args.dtype, args.repeats, args.workdir)))
    return
  results = []
  for c in cases:
    row = bench_case(c, args.dtype, args.repeats, args.attention, args.adaln_slots, gpu)
    print(json.dumps({k: row[k] for k in ("case", "ours_over_peer", "max_abs_diff")}),
          file=sys.stderr, flush=True)
    results.append(row)
  report = {"benchmark": "wan_dit_forward", "date": time.strftime("%Y-%m-%d"),
            "command": "python benchmarks/wan_dit.py " + shlex.join(sys.argv[1:]),
            "machine": dict(machine(args.machine),
                            device_kind=results[0]["ours"]["device_kind"]),
            "results": results}
  text = json.dumps(report, indent=1)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
