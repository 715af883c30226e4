"""The clip record contract shared by every tfds builder and the grain pipelines.

Every builder (Shapes World, video folder) writes ArrayRecord files whose records hold:

  video:          uint8 [T, H, W, 3], zlib-compressed tfds `Tensor` (no TensorFlow needed).
  caption:        the detailed caption (text; read back as bytes).
  short_caption:  a short caption ('' when the source has none).

or, in place of `video`, the clip encoded (the video folder's default, many times smaller):

  encoded_video:  uint8 [n], the bytes of an H.264 mp4 (T > 1) or a PNG (T = 1), written by
                  `encode_video`. `pipeline.source_from_builder` decodes it back into
                  `video` on read, so every consumer of a `ClipSource` sees `video`.

Builders set `disable_shuffling=True`, so record `i` of a split is the `i`-th example in
generation order, and record each example's size `(T, H, W)` in the dataset metadata
(`info.metadata['sizes'][split]`, run-length encoded). Pipelines read those sizes to batch
clips of one size together without decoding every record first.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import io
import os
import subprocess
import tempfile
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

SIZES_KEY = "sizes"
ENCODED_KEY = "encoded_video"
# H.264 settings: 4:4:4 chroma (colour edges survive on small clips) and CRF 10, near
# lossless. Measured on synthetic clips: textured with mild noise, mean abs error 1.3-1.9
# of 255 (PSNR 40-44 dB) at 8-30x fewer bytes than zlib of the frames; flat shapes, mean
# error 0.02, but there zlib of the frames is the smaller.
MP4_CRF = 10
_MP4_FPS = 8  # nominal: a clip's bytes carry no meaningful frame rate
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def clip_features(encoded: bool = False) -> tfds.features.FeaturesDict:
  """The tfds features of one clip record: `video`, or `encoded_video` when `encoded`."""
  if encoded:  # already compressed: stored as is
    video = {ENCODED_KEY: tfds.features.Tensor(shape=(None,), dtype=np.uint8)}
  else:
    video = {"video": tfds.features.Tensor(
        shape=(None, None, None, 3), dtype=np.uint8, encoding="zlib")}
  return tfds.features.FeaturesDict({
      **video,
      "caption": tfds.features.Text(),
      "short_caption": tfds.features.Text(),
  })


def _ffmpeg(args: Sequence[str], stdin: bytes = b"") -> bytes:
  """Runs the ffmpeg bundled with imageio-ffmpeg; returns stdout, raises with its stderr."""
  # Imported here: some images (the GPU one) lack imageio-ffmpeg, and only mp4 clips need it.
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  # subprocess without a preexec_fn never runs os.fork's hooks, so JAX does not warn.
  result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error",
                           *args], input=stdin, capture_output=True, check=False)
  if result.returncode:
    lines = result.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
    raise RuntimeError(f"ffmpeg exited with status {result.returncode}: {lines[-1]}")
  return result.stdout


def encode_video(video: np.ndarray) -> bytes:
  """uint8 [T, H, W, 3] -> H.264 mp4 bytes (yuv444p, CRF `MP4_CRF`); PNG bytes if T = 1.

  Deterministic: the same clip always gives the same bytes.
  """
  video = np.ascontiguousarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"encode_video: expected uint8 [T, H, W, 3], got {video.dtype} "
                     f"{video.shape}.")
  t, h, w, _ = video.shape
  if t == 1:  # an image: lossless, and decoded in-process
    buffer = io.BytesIO()
    Image.fromarray(video[0]).save(buffer, format="PNG")
    return buffer.getvalue()
  with tempfile.TemporaryDirectory() as tmp:  # the mp4 muxer needs a seekable output
    path = os.path.join(tmp, "clip.mp4")
    _ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(_MP4_FPS),
             "-i", "pipe:0", "-c:v", "libx264", "-pix_fmt", "yuv444p",
             "-crf", str(MP4_CRF), "-f", "mp4", path], stdin=video.tobytes())
    with open(path, "rb") as f:
      return f.read()


def decode_video(data: bytes | np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Inverse of `encode_video`: bytes -> uint8 [T, H, W, 3], checked against size (T, H, W)."""
  data = bytes(data)
  t, h, w = (int(d) for d in size)
  stale = ValueError(f"decode_video: the encoded clip is not {t}x{h}x{w} (T x H x W); the "
                     "dataset metadata is stale or the record corrupt, rebuild it.")
  if data.startswith(_PNG_SIGNATURE):
    with Image.open(io.BytesIO(data)) as image:
      video = np.asarray(image.convert("RGB"))[None]
  else:
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
      f.write(data)
      f.flush()
      # PPM frames: each names its width and height, so a transposed size is caught too.
      out = _ffmpeg(["-i", f.name, "-f", "image2pipe", "-c:v", "ppm", "pipe:1"])
    header = f"P6\n{w} {h}\n255\n".encode()
    step = len(header) + h * w * 3
    if len(out) % step or any(out[i:i + len(header)] != header
                              for i in range(0, len(out), step)):
      raise stale
    frames = np.frombuffer(out, np.uint8).reshape(-1, step)[:, len(header):]
    video = frames.reshape(-1, h, w, 3)
  if video.shape != (t, h, w, 3):
    raise stale
  return video


