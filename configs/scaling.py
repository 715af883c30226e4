"""A compute ladder of DiT runs (1x, 4x, 16x, ... a base budget): the scaling experiment.

  # the whole CPU ladder (`make scaling-demo` does all of it, VAE included): latents once,
  # then each rung trains and is evaluated (adherence.json), then the fits and pictures:
  python launch/sweep.py configs/scaling.py:base=tiny_cpu,vae_workdir=runs/vae_tiny10 \
      --workdir_root runs/scaling --precompute_latents data/latents/scaling_tiny_cpu
  python -m sora_jax.scaling.report --root runs/scaling \
      --out benchmarks/results/scaling_cpu.json --contact_sheet 4
  # one rung (train, then its fixed evaluation; `evaluation()` below holds the flags):
  python -m sora_jax.main --config configs/scaling.py:compute=4,base=tiny_cpu,vae_workdir=runs/vae_tiny10 --workdir runs/scaling/compute=4
  python -m sora_jax.evaluate --workdir runs/scaling/compute=4 --split test --n 100 \
      --task_clips 0 --steps 16 --out_dir runs/scaling/compute=4/eval \
      --adherence_json runs/scaling/compute=4/adherence.json

Expected: tiny_cpu on the demo's dct10 VAE, val loss 3.97 / 1.84 / 1.30 at 1x / 4x / 16x,
`all` 0 on every rung, ~12 min on a 2-core CPU (benchmarks/results/scaling_cpu.json).

The rule: a rung of `compute` C trains a DiT with C^params_exp times the base's block
(non-embedding) parameters for C^data_exp times its steps, at the same batch and sequence
length, so params x steps grows as C (training FLOPs ~ 6 N D). The defaults, 0.57 / 0.43,
follow the compute-optimal allocation fitted for DiTs (Liang et al., 2024, "Scaling Laws For
Diffusion Transformers", arXiv:2410.08184: N_opt ~ C^0.5681, D_opt ~ C^0.4319). Parameters
are counted as Kaplan et al., 2020 (`sora_jax.scaling.flops.dit_param_count`); the text
encoder is held fixed. Of the widths (multiples of the base's head dim) and depths whose
width/depth is within `aspect_tol` of the base's, the block count nearest the target (in
log) wins, so rounding is the only deviation from the rule. Everything else is the same on
every rung: data, batch, learning rate (not re-tuned per width), the task mixture and the
fixed evaluations (validation flow loss at fixed t, noise and clips; adherence of `EVALS`).
Warm-up is 5% of the steps and the EMA's time constant a tenth of the run (decay
1 - 10 / steps, at most 0.9999), so every rung averages the same fraction of its training.

Arguments (after the colon, comma-separated key=value; unknown keys are an error):
  compute      this rung's budget, a multiple of the base's (any positive number).
  base         the 1x run (BASES): tiny_cpu, gpu, gpu_basic or gpu_demo.
  params_exp, data_exp   the rule's exponents (params ~ C^params_exp, steps ~ C^data_exp).
  aspect_tol   how far width/depth may stray from the base's, as a factor (>= 1).
  computes     for `sweep` only: the rungs, '+'-separated (default: the base's ladder).
  vae_workdir  the finished VAE run every rung encodes with ('' = a random tiny VAE).
  latents      'on_the_fly' or a directory of precomputed latents (faster; see configs/dit.py).
  data_dir     the Shapes World data set (built on first use), shared by every rung.
  peak_flops   peak FLOP/s for MFU (0 = the CPU default on CPU).
  seed         same on every rung.
  optimizer    adamw (default) or muon, on every rung (configs/dit.py `optimizer`).
  runlocal     a seconds-long ladder for tests (tiny model, a few steps).
"""
from __future__ import annotations

import math

from configs import common
from configs import demo
from configs import dit

