"""Does a DiT follow one attribute word? Same noise, the word swapped; prints JSON.

  python studies/attribute_probe.py --workdir runs/demo/dit --attribute shape --n 32

Takes the first single-object scenes of a Shapes World split whose caption names the
attribute (`shape`: circle, square, triangle; `color`: the object colours), writes one prompt
per value of the attribute with only that word swapped, and samples every variant from the
same seeds (scene i: seed + i, as `sora_jax.evaluate` does). Each sample is then scored by
the analytic evaluator against every variant's prompt, which gives a confusion matrix:
`matrix[asked][satisfied]` = how many samples prompted with `asked` satisfy the attribute
as `satisfied` (a sample can satisfy more than one, or none). `accuracy` is the diagonal's
share; `independent` is the accuracy the same samples would score if they did not depend on
the word (every row replaced by the mean row: the column totals over K^2 n). A model that
follows the word scores above `independent`; one that ignores it, about `independent`.

  python studies/attribute_probe.py --workdir runs/demo/dit --attribute shape --n 48 --keep

`--keep` asks instead whether the DiT can draw the value when it is given: for the same
scenes (captions unchanged) it samples i2v from each scene's own first frame, and t2v, and
scores the attribute on the frames after the given one (`--skip`), per value, beside the
VAE's reconstruction of the real clip on the same frames (what a perfect DiT could reach).
A DiT that keeps a given square square but draws no squares from text lacks the word; one
that loses it in i2v as well cannot draw the shape at all.

  python studies/attribute_probe.py --workdir runs/demo/dit --n 32 --denoise 0.1,0.35,0.7

`--denoise` asks at which noise level the value is lost: each scene's real latents are noised
to each t (the noise `sora_jax.evaluate` would draw for the scene) and denoised in one step,
D(x_t) = x_t - t v (a one-step SDEdit), then decoded and scored on every frame, per value,
beside the latent MSE of D(x_t) and of x_t itself against the clean latents. A sampler's
output is D at its last nonzero grid point (t = 0.35 for 16 steps at shift 8), so a value
kept there but lost by the sampler is decided earlier, at higher t.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from data_pipelines.shapes_world import evaluator
from data_pipelines.shapes_world import generator as sw_generator
from data_pipelines.shapes_world import world as W
from sora_jax.diffusion import solvers
from sora_jax.inference import adherence
from sora_jax.inference import tasks
from sora_jax.inference.run import Run
from sora_jax.inference.sampler import Sampler
from sora_jax.inference.sampler import SamplingOptions

VALUES = {"shape": tuple(W.SHAPES), "color": tuple(W.OBJECT_COLORS)}


def _words(attribute: str) -> re.Pattern:
  """Any one value word of `attribute`, as a whole word."""
  return re.compile(r"\b(" + "|".join(VALUES[attribute]) + r")\b")


def probe_scenes(attribute: str, split: str, n: int, level: str, frames: int,
                 height: int, width: int, max_scan: int = 2000) -> list[tuple[int, str]]:
  """(index, caption) of the first n single-object scenes of `split` naming one value of
  `attribute`."""
  if attribute not in VALUES:
    raise ValueError(f"attribute={attribute!r}; allowed: {', '.join(VALUES)}.")
  words = _words(attribute)
  out = []
  rows = adherence.split_prompts(split, max_scan, level, frames, height, width)
  for index, row in enumerate(rows):
    prompt = evaluator.parse_prompt(row["prompt"])
    if len(prompt.objects) == 1 and len(words.findall(row["prompt"])) == 1:
      out.append((index, row["prompt"]))
      if len(out) == n:
        return out
  raise ValueError(f"Only {len(out)} single-object {split} scenes of the first {max_scan} "
                   f"name one {attribute}; asked for n={n}.")


def probe_prompts(*args, **kwargs) -> list[str]:
  """The captions of `probe_scenes` (same arguments)."""
  return [prompt for _, prompt in probe_scenes(*args, **kwargs)]


def value_of(prompt: str, attribute: str) -> str:
  return _words(attribute).search(prompt).group(1)


def keep_rates(videos: list, prompts: list[str], attribute: str, skip: int) -> dict:
  """The share of videos whose frames from `skip` on satisfy their own prompt's attribute:
  {"rate", "per_value": {value: rate}, "n"}."""
  hits = {v: [] for v in VALUES[attribute]}
  for video, prompt in zip(videos, prompts, strict=True):
    hits[value_of(prompt, attribute)].append(
        bool(evaluator.score_clip(video[skip:], prompt)[attribute]))
  flat = [h for v in hits.values() for h in v]
  return {"rate": sum(flat) / len(flat), "n": len(flat),
          "per_value": {v: (sum(h) / len(h) if h else None) for v, h in hits.items()}}


def denoise_rates(denoise, decode, latents, noise, prompts: list[str], attribute: str,
                  ts) -> list[dict]:
  """Per t in `ts`: the latent MSE of `denoise(t)` (D(x_t) of every scene, like `latents`)
  and of x_t = (1 - t) latents + t noise against `latents`, and `keep_rates` of the decoded
  D(x_t) on all frames."""
  latents, noise = np.asarray(latents, np.float32), np.asarray(noise, np.float32)
  out = []
  for t in ts:
    d = np.asarray(denoise(t), np.float32)
    noisy = (1 - t) * latents + t * noise
    out.append({"t": t, "latent_mse": float(np.mean((d - latents) ** 2)),
                "noisy_mse": float(np.mean((noisy - latents) ** 2)),
                **keep_rates([decode(x) for x in d], prompts, attribute, skip=0)})
  return out


def parse_ts(text: str) -> list[float]:
  """'0.1,0.35' -> [0.1, 0.35]; each in (0, 1]."""
  try:
    ts = [float(x) for x in text.split(",")]
  except ValueError:
    ts = []
  if not ts or not all(0 < t <= 1 for t in ts):
    raise ValueError(f"--denoise={text!r}; expected comma-separated noise levels in (0, 1].")
  return ts


def swap(prompt: str, attribute: str, value: str) -> str:
  return _words(attribute).sub(value, prompt, count=1)


def confusion(samples: dict[str, list], prompts: list[str], attribute: str) -> dict:
  """Scores every sample against every variant's prompt (see the module docstring)."""
  values = VALUES[attribute]
  matrix = {a: {s: 0 for s in values} for a in values}
  for asked in values:
    for video, prompt in zip(samples[asked], prompts):
      for sat in values:
        matrix[asked][sat] += bool(
            evaluator.score_clip(video, swap(prompt, attribute, sat))[attribute])
  total = len(values) * len(prompts)
  correct = sum(matrix[v][v] for v in values)
  independent = sum(matrix[a][s] for a in values for s in values) / len(values)
  return {"matrix": matrix, "accuracy": correct / total, "independent": independent / total,
          "n": len(prompts)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="A DiT run directory.")
  parser.add_argument("--attribute", default="shape", choices=sorted(VALUES))
  parser.add_argument("--split", default="test")
  parser.add_argument("--level", default="", help="'' = the run's level.")
  parser.add_argument("--n", type=int, default=32, help="Scenes (each sampled per value).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--steps", type=int, default=16)
  parser.add_argument("--guidance", type=float, default=4.0)
  parser.add_argument("--frames", type=int, default=17)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--keep", action="store_true",
                      help="i2v from each scene's first frame against t2v (module docstring)")
  parser.add_argument("--skip", type=int, default=1,
                      help="--keep: frames not scored (the given first frame: 1)")
  parser.add_argument("--denoise", default="",
                      help="noise levels t, e.g. 0.1,0.35,0.7: one-step denoising of the "
                           "real clips (module docstring)")
  args = parser.parse_args()
  if args.keep and not 0 <= args.skip < args.frames:
    parser.error(f"--skip={args.skip}; expected 0 <= skip < --frames={args.frames}.")
  if args.keep and args.denoise:
    parser.error("--keep and --denoise are two probes; pick one.")
  try:
    ts = parse_ts(args.denoise) if args.denoise else []
  except ValueError as e:
    parser.error(str(e))
  level = args.level or adherence.run_level(args.workdir)
  scenes = probe_scenes(args.attribute, args.split, args.n, level, args.frames,
                        args.size, args.size)  # bad input fails before the model loads
  prompts = [prompt for _, prompt in scenes]
  options = SamplingOptions(steps=args.steps, guidance=args.guidance)
  gen = Sampler(Run.load(args.workdir), options)
  head = {"workdir": args.workdir, "step": gen.run.step, "attribute": args.attribute,
          "split": args.split, "level": level, "seed": args.seed,
          "sampling": {"steps": args.steps, "guidance": args.guidance,
                       "shift": gen.run.sample_shift}}
  clips = [sw_generator.make_clip(args.split, i, args.frames, args.size, args.size,
                                  level).video for i, _ in scenes] if ts or args.keep else []
  seeds = [args.seed + i for i in range(len(prompts))]
  if ts:
    latents = np.stack([gen.encode(c) for c in clips])
    noise = np.stack([solvers.init_noise(jax.random.key(s), latents.shape[1:])
                      for s in seeds])  # what sample_latents draws for each seed
    one_step = SamplingOptions(steps=1, method="euler", guidance=args.guidance)

    def denoise(t):
      return np.concatenate([
          gen.sample_latents(prompts[i:i + args.batch], latents.shape[1:],
                             seeds[i:i + args.batch], t_start=t,
                             init_latents=latents[i:i + args.batch], options=one_step)
          for i in range(0, len(prompts), args.batch)])

    head["sampling"] = {"steps": 1, "method": "euler", "guidance": args.guidance}
    print(json.dumps({"benchmark": "attribute_denoise", **head, "denoise": denoise_rates(
        denoise, gen.decode, latents, noise, prompts, args.attribute, ts)}, indent=2))
    return
  if args.keep:
    videos = {"i2v": [tasks.i2v(gen, p, c[0], args.frames, seed=s)
                      for p, c, s in zip(prompts, clips, seeds)],
              "t2v": [tasks.t2v(gen, p, args.frames, args.size, args.size, seed=s)
                      for p, s in zip(prompts, seeds)],
              "vae": [gen.decode(gen.encode(c)) for c in clips]}
    print(json.dumps({"benchmark": "attribute_keep", **head, "skip": args.skip, **{
        mode: keep_rates(v, prompts, args.attribute, args.skip)
        for mode, v in videos.items()}}, indent=2))
    return
  samples = {}
  for value in VALUES[args.attribute]:
    variant = [swap(p, args.attribute, value) for p in prompts]
    samples[value] = []
    for i in range(0, len(variant), args.batch):
      chunk = variant[i:i + args.batch]
      samples[value] += list(tasks.t2v_batch(gen, chunk, args.frames, args.size, args.size,
                                             [args.seed + i + j for j in range(len(chunk))]))
  result = {"benchmark": "attribute_probe", **head,
            **confusion(samples, prompts, args.attribute)}
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
