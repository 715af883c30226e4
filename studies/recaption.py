"""The recaptioning study in an "alt-text world": a few clips labelled, the rest short.

  make demo    # once: runs/demo (its VAE, latents and the detailed-caption DiT)
  python studies/recaption.py --demo runs/demo --workdir runs/recaption \
      --machine "2-core CPU (x86_64), 24 GiB" \
      --out benchmarks/results/DATE_recaption_cpu.json

Every training clip of the demo's latents keeps only its short caption (`a red circle`),
except a labelled share, the first `--labelled` records (5%: about what a team can caption
by hand, and what DALL-E 3 kept of original captions), which keep their detailed ones.
Stages (each resumes; outputs under --workdir):
  captioner_L   a captioner (configs/captioner.py) trained on the labelled share's detailed
                captions and every other clip's short one (short_rest); at the end also one
                per `--curve` count, for accuracy against the labelled count
  accuracy      their caption accuracy on test and compositional clips
                (benchmarks/captioner.py)
  latents       the demo's latents recaptioned: the labelled share keeps its detailed
                caption as `synthetic_caption`, every other clip gets the captioner's
  dit_ARM       the demo's DiT recipe (configs/demo.py DIT_ARGS) trained on (a) short
                captions, (b) the recaptioned ones, (c) the 95/5 blend of synthetic and
                short; (d) true detailed captions is the demo's own DiT (the same recipe,
                latents and tokenizer), unless --train_d
  eval_ARM      each arm sampled on the detailed captions of `--n` test and compositional
                prompts (the demo's sampling settings, the same seeds) and scored
  upsampler     a prompt upsampler (configs/captioner.py:source=text) trained on every
                training clip's (short, detailed) pair
  upsample      the demo's DiT (trained on detailed captions) sampled from `--n` short test
                prompts, raw and upsampled (temperature 1, the prompt's seed), both scored
                against the short prompt's colour and shape, the upsampled ones also against
                their own expansion
Writes the JSON record to --out and a contact sheet of the same prompts and seeds across
the arms beside it (`..._contact_sheet.png`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top
from etils import epath

from benchmarks import captioner as captioner_bench
from configs import captioner as captioner_configs
from configs import demo as demo_configs
from configs import dit as dit_configs
from data_pipelines import latents as latents_lib
from data_pipelines import media
from data_pipelines import storage
from data_pipelines.shapes_world import evaluator
from data_pipelines.shapes_world import generator
from data_pipelines.shapes_world import score
from data_pipelines.shapes_world import world as W
from sora_jax.data import recaption
from sora_jax.inference import adherence
from sora_jax.inference import captioning
from sora_jax.inference import run as run_lib
from sora_jax.inference import sampler as sampler_lib
from sora_jax.inference import tasks
from sora_jax.train import loop

ARMS = {"a": "short", "b": "synthetic", "c": "blend", "d": "detailed"}


def _timed(record: dict, key: str, fn):
  """Runs fn once: its result and minutes are kept in record[key] (a resumed study skips)."""
  if key not in record:
    t0 = time.time()
    result = fn()
    record[key] = {"result": result, "minutes": round((time.time() - t0) / 60, 1)}
  return record[key]


def train_captioner(demo: str, workdir: str, labelled: int, steps: int) -> dict:
  cfg = captioner_configs.get_config(
      f"vae_workdir={demo}/vae,latents={demo}/latents,labelled={labelled},steps={steps}")
  return loop.train_and_evaluate(cfg, workdir)


def dit_config(demo: str, latents: str, caption: str, steps: int):
  args = dict(demo_configs.DIT_ARGS, latents=latents, vae_workdir=f"{demo}/vae",
              caption=caption)
  if steps:
    args["steps"] = steps
  return dit_configs.get_config(args)


def evaluate_arm(dit_workdir: str, out_dir: str, n: int, demo_config) -> dict:
  s = demo_config.sample
  sampler = sampler_lib.Sampler(run_lib.Run.load(dit_workdir), sampler_lib.SamplingOptions(
      steps=s.steps, method=s.method, guidance=s.guidance))
  result = adherence.evaluate(sampler, out_dir, ["test", "compositional"], n, "basic",
                              s.frames, s.size, s.size, batch=s.batch, task_clips=0)
  return result["splits"]


def upsampling(demo: str, upsampler_dir: str, out_dir: str, n: int, demo_config) -> dict:
  """Short test prompts sampled raw and upsampled from the demo's DiT, scored."""
  s = demo_config.sample
  sampler = sampler_lib.Sampler(run_lib.Run.load(storage.join(demo, "dit")),
                                sampler_lib.SamplingOptions(steps=s.steps, method=s.method,
                                                            guidance=s.guidance))
  shorts = [W.short_caption(generator.sample_scene("test", i, s.frames, s.size, s.size,
                                                   "basic")) for i in range(n)]
  rows = [{"prompt": p, "name": f"test_{i:04d}", "task": "t2v", "seed": i}
          for i, p in enumerate(shorts)]
  upsampler = captioning.CaptionerRun.load(upsampler_dir)
  out = {}
  for name, batch in (("raw", [dict(r, user_prompt=r["prompt"]) for r in rows]),
                      ("upsampled", captioning.upsample_rows(upsampler, rows, 0, 1.0))):
    d = storage.join(out_dir, name)
    tasks.sample_batch(sampler, batch, d, s.frames, s.size, s.size, 0, s.batch)
    out[name] = score.evaluate_dir(d, prompt_key="user_prompt")
    if name == "upsampled":  # against the expansion itself, where it parses
      scores = []
      for row in batch:
        try:
          scores.append(evaluator.score_clip(media.read_clip(storage.join(
              d, row["name"] + ".npy")), row["prompt"]))
        except ValueError:
          pass
      out["upsampled_own"] = {**evaluator.aggregate(scores),
                              "unparseable": 1 - len(scores) / len(batch)}
      out["examples"] = [{"prompt": r["user_prompt"], "upsampled": r["prompt"]}
                         for r in batch[:3]]
  return out