# The 1x run of each ladder. Widths are heads x head_dim; steps are the 1x steps; level is
# the Shapes World level trained on and evaluated (basic: one object, a scale at which
# CPU-sized models reach a measurable adherence). Every rung trains configs/dit.py's recipe
# (x0-prediction) with the base's pos_embed; the ladder sets only shape and schedule.
BASES = {
    # 2-core CPU micro-sweep, float32, 8 x 128 tokens, text tiny: 1x trains in ~1.5 min.
    # Patches of 1x4x4 keep a 17x64x64 clip at 80 tokens (a 4x4x4 VAE). With a trained
    # VAE, precompute the latents (`latents=`): encoding on the fly costs more.
    "tiny_cpu": dict(width=64, depth=2, head_dim=32, text="tiny", steps=340, batch=8,
                     seq_len=128, max_clips=4, text_len=48, patch="1x4x4", lr=1e-3,
                     sizes="17x64x64+1x64x64", num_train=2048, dtype="float32",
                     attention="xla", computes="1+4+16", level="basic",
                     pos_embed="fractional_thw"),
    # One GPU/TPU: DiT-S (384 x 12, head dim 64) for 20k steps of 64 x 1024 tokens at 1x.
    # No recorded run; size the ladder to your budget with `computes`.
    "gpu": dict(width=384, depth=12, head_dim=64, text="S", steps=20000, batch=64,
                seq_len=1024, max_clips=16, text_len=48, patch="1x2x2", lr=3e-4,
                sizes="17x64x64+1x64x64", num_train=65536, dtype="bfloat16",
                attention="auto", computes="1+4+16+64", level="full", workers=8,
                pos_embed="fractional_thw"),
    # One GPU, minutes: an earlier CPU demo DiT recipe (128 x 4, x0-prediction, tiny text,
    # basic level, 2 clips of 320 tokens a row) at 8x its batch, bfloat16 with cuDNN
    # attention, on 16384 clips. 1x is ~450x the FLOPs of tiny_cpu's 1x. Sized for a
    # one-GPU lease of minutes (launch/gpu_session.py), not for a converged model.
    "gpu_basic": dict(width=128, depth=4, head_dim=32, text="tiny", steps=1000, batch=32,
                      seq_len=640, max_clips=8, text_len=32, patch="1x2x2", lr=1e-3,
                      sizes="17x64x64+1x64x64", num_train=16384, dtype="bfloat16",
                      attention="auto", computes="1+4+16", level="basic", workers=8,
                      pos_embed="fractional_thw"),
    # One GPU, minutes: the CPU demo's current recipe (configs/demo.py DIT_ARGS, read from
    # there) at 32x its batch: rows of 320 tokens (one clip or five images; the same 20480
    # tokens a step as gpu_basic), three clips to one image, sampled at timestep shift 8.
    # For the `quality` latent (vae_workdir= a dct21 run).
    "gpu_demo": dict(width=128, depth=4, head_dim=32, steps=1000,
                     batch=32 * demo.DIT_ARGS["batch"], patch="1x2x2", num_train=16384,
                     dtype="bfloat16", attention="auto", computes="4+16+64", workers=8,
                     **{k: demo.DIT_ARGS[k] for k in ("text", "seq_len", "max_clips",
                                                       "text_len", "lr", "sizes", "level",
                                                       "pos_embed", "sample_shift")}),
    # Tests: seconds per rung.
    "runlocal": dict(width=32, depth=1, head_dim=16, text="tiny", steps=4, batch=8,
                     seq_len=64, max_clips=4, text_len=32, patch="1x2x2", lr=1e-3,
                     sizes="5x32x32+1x32x32", num_train=16, dtype="float32",
                     attention="xla", computes="1+4", level="basic"),
}

# The fixed evaluation of every rung of a ladder (`evaluation()`, run by launch/sweep.py
# after training): the detailed captions of the first `n` scenes of `split` (at the base's
# level and `size`), prompt i with noise seed `seed + i`, the same sampler and guidance.
# The rungs then differ only in their model. The adherence `all` of n prompts has a
# standard error of about sqrt(p (1 - p) / n): 0.04 at p = 0.2, n = 100.
EVALS = {
    # Sampling, decoding and scoring 100 clips.
    "tiny_cpu": dict(split="test", n=100, size="17x64x64", steps=16, guidance=4.0,
                     batch=20, seed=0),
    "gpu": dict(split="test", n=500, size="17x64x64", steps=32, guidance=4.0, batch=64,
                seed=0),
    "gpu_basic": dict(split="test", n=100, size="17x64x64", steps=16, guidance=4.0,
                      batch=100, seed=0),
    "gpu_demo": dict(split="test", n=100, size="17x64x64", steps=16, guidance=4.0,
                     batch=100, seed=0),
    "runlocal": dict(split="test", n=2, size="5x32x32", steps=2, guidance=4.0, batch=2,
                     seed=0),
}

