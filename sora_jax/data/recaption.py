"""Recaptioning: a trained captioner writes a synthetic caption into every latent record.

  python -m sora_jax.data.recaption --captioner runs/captioner \
      --latents runs/demo/latents --split train --out_dir runs/recaptioned [--labelled 205]

Reads the latent records of `--latents/SPLIT` (Shapes World's, or a video folder's encoded
by `python -m sora_jax.data.encode_latents --source video_folder ...`), captions their
clips and writes the same records with `synthetic_caption` added beside `caption` and
`short_caption` into `--out_dir/SPLIT` (the latent record format of
`data_pipelines/latents.py`; its metadata.json names the captioner). A DiT then trains on
them with `caption=synthetic` or `caption=blend` (configs/dit.py).

`--labelled N`: the first N records are the labelled share the captioner was trained on;
they keep their own detailed caption as `synthetic_caption` (nothing is generated for
them). Work is split into `--num_shards` shards written atomically: a shard already whole
is kept when the command runs again (resume), and workers started with
`--process_index I --process_count P` take shards I, I + P, ...; the one finishing last
writes the index. A progress bar counts captioned clips. `--mesh data=4,fsdp=2` captions
on a device mesh (the same captions as on one device).
"""
from __future__ import annotations

import json
import time
from typing import Any

from absl import flags
from etils import epath
from tqdm import tqdm

from data_pipelines import latents as latents_lib
from data_pipelines import storage
from data_pipelines import usage
from sora_jax.inference import captioning
from sora_jax.sharding import mesh as mesh_lib


def recaption_split(captioner: captioning.CaptionerRun, records: latents_lib.LatentRecords,
                    out_dir: str, *, labelled: int = 0, num_shards: int = 1,
                    process_index: int = 0, process_count: int = 1, batch: int = 8,
                    temperature: float = 0.0, seed: int = 0, progress: bool = True
                    ) -> dict[str, Any] | None:
  """Writes `records` with `synthetic_caption` to `out_dir` (this process's shards).

  Returns:
    The split's metadata when this process wrote the index (every shard is whole), else None.
  """
  n = len(records)
  bar = tqdm(total=max(n - labelled, 0), desc="recaption", unit="clip", disable=not progress)
  for shard in range(process_index, num_shards, process_count):
    start, stop = shard * n // num_shards, (shard + 1) * n // num_shards
    todo = [i for i in range(start, stop) if i >= labelled]
    if latents_lib.shard_done(out_dir, shard, num_shards):
      bar.update(len(todo))
      continue
    captions = captioner.caption_records(records, indices=todo, batch_size=batch,
                                         temperature=temperature, seed=seed)
    bar.update(len(todo))

    def rows(start=start, stop=stop, captions=captions):
      for i in range(start, stop):
        rec = records.stored(i)
        rec["synthetic_caption"] = captions.get(i, rec["caption"])  # labelled: its own
        yield rec

    latents_lib.write_shard(out_dir, shard, num_shards, rows())
  bar.close()
  meta = {k: v for k, v in records.metadata.items()
          if k not in ("shards", "num_records", "latent_shapes")}
  meta.update(captioner=f"{captioner.workdir}@{captioner.step}", labelled=labelled,
              temperature=temperature)
  return latents_lib.write_index(out_dir, num_shards, meta)


def run(f) -> dict[str, Any]:
  """The command (flags `f`): checks every input before the captioner loads."""
  if f.labelled < 0 or f.num_shards < 1 or f.batch < 1 or f.temperature < 0:
    raise ValueError(f"--labelled={f.labelled}, --num_shards={f.num_shards}, "
                     f"--batch={f.batch}, --temperature={f.temperature}: expected "
                     "labelled >= 0, num_shards >= 1, batch >= 1 and temperature >= 0.")
  if not 0 <= f.process_index < f.process_count:
    raise ValueError(f"--process_index={f.process_index} must be in [0, "
                     f"--process_count={f.process_count}).")
  src = storage.join(f.latents, f.split)
  out = storage.join(f.out_dir, f.split)
  if epath.Path(storage.absolute(src)) == epath.Path(storage.absolute(out)):
    raise ValueError(f"--out_dir={f.out_dir!r} is --latents: write the recaptioned records "
                     "beside the originals, not over them.")
  mesh = mesh_lib.make_mesh(mesh_lib.parse_sizes(f.mesh)) if f.mesh else None
  records = latents_lib.LatentRecords(src)  # a clear error when missing
  _, config, extra = captioning.read_captioner_run(f.captioner)
  if config["model"]["source"] != "video":
    raise ValueError(f"--captioner={f.captioner!r} is a prompt upsampler (source=text); "
                     "recaptioning needs a video captioner.")
  if extra.get("vae") and extra["vae"] != records.metadata.get("vae"):
    raise ValueError(f"--captioner={f.captioner!r} was trained on latents of "
                     f"{extra['vae']}, but {src} holds latents of "
                     f"{records.metadata.get('vae')}.")
  if epath.Path(out, latents_lib.METADATA_FILE).exists():
    meta = storage.read_json(storage.join(out, latents_lib.METADATA_FILE))
    return {"out": out, "num_records": meta["num_records"], "kept": True}
  captioner = captioning.CaptionerRun.load(f.captioner, mesh=mesh)
  t0 = time.time()
  meta = recaption_split(captioner, records, out, labelled=f.labelled,
                         num_shards=f.num_shards, process_index=f.process_index,
                         process_count=f.process_count, batch=f.batch,
                         temperature=f.temperature, seed=f.seed)
  result = {"out": out, "captioner": f"{captioner.workdir}@{captioner.step}",
            "seconds": round(time.time() - t0, 1), "labelled": min(f.labelled, len(records))}
  if meta is None:
    return {**result, "index": "written by the process that finishes last"}
  return {**result, "num_records": meta["num_records"]}


def define_flags():
  flags.DEFINE_string("captioner", None, "A trained video captioner run.", required=True)
  flags.DEFINE_string("latents", None, "Latent records: LATENTS/SPLIT/.", required=True)
  flags.DEFINE_string("out_dir", None, "Where to write OUT/SPLIT/.", required=True)
  flags.DEFINE_string("split", "train", "Split to recaption.")
  flags.DEFINE_integer("labelled", 0, "The first N records keep their detailed caption.")
  flags.DEFINE_integer("num_shards", 1, "ArrayRecord shards of the output split.")
  flags.DEFINE_integer("process_index", 0, "This worker's index, with --process_count.")
  flags.DEFINE_integer("process_count", 1, "Workers sharing the shards.")
  flags.DEFINE_integer("batch", 8, "Packed rows captioned together.")
  flags.DEFINE_float("temperature", 0.0, "0 = greedy captions; else sampled.")
  flags.DEFINE_integer("seed", 0, "Sampling seed (a clip's is seed + its record index).")
  flags.DEFINE_string("mesh", "", "Caption on a device mesh, e.g. data=4,fsdp=2 (params by "
                      "the fsdp preset, rows over data x fsdp); '' = one device.")


def main(argv):
  del argv
  try:
    print(json.dumps(run(flags.FLAGS)))
  except ValueError as e:  # bad input: one clear line, no traceback
    raise usage.InputError(str(e)) from e


if __name__ == "__main__":
  define_flags()
  usage.run(main)
