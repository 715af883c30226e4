"""VAE latents for DiT training: precomputed records or on-the-fly encoding, then packing.

Precompute (MaxDiffusion's way: encode once, train many times) with a trained VAE:

  python -m data_pipelines.latents --vae_workdir runs/vae_tiny10 \
      --out_dir data/latents/sw_tiny10 --split train [--num 4096] [--data_dir data/tfds]
  (and again with --split validation for the DiT's evaluation clips)

The pixel data defaults to the data the VAE was trained on (its run config's `data`
section, Shapes World by default); `--source/--name/--data_dir` pick any other builder.

The VAE is rebuilt from the `config` JSON of the workdir's latest checkpoint, its params
restored from that checkpoint, and latents normalised per channel with the `latent_mean` /
`latent_std` the VAE task saved there (`extra` JSON): z = (mode(q(z|x)) - mean) / std.

Record format (one `array_record` writer, read by grain's `ArrayRecordDataSource`; no tfds
builder, because a latent set is a derived cache of one (VAE, data set) pair, not a source):
  OUT/SPLIT/latents.array_record   one msgpack record per clip (flax.serialization):
    latents        float16 [T', h, w, C], normalised
    caption        str, the detailed caption
    short_caption  str ('' when the source has none)
    size           int32 [3], the pixel clip's (T, H, W)
    index          int, the record index in the pixel split
  OUT/SPLIT/metadata.json    latent shapes (run-length encoded), VAE workdir/step, stats.

On-the-fly (`OnTheFlyLatents`): the same records, produced by encoding pixel records with
the VAE on the host as the pipeline reads them. For small runs and tests, no precompute
step; with no VAE workdir a randomly initialised VAE stands in (runlocal / tests only).

The DiT pipeline (`make_latent_dataset`), over either source:

  clip indices -> seeded shuffle (new order each epoch) -> shard by process -> repeat
  -> read / encode -> tokenize the chosen caption -> `packing.clip_example`
  -> `packing.pack_dataset` (first fit into seq_len tokens, <= max_clips clips) -> batch

Everything up to packing is a grain MapDataset (a pure function of the index), packing
and batching are grain IterDatasets, so the iterator state checkpoints and restores.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import packing
from data_pipelines import pipeline

RECORD_FILE = "latents.array_record"
METADATA_FILE = "metadata.json"
CAPTION_KEYS = {"detailed": "caption", "short": "short_caption"}


# ------------------------------------------------------------------------ the VAE
@dataclasses.dataclass(frozen=True, eq=False)
class FrozenVAE:
  """A VAE for encoding: config, params and the per-channel normalisation.

  Attributes:
    config: `vae.VAEConfig`.
    params: the VAE's params pytree.
    mean, std: float32 [C] latent statistics (z - mean) / std.
    description: where it came from (logged, stored in metadata and checkpoints).
  """
  config: Any
  params: Any
  mean: np.ndarray
  std: np.ndarray
  description: str


def vae_config_from_json(model: dict[str, Any]):
  """The VAE config from the `model` section of a VAE run's config JSON."""
  from sora_jax.models import vae as vae_lib  # pylint: disable=g-import-not-at-top
  model = dict(model)
  return vae_lib.get_vae_config(model.pop("variant"), **model)


