"""Grain input pipelines: clips of pixels for the VAE.

The pixel pipeline (record contract: `features.py`) runs one stream per (source, clip size):

  record indices of that size -> seeded shuffle (a new order each epoch) -> shard by
  process -> repeat (train) -> read records -> crop, normalise to [-1, 1] -> batch

and then mixes the per-size batch streams (train, weights = share of clips) or concatenates
them (eval: one pass, padded to whole batches, `mask` marks real clips), and prefetches in
worker processes. Batches never mix sizes: packing clips of several sizes into one
sequence is the DiT's job (`packing.py`); the VAE sees one size per step, many per run.

Everything before prefetch is a grain `MapDataset`, a pure function of the element index,
so an iterator's state is a position: restoring it, in a fresh process from a fresh
dataset object, gives exactly the same following batches (with any number of workers).

Batch element (per process, B = batch size / process count):
  video:          float32 [B, T, H, W, 3] in [-1, 1].
  caption:        bytes [B] (numpy 'S' array), the detailed captions.
  short_caption:  bytes [B].
  index:          int64 [B], record index in its split (-1 for eval padding).
  mask:           bool [B], False only for eval padding.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import importlib
import math
from typing import Any

from absl import logging
from etils import epath
import grain
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import features

Size = tuple[int, int, int]  # (T, H, W) of a clip
SOURCES = ("shapes_world", "video_folder", "directory")
# Builder class per named source: (module, class). 'directory' reads any prepared
# sora_jax dataset straight from its version directory.
_BUILDERS = {
    "shapes_world": ("data_pipelines.shapes_world.builder", "ShapesWorld"),
    "video_folder": ("data_pipelines.video_folder.builder", "VideoFolder"),
}


@dataclasses.dataclass(frozen=True)
class ClipSource:
  """One split of one dataset: random-access clip records and their sizes.

  Attributes:
    records: random-access records (a tfds data source, decoding encoded clips on read);
      `records[i]` is a dict with `video` uint8 [T, H, W, 3], `caption` and
      `short_caption` (bytes).
    sizes: int32 [N, 3], (T, H, W) of each record, in record order.
    weight: share of clips drawn from this source when several are mixed; None on every
      source means proportional to the number of records.
    name: names the source in error messages.
  """
  records: Any
  sizes: np.ndarray
  weight: float | None = None
  name: str = "source"


@dataclasses.dataclass(frozen=True)
class _Stream:
  """The plan of one (source, size) stream; see `_plan_streams`."""
  source_id: int
  records: Any
  size: Size           # record size (T, H, W)
  out_size: Size       # size after cropping
  indices: np.ndarray  # int64 [n], record indices of this size, in record order
  local_batch: int     # per-process batch size
  clip_share: float    # share of all training clips drawn from this stream


# --- Sources --------------------------------------------------------------------------


def source_from_builder(builder: tfds.core.DatasetBuilder, split: str,
                        weight: float | None = None) -> ClipSource:
  """A `ClipSource` for a split of a prepared builder; checks the split exists."""
  splits = sorted(builder.info.splits.keys())
  if split not in splits:
    raise ValueError(f"Split {split!r} does not exist in {builder.info.full_name!r} "
                     f"(at {builder.data_dir}); existing splits: {splits}.")
  records = builder.as_data_source(split)
  if (features.SIZES_KEY in (builder.info.metadata or {})
      or features.ENCODED_KEY in builder.info.features):
    sizes = features.split_sizes(builder.info, split)
  else:  # another tfds builder's data set: one pass over its records for their sizes
    if "video" not in builder.info.features or "caption" not in builder.info.features:
      raise ValueError(f"{builder.info.full_name!r} has no 'video' and 'caption' features "
                       "(the clip record contract of data_pipelines/features.py).")
    logging.warning("%s records no clip sizes; reading its %d %s records once for them.",
                    builder.info.full_name, len(records), split)
    sizes = np.asarray([records[i]["video"].shape[:3] for i in range(len(records))],
                       np.int32).reshape(-1, 3)
  if features.ENCODED_KEY in builder.info.features:
    records = DecodedRecords(records, sizes)
  return ClipSource(records, sizes, weight, f"{builder.info.full_name}:{split}")


class DecodedRecords:
  """Records stored with `encoded_video` (features.py), read with `video` decoded.

  Module level and holding only the data source and the sizes, so grain's spawned workers
  unpickle it.
  """

  def __init__(self, records: Any, sizes: np.ndarray):
    """records: random-access encoded records; sizes: int32 [N, 3], (T, H, W) of each."""
    self.records = records
    self.sizes = sizes

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return features.decode_record(self.records[index], self.sizes[index])

  def __iter__(self):
    return (self[i] for i in range(len(self)))


def load_builder(source: str, name: Any, data_dir: str,
                 prepare: bool = False) -> tfds.core.DatasetBuilder:
  """Returns the prepared tfds builder named by a data config.

  Args:
    source: one of `SOURCES`.
    name: a builder config name (str), or a mapping of builder params passed to the
      builder module's `make_config(**name)`; ignored for 'directory'.
    data_dir: tfds data directory; for 'directory', the dataset's version directory.
    prepare: build the data set when it is missing (Shapes World is generated offline).
  """
  if source not in SOURCES:
    raise ValueError(f"data source {source!r} is not one of {SOURCES}.")
  if not data_dir or not epath.Path(data_dir).is_dir():
    if not (prepare and source != "directory"):
      raise ValueError(f"data_dir {data_dir!r} (source {source!r}) is not an existing "
                       "directory; build the data set first or set prepare=True.")
  if source == "directory":
    return tfds.builder_from_directory(data_dir)
  module = importlib.import_module(_BUILDERS[source][0])
  cls = getattr(module, _BUILDERS[source][1])
  if isinstance(name, str):
    config = name
  else:  # builder params, e.g. {'level': 'full', 'sizes': [(17, 64, 64)]}
    config = module.make_config(**(name.to_dict() if hasattr(name, "to_dict") else name))
  builder = cls(config=config, data_dir=data_dir)
  if not builder.is_prepared():
    if not prepare:
      raise ValueError(f"{source} data set {builder.info.full_name!r} is not prepared in "
                       f"{data_dir!r}; build it first or set prepare=True.")
    builder.download_and_prepare()
  return builder


# --- Per-element transforms (module level: grain workers are spawned and unpickle them) ---


class _EpochShuffle(grain.MapDataset):
  """`indices` in a seeded random order, a new order each epoch (epoch = index // n).

  Stands in for grain's `shuffle`, whose index_shuffle costs milliseconds per element on
  small sets (a rare clip size may have a dozen records); one numpy permutation per
  epoch, cached, costs microseconds per element. The order depends only on (seed, epoch).
  """

  def __init__(self, indices: np.ndarray, seed: int):
    super().__init__()
    self._indices = indices
    self._seed = seed
    self._cache: dict[int, np.ndarray] = {}  # epoch -> shuffled indices

  def __len__(self) -> int:
    return len(self._indices)

  def __str__(self) -> str:
    return f"_EpochShuffle(n={len(self._indices)})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(index, len(self._indices))
    order = self._cache.get(epoch)
    if order is None:
      order = np.random.default_rng([self._seed, epoch]).permutation(self._indices)
      # Prefetch threads straddle epoch boundaries: keep the neighbours. A whole-dict
      # assignment is atomic, so threads need no lock (a race only recomputes).
      self._cache = {e: o for e, o in self._cache.items() if abs(e - epoch) == 1}
      self._cache[epoch] = order
    return order[i]


class _ReadClip(grain.transforms.Map):
  """Maps a record index to a clip dict; -1 (eval padding) gives a black clip, mask False."""

  def __init__(self, records: Any, size: Size):
    self.records = records
    self.size = size

  def map(self, element) -> dict[str, Any]:
    key = int(element)
    if key < 0:
      return {"video": np.zeros((*self.size, 3), np.uint8), "caption": b"",
              "short_caption": b"", "index": np.int64(-1), "mask": np.bool_(False)}
    record = self.records[key]
    video = record["video"]
    if video.shape != (*self.size, 3):
      raise ValueError(f"Record {key} has video shape {video.shape} but the recorded size "
                       f"is {self.size}; the dataset metadata is stale, rebuild it.")
    return {"video": video, "caption": record["caption"],
            "short_caption": record.get("short_caption", b""), "index": np.int64(key),
            "mask": np.bool_(True)}


def _crop_normalize(clip: dict[str, Any], out_size: Size,
                    rng: np.random.Generator | None) -> dict[str, Any]:
  """Crops `video` uint8 [T, H, W, 3] to `out_size` and maps it to float32 in [-1, 1].

  Random offsets from `rng`, centre crop when `rng` is None. No flips: captions say
  "from left to right".
  """
  video = clip["video"]
  starts = []
  for have, want in zip(video.shape[:3], out_size):
    slack = have - want
    starts.append(int(rng.integers(0, slack + 1)) if rng is not None else slack // 2)
  (t0, h0, w0), (t, h, w) = starts, out_size
  # Crop the uint8 clip before converting, so only the kept pixels become float32.
  x = video[t0:t0 + t, h0:h0 + h, w0:w0 + w].astype(np.float32)
  # (x - 127.5) / 127.5 maps 0 and 255 to exactly -1 and 1 (127.5 is exact in float32).
  x -= 127.5
  x /= 127.5
  return {**clip, "video": x}


class _RandomCrop(grain.transforms.RandomMap):
  """Random crop in time and space, then normalise (training)."""

  def __init__(self, out_size: Size):
    self.out_size = out_size

  def random_map(self, element, rng: np.random.Generator):
    return _crop_normalize(element, self.out_size, rng)


class _CentreCrop(grain.transforms.Map):
  """Centre crop, then normalise (evaluation)."""

  def __init__(self, out_size: Size):
    self.out_size = out_size

  def map(self, element):
    return _crop_normalize(element, self.out_size, None)


# --- Planning: one stream per (source, size), checked before any data is read -----------


def _as_size(value: Any, where: str) -> Size:
  """A (T, H, W) from a tuple/list of three ints or a 'TxHxW' string."""
  parts = value.split("x") if isinstance(value, str) else value
  try:
    size = tuple(int(v) for v in parts)
  except (TypeError, ValueError):
    size = ()
  if len(size) != 3 or min(size) < 1:
    raise ValueError(f"{where}={value!r} is not a clip size: expected (T, H, W) or "
                     "'TxHxW' with positive ints.")
  return size


def _sized_table(table: Mapping[Any, Any] | None, where: str) -> dict[Size, Any]:
  return {_as_size(k, f"{where} key"): v for k, v in (table or {}).items()}


def _out_size(size: Size, crop: Size | None, where: str) -> Size:
  """The size a clip of `size` is cropped to. Images (T = 1) keep their single frame."""
  if crop is None:
    return size
  out = (1 if size[0] == 1 else crop[0], crop[1], crop[2])
  if any(o > s for o, s in zip(out, size)):
    raise ValueError(f"crop (T, H, W)={crop} is bigger than clips of size {size} in "
                     f"{where}; use a crop no larger than the smallest clip.")
  return out


def _check_batch(batch: int, process_count: int, where: str) -> int:
  """Returns the per-process batch size of a global `batch`."""
  if batch < 1 or batch % process_count:
    raise ValueError(f"{where}={batch} must be a positive multiple of the process count "
                     f"({process_count}), so every process gets the same batch.")
  return batch // process_count


def _source_shares(sources: Sequence[ClipSource]) -> list[float]:
  """Share of clips per source: the given weights, or proportional to record counts."""
  weights = [s.weight for s in sources]
  if all(w is None for w in weights):
    weights = [len(s.sizes) for s in sources]
  elif any(w is None for w in weights) or min(weights) < 0 or sum(weights) <= 0:
    raise ValueError(f"source weights {weights} must all be given (non-negative, not all "
                     "zero) or all be None (proportional to record counts).")
  return [w / sum(weights) for w in weights]


def _plan_streams(sources: Sequence[ClipSource], *, batch_size: int,
                  batch_sizes: Mapping[Any, int] | None,
                  size_weights: Mapping[Any, float] | None, crop: Size | None,
                  process_count: int, train: bool) -> list[_Stream]:
  """Groups each source's records by size and checks every size against the config."""
  if not sources:
    raise ValueError("pixel pipeline needs at least one source.")
  default_batch = _check_batch(batch_size, process_count, "batch_size")
  batches = {k: _check_batch(v, process_count, f"batch_sizes[{k}]")
             for k, v in _sized_table(batch_sizes, "batch_sizes").items()}
  weights = _sized_table(size_weights, "weights")
  if crop is not None:
    crop = _as_size(crop, "crop")
    features.check_clip_size(*crop, where="crop")
  all_sizes = np.concatenate([np.asarray(src.sizes).reshape(-1, 3) for src in sources])
  present = {tuple(int(v) for v in s) for s in np.unique(all_sizes, axis=0)}
  for where, table in (("batch_sizes", batches), ("weights", weights)):
    if unknown := sorted(set(table) - present):
      raise ValueError(f"{where} names sizes {unknown} that no source has; sizes present: "
                       f"{sorted(present)}.")
  streams = []
  for source_id, (src, share) in enumerate(zip(sources, _source_shares(sources))):
    streams += _plan_source(source_id, src, share, batches, default_batch, weights, crop,
                            process_count, train)
  if not streams:
    raise ValueError(f"weights {size_weights} leave no clip size to train on.")
  return streams


def _plan_source(source_id: int, src: ClipSource, share: float, batches: dict[Size, int],
                 default_batch: int, weights: dict[Size, float], crop: Size | None,
                 process_count: int, train: bool) -> list[_Stream]:
  """The streams of one source; see `_plan_streams`."""
  if len(src.sizes) != len(src.records):
    raise ValueError(f"{src.name} has {len(src.records)} records but {len(src.sizes)} "
                     "recorded sizes; rebuild it.")
  sizes, inverse = np.unique(np.asarray(src.sizes).reshape(-1, 3), axis=0,
                             return_inverse=True)
  sizes = [tuple(int(v) for v in s) for s in sizes]
  counts = np.bincount(inverse.reshape(-1), minlength=len(sizes))
  if weights and (missing := [s for s in sizes if s not in weights]):
    raise ValueError(f"weights give no weight for sizes {missing} of {src.name}; "
                     f"weighted sizes: {sorted(weights)}.")
  size_share = [weights[s] if weights else c for s, c in zip(sizes, counts)]
  total = sum(size_share) or 1.0
  streams = []
  for k, size in enumerate(sizes):
    if train and share * size_share[k] <= 0:
      continue  # a zero weight leaves this size (or source) out of training
    if train and counts[k] < process_count:
      raise ValueError(f"{src.name} has {counts[k]} clips of size {size}, fewer than the "
                       f"{process_count} processes; give it weight 0 or add clips.")
    streams.append(_Stream(
        source_id, src.records, size, _out_size(size, crop, src.name),
        np.flatnonzero(inverse.reshape(-1) == k).astype(np.int64),
        batches.get(size, default_batch), share * size_share[k] / total))
  return streams


# --- Datasets ---------------------------------------------------------------------------


def _stream_dataset(stream: _Stream, *, seed: int, train: bool, process_index: int,
                    process_count: int) -> grain.MapDataset:
  """Batches of one (source, size) stream: infinite (train) or one padded pass (eval)."""
  seeds = np.random.SeedSequence([seed, stream.source_id, *stream.size]).generate_state(2)
  lb = stream.local_batch
  if train:
    # Every process draws the same order (same seed), then takes its slice, so the
    # slices partition every epoch; each epoch (index // n) draws a new order.
    ds = _EpochShuffle(stream.indices, int(seeds[0]))
    ds = ds[process_index::process_count].repeat()
  else:
    # Pad every process's shard to the same whole number of batches, so all processes
    # run the same number of eval steps.
    shard = stream.indices[process_index::process_count]
    length = math.ceil(math.ceil(len(stream.indices) / process_count) / lb) * lb
    ds = grain.MapDataset.source(np.pad(shard, (0, length - len(shard)), constant_values=-1))
  ds = ds.map(_ReadClip(stream.records, stream.size))
  if train:
    ds = ds.random_map(_RandomCrop(stream.out_size), seed=int(seeds[1]))
  else:
    ds = ds.map(_CentreCrop(stream.out_size))
  return ds.batch(lb, drop_remainder=True)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if not 0 <= pi < pc:
    raise ValueError(f"process_index={pi} must be in [0, process_count={pc}).")
  return pi, pc


def pixel_dataset(sources: Sequence[ClipSource], *, batch_size: int, seed: int,
                  train: bool = True, crop: Sequence[int] | None = None,
                  batch_sizes: Mapping[Any, int] | None = None,
                  size_weights: Mapping[Any, float] | None = None,
                  process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
  """The pixel pipeline as a grain MapDataset of this process's batches.

  Args:
    sources: the clip sources to mix (see `ClipSource.weight`).
    batch_size: global batch size (all processes together) for every size.
    seed: seeds the shuffles and random crops (non-negative int).
    train: infinite, shuffled, random crops, size streams mixed; else one pass in record
      order, centre crops, sizes one after another, last batches padded (`mask`).
    crop: (T, H, W) to crop clips to (images keep T = 1), or None to keep each size.
    batch_sizes: global batch size per record size, {(T, H, W) or 'TxHxW': int}.
    size_weights: share of clips per record size within each source; default
      proportional to record counts. Weight 0 leaves a size out of training.
    process_index, process_count: this process's shard; default from jax.

  Returns:
    Batches as described in the module docstring; sizes per batch are uniform.
  """
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r} must be a non-negative int.")
  pi, pc = _process(process_index, process_count)
  streams = _plan_streams(sources, batch_size=batch_size, batch_sizes=batch_sizes,
                          size_weights=size_weights, crop=crop, process_count=pc,
                          train=train)
  datasets = [_stream_dataset(s, seed=int(seed), train=train, process_index=pi,
                              process_count=pc) for s in streams]
  if not train:
    return grain.MapDataset.concatenate(datasets)
  # Weights are per batch: a stream's share of clips divided by its batch size.
  return grain.MapDataset.mix(datasets, [s.clip_share / s.local_batch for s in streams])


def prefetch(ds: grain.MapDataset, *, num_workers: int = 0,
             buffer: int = 2) -> grain.IterDataset:
  """Reads `buffer` batches ahead in threads, in `num_workers` processes (0: in-process).

  Iterate the result; `iter(ds).get_state()` / `.set_state()` checkpoint the position.
  """
  if num_workers < 0 or buffer < 0:
    raise ValueError(f"num_workers={num_workers} and prefetch={buffer} must be >= 0.")
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=buffer, prefetch_buffer_size=buffer))
  if num_workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(buffer, 1)))
  return ds


