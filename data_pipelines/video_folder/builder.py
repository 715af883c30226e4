"""A tfds builder for a folder of user videos and images with captions.

The folder holds media files (videos: mp4, webm, mov, avi, mkv, gif; images: png, jpg,
jpeg), in sub-folders or not, and a `captions.jsonl` with one JSON object a line:

  {"file": "<path relative to the folder>", "caption": "...", "short_caption": "..."}

(`short_caption` optional; other keys ignored; blank lines skipped). The builder writes
ArrayRecord clips following the record contract of `data_pipelines/features.py`:

  encoded_video:  the clip as H.264 mp4 bytes (PNG when T = 1), storage='mp4' (default);
  or video:       uint8 [T, H, W, 3], storage='raw' (exact frames, many times larger).
                  Either way `pipeline.source_from_builder` reads `video` uint8 [T, H, W, 3],
                  (H, W) one of the configured sizes.
  caption:        the caption line's `caption`.
  short_caption:  its `short_caption`, or ''.

Decisions (the Sora report trains on native aspect ratios; we approximate that with a few
configured buckets):
  * Size: each file gets the configured (H, W) whose aspect ratio is closest to its own
    (smallest |log(W/H) - log(w/h)|; ties go to the size listed first). Every frame is
    resized so it covers (H, W) and is centre-cropped to it (a small file is upscaled).
  * Time: after keeping every `frame_stride`-th frame, a video is cut into non-overlapping
    clips of T = `frames` frames; a leftover tail shorter than T is dropped. A video with
    fewer than T frames keeps its longest 4k+1 prefix (>= 5 frames); a shorter one is
    skipped as "too short". Images (and only images) become T = 1 clips.
  * Splits: `train`, plus `validation` when validation_fraction > 0. Each file goes
    whole to one split, so clips of one video never leak across splits. A file's score is
    a hash of its relative path in [0, 1); validation takes, lowest score first, every
    file scoring below validation_fraction, and keeps going until it holds at least one
    clip (tfds cannot write an empty split). Train takes every other captioned file.
  * Robustness: a file that cannot be used (missing, unreadable, corrupt, too short, no
    caption line) is skipped and named with its reason; the build goes on. The counts and
    the skipped list go to `build_report.json` in the dataset directory and to the log.
    A file that fails part-way keeps the clips decoded before the failure ("partial").
  * Bad input (missing folder or captions.jsonl, malformed line, frames not 4k+1, sizes
    not multiples of 16) raises `BadInputError` (a ValueError) before any decoding.
  * Storage: 'mp4' stores each clip H.264-encoded (yuv444p, CRF `features.MP4_CRF`: near
    lossless, see features.py for the measured error) and T = 1 clips as lossless PNG;
    'raw' stores the exact frames, zlib-compressed.
  * Workers: files are decoded, resized and encoded in `workers` spawned processes, a few
    files ahead of the writer, and consumed in captions order, so records, keys, splits
    and the report are those of an in-process build. A file's clips are held in memory
    until the file is done (compressed with 'mp4'). As with any spawn pool, a script that
    builds at import time needs an `if __name__ == "__main__":` guard (or workers=0).

Records are written in generation order (zero-padded increasing keys, shuffling off) and
each split's per-record (T, H, W) is stored with `features.record_sizes`.

Usage:
  config = make_config("/data/my_videos", frames=17, sizes=((256, 256), (192, 336)))
  builder = VideoFolder(config=config, data_dir="/data/tfds", workers=8)
  builder.download_and_prepare()
  train = pipeline.source_from_builder(builder, "train").records
  train[0]["video"]                           # uint8 [T, H, W, 3]
  report = load_report(builder)
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from absl import logging
import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageOps
import tensorflow_datasets as tfds

from data_pipelines import features

CAPTIONS_FILE = "captions.jsonl"
REPORT_FILE = "build_report.json"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MIN_VIDEO_FRAMES = 5  # the shortest clip a video may give: T = 4 * 1 + 1
STORAGES = ("mp4", "raw")
MAX_DEFAULT_WORKERS = 8
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")  # what tfds accepts in 'name/config:version'


class BadInputError(ValueError):
  """Bad arguments or a malformed folder, raised before any decoding."""


class SkipFile(Exception):
  """A media file that cannot give a clip; its message is the reason reported."""


# ---------------------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False, kw_only=True)
class VideoFolderConfig(tfds.core.BuilderConfig):
  """What to build from one folder.

  Attributes:
    folder: the folder holding the media files and captions.jsonl.
    frames: clip length T = 4k + 1.
    sizes: the (H, W) buckets, each a multiple of 16.
    validation_fraction: the share of files held out for `validation`, in [0, 1).
    frame_stride: keep every `frame_stride`-th frame of a video before cutting clips.
    storage: 'mp4' (clips H.264-encoded, near lossless) or 'raw' (exact uint8 frames).
  """
  folder: str = ""
  frames: int = 17
  sizes: tuple[tuple[int, int], ...] = ((64, 64),)
  validation_fraction: float = 0.0
  frame_stride: int = 1
  storage: str = "mp4"

  def __post_init__(self):
    self.sizes = _check_sizes(self.sizes, self.frames)
    if not 0.0 <= self.validation_fraction < 1.0:
      raise BadInputError(
          f"validation_fraction={self.validation_fraction!r} must be in [0, 1).")
    if not isinstance(self.frame_stride, int) or self.frame_stride < 1:
      raise BadInputError(f"frame_stride={self.frame_stride!r} must be an integer >= 1.")
    if self.storage not in STORAGES:
      raise BadInputError(f"storage={self.storage!r} must be one of {STORAGES}.")
    if not _NAME_RE.match(self.name):
      raise BadInputError(
          f"config name {self.name!r} may only hold letters, digits and '_.+-'.")


def _check_sizes(sizes, frames: int) -> tuple[tuple[int, int], ...]:
  """Validates frames and the (H, W) list; returns sizes as a tuple of int pairs."""
  if not isinstance(frames, int):
    raise BadInputError(f"frames={frames!r} must be an integer 4k+1 (1, 5, 9, 13, 17, ...).")
  try:
    pairs = tuple((int(h), int(w)) for h, w in sizes)
  except (TypeError, ValueError):
    raise BadInputError(
        f"sizes={sizes!r} must be a sequence of (height, width) pairs, "
        "e.g. ((64, 64), (48, 80)).") from None
  if not pairs:
    raise BadInputError("sizes=() is empty; give at least one (height, width).")
  for h, w in pairs:
    try:
      features.check_clip_size(frames, h, w, where=f"video_folder sizes={list(pairs)}")
    except ValueError as e:
      raise BadInputError(str(e)) from None
  return pairs


def make_config(folder: str | os.PathLike, frames: int = 17,
                sizes: Sequence[Sequence[int]] = ((64, 64),),
                validation_fraction: float = 0.0, frame_stride: int = 1,
                storage: str = "mp4", name: str | None = None) -> VideoFolderConfig:
  """Makes a config; the folder itself is checked when the build starts.

  Args:
    folder: the folder of media files and captions.jsonl.
    frames: clip length T, 4k + 1 (1 makes every video frame an image clip).
    sizes: (H, W) buckets, multiples of 16; each file takes the closest aspect ratio.
    validation_fraction: share of files held out for the `validation` split.
    frame_stride: temporal subsampling applied before cutting clips.
    storage: 'mp4' (default) or 'raw'; see the module docstring.
    name: config name (the dataset's sub-directory); default derived from the
      folder's name and the other arguments ('_raw' appended for raw storage: tfds
      keys datasets by config name).

  Returns:
    The config. Raises BadInputError for bad frames, sizes, fraction, stride, storage
    or name.
  """
  folder = os.path.abspath(os.fspath(folder))
  sizes = _check_sizes(sizes, frames)
  if name is None:
    base = re.sub(r"[^a-z0-9]+", "_", os.path.basename(folder).lower()).strip("_")
    name = f"{base or 'videos'}_t{frames}_" + "_".join(f"{h}x{w}" for h, w in sizes)
    if frame_stride != 1:
      name += f"_stride{frame_stride}"
    if validation_fraction:
      name += f"_val{validation_fraction:g}"
    if storage == "raw":
      name += "_raw"
  return VideoFolderConfig(
      name=name, folder=folder, frames=frames, sizes=sizes,
      validation_fraction=float(validation_fraction), frame_stride=frame_stride,
      storage=storage, description=f"Clips of the videos and images in {folder}.")


# ---------------------------------------------------------------------------------------
# The folder: captions.jsonl and the media files on disk.
# ---------------------------------------------------------------------------------------


class CaptionEntry(NamedTuple):
  """One captions.jsonl line."""
  file: str  # normalised posix path relative to the folder
  caption: str
  short_caption: str
  line: int  # 1-based line number in captions.jsonl


def _parse_caption_line(text: str, line: int, where: str) -> CaptionEntry:
  """Parses one non-blank captions.jsonl line; raises BadInputError naming it."""
  shown = text if len(text) <= 200 else text[:200] + "..."
  expected = ('each line must be a JSON object like {"file": "clip.mp4", '
              '"caption": "...", "short_caption": "..."} (short_caption optional)')
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise BadInputError(f"{where}:{line}: not valid JSON ({e.msg}); {expected}. "
                        f"Line: {shown}") from None
  if not isinstance(obj, dict):
    raise BadInputError(f"{where}:{line}: {expected}. Line: {shown}")
  for key, required in (("file", True), ("caption", True), ("short_caption", False)):
    if (required and key not in obj) or (key in obj and not isinstance(obj[key], str)):
      raise BadInputError(f"{where}:{line}: {key!r} missing or not a string; "
                          f"{expected}. Line: {shown}")
  file = posixpath.normpath(obj["file"].strip().replace("\\", "/"))
  if not obj["file"].strip() or file.startswith(("/", "../")) or file in (".", ".."):
    raise BadInputError(f"{where}:{line}: 'file' must be a path inside the folder, "
                        f"relative to it. Line: {shown}")
  return CaptionEntry(file, obj["caption"], obj.get("short_caption", ""), line)


def read_captions(folder: str) -> list[CaptionEntry]:
  """Reads and validates `folder/captions.jsonl`, in line order.

  Raises:
    BadInputError: folder or captions.jsonl missing, a malformed line, a file captioned
      twice, or no entries at all.
  """
  if not os.path.isdir(folder):
    raise BadInputError(f"video folder {folder!r} does not exist or is not a directory.")
  path = os.path.join(folder, CAPTIONS_FILE)
  if not os.path.isfile(path):
    raise BadInputError(
        f"{path!r} not found: the video folder must hold a {CAPTIONS_FILE} with one "
        '{"file": ..., "caption": ...} object per line.')
  entries, first_line = [], {}
  with open(path, encoding="utf-8") as f:
    for line, text in enumerate(f, start=1):
      if not text.strip():
        continue
      entry = _parse_caption_line(text.strip(), line, path)
      if entry.file in first_line:
        raise BadInputError(f"{path}:{line}: {entry.file!r} is already captioned on "
                            f"line {first_line[entry.file]}; give each file one line.")
      first_line[entry.file] = line
      entries.append(entry)
  if not entries:
    raise BadInputError(f"{path!r} has no entries; nothing to build.")
  return entries


def media_files(folder: str) -> list[str]:
  """Relative posix paths of the media files under `folder` (hidden ones left out)."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(files):
      if not name.startswith(".") and name.lower().endswith(
          VIDEO_EXTENSIONS + IMAGE_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
  return found


def split_score(file: str) -> float:
  """A stable pseudo-random score in [0, 1) of a relative path (sha256)."""
  digest = hashlib.sha256(file.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


# ---------------------------------------------------------------------------------------
# Decoding: frames -> (H, W) buckets -> clips.
# ---------------------------------------------------------------------------------------


def choose_size(height: int, width: int,
                sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
  """The (H, W) in `sizes` whose aspect ratio is closest (in log) to height x width."""
  aspect = math.log(width / height)
  return min(sizes, key=lambda s: abs(math.log(s[1] / s[0]) - aspect))


def resize_crop(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes `frame` uint8 [h, w, 3] to cover `size` and centre-crops: uint8 [H, W, 3]."""
  h, w = frame.shape[:2]
  out_h, out_w = size
  scale = max(out_h / h, out_w / w)
  crop_w, crop_h = out_w / scale, out_h / scale  # the source box that maps onto the output
  left, top = (w - crop_w) / 2, (h - crop_h) / 2
  image = Image.fromarray(frame).resize(
      (out_w, out_h), Image.Resampling.BICUBIC,
      box=(left, top, left + crop_w, top + crop_h))
  return np.asarray(image)


def read_image(path: str) -> np.ndarray:
  """An image file as uint8 [h, w, 3], EXIF orientation applied."""
  with Image.open(path) as image:
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def iter_frames(path: str, frame_stride: int = 1) -> Iterator[np.ndarray]:
  """Streams every `frame_stride`-th frame of a video or gif, uint8 [h, w, 3]."""
  if path.lower().endswith(".gif"):
    frames = iio.imiter(path, plugin="pillow", mode="RGB")
  else:
    frames = iio.imiter(path, plugin="FFMPEG")  # imageio-ffmpeg; rotation applied
  for i, frame in enumerate(frames):
    if i % frame_stride == 0:
      yield np.asarray(frame)[..., :3]


def iter_clips(path: str, frames: int, sizes: Sequence[tuple[int, int]],
               frame_stride: int = 1) -> Iterator[np.ndarray]:
  """Streams the clips of one media file, each uint8 [T, H, W, 3].

  Images give one T = 1 clip. Videos give consecutive T = `frames` clips (the tail is
  dropped), or, when shorter than `frames`, one clip of their longest 4k+1 prefix.

  Raises:
    SkipFile: a video with fewer than min(5, frames) frames.
    Exception: whatever the decoder raises for an unreadable file.
  """
  if path.lower().endswith(IMAGE_EXTENSIONS):
    image = read_image(path)
    yield resize_crop(image, choose_size(*image.shape[:2], sizes))[None]
    return
  size, buffer, emitted = None, [], 0
  for frame in iter_frames(path, frame_stride):
    size = size or choose_size(*frame.shape[:2], sizes)  # one bucket per file
    buffer.append(resize_crop(frame, size))
    if len(buffer) == frames:
      yield np.stack(buffer)
      buffer, emitted = [], emitted + 1
  if emitted:
    return
  if len(buffer) < min(MIN_VIDEO_FRAMES, frames):
    raise SkipFile(f"too short: {len(buffer)} frame(s) after frame_stride={frame_stride}, "
                   f"need at least {min(MIN_VIDEO_FRAMES, frames)}")
  yield np.stack(buffer[:4 * ((len(buffer) - 1) // 4) + 1])


def describe_error(error: Exception) -> str:
  """A one-line reason for a decoder error (ffmpeg's own complaint when it has one)."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  reason = f"{type(error).__name__}: {lines[0] if lines else '(no message)'}"
  if "=== stderr ===" in lines:
    stderr = lines[lines.index("=== stderr ===") + 1:]
    telling = [l for l in stderr if re.search(r"error|invalid|not found|fail", l, re.I)]
    if telling or stderr:
      reason += f" (ffmpeg: {(telling or stderr)[-1]})"
  return reason[:300]


# ---------------------------------------------------------------------------------------
# One file's clips: the unit of work of a pool worker.
# ---------------------------------------------------------------------------------------


class FileTask(NamedTuple):
  """What a worker needs to turn one captioned file into clips."""
  folder: str
  entry: CaptionEntry
  frames: int
  sizes: tuple[tuple[int, int], ...]
  frame_stride: int
  storage: str


class FileClips(NamedTuple):
  """What one file gave.

  Attributes:
    clips: per clip in order, its (T, H, W) and its payload: `features.encode_video`
      bytes ('mp4') or the frames, uint8 [T, H, W, 3] ('raw').
    skip: why the file is skipped, or None.
    partial: the error that ended the file after the clips kept, or None.
  """
  clips: list[tuple[tuple[int, int, int], Any]]
  skip: str | None = None
  partial: str | None = None


def file_clips(task: FileTask) -> FileClips:
  """Decodes, resizes and (storage 'mp4') encodes the clips of one file.

  Module level, so spawned pool workers can run it; failures come back as reasons.
  """
  file = task.entry.file
  if not file.lower().endswith(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS):
    allowed = ", ".join(e[1:] for e in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)
    return FileClips([], skip=f"unsupported file type (allowed: {allowed})")
  path = os.path.join(task.folder, file)
  if not os.path.isfile(path):
    return FileClips([], skip=f"missing: named on {CAPTIONS_FILE} line {task.entry.line} "
                              "but not found")
  clips = []
  try:
    for clip in iter_clips(path, task.frames, task.sizes, task.frame_stride):
      payload = features.encode_video(clip) if task.storage == "mp4" else clip
      clips.append((tuple(clip.shape[:3]), payload))
  except SkipFile as e:
    return FileClips(clips, skip=str(e))
  except Exception as e:  # pylint: disable=broad-except  # any decoder failure
    if not clips:
      return FileClips([], skip=f"unreadable: {describe_error(e)}")
    return FileClips(clips, partial=describe_error(e))  # keep the clips decoded before it
  return FileClips(clips)


# ---------------------------------------------------------------------------------------
# The build report.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class BuildReport:
  """What a build used and skipped; written to `build_report.json`."""
  folder: str
  seen: set[str] = dataclasses.field(default_factory=set)
  used: dict[str, str] = dataclasses.field(default_factory=dict)  # file -> split
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # file -> reason
  partial: dict[str, str] = dataclasses.field(default_factory=dict)  # file -> reason
  clip_sizes: dict[str, collections.Counter] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(collections.Counter))

  def skip(self, file: str, reason: str) -> None:
    logging.warning("video_folder: skipping %s: %s", file, reason)
    self.skipped[file] = reason

  def add_clip(self, file: str, split: str, shape: Sequence[int]) -> None:
    self.used[file] = split
    self.clip_sizes[split]["x".join(str(int(d)) for d in shape[:3])] += 1

  def num_clips(self, split: str) -> int:
    return sum(self.clip_sizes[split].values())

  def to_json(self, dataset: str, config: VideoFolderConfig) -> dict:
    """The report as a JSON-able dict."""
    splits = [s for s in ("train", "validation") if s in self.clip_sizes]
    return {
        "dataset": dataset,
        "folder": self.folder,
        "config": {"frames": config.frames, "sizes": [list(s) for s in config.sizes],
                   "frame_stride": config.frame_stride,
                   "validation_fraction": config.validation_fraction,
                   "storage": config.storage},
        "files_seen": len(self.seen),
        "files_used": len(self.used),
        "files_skipped": len(self.skipped),
        "clips": {s: self.num_clips(s) for s in splits},
        "clip_sizes": {s: dict(sorted(self.clip_sizes[s].items())) for s in splits},
        "validation_files": sorted(f for f, s in self.used.items() if s == "validation"),
        "skipped": [{"file": f, "reason": r} for f, r in sorted(self.skipped.items())],
        "partial": [{"file": f, "reason": r} for f, r in sorted(self.partial.items())],
    }

  def summary(self) -> str:
    """A few readable lines for the log."""
    clips = ", ".join(f"{s} {self.num_clips(s)}" for s in self.clip_sizes) or "none"
    lines = [f"video_folder build report for {self.folder}:",
             f"  files: {len(self.seen)} seen, {len(self.used)} used, "
             f"{len(self.skipped)} skipped",
             f"  clips: {clips}"]
    lines += [f"  skipped {f}: {r}" for f, r in sorted(self.skipped.items())]
    lines += [f"  partial {f}: {r}" for f, r in sorted(self.partial.items())]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The builder.
# ---------------------------------------------------------------------------------------


class VideoFolder(tfds.core.GeneratorBasedBuilder):
  """Clips of a folder of captioned videos and images (see the module docstring)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "1.1.0": "storage='mp4' (default): clips stored as H.264 mp4 (PNG when T = 1) bytes "
               "under `encoded_video`, decoded by pipeline.source_from_builder; "
               "storage='raw' keeps uint8 frames under `video`.",
  }

  def __init__(self, *, config: VideoFolderConfig, file_format: str = "array_record",
               workers: int | None = None, **kwargs):
    """Makes the builder.

    Args:
      config: what to build.
      file_format: tfds file format; ArrayRecord gives the random access grain needs.
      workers: decoding processes (None: min(CPUs, 8); 0 or 1: in this process). Not
        part of the config: it does not change the data.
      **kwargs: passed to tfds (data_dir, ...).
    """
    super().__init__(config=config, file_format=file_format, **kwargs)
    if workers is None:
      workers = min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)
    if not isinstance(workers, int) or workers < 0:
      raise BadInputError(f"workers={workers!r} must be an integer >= 0 (0 or 1: decode "
                          "in this process).")
    self._workers = workers
    self._pool = None  # started on the first file, ended when the build ends
    self._report: BuildReport | None = None
    self._held_out: set[str] = set()

  def _info(self) -> tfds.core.DatasetInfo:
    encoded = self.builder_config.storage == "mp4"
    return tfds.core.DatasetInfo(
        builder=self, features=features.clip_features(encoded=encoded),
        description=self.builder_config.description, disable_shuffling=True,
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    """Validates the folder, then declares the splits (validation first: see below)."""
    del dl_manager
    cfg = self.builder_config
    entries = read_captions(cfg.folder)
    self._report = BuildReport(folder=cfg.folder)
    self._held_out = set()
    captioned = {e.file for e in entries}
    self._report.seen = captioned | set(media_files(cfg.folder))
    for file in sorted(self._report.seen - captioned):
      self._report.skip(file, f"no line in {CAPTIONS_FILE}")
    if not cfg.validation_fraction:
      return {"train": self._generate_examples("train", self._decoded(entries))}
    # tfds consumes the generators one after the other in this order, so the validation
    # generator has picked its files before the train one starts filtering them out.
    train = (e for e in entries if e.file not in self._held_out)
    return {"validation": self._generate_examples("validation", self._validation(entries)),
            "train": self._generate_examples("train", self._decoded(train))}

  def _validation(self, entries: Sequence[CaptionEntry]
                  ) -> Iterator[tuple[CaptionEntry, FileClips]]:
    """Files lowest score first: all below the fraction, then until one gave a clip."""
    ranked = sorted(entries, key=lambda e: split_score(e.file))
    for entry, clips in self._decoded(ranked):
      # The report counts the clips of the files yielded so far (the consumer records
      # them before asking for the next), whatever the workers decoded ahead.
      enough = self._report.num_clips("validation") > 0
      if enough and split_score(entry.file) >= self.builder_config.validation_fraction:
        return
      self._held_out.add(entry.file)
      yield entry, clips

  def _decoded(self, entries: Iterable[CaptionEntry]
               ) -> Iterator[tuple[CaptionEntry, FileClips]]:
    """(entry, its clips) in entry order; with workers, decoded a few files ahead."""
    cfg = self.builder_config
    tasks = ((e, FileTask(cfg.folder, e, cfg.frames, cfg.sizes, cfg.frame_stride,
                          cfg.storage)) for e in entries)
    if self._workers <= 1:
      for entry, task in tasks:
        yield entry, file_clips(task)
      return
    if self._pool is None:  # spawn: the caller may hold threads (JAX) that fork would copy
      self._pool = multiprocessing.get_context("spawn").Pool(self._workers)
    # apply_async with a bounded look-ahead rather than imap, whose feeder thread drains
    # `entries` at once: validation decides its files one by one, and decoded files
    # would pile up in memory.
    pending = collections.deque()
    for entry, task in tasks:
      pending.append((entry, self._pool.apply_async(file_clips, (task,))))
      if len(pending) > 2 * self._workers:
        entry, result = pending.popleft()
        yield entry, result.get()
    while pending:
      entry, result = pending.popleft()
      yield entry, result.get()

  def _generate_examples(self, split: str,
                         files: Iterable[tuple[CaptionEntry, FileClips]]):
    """Yields (key, clip record) in order and records each clip's (T, H, W)."""
    sizes = []
    self._report.clip_sizes.setdefault(split, collections.Counter())  # shown even if empty
    for entry, clips in files:
      for size, payload in clips.clips:
        self._report.add_clip(entry.file, split, size)
        video = ({features.ENCODED_KEY: np.frombuffer(payload, np.uint8)}
                 if self.builder_config.storage == "mp4" else {"video": payload})
        yield f"{len(sizes):010d}", {**video, "caption": entry.caption,
                                     "short_caption": entry.short_caption}
        sizes.append(size)
      self._report_failure(entry.file, clips)
    if not sizes:
      logging.error(self._report.summary())
      hint = (" (the validation split took the other usable files; lower "
              "validation_fraction)" if self._held_out and split == "train" else "")
      raise BadInputError(
          f"no usable clip for split {split!r} in {self.builder_config.folder!r}{hint}; "
          f"{len(self._report.skipped)} file(s) skipped: "
          + "; ".join(f"{f}: {r}" for f, r in sorted(self._report.skipped.items())[:10]))
    features.record_sizes(self.info, split, sizes)

  def _report_failure(self, file: str, clips: FileClips) -> None:
    """Reports a file skipped or ended part-way (its kept clips are already recorded)."""
    if clips.skip is not None:
      self._report.skip(file, clips.skip)
    elif clips.partial is not None:
      reason = f"kept {len(clips.clips)} clip(s), then {clips.partial}"
      self._report.partial[file] = reason
      logging.warning("video_folder: %s failed part-way: %s", file, reason)

  def _download_and_prepare(self, dl_manager, download_config):
    """Builds the splits, then writes the report beside them (same atomic rename)."""
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      if self._pool is not None:  # what is left was decoded ahead and is not needed
        self._pool.terminate()
        self._pool.join()
        self._pool = None
    report = self._report.to_json(self.info.full_name, self.builder_config)
    with open(os.path.join(self.data_dir, REPORT_FILE), "w") as f:
      json.dump(report, f, indent=2)
    logging.info(self._report.summary())


def load_report(builder_or_dir: VideoFolder | str | os.PathLike) -> dict:
  """Reads the `build_report.json` of a built dataset (a builder or its directory)."""
  data_dir = (builder_or_dir.data_dir if isinstance(builder_or_dir, VideoFolder)
              else os.fspath(builder_or_dir))
  with open(os.path.join(data_dir, REPORT_FILE)) as f:
    return json.load(f)


def build(config: VideoFolderConfig, data_dir: str | os.PathLike,
          overwrite: bool = False, workers: int | None = None) -> dict:
  """Builds (or reuses) the dataset of `config` under `data_dir`; returns its report.

  workers: decoding processes (None: min(CPUs, 8); 0 or 1: in this process).
  """
  builder = VideoFolder(config=config, data_dir=os.fspath(data_dir), workers=workers)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(download_mode=mode))
  return load_report(builder)