def contact_sheet(workdir: str, arms, path: str, num: int = 4) -> str:
  videos = {f"({a}) {ARMS[a]}": [media.read_clip(storage.join(
      workdir, f"eval_{a}", "test", f"test_{i:04d}.npy")) for i in range(num)] for a in arms}
  return media.write_contact_sheet(path, videos, frames=8)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--demo", default="runs/demo")
  parser.add_argument("--workdir", default="runs/recaption")
  parser.add_argument("--labelled", type=int, default=205, help="5% of the 4096 clips")
  parser.add_argument("--curve", default="1024,4096",
                      help="more labelled counts whose captioner accuracy is measured")
  parser.add_argument("--captioner_steps", type=int, default=1500)
  parser.add_argument("--upsampler_steps", type=int, default=2000)
  parser.add_argument("--dit_steps", type=int, default=0, help="0 = the demo recipe's")
  parser.add_argument("--arms", default="a,b,c,d")
  parser.add_argument("--train_d", action="store_true",
                      help="train arm (d) instead of reusing the demo's DiT")
  parser.add_argument("--n", type=int, default=100, help="prompts per split")
  parser.add_argument("--caption_n", type=int, default=200, help="clips per split and size")
  parser.add_argument("--machine", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  work, demo = args.workdir, args.demo
  epath.Path(work).mkdir(parents=True, exist_ok=True)
  state_path = storage.join(work, "study.json")
  record = storage.read_json_if_exists(state_path) or {}
  save = lambda: storage.write_json(state_path, record, indent=2)
  demo_config = demo_configs.get_config()

  def captioner(count):  # trained and scored once
    cap_dir = storage.join(work, f"captioner_{count}")
    _timed(record, f"captioner_{count}", lambda: train_captioner(
        demo, cap_dir, count, args.captioner_steps))
    _timed(record, f"accuracy_{count}", lambda: captioner_bench.score_captioner(
        captioning.CaptionerRun.load(cap_dir), ["test", "compositional"],
        [(17, 64, 64), (1, 64, 64)], args.caption_n, "basic", 16))
    save()

  captioner(args.labelled)

  latents = storage.join(work, "latents")
  cap = storage.join(work, f"captioner_{args.labelled}")
  def recaption_all():
    run = captioning.CaptionerRun.load(cap)
    out = {}
    for split, labelled in (("train", args.labelled), ("validation", 0)):
      records = latents_lib.LatentRecords(storage.join(demo, "latents", split))
      meta = recaption.recaption_split(run, records, storage.join(latents, split),
                                       labelled=labelled)
      out[split] = meta["num_records"]
    return out
  _timed(record, "recaption", recaption_all)
  save()

  arms = args.arms.split(",")
  for arm in arms:
    dit_dir = storage.join(work, f"dit_{arm}")
    if arm == "d" and not args.train_d:
      dit_dir = storage.join(demo, "dit")
      record.setdefault("dit_d", {"result": "the demo's DiT", "minutes": round(
          storage.read_json(storage.join(demo, "report.json"))["stages"]["dit"]["seconds"]
          / 60, 1)})
    else:
      _timed(record, f"dit_{arm}", lambda: loop.train_and_evaluate(
          dit_config(demo, latents, ARMS[arm], args.dit_steps), dit_dir))
    save()
    _timed(record, f"eval_{arm}", lambda: evaluate_arm(
        dit_dir, storage.join(work, f"eval_{arm}"), args.n, demo_config))
    save()

  up_dir = storage.join(work, "upsampler")
  _timed(record, "upsampler", lambda: loop.train_and_evaluate(captioner_configs.get_config(
      f"source=text,vae_workdir={demo}/vae,latents={demo}/latents,"
      f"steps={args.upsampler_steps},batch=32"), up_dir))
  save()
  _timed(record, "upsample", lambda: upsampling(demo, up_dir, storage.join(work, "upsample"),
                                                args.n, demo_config))
  save()

  counts = [args.labelled] + [int(c) for c in args.curve.split(",") if c]
  for count in counts[1:]:  # last: the arms do not need them
    captioner(count)

  sheet = contact_sheet(work, arms, args.out.replace(".json", "_contact_sheet.png"),
                        min(4, args.n))
  acc = {c: record[f"accuracy_{c}"]["result"] for c in counts}
  out = {
      "study": "recaption", "labelled": args.labelled, "num_train": 4096,
      "arms": {a: {"caption": ARMS[a], "train_minutes": record[f"dit_{a}"]["minutes"],
                   "test": record[f"eval_{a}"]["result"]["test"],
                   "compositional": record[f"eval_{a}"]["result"]["compositional"]}
               for a in arms},
      "captioner": {"labelled": args.labelled,
                    "train_minutes": record[f"captioner_{args.labelled}"]["minutes"],
                    "test": acc[args.labelled]["test"],
                    "compositional": acc[args.labelled]["compositional"]},
      "accuracy_by_labelled": [{"labelled": c, "test_all": acc[c]["test"]["all"],
                                "compositional_all": acc[c]["compositional"]["all"]}
                               for c in counts],
      "upsampling": {"train_minutes": record["upsampler"]["minutes"],
                     **record["upsample"]["result"]},
      "n": args.n, "contact_sheet": os.path.basename(sheet),
      "command": "python studies/recaption.py " + " ".join(sys.argv[1:] if argv is None
                                                            else argv),
      "machine": args.machine, "date": datetime.date.today().isoformat()}
  storage.write_json(args.out, out, indent=2)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