# --- Config entry point -----------------------------------------------------------------


def _config_sources(data_cfg: Any, split: str) -> list[ClipSource]:
  """The `ClipSource`s of a data config: its `sources` list, or the section itself."""
  entries = data_cfg.get("sources") or [data_cfg]
  sources = []
  for i, entry in enumerate(entries):
    where = f"data.sources[{i}]" if data_cfg.get("sources") else "data"
    for key in ("source", "name", "data_dir"):
      if key not in entry:
        raise ValueError(f"{where} has no field {key!r}; expected fields source "
                         f"({'|'.join(SOURCES)}), name, data_dir.")
    builder = load_builder(entry["source"], entry["name"], entry["data_dir"],
                           prepare=bool(entry.get("prepare", False)))
    sources.append(source_from_builder(builder, entry.get("split") or split,
                                       weight=entry.get("weight")))
  return sources


def make_pixel_dataset(data_cfg: Any, *, split: str, batch_size: int, seed: int,
                       train: bool = True, process_index: int | None = None,
                       process_count: int | None = None) -> grain.IterDataset:
  """The VAE's pixel pipeline from a data config section.

  Fields of `data_cfg` (an ml_collections ConfigDict or a mapping):
    source: 'shapes_world' | 'video_folder' | 'directory' (a prepared version dir).
    name: builder config name (e.g. 'full_64x64x17') or a dict for `make_config(**name)`.
    data_dir: tfds data directory.
    prepare: optional, build a missing data set (default False).
    sources: optional list of {source, name, data_dir, weight, split, prepare} to mix
      instead of the single source above; `split` defaults to the `split` argument.
    crop: optional (T, H, W) crop; None keeps every size.
    weights: optional share of clips per size, {'TxHxW': w}.
    batch_sizes: optional global batch size per size, {'TxHxW': b}.
    num_workers: worker processes (0: in-process). prefetch: batches read ahead.

  Everything is checked (data dirs, split, crop against the sizes, batch sizes against
  the process count) before this returns; no clip is read until iteration.

  Returns:
    A grain IterDataset of this process's batches (see the module docstring).
  """
  crop = data_cfg.get("crop")
  ds = pixel_dataset(
      _config_sources(data_cfg, split), batch_size=batch_size, seed=seed, train=train,
      crop=tuple(crop) if crop is not None else None,
      batch_sizes=_plain(data_cfg.get("batch_sizes")),
      size_weights=_plain(data_cfg.get("weights")),
      process_index=process_index, process_count=process_count)
  return prefetch(ds, num_workers=int(data_cfg.get("num_workers", 0)),
                  buffer=int(data_cfg.get("prefetch", 2)))


