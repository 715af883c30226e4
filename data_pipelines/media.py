"""Reading and writing clips as files: .npy, mp4 (imageio-ffmpeg's bundled ffmpeg) and gif;
contact sheets (a grid of clips' frames, one PNG). Paths may be local or gs:// URLs
(`storage.local_file`: encoders write a local file that is then uploaded)."""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence

from etils import epath
import imageio.v3 as iio
import numpy as np
from PIL import Image
from PIL import ImageDraw

from data_pipelines import storage

DEFAULT_FPS = 8  # Shapes World's nominal frame rate


def check_clip(video: np.ndarray, where: str = "clip") -> np.ndarray:
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"{where}: expected uint8 [T, H, W, 3], got {video.dtype} {video.shape}.")
  return video


def write_mp4(path: str | os.PathLike, video: np.ndarray, fps: int = DEFAULT_FPS) -> None:
  """H.264 mp4 (yuv420p, so any player opens it). H and W are even for our sizes."""
  video = check_clip(video, str(path))
  with _ffmpeg_fork(), storage.local_file(path) as local:
    iio.imwrite(local, video, plugin="FFMPEG", fps=fps, codec="libx264",
                pixelformat="yuv420p", output_params=["-crf", "12"], macro_block_size=1)


@contextlib.contextmanager
def _ffmpeg_fork():
  """JAX warns on any fork; imageio-ffmpeg's fork immediately execs its ffmpeg binary."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
    yield


def write_gif(path: str | os.PathLike, video: np.ndarray, fps: int = DEFAULT_FPS) -> None:
  video = check_clip(video, str(path))
  with storage.local_file(path) as local:
    iio.imwrite(local, video, plugin="pillow", duration=int(1000 / fps), loop=0)


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
  """A PNG (or any format imageio infers from the suffix) of uint8 [H, W, 3]."""
  with storage.local_file(path) as local:
    iio.imwrite(local, np.asarray(image))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
  with storage.local_file(path) as local:
    np.save(local, array)


class StreamWriter:
  """Writes a video of `total` frames chunk by chunk: `stem.mp4`, and `stem.npy` (a memory
  map) with `npy`; only the chunk being written is held in memory.

    with media.StreamWriter("out/long", total, 64, 64) as w:
      for chunk in chunks:  # uint8 [n, H, W, 3]
        w.write(chunk)
  """

  def __init__(self, stem: str | os.PathLike, total: int, height: int, width: int, *,
               npy: bool = False, fps: int = DEFAULT_FPS):
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top  # imageio's optional backend
    self.stem, self.total, self.written = os.fspath(stem), total, 0
    self.paths = [self.stem + ".mp4"] + ([self.stem + ".npy"] if npy else [])
    self._files = contextlib.ExitStack()  # local files, uploaded on close when remote
    local = [self._files.enter_context(storage.local_file(p)) for p in self.paths]
    self._npy = np.lib.format.open_memmap(local[1], mode="w+", dtype=np.uint8,
                                          shape=(total, height, width, 3)) if npy else None
    with _ffmpeg_fork():
      self._mp4 = imageio_ffmpeg.write_frames(
          local[0], (width, height), fps=fps, codec="libx264", macro_block_size=1,
          output_params=["-crf", "12"])
      self._mp4.send(None)  # starts ffmpeg

  def write(self, chunk: np.ndarray) -> None:
    chunk = check_clip(chunk, self.stem)
    if self.written + chunk.shape[0] > self.total:
      raise ValueError(f"{self.stem}: {self.written} + {chunk.shape[0]} frames written, "
                       f"more than the {self.total} announced.")
    if self._npy is not None:
      self._npy[self.written:self.written + chunk.shape[0]] = chunk
    for frame in chunk:
      self._mp4.send(np.ascontiguousarray(frame))
    self.written += chunk.shape[0]

  def close(self) -> None:
    self._mp4.close()
    if self._npy is not None:
      self._npy.flush()
      self._npy = None
    self._files.close()

  def __enter__(self) -> StreamWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def write_clip(stem: str | os.PathLike, video: np.ndarray, *, npy: bool = True,
               mp4: bool = False, gif: bool = False, fps: int = DEFAULT_FPS) -> list[str]:
  """Writes `stem.npy` / `stem.mp4` / `stem.gif`; returns the paths written."""
  stem = os.fspath(stem)
  out = []
  if npy:
    write_npy(stem + ".npy", check_clip(video, stem))
    out.append(stem + ".npy")
  if mp4:
    write_mp4(stem + ".mp4", video, fps)
    out.append(stem + ".mp4")
  if gif:
    write_gif(stem + ".gif", video, fps)
    out.append(stem + ".gif")
  return out


def read_clip(path: str | os.PathLike) -> np.ndarray:
  """Reads .npy, an image or a video file into uint8 [T, H, W, 3]."""
  path = os.fspath(path)
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"No such clip file: {path!r}.")
  if path.endswith(".npy"):
    with epath.Path(path).open("rb") as f:
      video = np.load(f)
  else:
    with _ffmpeg_fork(), _readable(path) as local:
      video = np.asarray(iio.imread(local, index=None if not _is_image(path) else 0))
    if video.ndim == 3:
      video = video[None]
    video = video[..., :3]
  if video.ndim == 3:  # a single [H, W, 3] image
    video = video[None]
  return check_clip(video, path)


@contextlib.contextmanager
def _readable(path: str):
  """A local file name for `path` (a URL is downloaded to a temporary file)."""
  if storage.is_local(path):
    yield path
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, "file" + os.path.splitext(path)[1])
    with open(local, "wb") as f:
      f.write(epath.Path(path).read_bytes())
    yield local


def _is_image(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# ------------------------------------------------------------------ contact sheets
def _frame_indices(t: int, frames: int) -> list[int]:
  if t <= frames:
    return list(range(t))
  return [int(round(v)) for v in np.linspace(0, t - 1, frames)]


def contact_sheet(videos: Mapping[str, Sequence[np.ndarray]], frames: int = 4, gap: int = 4,
                  background: int = 255, labels: bool = True,
                  row_labels: Sequence[str] | None = None) -> np.ndarray:
  """A Sora-style comparison grid: rows = prompts, columns = rungs, a few frames per cell.

  Args:
    videos: rung label -> one uint8 [T, H, W, 3] video per prompt (same prompts and seeds,
      in the same order, for every rung; all of one H x W). Insertion order = column order.
    frames: frames per cell, evenly spaced over T (all of them if T is smaller).
    gap: pixels between cells (and around the grid).
    background: grey level of the gaps.
    labels: write the rung labels above the columns (PIL's default font).
    row_labels: optional text per prompt, written left of its row (truncated to fit).

  Returns:
    uint8 [H_sheet, W_sheet, 3].
  """
  if not videos:
    raise ValueError("contact_sheet: no videos.")
  columns = list(videos)
  counts = {k: len(v) for k, v in videos.items()}
  if len(set(counts.values())) != 1:
    raise ValueError(f"contact_sheet: every rung needs the same prompts; videos per rung: "
                     f"{counts}.")
  shapes = {np.shape(v)[1:] for vs in videos.values() for v in vs}
  if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[-1] != 3:
    raise ValueError(f"contact_sheet: videos must be uint8 [T, H, W, 3] of one H x W; got "
                     f"frame shapes {sorted(shapes)}.")
  for k, vs in videos.items():
    for v in vs:
      if np.asarray(v).dtype != np.uint8:
        raise ValueError(f"contact_sheet: rung {k!r} has a {np.asarray(v).dtype} video; "
                         "expected uint8.")
  h, w, _ = next(iter(shapes))
  rows = counts[columns[0]]
  cell_w = frames * w + (frames - 1) * (gap // 2)
  top = 14 + gap if labels else 0
  left = 0
  if row_labels is not None:
    if len(row_labels) != rows:
      raise ValueError(f"contact_sheet: {len(row_labels)} row labels for {rows} prompts.")
    left = 120 + gap
  sheet = np.full((top + gap + rows * (h + gap), left + gap + len(columns) * (cell_w + gap), 3),
                  background, np.uint8)
  for j, col in enumerate(columns):
    x0 = left + gap + j * (cell_w + gap)
    for i, video in enumerate(videos[col]):
      y0 = top + gap + i * (h + gap)
      video = np.asarray(video)
      for f, idx in enumerate(_frame_indices(video.shape[0], frames)):
        xf = x0 + f * (w + gap // 2)
        sheet[y0:y0 + h, xf:xf + w] = video[idx]
  if labels or row_labels is not None:
    sheet = _draw_labels(sheet, columns if labels else [], row_labels or [], gap, cell_w,
                         left, top, h)
  return sheet


def _draw_labels(sheet, columns, row_labels, gap, cell_w, left, top, h) -> np.ndarray:
  image = Image.fromarray(sheet)
  draw = ImageDraw.Draw(image)
  for j, col in enumerate(columns):
    draw.text((left + gap + j * (cell_w + gap), gap // 2), str(col), fill=(0, 0, 0))
  for i, text in enumerate(row_labels):
    draw.text((gap, top + gap + i * (h + gap)), str(text)[:20], fill=(0, 0, 0))
  return np.asarray(image)


def write_contact_sheet(path: str, videos: Mapping[str, Sequence[np.ndarray]],
                        **kwargs) -> str:
  """`contact_sheet(videos, **kwargs)` written as a PNG to `path`."""
  write_image(path, contact_sheet(videos, **kwargs))
  return path
