"""Encoding clips to VAE latents: precomputed records, or on the fly as a pipeline reads.

Precompute (MaxDiffusion's way: encode once, train many times) with a trained VAE:

  python -m sora_jax.data.encode_latents --vae_workdir runs/vae_tiny10 \
      --out_dir data/latents/sw_tiny10 --split train [--num 4096] [--data_dir data/tfds]
  (and again with --split validation for the DiT's evaluation clips)

Several processes or hosts share the work: the split is cut into `--num_shards` ArrayRecord
shards (default: one per process) and process i writes shards i, i + P, ...; each shard is
written atomically and kept when the command runs again, and the process that finishes
last writes the index (`metadata.json`). Run the same command on every host (joined by
jax.distributed as `sora_jax.main` is), or start independent workers with
`--process_index I --process_count P`.

The pixel data defaults to the data the VAE was trained on (its run config's `data`
section, Shapes World by default); `--source/--name/--data_dir` pick any other builder.
The VAE comes from `inference.load_vae` (its latest checkpoint and the latent statistics
the VAE task saved there), or is Wan2.1's (`--vae_workdir wan:DIR`, a diffusers VAE folder
with its released statistics; then name the pixel data); latents are normalised per
channel, (mode(q(z|x)) - mean) / std, and written in the record format of
`data_pipelines/latents.py`.

On the fly (`OnTheFlyLatents`): the same records, produced by encoding pixel records with
the VAE on the host as the pipeline reads them. For small runs and tests, no precompute
step; with no VAE workdir a randomly initialised VAE stands in (runlocal / tests only).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from absl import flags
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import latents as latents_lib
from data_pipelines import pipeline
from data_pipelines import storage
from data_pipelines import usage
from sora_jax.inference import run as run_lib
from sora_jax.models import vae as vae_lib
from sora_jax.sharding import distributed


@functools.partial(jax.jit, static_argnums=0)
def _encode_mode(vcfg, params, video):
  return run_lib.vae_functions(vcfg).encode(params, video, vcfg).mode()


def encode_clips(vae: run_lib.FrozenVAE, videos: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Same-size uint8 clips [T, H, W, 3] -> their normalised latents, encoded as one batch.

  The batch is padded (with copies of the last clip) to a power of two, so a stream of
  batches of varying length compiles the encoder a few times, not once per length.
  """
  n = len(videos)
  x = (np.stack([np.asarray(v, np.float32) for v in videos]) - 127.5) / 127.5
  pad = (1 << (n - 1).bit_length()) - n
  if pad:
    x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
  z = np.asarray(_encode_mode(vae.config, vae.params, jnp.asarray(x)))[:n]
  return list((z - vae.mean) / vae.std)


def latent_size(vcfg: vae_lib.VAEConfig, size: Sequence[int]) -> tuple[int, int, int, int]:
  """Pixel (T, H, W) -> latent (T', h, w, C)."""
  return tuple(vae_lib.latent_shape(vcfg, (1, *(int(v) for v in size), 3))[1:])


class OnTheFlyLatents:
  """Latent clip records made by encoding a pixel `ClipSource` as they are read.

  Random access like `latents.LatentRecords`: `self[i]` -> {latents, caption,
  short_caption, size, index}. Runs the (jitted) VAE in the calling thread; keep grain
  workers at 0.
  """

  def __init__(self, source: pipeline.ClipSource, vae: run_lib.FrozenVAE):
    self.source, self.vae = source, vae
    self.shapes = np.asarray([latent_size(vae.config, s) for s in source.sizes], np.int32)

  def __len__(self) -> int:
    return len(self.source.records)

  def __getitem__(self, i: int) -> dict[str, Any]:
    record = self.source.records[int(i)]
    return latents_lib.latent_record(record, encode_clips(self.vae, [record["video"]])[0],
                                     int(i))


