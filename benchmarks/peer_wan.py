"""The PyTorch peer of `train_step.py`: one training step of diffusers' WanTransformer3DModel.

  pip install -e '.[peer]'     # torch==2.13.0 (CPU wheel) and diffusers; never a core dep
  python benchmarks/peer_wan.py --width 128 --depth 4 --heads 2 --grid 4,16,16 --batch 4

Random init, float32 (or bf16 autocast: --dtype), patch (1, 2, 2), MLP hidden 4 * width, 32 caption tokens of width
`width` (text_dim = width, as train_step.py feeds our DiT), rectified-flow MSE loss, AdamW
update; torch uses all of this machine's cores (as XLA does). Prints one JSON line.
`train_step.py --peer` runs this in a subprocess for every case, so both are timed in the
same run on the same machine state.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, required=True)
  parser.add_argument("--depth", type=int, required=True)
  parser.add_argument("--heads", type=int, required=True)
  parser.add_argument("--grid", required=True, help="latent T',h,w (patch 1x2x2)")
  parser.add_argument("--batch", type=int, required=True)
  parser.add_argument("--channels", type=int, default=16)
  parser.add_argument("--text_len", type=int, default=32)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="bfloat16: torch.autocast, parameters stay float32")
  args = parser.parse_args()

  import torch  # imported here so `--help` works without the peer extra
  from diffusers import WanTransformer3DModel

  torch.manual_seed(0)
  torch.set_num_threads(args.threads)
  if args.width % args.heads:
    raise SystemExit(f"--width {args.width} is not divisible by --heads {args.heads}")
  model = WanTransformer3DModel(
      patch_size=(1, 2, 2), num_attention_heads=args.heads,
      attention_head_dim=args.width // args.heads, in_channels=args.channels,
      out_channels=args.channels, text_dim=args.width, ffn_dim=4 * args.width,
      num_layers=args.depth).to(args.device)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  t, h, w = (int(v) for v in args.grid.split(","))
  x0 = torch.randn(args.batch, args.channels, t, h, w, device=args.device)
  text = torch.randn(args.batch, args.text_len, args.width, device=args.device)
  autocast = torch.autocast(args.device, dtype=torch.bfloat16,
                            enabled=args.dtype == "bfloat16")

  def step():
    eps = torch.randn_like(x0)
    tt = torch.rand(args.batch, device=args.device)
    xt = (1 - tt.view(-1, 1, 1, 1, 1)) * x0 + tt.view(-1, 1, 1, 1, 1) * eps
    with autocast:
      v = model(xt, tt * 1000, text, return_dict=False)[0]
    loss = torch.mean((v.float() - (eps - x0)) ** 2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()

  step()  # warm-up
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  times.sort()
  step_s = times[len(times) // 2]
  tokens = args.batch * t * (h // 2) * (w // 2)
  print(json.dumps({
      "peer": "diffusers.WanTransformer3DModel", "torch": torch.__version__,
      "diffusers": __import__("diffusers").__version__, "threads": args.threads,
      "device": args.device, "dtype": args.dtype,
      "params": sum(p.numel() for p in model.parameters()),
      "tokens": tokens, "step_s": round(step_s, 4), "step_s_all": [round(x, 4) for x in times],
      "tokens_per_s": round(tokens / step_s, 1)}))


if __name__ == "__main__":
  main()