def decode_record(record: Mapping[str, Any], size: Sequence[int]) -> dict[str, Any]:
  """A record with `encoded_video` -> the same record with `video` uint8 [T, H, W, 3]."""
  out = {k: v for k, v in record.items() if k != ENCODED_KEY}
  out["video"] = decode_video(record[ENCODED_KEY], size)
  return out


def encode_sizes(sizes: Sequence[Sequence[int]]) -> list[list[int]]:
  """Run-length encodes per-record sizes: [[T, H, W, count], ...]."""
  runs: list[list[int]] = []
  for t, h, w in sizes:
    if runs and runs[-1][:3] == [int(t), int(h), int(w)]:
      runs[-1][3] += 1
    else:
      runs.append([int(t), int(h), int(w), 1])
  return runs


def decode_sizes(runs: Sequence[Sequence[int]]) -> np.ndarray:
  """Inverse of `encode_sizes`: int32 [N, 3] of (T, H, W) per record."""
  if not runs:
    return np.zeros((0, 3), np.int32)
  return np.concatenate([np.tile(np.asarray(r[:3], np.int32), (r[3], 1)) for r in runs])


def record_sizes(info: tfds.core.DatasetInfo, split: str,
                 sizes: Sequence[Sequence[int]]) -> None:
  """Stores the sizes of a split's records (in record order) in the dataset metadata."""
  info.metadata.setdefault(SIZES_KEY, {})[split] = encode_sizes(sizes)


def split_sizes(info: tfds.core.DatasetInfo, split: str) -> np.ndarray:
  """Per-record (T, H, W) of a split, int32 [N, 3]. Raises if the builder did not record them."""
  table = (info.metadata or {}).get(SIZES_KEY, {})
  if split not in table:
    raise ValueError(
        f"Dataset {info.full_name!r} has no recorded clip sizes for split {split!r} "
        f"(recorded: {sorted(table)}); rebuild it with a sora_jax builder.")
  return decode_sizes(table[split])


def check_clip_size(frames: int, height: int, width: int, where: str = "",
                    max_side: int | None = None) -> None:
  """Validates a (T, H, W) clip size: T = 4k + 1; H, W positive multiples of 16.

  Args:
    frames, height, width: the size to check.
    where: where the value came from (a flag, a config key), named in the error.
    max_side: optional upper bound on H and W (Shapes World allows [32, 256]).
  """
  src = f" (from {where})" if where else ""
  if frames < 1 or (frames - 1) % 4:
    raise ValueError(f"frames T={frames}{src} must be 4k+1 (1, 5, 9, 13, 17, ...).")
  lo, hi = (32, max_side) if max_side else (16, None)
  for name, v in (("height", height), ("width", width)):
    if v % 16 or v < lo or (hi and v > hi):
      allowed = f"a multiple of 16 in [{lo}, {hi}]" if hi else "a positive multiple of 16"
      raise ValueError(f"{name}={v}{src} must be {allowed}.")
