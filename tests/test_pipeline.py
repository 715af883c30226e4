"""Tests of the grain pixel pipeline (`data_pipelines/pipeline.py`).

A tiny tfds builder written here (`_PipelineTestClips`, random clips of a few sizes,
following `features.py`) keeps the tests independent of any real data set.
"""
import collections
import json

import jax
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import features
from data_pipelines import latents as latents_lib
from data_pipelines import pipeline

IMAGE, VIDEO = (1, 32, 32), (9, 32, 48)
# Records per split and size; the split's records alternate between the sizes in runs.
SPLITS = {"train": {IMAGE: 24, VIDEO: 12}, "validation": {IMAGE: 5, VIDEO: 3}}


def _split_sizes(split):
  """Record sizes of a split, in record order: runs of 4 of each size, interleaved."""
  left = dict(SPLITS[split])
  sizes = []
  while any(left.values()):
    for size in left:
      take = min(4, left[size])
      sizes += [size] * take
      left[size] -= take
  return sizes


def _video(split, i, size):
  """uint8 [T, H, W, 3], random per record, holding both 0 and 255."""
  seed = [0 if split == "train" else 1, i]
  video = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
  video.flat[0], video.flat[1] = 0, 255
  return video


class _PipelineTestClips(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Random clips of two sizes, following the record contract of `features.py`."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=features.clip_features(),
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    for split in SPLITS:
      features.record_sizes(self.info, split, _split_sizes(split))
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    for i, size in enumerate(_split_sizes(split)):
      yield i, {"video": _video(split, i, size), "caption": f"{split} clip {i}",
                "short_caption": f"{i}"}


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  b = _PipelineTestClips(data_dir=str(tmp_path_factory.mktemp("tfds")),
                         file_format="array_record")
  b.download_and_prepare()
  return b


@pytest.fixture(scope="module")
def train_source(builder):
  return pipeline.source_from_builder(builder, "train")


def _take(ds, n):
  """Up to `n` batches of a MapDataset (fewer when a one-pass dataset ends)."""
  it = iter(pipeline.prefetch(ds))
  return [batch for batch, _ in zip(it, range(n))]


def _train(sources, **kw):
  kw = {"batch_size": 4, "seed": 0, "train": True, **kw}
  return pipeline.pixel_dataset(sources if isinstance(sources, list) else [sources], **kw)


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_format_and_values(train_source):
  for batch in _take(_train(train_source), 6):
    assert set(batch) == {"video", "caption", "short_caption", "index", "mask"}
    video = batch["video"]
    assert video.dtype == np.float32 and video.shape[0] == 4 and video.shape[-1] == 3
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert batch["mask"].all()
    for row, i in enumerate(batch["index"]):
      record = train_source.records[int(i)]
      assert batch["caption"][row] == record["caption"] == f"train clip {i}".encode()
      assert batch["short_caption"][row] == f"{i}".encode()
      # No crop: the clip is the record, normalised.
      np.testing.assert_array_equal(
          video[row], (record["video"].astype(np.float32) - 127.5) / 127.5)
  # The record holding 0 and 255 maps to exactly -1 and 1.
  first = _take(pipeline.pixel_dataset([train_source], batch_size=4, seed=0, train=False), 1)
  assert first[0]["video"][0].min() == -1.0 and first[0]["video"][0].max() == 1.0


def test_seed_determinism(train_source):
  crop = (5, 32, 32)
  a = _take(_train(train_source, crop=crop), 8)
  _assert_same(a, _take(_train(train_source, crop=crop), 8))
  b = _take(_train(train_source, crop=crop, seed=1), 8)
  assert any(not np.array_equal(x["index"], y["index"]) for x, y in zip(a, b))


def test_eval_sees_every_record_once(builder):
  source = pipeline.source_from_builder(builder, "validation")
  batches = _take(pipeline.pixel_dataset([source], batch_size=4, seed=0, train=False), 100)
  assert len(batches) == 3  # 5 images -> 2 batches, 3 videos -> 1 batch (padded)
  seen = np.concatenate([b["index"][b["mask"]] for b in batches])
  assert sorted(seen) == list(range(8))
  padded = np.concatenate([b["index"][~b["mask"]] for b in batches])
  assert (padded == -1).all() and len(padded) == 4


@pytest.mark.parametrize("count", [2, 3])
def test_eval_process_shards_partition(builder, count):
  source = pipeline.source_from_builder(builder, "train")
  per_process = [
      _take(pipeline.pixel_dataset([source], batch_size=2 * count, seed=0, train=False,
                                   process_index=p, process_count=count), 1000)
      for p in range(count)]
  assert len({len(b) for b in per_process}) == 1  # same number of eval steps everywhere
  seen = np.concatenate([b["index"][b["mask"]] for bs in per_process for b in bs])
  assert sorted(seen) == list(range(36))


def test_train_process_shards_partition_each_epoch(train_source):
  """Per size, each process's first (second) epoch share together is that size once."""
  sizes = np.asarray(train_source.sizes)
  epochs = {0: [], 1: []}
  for p in range(2):
    stream = collections.defaultdict(list)  # size -> this process's indices in order
    for b in _take(_train(train_source, process_index=p, process_count=2), 40):
      stream[tuple(sizes[b["index"][0]])] += list(b["index"])
    for size, n in SPLITS["train"].items():
      share = n // 2
      assert len(stream[size]) >= 2 * share
      epochs[0] += stream[size][:share]
      epochs[1] += stream[size][share:2 * share]
  for e in (0, 1):
    assert sorted(epochs[e]) == list(range(36))
  assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_batches_never_mix_sizes_and_mixture_proportions(train_source):
  sizes = np.asarray(train_source.sizes)
  batches = _take(_train(train_source), 120)
  counts = collections.Counter()
  for b in batches:
    record_sizes = {tuple(sizes[i]) for i in b["index"]}
    assert len(record_sizes) == 1
    assert b["video"].shape[1:4] == next(iter(record_sizes))
    counts[b["video"].shape[1:4]] += 1
  assert abs(counts[IMAGE] / 120 - 24 / 36) < 0.05  # proportional to records

  weighted = _take(_train(train_source, size_weights={"1x32x32": 1, "9x32x48": 3}), 120)
  frac = np.mean([b["video"].shape[1] == 1 for b in weighted])
  assert abs(frac - 0.25) < 0.05
  videos_only = _take(_train(train_source, size_weights={IMAGE: 0, VIDEO: 1}), 10)
  assert all(b["video"].shape[1] == VIDEO[0] for b in videos_only)


def test_per_size_batch_sizes_keep_clip_shares(train_source):
  batches = _take(_train(train_source, batch_sizes={IMAGE: 8, VIDEO: 2}), 150)
  clips = collections.Counter()
  for b in batches:
    assert len(b["index"]) == (8 if b["video"].shape[1] == 1 else 2)
    clips[b["video"].shape[1]] += len(b["index"])
  assert abs(clips[1] / sum(clips.values()) - 24 / 36) < 0.05


def test_crop_train_random_eval_centre(train_source):
  def find(video, record):
    """Offsets (t, h, w) at which `video` is a window of `record`, as float."""
    t, h, w = video.shape[:3]
    tt, hh, ww = record.shape[:3]
    for t0 in range(tt - t + 1):
      for h0 in range(hh - h + 1):
        for w0 in range(ww - w + 1):
          if np.array_equal(record[t0:t0 + t, h0:h0 + h, w0:w0 + w], video):
            return t0, h0, w0
    raise AssertionError("not a window of its record")

  offsets = set()
  for b in _take(_train(train_source, crop=(5, 32, 32)), 10):
    for row, i in enumerate(b["index"]):
      video = np.rint(b["video"][row] * 127.5 + 127.5).astype(np.uint8)
      record = train_source.records[int(i)]["video"]
      assert video.shape[:3] == ((1, 32, 32) if record.shape[0] == 1 else (5, 32, 32))
      offsets.add(find(video, record))
  assert len(offsets) > 3  # random offsets, not one fixed window
  for b in _take(pipeline.pixel_dataset([train_source], batch_size=4, seed=0, train=False,
                                        crop=(5, 32, 32)), 12):
    for row, i in enumerate(b["index"]):
      if b["video"].shape[1] == 5:
        video = np.rint(b["video"][row] * 127.5 + 127.5).astype(np.uint8)
        assert find(video, train_source.records[int(i)]["video"]) == (2, 0, 8)


def test_several_sources_mixed_by_weight(builder):
  train = pipeline.source_from_builder(builder, "train", weight=3.0)
  val = pipeline.source_from_builder(builder, "validation", weight=1.0)
  batches = _take(_train([train, val], batch_size=2), 200)
  from_val = np.mean([b["caption"][0].startswith(b"validation") for b in batches])
  assert abs(from_val - 0.25) < 0.05
  for b in batches:  # never mixes sources (or sizes) within a batch
    assert len({c.split()[0] for c in b["caption"]}) == 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_restore_gives_same_batches(train_source, num_workers):
  def dataset():
    return pipeline.prefetch(_train(train_source, crop=(5, 32, 32)),
                             num_workers=num_workers)
  it = iter(dataset())
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # checkpoints store it as JSON
  expected = [next(it) for _ in range(6)]
  restored = iter(dataset())
  restored.set_state(state)
  _assert_same(expected, [next(restored) for _ in range(6)])
  for i in (it, restored):
    i.close()


def test_make_pixel_dataset_from_config(builder):
  cfg = ml_collections.ConfigDict({
      "source": "directory", "name": "", "data_dir": builder.data_dir,
      "crop": (5, 32, 32), "num_workers": 0, "prefetch": 2,
      "weights": None, "batch_sizes": {"1x32x32": 8}})
  it = iter(pipeline.make_pixel_dataset(cfg, split="train", batch_size=4, seed=0))
  shapes = {next(it)["video"].shape for _ in range(10)}
  assert shapes == {(8, 1, 32, 32, 3), (4, 5, 32, 32, 3)}
  entry = {"source": "directory", "name": "", "data_dir": builder.data_dir}
  mixed = ml_collections.ConfigDict({"sources": [
      {**entry, "weight": 1.0}, {**entry, "split": "validation", "weight": 1.0}]})
  it = iter(pipeline.make_pixel_dataset(mixed, split="train", batch_size=2, seed=0))
  from_val = np.mean([next(it)["caption"][0].startswith(b"validation") for _ in range(100)])
  assert abs(from_val - 0.5) < 0.05


def test_bad_inputs_fail_early(builder, train_source, tmp_path):
  cfg = ml_collections.ConfigDict(
      {"source": "directory", "name": "", "data_dir": builder.data_dir})
  with pytest.raises(ValueError, match=r"'test'.*existing splits: \['train', 'validation'\]"):
    pipeline.make_pixel_dataset(cfg, split="test", batch_size=4, seed=0)
  with pytest.raises(ValueError, match="not an existing directory"):
    pipeline.load_builder("shapes_world", "full_64x64x17", str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="'nope' is not one of"):
    pipeline.load_builder("nope", "x", str(tmp_path))
  with pytest.raises(ValueError, match=r"bigger than clips of size \(9, 32, 48\)"):
    _train(train_source, crop=(13, 32, 32))
  with pytest.raises(ValueError, match="T=3.*must be 4k\\+1"):
    _train(train_source, crop=(3, 32, 32))
  with pytest.raises(ValueError, match="batch_size=6 must be a positive multiple of .*4"):
    _train(train_source, batch_size=6, process_count=4, process_index=0)
  with pytest.raises(ValueError, match=r"weights names sizes \[\(5, 32, 32\)\]"):
    _train(train_source, size_weights={"5x32x32": 1.0, "1x32x32": 1.0})
  with pytest.raises(ValueError, match=r"weights give no weight for sizes \[\(9, 32, 48\)\]"):
    _train(train_source, size_weights={"1x32x32": 1.0})


def test_global_batch_to_device(train_source):
  mesh = jax.make_mesh((8,), ("data",))
  batch = _take(_train(train_source, batch_size=8), 1)[0]
  arrays = pipeline.global_batch_to_device(batch, mesh, P("data"))
  assert isinstance(arrays["video"], jax.Array)
  assert arrays["video"].shape == batch["video"].shape
  assert len(arrays["video"].sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(arrays["video"]), batch["video"])
  np.testing.assert_array_equal(np.asarray(arrays["index"]), batch["index"])
  assert isinstance(arrays["caption"], np.ndarray)  # text stays on the host


def test_shapes_world_from_config(tmp_path):
  """The config entry point on a tiny Shapes World, built on demand (prepare=True)."""
  sw = pytest.importorskip("data_pipelines.shapes_world.builder")
  del sw
  cfg = ml_collections.ConfigDict({
      "source": "shapes_world", "data_dir": str(tmp_path), "prepare": True,
      "name": {"level": "full", "sizes": [(5, 32, 32)],
               "num_examples": {"train": 4, "validation": 2}}})
  batch = next(iter(pipeline.make_pixel_dataset(cfg, split="train", batch_size=2, seed=0)))
  assert batch["video"].shape == (2, 5, 32, 32, 3) and batch["video"].dtype == np.float32
  assert all(len(c) > 0 for c in batch["caption"])


def test_latent_clips_tokenize_each_caption_once():
  """The DiT pipeline keeps token ids per caption: the same ids as tokenizing every record,
  one tokenizer call per distinct caption."""

  class Counting:
    def __init__(self):
      self.calls = 0

    def encode(self, texts, length):
      self.calls += 1
      ids = np.zeros((1, length), np.int32)
      codes = [ord(c) % 50 + 2 for c in texts[0]][:length]
      ids[0, :len(codes)] = codes
      return ids, ids > 0, None

  captions = ["a red circle", "a blue square", "a red circle", "a red star", "a blue square"]
  tokenizer, reference = Counting(), Counting()
  to_clip = latents_lib._ToClip(tokenizer, 8, (1, 2, 2), "caption")  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  for i, caption in enumerate(captions):
    clip = to_clip.map({"latents": rng.normal(size=(1, 2, 2, 3)).astype(np.float32),
                        "caption": caption, "index": i})
    want_ids, want_mask, _ = reference.encode([caption], 8)
    np.testing.assert_array_equal(clip["text_ids"], want_ids[0])
    np.testing.assert_array_equal(clip["text_mask"], want_mask[0])
  assert tokenizer.calls == len(set(captions)) == 3


class _ForeignClips(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Another tool's data set: `video` and `caption` only, no recorded sizes."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "video": tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8,
                                      encoding="zlib"),
        "caption": tfds.features.Text()}), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, size in enumerate(_split_sizes("train")):
      yield i, {"video": _video("train", i, size), "caption": f"clip {i}"}


def test_a_foreign_tfds_data_set_reads_without_our_metadata(tmp_path):
  """A prepared tfds directory from another builder (no sizes metadata, no short caption)
  loads as `source=directory`: sizes from one pass over its records, '' short captions."""
  foreign = _ForeignClips(data_dir=str(tmp_path), file_format="array_record")
  foreign.download_and_prepare()
  builder = pipeline.load_builder("directory", None, foreign.data_dir)
  source = pipeline.source_from_builder(builder, "train")
  np.testing.assert_array_equal(source.sizes, np.asarray(_split_sizes("train")))
  batches = _take(pipeline.pixel_dataset([source], batch_size=4, seed=0, train=False), 100)
  assert sum(int(b["mask"].sum()) for b in batches) == len(_split_sizes("train"))
  assert all(c == b"" for b in batches for c in b["short_caption"])
