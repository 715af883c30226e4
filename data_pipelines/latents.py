"""VAE latent records for DiT training: the record format, its reader and writer, packing.

Latents are encoded by a trained VAE in `sora_jax/data/encode_latents.py` (a model is
needed, so that work lives in `sora_jax`; this module reads and writes what it produces):

  python -m sora_jax.data.encode_latents --vae_workdir runs/vae_tiny10 \
      --out_dir data/latents/sw_tiny10 --split train

Record format: a split is ArrayRecord shards read in order as one sequence by grain's
`ArrayRecordDataSource`, plus an index (no tfds builder: a latent set is a derived cache of
one (VAE, data set) pair, not a source). Bring your own latents by writing this layout:
  OUT/SPLIT/latents-SSSSS-of-NNNNN.array_record   one msgpack record per clip
      (`flax.serialization.msgpack_serialize` of a dict):
    latents        float16 (or float32) [T', h, w, C], normalised: (z - mean) / std
    caption        str, the detailed caption
    short_caption  str ('' when the source has none)
    synthetic_caption  str, optional: a captioner's (written by `sora_jax.data.recaption`)
    size           int32 [3], the pixel clip's (T, H, W)
    index          int, the record index in the pixel split
  OUT/SPLIT/latents-SSSSS-of-NNNNN.json   a shard's index entry, written when it is whole:
    {"file", "num_records", "latent_shapes"} (shapes run-length encoded, [[T', h, w, C, n]])
  OUT/SPLIT/metadata.json   the index: "shards" (file names, in order), "num_records",
    "latent_shapes" (all shards'), and what encoded them: "vae" (a VAE run's
    `WORKDIR@STEP`, which sampling decodes with), "latent_mean", "latent_std" (per channel).
A split written before shards existed (one `latents.array_record`, no "shards") still
reads. Shards of records in this schema written by other tools get their index entries and
metadata.json from `python -m data_pipelines.latents --index OUT/SPLIT --vae DESC
--stats_from OTHER/SPLIT` (or `--mean/--std`); see `index_shards`.

The DiT pipeline (`make_latent_dataset`), over precomputed `LatentRecords` or any records
with the same interface (`sora_jax.data.encode_latents.OnTheFlyLatents` encodes pixel clips
as they are read):

  clip indices -> seeded shuffle (new order each epoch) -> shard by process -> repeat
  -> read / encode -> tokenize the chosen caption -> `packing.clip_example`
  -> `packing.pack_dataset` (first fit into seq_len tokens, <= max_clips clips) -> batch

Everything up to packing is a grain MapDataset (a pure function of the index), packing
and batching are grain IterDatasets, so the iterator state checkpoints and restores.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from array_record.python import array_record_module
from etils import epath
import flax
import grain
import numpy as np

from data_pipelines import packing
from data_pipelines import pipeline
from data_pipelines import storage
from data_pipelines import usage

METADATA_FILE = "metadata.json"
LEGACY_FILE = "latents.array_record"  # one-file splits, written before shards
# The caption a model trains on (config `caption`) -> the record field that holds it.
# "synthetic" is a captioner's (`python -m sora_jax.data.recaption`); "blend" draws the
# synthetic caption with probability `synthetic_share`, else the short one, anew each
# epoch (DALL-E 3's 95/5 blend of synthetic and original captions).
RECORD_KEYS = {"detailed": "caption", "short": "short_caption",
               "synthetic": "synthetic_caption"}
RECORD_CAPTIONS = tuple(RECORD_KEYS)
CAPTIONS = RECORD_CAPTIONS + ("blend",)


# ------------------------------------------------------------------------ sources
class LatentRecords:
  """Precomputed latent records of one split (written by `write_latents`)."""

  def __init__(self, split_dir: str):
    meta_path = storage.join(split_dir, METADATA_FILE)
    if not epath.Path(meta_path).exists():
      raise ValueError(f"No latent records in {split_dir!r} (no {METADATA_FILE}); encode "
                       "them with `python -m sora_jax.data.encode_latents` first.")
    self.metadata = storage.read_json(meta_path)
    files = [storage.join(split_dir, f) for f in self.metadata.get("shards", [LEGACY_FILE])]
    missing = [f for f in files if not epath.Path(f).exists()]
    if missing:
      raise ValueError(f"{split_dir!r}: {METADATA_FILE} lists {len(files)} shard(s), "
                       f"{len(missing)} missing, e.g. {missing[0]!r}.")
    # array_record's C++ reader takes local paths only: data and latents on GCS are read
    # through a gcsfuse mount, as grain's ArrayRecord source needs.
    self._records = grain.sources.ArrayRecordDataSource(files)
    self.shapes = _decode_runs(self.metadata["latent_shapes"])
    if len(self.shapes) != len(self._records):
      raise ValueError(f"{split_dir!r}: {len(self._records)} records but "
                       f"{len(self.shapes)} recorded shapes; rewrite it.")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict[str, Any]:
    rec = self.stored(i)
    rec["latents"] = np.asarray(rec["latents"], np.float32)
    return rec

  def stored(self, i: int) -> dict[str, Any]:
    """Record i as stored (latents in their stored dtype): to copy it unchanged."""
    return flax.serialization.msgpack_restore(self._records[int(i)])

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


# ------------------------------------------------------------------------ writing
def shard_name(shard: int, num_shards: int) -> str:
  return f"latents-{shard:05d}-of-{num_shards:05d}"


def shard_done(split_dir: str, shard: int, num_shards: int) -> bool:
  """Whether a shard is whole (its index entry is written after its records)."""
  return epath.Path(split_dir, shard_name(shard, num_shards) + ".json").exists()


def write_shard(split_dir: str, shard: int, num_shards: int,
                records: Iterable[dict[str, Any]]) -> dict[str, Any]:
  """Writes one shard of latent records (`latent_record`s, in order); returns its entry.

  The records go to a temporary file renamed when it is closed, then the entry (JSON) the
  same way: a shard killed half-way leaves no entry and is written again on resume.
  """
  name = shard_name(shard, num_shards)
  epath.Path(split_dir).mkdir(parents=True, exist_ok=True)
  path = storage.join(split_dir, name + ".array_record")
  tmp = f"{path}.tmp{os.getpid()}"
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")  # local paths only
  shapes = []
  for rec in records:
    writer.write(flax.serialization.msgpack_serialize(rec))
    shapes.append(rec["latents"].shape)
  writer.close()
  os.replace(tmp, path)
  entry = {"file": name + ".array_record", "num_records": len(shapes),
           "latent_shapes": _encode_runs(shapes)}
  storage.write_json(storage.join(split_dir, name + ".json"), entry, indent=2)
  return entry


def write_index(split_dir: str, num_shards: int, metadata: dict[str, Any]
                ) -> dict[str, Any] | None:
  """Writes `split_dir/metadata.json` from the shards' entries once all are whole; returns
  it, or None while some are missing (the process that finishes last writes it; several
  writing at once write the same file)."""
  entries = []
  for s in range(num_shards):
    if not shard_done(split_dir, s, num_shards):
      return None
    entries.append(storage.read_json(storage.join(split_dir, shard_name(s, num_shards)
                                                  + ".json")))
  runs = _encode_runs(shape for e in entries for shape in _decode_runs(e["latent_shapes"]))
  meta = {"num_records": sum(e["num_records"] for e in entries), "latent_shapes": runs,
          "shards": [e["file"] for e in entries], **metadata}
  storage.write_json(storage.join(split_dir, METADATA_FILE), meta, indent=2)
  return meta


def write_records(split_dir: str, records: Iterable[dict[str, Any]],
                  metadata: dict[str, Any]) -> dict[str, Any]:
  """Writes latent records as one shard with its index; returns the metadata.

  `metadata` (e.g. the VAE that encoded them and the latent statistics) is stored with
  `num_records`, `shards` and the run-length encoded `latent_shapes` added.
  """
  write_shard(split_dir, 0, 1, records)
  return write_index(split_dir, 1, metadata)


def index_shards(split_dir: str, metadata: dict[str, Any]) -> dict[str, Any]:
  """Index entries and metadata.json for `*.array_record` shards written by other tools.

  Reads every record once (its latents' shape). `metadata` must give "vae",
  "latent_mean" and "latent_std" (what the DiT's checkpoint and sampling need).
  """
  missing = [k for k in ("vae", "latent_mean", "latent_std") if k not in metadata]
  if missing:
    raise ValueError(f"index_shards: metadata needs {missing}.")
  files = sorted(p.name for p in epath.Path(split_dir).glob("*.array_record"))
  if not files:
    raise ValueError(f"{split_dir!r} holds no *.array_record shards.")
  num = len(files)
  for s, file in enumerate(files):
    source = grain.sources.ArrayRecordDataSource([storage.join(split_dir, file)])
    shapes = []
    for i in range(len(source)):
      rec = flax.serialization.msgpack_restore(source[i])
      missing = {"latents", "caption", "short_caption", "size", "index"} - set(rec)
      if missing:
        raise ValueError(f"{file} record {i} lacks {sorted(missing)} (see the schema in "
                         "data_pipelines/latents.py).")
      shapes.append(np.asarray(rec["latents"]).shape)
    entry = {"file": file, "num_records": len(shapes), "latent_shapes": _encode_runs(shapes)}
    storage.write_json(storage.join(split_dir, shard_name(s, num) + ".json"),
                       entry, indent=2)
  return write_index(split_dir, num, metadata)


# ------------------------------------------------------------------------ the DiT pipeline
class _Read(grain.transforms.Map):
  """Record index -> latent record (from either source)."""

  def __init__(self, records):
    self.records = records

  def map(self, element):
    return self.records[int(element)]


class _Blend(grain.transforms.RandomMap):
  """Sets `rec["blend"]`: the synthetic caption with probability `share`, else the short."""

  def __init__(self, share: float):
    self.share = share

  def random_map(self, element, rng: np.random.Generator):
    key = "synthetic_caption" if rng.random() < self.share else "short_caption"
    return {**element, "blend": element[key]}


class _ToClip(grain.transforms.Map):
  """Latent record -> `packing.clip_example` with the chosen caption tokenized.

  Token ids are kept per caption text (up to CACHE_SIZE captions): a caption seen again,
  as most are in Shapes World and many in web data, costs a lookup instead of ~100 us.
  """
  CACHE_SIZE = 1 << 16

  def __init__(self, tokenizer, text_len: int, patch: tuple[int, int, int], caption_key: str):
    self.tokenizer, self.text_len, self.patch = tokenizer, text_len, tuple(patch)
    self.caption_key = caption_key
    self._tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def map(self, rec):
    caption = rec.get(self.caption_key)
    if caption is None:
      raise ValueError(f"Latent record {rec.get('index')} has no {self.caption_key!r}; "
                       "recaption the latents first (python -m sora_jax.data.recaption).")
    tokens = self._tokens.get(caption)
    if tokens is None:
      ids, mask, _ = self.tokenizer.encode([caption], self.text_len)
      tokens = (ids[0], mask[0])
      if len(self._tokens) < self.CACHE_SIZE:
        self._tokens[caption] = tokens
    example = packing.clip_example(rec["latents"], *tokens, self.patch,
                                   clip_index=int(rec["index"]))
    if "caption_kind" in rec:  # which kind of caption it is (the captioner's alt-text mode)
      example["caption_kind"] = np.int32(rec["caption_kind"])
    return example


def make_latent_dataset(records, tokenizer, *, patch: Sequence[int], seq_len: int,
                        max_clips: int, text_len: int, batch_size: int, seed: int,
                        train: bool, caption: str = "detailed", num_bins: int = 1,
                        num_clips: int | None = None, process_index: int | None = None,
                        process_count: int | None = None, prefetch: int = 2,
                        num_workers: int = 0, synthetic_share: float = 0.95
                        ) -> grain.IterDataset:
  """Packed DiT batches over latent records (`LatentRecords` or `OnTheFlyLatents`).

  Args:
    records: random-access latent records with `.shapes` int [N, 4].
    tokenizer: `sora_jax.text.tokenizer.Tokenizer`.
    patch: (pt, ph, pw); seq_len, max_clips, text_len, num_bins: as in `packing`.
    batch_size: global number of packed sequences per batch.
    seed: shuffle seed. train: infinite and shuffled, else one pass in record order.
    caption: which caption (`CAPTIONS`): "detailed", "short", "synthetic", or "blend"
      (training only: the synthetic caption with probability `synthetic_share`, else the
      short one; evaluation batches of a blend read the synthetic caption).
    num_clips: eval only: use the first `num_clips` records.
    prefetch: train only: batches packed ahead in a background thread (0 = none), so
      the host's packing overlaps the accelerator's step.
    num_workers: train only: worker processes that each read, tokenize, pack and batch a
      share of the clips (grain `mp_prefetch`), instead of the thread; precomputed
      records only (on-the-fly encoding runs the VAE, which stays in this process).

  Returns:
    IterDataset of this process's batches: packed examples with a leading [B_local] axis.
  """
  if caption not in CAPTIONS:
    raise ValueError(f"caption={caption!r}; expected one of {CAPTIONS}.")
  if not 0 <= synthetic_share <= 1:
    raise ValueError(f"synthetic_share={synthetic_share}; expected a value in [0, 1].")
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
  ds = ds.map(_Read(records))
  if caption == "blend" and train:
    ds, key = ds.random_map(_Blend(synthetic_share), seed=seed), "blend"
  else:
    key = RECORD_KEYS["synthetic" if caption == "blend" else caption]
  ds = ds.map(_ToClip(tokenizer, text_len, tuple(patch), key))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  ds = packing.pack_dataset(ds, seq_len, max_clips, num_bins=num_bins)
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




# ------------------------------------------------------------------------ command
def _floats(text: str, flag: str) -> list[float]:
  try:
    return [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"{flag}={text!r}: expected comma-separated numbers.") from None


def main(argv=None) -> None:
  """`--index DIR`: index entries and metadata.json for latent shards of another tool."""
  parser = usage.ArgumentParser(prog="python -m data_pipelines.latents",
                                description=main.__doc__)
  parser.add_argument("--index", required=True, help="a split directory of *.array_record "
                      "shards in the schema of this module's docstring")
  parser.add_argument("--vae", required=True, help="the VAE run that encoded them, "
                      "WORKDIR@STEP (sampling decodes with it)")
  parser.add_argument("--stats_from", default="", help="a latent split whose metadata "
                      "gives latent_mean and latent_std (the same VAE's)")
  parser.add_argument("--mean", default="", help="per-channel latent means, comma-separated")
  parser.add_argument("--std", default="", help="per-channel latent stds, comma-separated")
  args = parser.parse_args(argv)
  try:
    if args.stats_from:
      stats = storage.read_json(storage.join(args.stats_from, METADATA_FILE))
      mean, std = stats["latent_mean"], stats["latent_std"]
    else:
      mean, std = _floats(args.mean, "--mean"), _floats(args.std, "--std")
      if not mean or len(mean) != len(std):
        raise ValueError("give --stats_from DIR, or --mean and --std with one value per "
                         f"latent channel each (got {len(mean)} and {len(std)}).")
    meta = index_shards(args.index, {"vae": args.vae, "latent_mean": mean,
                                     "latent_std": std, "source": "external"})
  except (ValueError, OSError, KeyError) as e:  # bad input: one line, exit code 2
    usage.fail(f"--index={args.index!r}: {e}")
  print(json.dumps({"split_dir": args.index, "num_records": meta["num_records"],
                    "shards": len(meta["shards"])}))


if __name__ == "__main__":
  main()