_DEFAULTS = dict(
    compute=1.0, base="tiny_cpu", params_exp=0.57, data_exp=0.43, aspect_tol=2.0,
    computes="", vae_workdir="", latents="on_the_fly", data_dir="data/tfds", peak_flops=0.0,
    seed=0, optimizer="adamw", runlocal=False)


def block_params(width: int, depth: int, head_dim: int) -> int:
  """The DiT's block (non-embedding) parameters at this shape (MLP ratio 4, GELU)."""
  # Imported here: launch/sweep.py reads configs where JAX may not be installed.
  from sora_jax.models import dit as dit_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.scaling import flops  # pylint: disable=g-import-not-at-top
  cfg = dit_lib.get_dit_config("tiny", width=width, depth=depth, num_heads=width // head_dim)
  return flops.dit_param_count(cfg, text_dim=width)["blocks"]


def ladder_shape(base: dict, compute: float, params_exp: float = 0.57,
                 aspect_tol: float = 2.0) -> dict:
  """Width, depth and heads of the rung `compute` (see the module docstring's rule).

  Returns:
    {"width", "depth", "num_heads", "params" (block count), "params_target"}.
  """
  hd, w0, d0 = base["head_dim"], base["width"], base["depth"]
  aspect0 = w0 / d0
  target = block_params(w0, d0, hd) * compute ** params_exp
  best = None
  for depth in range(1, 8 * d0 * max(1, math.ceil(compute ** (params_exp / 3))) + 1):
    # Per-depth params grow ~ width^2: try the head-dim multiples around the ideal width.
    ideal = math.sqrt(target / max(block_params(w0, depth, hd), 1)) * w0
    for heads in {max(1, math.floor(ideal / hd) + k) for k in (-1, 0, 1, 2)}:
      width = heads * hd
      if not aspect0 / aspect_tol <= width / depth <= aspect0 * aspect_tol:
        continue
      n = block_params(width, depth, hd)
      score = (abs(math.log(n / target)), abs(math.log(width / depth / aspect0)))
      if best is None or score < best[0]:
        best = (score, dict(width=width, depth=depth, num_heads=heads, params=n,
                            params_target=target))
  if best is None:
    raise ValueError(f"No DiT shape fits compute={compute} with aspect_tol={aspect_tol} "
                     f"around the base's width/depth = {aspect0:g}; raise aspect_tol.")
  return best[1]


def ladder_steps(base: dict, compute: float, data_exp: float = 0.43) -> int:
  """Training steps of the rung `compute`: the base's steps x compute^data_exp, rounded."""
  return max(1, round(base["steps"] * compute ** data_exp))


def _check(arg) -> dict:
  if arg.base not in BASES or arg.base == "runlocal":
    raise ValueError(f"Config argument base={arg.base!r}; known: "
                     f"{sorted(k for k in BASES if k != 'runlocal')}.")
  if not arg.compute > 0:
    raise ValueError(f"Config argument compute={arg.compute}; expected a positive multiple "
                     "of the base budget (1, 4, 16, ...).")
  for key in ("params_exp", "data_exp"):
    if not 0 <= arg[key] <= 1:
      raise ValueError(f"Config argument {key}={arg[key]}; expected a number in [0, 1].")
  from sora_jax.train import optim  # pylint: disable=g-import-not-at-top
  if arg.optimizer not in optim.OPTIMIZERS:  # at the sweep's expansion, not each rung's start
    raise ValueError(f"Config argument optimizer={arg.optimizer!r}; known: "
                     f"{', '.join(optim.OPTIMIZERS)}.")
  if arg.aspect_tol < 1:
    raise ValueError(f"Config argument aspect_tol={arg.aspect_tol}; expected >= 1.")
  return BASES["runlocal" if arg.runlocal else arg.base]


def get_config(arg=None):
  arg = common.parse_arg(arg, **_DEFAULTS)
  base = _check(arg)
  shape = ladder_shape(base, arg.compute, arg.params_exp, arg.aspect_tol)
  steps = ladder_steps(base, arg.compute, arg.data_exp)
  ema = min(0.9999, 1.0 - 10.0 / max(steps, 20))
  config = dit.get_config(dict(
      variant="tiny", text=base["text"], steps=steps, batch=base["batch"], lr=base["lr"],
      warmup=max(1, round(0.05 * steps)), vae_workdir=arg.vae_workdir, latents=arg.latents,
      seq_len=base["seq_len"], max_clips=base["max_clips"], text_len=base["text_len"],
      patch=base["patch"], ema=ema, sizes=base["sizes"], level=base["level"],
      data_dir=arg.data_dir,
      workers=base.get("workers", 0) if arg.latents != "on_the_fly" else 0,
      num_train=base["num_train"], peak_flops=arg.peak_flops, seed=arg.seed, eval_every=0,
      pos_embed=base.get("pos_embed", "none"), sample_shift=base.get("sample_shift", 0.0),
      optimizer=arg.optimizer, runlocal=arg.runlocal))
  with config.unlocked():  # update: keep configs/dit.py's prediction, pos_embed and adaln
    config.model.overrides.update({"width": shape["width"], "depth": shape["depth"],
                                   "num_heads": shape["num_heads"], "dtype": base["dtype"],
                                   "attention_backend": base["attention"]})
    config.train.steps = steps  # runlocal caps the steps at 4; the ladder sets them
    config.optim.warmup_steps = max(1, round(0.05 * steps))
    config.train.checkpoint_every = steps  # one checkpoint, at the end
    config.train.eval_every = 0  # only the final evaluation (runlocal sets one)
    config.train.log_every = max(1, min(25, steps // 20))
    config.scaling = {"compute": arg.compute, "base": arg.base, "params_exp": arg.params_exp,
                      "data_exp": arg.data_exp, "params": shape["params"],
                      "params_target": shape["params_target"], "steps": steps,
                      "tokens_per_step": base["batch"] * base["seq_len"]}
  config.lock()  # a typo in an override fails instead of adding a field
  return config


def sweep(add, arg=None):
  """The ladder: one `add(compute=C)` per rung (`launch/sweep.py` expands it)."""
  parsed = common.parse_arg(arg, **_DEFAULTS)
  base = _check(parsed)
  computes = parsed.computes or base["computes"]
  for text in filter(None, computes.split("+")):
    try:
      compute = float(text)
    except ValueError:
      raise ValueError(f"Config argument computes={computes!r}: {text!r} is not a number; "
                       "expected e.g. 1+4+16.") from None
    add(compute=int(compute) if compute.is_integer() else compute)


def evaluation(arg=None) -> dict:
  """The flags of `python -m sora_jax.evaluate` that every rung of the ladder runs.

  `launch/sweep.py` runs it after each run's training (adding --workdir, --out_dir and
  --adherence_json). Computed from the sweep's argument, not the rung's, so it is the same
  for every rung by construction.

  Returns:
    {"split", "n", "seed", "frames", "height", "width", "steps", "guidance", "batch",
     "task_clips", "mp4"}: flag name -> value (no mp4s: the scores and the contact sheet
    read the .npy, and a GPU image may lack imageio-ffmpeg).
  """
  parsed = common.parse_arg(arg, **_DEFAULTS)
  _check(parsed)
  e = EVALS["runlocal" if parsed.runlocal else parsed.base]
  ((frames, height, width),) = common.parse_sizes(e["size"], "EVALS size")
  return {"split": e["split"], "n": e["n"], "seed": e["seed"], "frames": frames,
          "height": height, "width": width, "steps": e["steps"], "guidance": e["guidance"],
          "batch": e["batch"], "task_clips": 0, "mp4": False}
