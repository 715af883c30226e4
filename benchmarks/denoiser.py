"""How well a trained DiT denoises at each noise level, and how much it uses its caption.

  python benchmarks/denoiser.py --workdir runs/demo/dit [--latents runs/demo/latents] \
      [--n 64] [--t 0.05,0.1,0.3,0.5,0.7,0.9,1.0] [--step N]

Takes the first `n` video clips (T' > 1) of the run's precomputed validation latents,
noises each to x_t = (1 - t) x0 + t eps at every t (fixed noise, seed 0), and prints JSON
with the mean squared error, in normalised latent units, of the model's clean estimate
x0_hat = x_t - t v (EMA params, no guidance):
  true      with each clip's own caption;
  shuffled  with another clip's caption (the next one);
  empty     with the empty caption (the unconditional model);
  x_t       of x_t itself, the trivial estimate;
  variance  of the clean latents (the error of predicting their mean, at t = 1).
Reading it: `true` well below `shuffled` and `empty` means the caption steers the
prediction; `true` above `x_t` at low t is an error floor that the last sampling steps
paint into every sample. Diagnoses what `sora_jax.evaluate`'s adherence rates only report.
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np


def _times(text: str) -> list[float]:
  try:
    times = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    times = []
  if not times or any(not 0 < t <= 1 for t in times):
    raise ValueError(f"--t={text!r}: expected comma-separated noise levels in (0, 1].")
  return times


def _latents_dir(arg: str, run_config: dict) -> str:
  path = arg or run_config.get("data", {}).get("latents") or ""
  split_dir = os.path.join(path, "validation")
  if not path or path == "on_the_fly" or not os.path.isdir(split_dir):
    raise ValueError(f"No precomputed validation latents at {split_dir!r} (the run's "
                     f"data.latents is {run_config.get('data', {}).get('latents')!r}); pass "
                     "--latents DIR, a directory written by `python -m data_pipelines.latents`.")
  return path


def measure(workdir: str, latents: str, n: int, times: list[float],
            step: int | None = None) -> dict:
  # Imported here so that --help and bad arguments answer before jax sets up.
  from data_pipelines import latents as latents_lib  # pylint: disable=g-import-not-at-top
  from sora_jax import generation  # pylint: disable=g-import-not-at-top
  from sora_jax.models import dit as dit_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.models import text as text_lib  # pylint: disable=g-import-not-at-top

  gen = generation.Generator(workdir, step=step)
  records = latents_lib.LatentRecords(os.path.join(latents, "validation"))
  clips, captions = [], []
  for i in range(len(records)):
    rec = records[i]
    if rec["latents"].shape[0] > 1 and (not clips or rec["latents"].shape == clips[0].shape):
      clips.append(rec["latents"])
      captions.append(rec["caption"])
    if len(clips) == n:
      break
  if len(clips) < 2:
    raise ValueError(f"{latents!r} holds {len(clips)} validation video clip(s) of one size; "
                     "need at least 2.")
  patch = gen.dit_config.patch
  x0 = np.stack([np.asarray(dit_lib.patchify(c, patch)[0]) for c in clips])
  _, positions = dit_lib.patchify(clips[0], patch)
  b, num, _ = x0.shape
  model, encoder = dit_lib.DiT(gen.dit_config), text_lib.TextEncoder(gen.text_config)

  @jax.jit
  def x0_hat(params, xt, t, ids, mask):
    text = encoder.apply(params["text"], ids, mask)
    v = model.apply(params["dit"], xt, jnp.broadcast_to(positions, (b, num, 3)),
                    jnp.ones((b, num), jnp.int32), jnp.full((b, num), t), text, mask)
    return xt - t * v

  ids, mask = gen.encode_prompts(captions)
  empty_ids, empty_mask = gen.encode_prompts([""] * b)
  shuffled = np.roll(np.arange(b), 1)
  variants = {"true": (ids, mask), "shuffled": (ids[shuffled], mask[shuffled]),
              "empty": (empty_ids, empty_mask)}
  eps = np.random.default_rng(0).standard_normal(x0.shape).astype(np.float32)
  rows = []
  for t in times:
    xt = (1 - t) * x0 + t * eps
    row = {"t": t, "x_t": float(np.mean((xt - x0) ** 2))}
    for name, (i, m) in variants.items():
      est = np.asarray(x0_hat(gen.params, jnp.asarray(xt), t, jnp.asarray(i), jnp.asarray(m)))
      row[name] = float(np.mean((est - x0) ** 2))
    rows.append(row)
  return {"workdir": workdir, "step": gen.step, "latents": latents, "clips": b,
          "clip_latent_shape": list(clips[0].shape), "variance": float(x0.var()),
          "x0_mse": rows}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="A DiT run directory.")
  parser.add_argument("--latents", default="",
                      help="Precomputed latents (default: the run's data.latents).")
  parser.add_argument("--n", type=int, default=64, help="Validation video clips (>= 2).")
  parser.add_argument("--t", default="0.05,0.1,0.3,0.5,0.7,0.9,1.0", help="Noise levels.")
  parser.add_argument("--step", type=int, default=None,
                      help="Checkpoint step (default: the latest).")
  args = parser.parse_args()
  try:
    times = _times(args.t)
    if args.n < 2:
      raise ValueError(f"--n={args.n}: need at least 2 clips.")
    from sora_jax import generation  # pylint: disable=g-import-not-at-top
    _, run_config, _ = generation.run_files(args.workdir, args.step)
    latents = _latents_dir(args.latents, run_config)
  except ValueError as e:
    parser.error(str(e))
  print(json.dumps(measure(args.workdir, latents, args.n, times, args.step), indent=1))


if __name__ == "__main__":
  main()
