r"""Builds the tfds dataset of a folder of captioned videos; prints its report as JSON.

  python -m data_pipelines.video_folder.build --folder F --data_dir D \
      --frames 17 --sizes 64x64,48x80 [--validation_fraction 0.1] [--frame_stride 2] \
      [--storage mp4|raw] [--workers 8]

The dataset lands in D/video_folder/<name>/1.1.0 (name printed in the report's
"dataset"); train on it with the data config {source: directory, data_dir: that
directory}, or read it with `pipeline.source_from_builder(tfds.builder_from_directory(
that directory), "train")`, which decodes the stored mp4 clips (`tfds.data_source(
"video_folder/<name>", split="train", data_dir=D)` alone gives their bytes). An existing
build is reused unless --overwrite. The last line of stdout is the build report
(build_report.json) as one line of JSON. Bad input exits with status 2 and the reason on
stderr.
"""
import json

from absl import flags

from data_pipelines import usage
from data_pipelines.video_folder import builder as builder_lib

_FOLDER = flags.DEFINE_string("folder", None, "Folder of media files + captions.jsonl.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir to write the dataset to.")
_FRAMES = flags.DEFINE_integer("frames", 17, "Clip length T = 4k + 1.")
_SIZES = flags.DEFINE_string("sizes", "64x64", "Comma-separated HxW buckets, e.g. 64x64,48x80.")
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", 0.0, "Share of files held out for the validation split.")
_FRAME_STRIDE = flags.DEFINE_integer("frame_stride", 1, "Keep every n-th video frame.")
_STORAGE = flags.DEFINE_enum(
    "storage", "mp4", builder_lib.STORAGES,
    "mp4: clips H.264-encoded (near lossless, small); raw: exact uint8 frames (large).")
_WORKERS = flags.DEFINE_integer(
    "workers", 0, "Decoding processes; 0: min(CPUs, 8); 1: in this process.")
_NAME = flags.DEFINE_string("name", None, "Config name; default derived from the flags.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset exists.")
flags.mark_flags_as_required(["folder", "data_dir"])


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
  """'64x64,48x80' -> ((64, 64), (48, 80)); raises BadInputError naming the flag."""
  sizes = []
  for part in text.split(","):
    h, sep, w = part.strip().lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit()):
      raise builder_lib.BadInputError(
          f"--sizes={text!r}: {part!r} is not HxW; expected e.g. --sizes=64x64,48x80.")
    sizes.append((int(h), int(w)))
  return tuple(sizes)


def main(argv):
  if len(argv) > 1:
    raise usage.InputError(f"unexpected arguments: {argv[1:]}")
  try:
    config = builder_lib.make_config(
        _FOLDER.value, frames=_FRAMES.value, sizes=parse_sizes(_SIZES.value),
        validation_fraction=_VALIDATION_FRACTION.value, frame_stride=_FRAME_STRIDE.value,
        storage=_STORAGE.value, name=_NAME.value)
    report = builder_lib.build(config, _DATA_DIR.value, overwrite=_OVERWRITE.value,
                               workers=_WORKERS.value or None)
  except builder_lib.BadInputError as e:
    raise usage.InputError(str(e)) from e
  print(json.dumps(report), flush=True)


if __name__ == "__main__":
  usage.run(main)