def _plain(table: Any) -> dict | None:
  """A ConfigDict (or None) as a plain dict."""
  if table is None:
    return None
  return table.to_dict() if hasattr(table, "to_dict") else dict(table)


# --- Device placement -------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def process_row_shards(sharding: NamedSharding) -> int:
  """How many distinct blocks of batch rows the processes hold under `sharding`.

  process_count when only batch-splitting axes span processes; fewer when processes share
  rows (a context or tensor axis across hosts), which then load identical data.
  """
  axes = sharding.spec[0] if len(sharding.spec) else None
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  rows = math.prod(sharding.mesh.shape[a] for a in axes)
  blocks: dict[int, set[int]] = {}
  for device, index in sharding.devices_indices_map((rows,)).items():
    blocks.setdefault(device.process_index, set()).add(index[0].start or 0)
  return len({frozenset(b) for b in blocks.values()})


def global_batch_to_device(batch: Mapping[str, Any], mesh: jax.sharding.Mesh,
                           spec: P | None = None) -> dict[str, Any]:
  """Turns this process's batch into global jax.Arrays, sharded along the batch axis.

  Each process passes its own [B_local, ...] batch, the rows its devices hold
  (`jax.make_array_from_process_local_data`): with only data/fsdp spanning processes the
  global leading dimension is B_local * process_count. When a context or tensor axis spans
  processes, processes that hold the same rows must pass the same data: shard the input
  by `sora_jax.sharding.mesh.process_batch_shard`, not by process index. Text
  (bytes/str/object arrays) has no jax dtype and stays on the host as numpy.

  Args:
    batch: e.g. {'video': float32 [B_local, T, H, W, 3], 'mask': bool [B_local], ...}.
    mesh: the device mesh.
    spec: partition spec of the leading axes; default shards dim 0 over all mesh axes.
  """
  sharding = NamedSharding(mesh, spec if spec is not None else P(tuple(mesh.axis_names)))
  shards = process_row_shards(sharding)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "SUO":
      out[key] = value
    else:
      out[key] = jax.make_array_from_process_local_data(
          sharding, value, (value.shape[0] * shards, *value.shape[1:]))
  return out