def vae_run_info(vae_workdir: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
  """(latest step, config JSON, extra JSON) of a VAE run; one clear error if unusable."""
  from sora_jax.train import checkpointing  # pylint: disable=g-import-not-at-top
  step, config, extra = checkpointing.read_run(
      vae_workdir, "a VAE (configs/vae.py) or pass the right --vae_workdir", "VAE workdir")
  if "model" not in config:
    raise ValueError(f"VAE checkpoint {vae_workdir!r} step {step} has no model config.")
  if not extra or "latent_mean" not in extra:
    raise ValueError(f"VAE checkpoint {vae_workdir!r} step {step} has no latent statistics "
                     "(extra JSON, saved with the last step of a finished VAE run).")
  return step, config, extra


def load_vae(vae_workdir: str) -> FrozenVAE:
  """The trained VAE of a workdir's latest checkpoint, with its saved latent statistics."""
  from sora_jax.train import checkpointing  # pylint: disable=g-import-not-at-top
  step, config, extra = vae_run_info(vae_workdir)
  vcfg = vae_config_from_json(config["model"])
  path = os.path.join(os.path.abspath(vae_workdir), "checkpoints", str(step), "state")
  # The VAE is small and frozen: restore it whole on the host (no sharding needed).
  params = checkpointing.restore_host(path)["params"]["vae"]
  mean = np.asarray(extra["latent_mean"], np.float32)
  std = np.asarray(extra["latent_std"], np.float32)
  if mean.shape != (vcfg.latent_channels,) or std.shape != mean.shape:
    raise ValueError(f"VAE {vae_workdir!r}: latent stats of shape {mean.shape} do not match "
                     f"its {vcfg.latent_channels} latent channels.")
  return FrozenVAE(vcfg, params, mean, std, f"{os.path.abspath(vae_workdir)}@{step}")


def random_vae(model: dict[str, Any], seed: int = 0) -> FrozenVAE:
  """A randomly initialised VAE (mean 0, std 1): runlocal and tests only."""
  from sora_jax.models import vae as vae_lib  # pylint: disable=g-import-not-at-top
  vcfg = vae_config_from_json(model)
  logging.warning("!!! No VAE workdir: encoding with a RANDOMLY INITIALISED VAE (%s). "
                  "Fine for tests and runlocal, meaningless for real training. !!!", vcfg)
  # Concrete even when first asked for inside a trace (e.g. the DiT's eval_shape'd init):
  # the frozen VAE is cached, and a cached tracer would leak into later steps.
  with jax.ensure_compile_time_eval():
    params = jax.device_get(vae_lib.init_params(vcfg, jax.random.key(seed)))
  c = vcfg.latent_channels
  return FrozenVAE(vcfg, params, np.zeros(c, np.float32), np.ones(c, np.float32),
                   f"random:{vcfg.variant}:seed={seed}")


@functools.partial(jax.jit, static_argnums=0)
def _encode_mode(vcfg, params, video):
  from sora_jax.models import vae as vae_lib  # pylint: disable=g-import-not-at-top
  return vae_lib.encode(params, video, vcfg).mode()


def encode_clip(vae: FrozenVAE, video: np.ndarray) -> np.ndarray:
  """uint8 [T, H, W, 3] -> normalised float32 latents [T', h, w, C]."""
  return encode_clips(vae, [video])[0]


def encode_clips(vae: FrozenVAE, videos: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Same-size uint8 clips -> their normalised latents, encoded as one batch.

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


def latent_size(vcfg, size: Sequence[int]) -> tuple[int, int, int, int]:
  """Pixel (T, H, W) -> latent (T', h, w, C)."""
  t, h, w = (int(v) for v in size)
  s = vcfg.spatial_factor
  return (1 + (t - 1) // vcfg.temporal_factor, h // s, w // s, vcfg.latent_channels)


# ------------------------------------------------------------------------ sources
class OnTheFlyLatents:
  """Latent clip records made by encoding a pixel `ClipSource` as they are read.

  Random access like `LatentRecords`: `self[i]` -> {latents, caption, short_caption, size,
  index}. Runs the (jitted) VAE in the calling thread; keep grain workers at 0.
  """

  def __init__(self, source: pipeline.ClipSource, vae: FrozenVAE):
    self.source, self.vae = source, vae
    self.shapes = np.asarray([latent_size(vae.config, s) for s in source.sizes], np.int32)

  def __len__(self) -> int:
    return len(self.source.records)

  def __getitem__(self, i: int) -> dict[str, Any]:
    record = self.source.records[int(i)]
    return latent_record(record, encode_clip(self.vae, record["video"]), int(i))

  def captions(self, key: str) -> list[str]:
    """Every record's caption (decodes every video: small sources only)."""
    return [_text(self.source.records[i][key]) for i in range(len(self))]


class LatentRecords:
  """Precomputed latent records of one split (written by `write_latents`)."""

  def __init__(self, split_dir: str):
    path = os.path.join(split_dir, RECORD_FILE)
    meta_path = os.path.join(split_dir, METADATA_FILE)
    if not (os.path.exists(path) and os.path.exists(meta_path)):
      raise ValueError(f"No latent records in {split_dir!r} (expected {RECORD_FILE} and "
                       f"{METADATA_FILE}); run `python -m data_pipelines.latents` first.")
    with open(meta_path) as f:
      self.metadata = json.load(f)
    self._records = grain.sources.ArrayRecordDataSource([path])
    self.shapes = _decode_runs(self.metadata["latent_shapes"])
    if len(self.shapes) != len(self._records):
      raise ValueError(f"{split_dir!r}: {len(self._records)} records but "
                       f"{len(self.shapes)} recorded shapes; rewrite it.")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict[str, Any]:
    rec = flax.serialization.msgpack_restore(self._records[int(i)])
    rec["latents"] = np.asarray(rec["latents"], np.float32)
    return rec

  def captions(self, key: str) -> list[str]:
    return [self[i][key] for i in range(len(self))]


def latent_record(record: dict[str, Any], latents: np.ndarray, index: int) -> dict[str, Any]:
  """A pixel record's latent record: {latents, caption, short_caption, size, index}."""
  return {"latents": latents, "caption": _text(record["caption"]),
          "short_caption": _text(record["short_caption"]),
          "size": np.asarray(record["video"].shape[:3], np.int32), "index": index}


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _decode_runs(runs) -> np.ndarray:
  """[[T', h, w, C, count], ...] -> int32 [N, 4]."""
  if not runs:
    return np.zeros((0, 4), np.int32)
  return np.concatenate([np.tile(np.asarray(r[:4], np.int32), (r[4], 1)) for r in runs])


def _encode_runs(shapes) -> list[list[int]]:
  runs: list[list[int]] = []
  for s in shapes:
    s = [int(v) for v in s]
    if runs and runs[-1][:4] == s:
      runs[-1][4] += 1
    else:
      runs.append(s + [1])
  return runs


# ------------------------------------------------------------------------ precompute
def write_latents(source: pipeline.ClipSource, vae: FrozenVAE, split_dir: str,
                  num: int | None = None, batch: int = 32) -> dict[str, Any]:
  """Encodes the first `num` clips (all when None) of `source` into `split_dir`.

  Clips are read `batch` at a time and each same-size group of them is encoded in one call
  (an accelerator encodes a batch about as fast as one clip); records keep the source order.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  n = len(source.records) if num is None else min(num, len(source.records))
  os.makedirs(split_dir, exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(
      os.path.join(split_dir, RECORD_FILE), "group_size:1")
  shapes = []
  for start in range(0, n, batch):
    records = [source.records[i] for i in range(start, min(start + batch, n))]
    latents = [None] * len(records)
    by_size = {}
    for j, r in enumerate(records):
      by_size.setdefault(r["video"].shape, []).append(j)
    for group in by_size.values():
      for j, z in zip(group, encode_clips(vae, [records[j]["video"] for j in group])):
        latents[j] = z
    for j, (r, z) in enumerate(zip(records, latents)):
      # float16 halves the disk (the normalised latents are ~N(0, 1)).
      rec = latent_record(r, z.astype(np.float16), start + j)
      writer.write(flax.serialization.msgpack_serialize(rec))
      shapes.append(rec["latents"].shape)
  writer.close()
  meta = {"num_records": n, "latent_shapes": _encode_runs(shapes), "vae": vae.description,
          "vae_config": dataclasses.asdict(vae.config), "latent_mean": vae.mean.tolist(),
          "latent_std": vae.std.tolist(), "source": source.name}
  with open(os.path.join(split_dir, METADATA_FILE), "w") as f:
    json.dump(meta, f, indent=2)
  return meta


# ------------------------------------------------------------------------ the DiT pipeline
class _Read(grain.transforms.Map):
  """Record index -> latent record (from either source)."""

  def __init__(self, records):
    self.records = records

  def map(self, element):
    return self.records[int(element)]


class _ToClip(grain.transforms.Map):
  """Latent record -> `packing.clip_example` with the chosen caption tokenized."""

  def __init__(self, tokenizer, text_len: int, patch: tuple[int, int, int], caption_key: str):
    self.tokenizer, self.text_len, self.patch = tokenizer, text_len, tuple(patch)
    self.caption_key = caption_key

  def map(self, rec):
    ids, mask, _ = self.tokenizer.encode([rec[self.caption_key]], self.text_len)
    return packing.clip_example(rec["latents"], ids[0], mask[0], self.patch,
                                clip_index=int(rec["index"]))


def make_latent_dataset(records, tokenizer, *, patch: Sequence[int], seq_len: int,
                        max_clips: int, text_len: int, batch_size: int, seed: int,
                        train: bool, caption: str = "detailed", num_bins: int = 1,
                        num_clips: int | None = None, process_index: int | None = None,
                        process_count: int | None = None, prefetch: int = 2,
                        num_workers: int = 0) -> grain.IterDataset:
  """Packed DiT batches over latent records (`LatentRecords` or `OnTheFlyLatents`).

  Args:
    records: random-access latent records with `.shapes` int [N, 4].
    tokenizer: `sora_jax.text.tokenizer.Tokenizer`.
    patch: (pt, ph, pw); seq_len, max_clips, text_len, num_bins: as in `packing`.
    batch_size: global number of packed sequences per batch.
    seed: shuffle seed. train: infinite and shuffled, else one pass in record order.
    caption: "detailed" or "short".
    num_clips: eval only: use the first `num_clips` records.
    prefetch: train only: batches packed ahead in a background thread (0 = none), so
      the host's packing overlaps the accelerator's step.
    num_workers: train only: worker processes that each read, tokenize, pack and batch a
      share of the clips (grain `mp_prefetch`), instead of the thread; precomputed
      records only (on-the-fly encoding runs the VAE, which stays in this process).

  Returns:
    IterDataset of this process's batches: packed examples with a leading [B_local] axis.
  """
  if caption not in CAPTION_KEYS:
    raise ValueError(f"caption={caption!r}; expected one of {sorted(CAPTION_KEYS)}.")
  pi, pc = pipeline._process(process_index, process_count)  # pylint: disable=protected-access
  if batch_size % pc:
    raise ValueError(f"batch_size={batch_size} is not a multiple of {pc} processes.")
  n = len(records) if num_clips is None else min(num_clips, len(records))
  if train:
    # Same order on every process (same seed), each takes its slice: shards partition.
    ds = pipeline._EpochShuffle(np.arange(n, dtype=np.int64), seed)  # pylint: disable=protected-access
    ds = ds[pi::pc].repeat()
  else:
    ds = grain.MapDataset.source(np.arange(n, dtype=np.int64))[pi::pc]
  ds = ds.map(_Read(records)).map(_ToClip(tokenizer, text_len, tuple(patch),
                                          CAPTION_KEYS[caption]))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  ds = packing.pack_dataset(ds, seq_len, max_clips, text_len, num_bins=num_bins, seed=seed)
  ds = ds.batch(batch_size // pc, drop_remainder=train)
  if train and num_workers:
    if not isinstance(records, LatentRecords):
      raise ValueError(f"num_workers={num_workers} needs precomputed latents (`latents=` a "
                       "directory); on-the-fly encoding runs in the training process.")
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(prefetch, 1)))
  elif train and prefetch:  # packing runs in a thread while the loop waits on the device
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
  return ds


def pixel_source(data_cfg: Any, split: str) -> pipeline.ClipSource:
  """The pixel `ClipSource` of a data config section (single source; see pipeline)."""
  if data_cfg.get("sources"):
    raise ValueError("latents: data.sources (mixtures) are not supported yet; give one "
                     "source, name and data_dir.")
  builder = pipeline.load_builder(data_cfg["source"], data_cfg["name"], data_cfg["data_dir"],
                                  prepare=bool(data_cfg.get("prepare", False)))
  return pipeline.source_from_builder(builder, split)


def encode_splits(data_cfg: dict[str, Any], vae_workdir: str, splits: Sequence[str],
                  latents_dir: str) -> None:
  """Encodes each split of `data_cfg`'s pixel data not already in latents_dir/SPLIT.

  The demo's latents stage and launch/sweep.py's --precompute_latents (in a child process,
  so the accelerator memory it takes is released before the runs train) run this.
  """
  vae = None
  data_cfg = {**data_cfg, "latents": "on_the_fly"}
  for split in splits:
    split_dir = os.path.join(latents_dir, split)
    if os.path.exists(os.path.join(split_dir, METADATA_FILE)):
      print(f"[latents] {split_dir} exists; kept.", flush=True)
      continue
    vae = vae or load_vae(vae_workdir)
    print(f"[latents] encoding the {split} split with {vae.description} into {split_dir}",
          flush=True)
    meta = write_latents(pixel_source(data_cfg, split), vae, split_dir)
    print(f"[latents] {meta['num_records']} records in {split_dir}", flush=True)


# ------------------------------------------------------------------------ command
def _main(argv):
  del argv
  try:
    _encode_split(_FLAGS)
  except ValueError as e:  # bad input: one clear line, no traceback
    raise SystemExit(f"data_pipelines.latents: {e}") from None


def _encode_split(f) -> None:
  """The command: encode one split of the pixel data (by default the VAE run's own)."""
  vae = load_vae(f.vae_workdir)
  _, vae_run_config, _ = vae_run_info(f.vae_workdir)
  if f.name:  # any builder: --source, --name, --data_dir
    data_cfg = {"source": f.source, "name": f.name, "data_dir": f.data_dir}
  else:  # the data the VAE was trained on (Shapes World by default)
    data_cfg = dict(vae_run_config["data"])
    data_cfg["data_dir"] = f.data_dir or data_cfg["data_dir"]
  data_cfg["prepare"] = f.prepare
  if not os.path.isdir(data_cfg["data_dir"] or "") and not f.prepare:
    raise ValueError(f"data dir {data_cfg['data_dir']!r} does not exist; build the data "
                     "set first (or pass --prepare for Shapes World).")
  split_dir = os.path.join(f.out_dir, f.split)
  meta = write_latents(pixel_source(data_cfg, f.split), vae, split_dir, f.num)
  print(json.dumps({"out": split_dir, "num_records": meta["num_records"],
                    "latent_shapes": meta["latent_shapes"], "vae": meta["vae"]}))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("vae_workdir", None, "A finished VAE run directory.", required=True)
  flags.DEFINE_string("out_dir", None, "Where to write OUT/SPLIT/.", required=True)
  flags.DEFINE_string("data_dir", "", "tfds data directory ('' = the VAE run's).")
  flags.DEFINE_string("split", "train", "Split to encode.")
  flags.DEFINE_integer("num", None, "Encode only the first NUM clips.")
  flags.DEFINE_enum("source", "shapes_world", list(pipeline.SOURCES),
                    "Pixel data source (with --name).")
  flags.DEFINE_string("name", "", "Builder config name ('' = the VAE run's data config).")
  flags.DEFINE_bool("prepare", False, "Build a missing Shapes World data set.")
  return flags.FLAGS


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _FLAGS = _define_flags()
  app.run(_main)
