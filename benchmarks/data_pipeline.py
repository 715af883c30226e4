"""Throughput of the pixel pipeline (`data_pipelines/pipeline.py`) on Shapes World.

Builds a small Shapes World data set (default 256 train clips of 17x64x64) in a temp dir,
then times training batches for each worker count, warm-up (worker start, first batches)
excluded, and prints one JSON object.

  python benchmarks/data_pipeline.py                       # workers 0 and 2
  python benchmarks/data_pipeline.py --workers 0,4 --seconds 20 --batch_size 32
  # the DiT's packed batches over precomputed latents (read, tokenize, pack, batch):
  python benchmarks/data_pipeline.py --latents runs/demo/latents \
      --tokenizer runs/demo/dit/tokenizer.model --batch_size 32 --workers 0,2

Until the Shapes World tfds builder exists, the clips come from a stand-in builder here
that writes the Shapes World generator's clips (same pixels, same record contract); the
JSON says which one ran ("builder").
"""
import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time

from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import features
from data_pipelines import pipeline


class _StandInShapesWorld(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shapes World clips of one size via the generator, for when the builder is missing."""

  VERSION = tfds.core.Version("0.0.1")
  SIZE = (17, 64, 64)
  COUNTS = {"train": 256, "validation": 16}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=features.clip_features(),
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    for split, n in self.COUNTS.items():
      features.record_sizes(self.info, split, [self.SIZE] * n)
    return {split: self._generate_examples(split, n) for split, n in self.COUNTS.items()}

  def _generate_examples(self, split, n):
    from data_pipelines.shapes_world import generator  # pylint: disable=g-import-not-at-top
    for i in range(n):
      clip = generator.make_clip(split, i, *self.SIZE)
      yield i, {"video": clip.video, "caption": clip.caption,
                "short_caption": clip.short_caption}


def build(data_dir: str, size: tuple[int, int, int], train_clips: int):
  """Returns (prepared builder, which builder ran)."""
  try:
    from data_pipelines.shapes_world import builder as sw  # pylint: disable=g-import-not-at-top
  except ImportError:
    sw = None
  if sw is not None:
    cfg = sw.make_config(level="full", sizes=[size],
                         num_examples={"train": train_clips, "validation": 16})
    b = sw.ShapesWorld(config=cfg, data_dir=data_dir)
    kind = "shapes_world.builder.ShapesWorld"
  else:
    _StandInShapesWorld.SIZE = size
    _StandInShapesWorld.COUNTS = {"train": train_clips, "validation": 16}
    b = _StandInShapesWorld(data_dir=data_dir, file_format="array_record")
    kind = "stand-in builder (shapes_world.generator clips; ShapesWorld builder missing)"
  b.download_and_prepare()
  return b, kind


def measure(source, *, num_workers: int, batch_size: int, prefetch: int,
            warmup_batches: int, seconds: float) -> dict:
  """Times training batches after `warmup_batches` (which include worker start-up)."""
  ds = pipeline.prefetch(pipeline.pixel_dataset([source], batch_size=batch_size, seed=0),
                         num_workers=num_workers, buffer=prefetch)
  it = iter(ds)
  start = time.perf_counter()
  for _ in range(warmup_batches):
    next(it)
  warmup = time.perf_counter() - start
  batches, nbytes, start = 0, 0, time.perf_counter()
  while (elapsed := time.perf_counter() - start) < seconds:
    batch = next(it)
    batches += 1
    nbytes += batch["video"].nbytes
  it.close()
  clips = batches * batch_size
  return {"num_workers": num_workers, "clips_per_s": round(clips / elapsed, 1),
          "mb_per_s_float32": round(nbytes / 1e6 / elapsed, 1), "batches": batches,
          "seconds_measured": round(elapsed, 2), "warmup_seconds": round(warmup, 2),
          "warmup_batches": warmup_batches}


def measure_packed(records, tokenizer, *, num_workers: int, batch_size: int,
                   seq_len: int, max_clips: int, warmup_batches: int, seconds: float) -> dict:
  """Packed DiT batches (`latents.make_latent_dataset`, demo packing) per second."""
  from data_pipelines import latents  # pylint: disable=g-import-not-at-top
  ds = latents.make_latent_dataset(records, tokenizer, patch=(1, 2, 2), seq_len=seq_len,
                                   max_clips=max_clips, text_len=32, batch_size=batch_size,
                                   seed=0, train=True, num_workers=num_workers)
  it = iter(ds)
  start = time.perf_counter()
  for _ in range(warmup_batches):
    next(it)
  warmup = time.perf_counter() - start
  batches, clips, tokens, start = 0, 0, 0, time.perf_counter()
  while (elapsed := time.perf_counter() - start) < seconds:
    batch = next(it)
    batches += 1
    seg = batch["segment_ids"]
    tokens += int((seg > 0).sum())
    clips += sum(len(np.unique(row[row > 0])) for row in seg)
  return {"num_workers": num_workers, "batches_per_s": round(batches / elapsed, 2),
          "ms_per_batch": round(1e3 * elapsed / batches, 1),
          "clips_per_s": round(clips / elapsed, 1), "tokens_per_s": round(tokens / elapsed),
          "seconds_measured": round(elapsed, 2), "warmup_seconds": round(warmup, 2)}


def main_packed(args):
  from data_pipelines import latents  # pylint: disable=g-import-not-at-top
  from sora_jax.text import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  records = latents.LatentRecords(os.path.join(args.latents, "train"))
  tokenizer = tok_lib.Tokenizer.load(args.tokenizer)
  runs = [measure_packed(records, tokenizer, num_workers=int(w), batch_size=args.batch_size,
                         seq_len=args.seq_len, max_clips=args.max_clips,
                         warmup_batches=args.warmup_batches, seconds=args.seconds)
          for w in args.workers.split(",")]
  print(json.dumps({
      "benchmark": "packed_latent_pipeline", "latents": args.latents,
      "records": len(records), "batch_size": args.batch_size, "seq_len": args.seq_len,
      "max_clips": args.max_clips, "runs": runs,
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "python": platform.python_version()},
      "date": time.strftime("%Y-%m-%d")}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="17x64x64", help="TxHxW of the clips")
  parser.add_argument("--train_clips", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
  parser.add_argument("--warmup_batches", type=int, default=5)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--latents", default="",
                      help="a precomputed latents dir (with train/): time packed DiT batches")
  parser.add_argument("--tokenizer", default="", help="with --latents: a tokenizer.model")
  parser.add_argument("--seq_len", type=int, default=640, help="with --latents")
  parser.add_argument("--max_clips", type=int, default=8, help="with --latents")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags, also in its worker processes
  if args.latents:
    if not args.tokenizer or not os.path.exists(args.tokenizer):
      parser.error(f"--latents needs --tokenizer, an existing tokenizer.model; got "
                   f"{args.tokenizer!r}.")
    main_packed(args)
    return
  tfds.disable_progress_bar()  # stdout holds only the JSON
  size = tuple(int(v) for v in args.size.split("x"))
  with tempfile.TemporaryDirectory() as data_dir:
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # tfds prints progress to stdout
      builder, kind = build(data_dir, size, args.train_clips)
    build_s = time.perf_counter() - start
    source = pipeline.source_from_builder(builder, "train")
    runs = [measure(source, num_workers=int(w), batch_size=args.batch_size,
                    prefetch=args.prefetch, warmup_batches=args.warmup_batches,
                    seconds=args.seconds) for w in args.workers.split(",")]
  clip_mb = np.prod(size) * 3 * 4 / 1e6
  print(json.dumps({
      "benchmark": "pixel_pipeline", "builder": kind, "size_thw": list(size),
      "train_clips": args.train_clips, "batch_size": args.batch_size,
      "prefetch": args.prefetch, "mb_per_clip_float32": round(float(clip_mb), 3),
      "build_seconds": round(build_s, 1), "runs": runs,
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "python": platform.python_version()},
      "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
  main()