def _encoded(source: pipeline.ClipSource, vae: run_lib.FrozenVAE, start: int, stop: int,
             batch: int) -> Iterator[dict[str, Any]]:
  """Latent records start..stop-1 of `source`, in order (same-size clips encoded together)."""
  for lo in range(start, stop, batch):
    records = [source.records[i] for i in range(lo, min(lo + batch, stop))]
    latents = [None] * len(records)
    by_size = {}
    for j, r in enumerate(records):
      by_size.setdefault(r["video"].shape, []).append(j)
    for group in by_size.values():
      for j, z in zip(group, encode_clips(vae, [records[j]["video"] for j in group])):
        latents[j] = z
    for j, (r, z) in enumerate(zip(records, latents)):
      # float16 halves the disk (the normalised latents are ~N(0, 1)).
      yield latents_lib.latent_record(r, z.astype(np.float16), lo + j)


def write_latents(source: pipeline.ClipSource, vae: run_lib.FrozenVAE, split_dir: str,
                  num: int | None = None, batch: int = 32, num_shards: int = 1,
                  process_index: int = 0, process_count: int = 1) -> dict[str, Any] | None:
  """Encodes the first `num` clips (all when None) of `source` into `num_shards` shards of
  `split_dir`; this process writes shards process_index, + process_count, ...

  Shards already whole are kept (a killed run resumes); each is written atomically. Clips
  are read `batch` at a time and each same-size group of them is encoded in one call (an
  accelerator encodes a batch about as fast as one clip); records keep the source order.

  Returns:
    The split's metadata once every shard is whole (this process wrote the index), else
    None (another process, finishing last, writes it).
  """
  if num_shards < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"num_shards={num_shards}, process {process_index} of "
                     f"{process_count}: expected num_shards >= 1 and 0 <= index < count.")
  n = len(source.records) if num is None else min(num, len(source.records))
  meta = {"vae": vae.description, "vae_config": dataclasses.asdict(vae.config),
          "latent_mean": vae.mean.tolist(), "latent_std": vae.std.tolist(),
          "source": source.name}
  for shard in range(process_index, num_shards, process_count):
    if latents_lib.shard_done(split_dir, shard, num_shards):
      logging.info("%s shard %d of %d is whole; kept.", split_dir, shard, num_shards)
      continue
    start, stop = shard * n // num_shards, (shard + 1) * n // num_shards
    latents_lib.write_shard(split_dir, shard, num_shards,
                            _encoded(source, vae, start, stop, batch))
  return latents_lib.write_index(split_dir, num_shards, meta)


def encode_splits(data_cfg: dict[str, Any], vae_workdir: str, splits: Sequence[str],
                  latents_dir: str) -> None:
  """Encodes each split of `data_cfg`'s pixel data not already in latents_dir/SPLIT.

  The demo's latents stage and launch/sweep.py's --precompute_latents (in a child process,
  so the accelerator memory it takes is released before the runs train) run this.
  """
  vae = None
  data_cfg = {**data_cfg, "latents": "on_the_fly"}
  for split in splits:
    split_dir = storage.join(latents_dir, split)
    if epath.Path(split_dir, latents_lib.METADATA_FILE).exists():
      print(f"[latents] {split_dir} exists; kept.", flush=True)
      continue
    vae = vae or run_lib.load_vae_source(vae_workdir)
    print(f"[latents] encoding the {split} split with {vae.description} into {split_dir}",
          flush=True)
    meta = write_latents(latents_lib.pixel_source(data_cfg, split), vae, split_dir)
    print(f"[latents] {meta['num_records']} records in {split_dir}", flush=True)


# ------------------------------------------------------------------------ command
def encode_split(f) -> dict[str, Any]:
  """The command: encode one split of the pixel data (by default the VAE run's own)."""
  wan = f.vae_workdir.startswith(run_lib.WAN_VAE)
  if wan and not f.name:
    raise ValueError(f"--vae_workdir={f.vae_workdir!r} (Wan2.1's VAE) has no data of its "
                     "own: name the pixel data with --source, --name and --data_dir.")
  if not wan:
    _, vae_run_config, _ = run_lib.read_vae_run(f.vae_workdir)
  if f.name:  # any builder: --source, --name, --data_dir
    data_cfg = {"source": f.source, "name": f.name, "data_dir": f.data_dir}
  else:  # the data the VAE was trained on (Shapes World by default)
    data_cfg = dict(vae_run_config["data"])
    data_cfg["data_dir"] = f.data_dir or data_cfg["data_dir"]
  data_cfg["prepare"] = f.prepare
  data_dir = data_cfg["data_dir"]
  if not (data_dir and epath.Path(data_dir).is_dir()) and not f.prepare:
    raise ValueError(f"data dir {data_cfg['data_dir']!r} does not exist; build the data "
                     "set first (or pass --prepare for Shapes World).")
  split_dir = storage.join(f.out_dir, f.split)
  if epath.Path(split_dir, latents_lib.METADATA_FILE).exists():  # whole: nothing to do
    meta = storage.read_json(storage.join(split_dir, latents_lib.METADATA_FILE))
    return {"out": split_dir, "num_records": meta["num_records"], "kept": True}
  index, count = ((f.process_index, f.process_count) if f.process_count > 0
                  else (jax.process_index(), jax.process_count()))
  num_shards = f.num_shards or count
  if f.num_shards < 0 or not 0 <= index < count:
    raise ValueError(f"--num_shards={f.num_shards} (0 = one per process), process {index} "
                     f"of {count}: expected --num_shards >= 0 and 0 <= "
                     "--process_index < --process_count.")
  source = latents_lib.pixel_source(data_cfg, f.split)
  t0 = time.time()
  meta = write_latents(source, run_lib.load_vae_source(f.vae_workdir), split_dir, f.num,
                       num_shards=num_shards, process_index=index, process_count=count)
  mine = [latents_lib.shard_name(s, num_shards)
          for s in range(index, num_shards, count)]
  out = {"out": split_dir, "process": index, "processes": count, "shards": mine,
         "seconds": round(time.time() - t0, 1)}
  if meta is None:
    return {**out, "index": "written by the process that finishes last"}
  return {**out, "num_records": meta["num_records"], "latent_shapes": meta["latent_shapes"],
          "vae": meta["vae"]}


def define_flags():
  flags.DEFINE_string("vae_workdir", None, "A finished VAE run directory, or wan:DIR (a "
                      "diffusers Wan2.1 VAE folder).", required=True)
  flags.DEFINE_string("out_dir", None, "Where to write OUT/SPLIT/.", required=True)
  flags.DEFINE_string("data_dir", "", "tfds data directory ('' = the VAE run's).")
  flags.DEFINE_string("split", "train", "Split to encode.")
  flags.DEFINE_integer("num", None, "Encode only the first NUM clips.")
  flags.DEFINE_enum("source", "shapes_world", list(pipeline.SOURCES),
                    "Pixel data source (with --name).")
  flags.DEFINE_string("name", "", "Builder config name ('' = the VAE run's data config).")
  flags.DEFINE_bool("prepare", False, "Build a missing Shapes World data set.")
  flags.DEFINE_integer("num_shards", 0, "ArrayRecord shards of the split (0 = one per "
                       "process); fixed by the first run, so a resume may use any count.")
  flags.DEFINE_integer("process_index", 0, "This worker's index, with --process_count.")
  flags.DEFINE_integer("process_count", 0, "Workers sharing the shards (0 = the JAX "
                       "processes: one, or those jax.distributed joins).")
  flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                    "jax.distributed.initialize(): 'auto' when a multi-process launch is "
                    "detected (as for sora_jax.main).")


def main(argv):
  del argv
  try:
    distributed.initialize_distributed(flags.FLAGS.distributed)  # before any device is used
    print(json.dumps(encode_split(flags.FLAGS)))
  except ValueError as e:  # bad input: one clear line, no traceback
    raise usage.InputError(str(e)) from e


if __name__ == "__main__":
  define_flags()
  usage.run(main)
