"""Reading and writing clips as files: .npy, mp4 (imageio-ffmpeg's bundled ffmpeg) and gif."""
from __future__ import annotations

import contextlib
import os
import warnings

import imageio.v3 as iio
import numpy as np

DEFAULT_FPS = 8  # Shapes World's nominal frame rate


def check_clip(video: np.ndarray, where: str = "clip") -> np.ndarray:
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"{where}: expected uint8 [T, H, W, 3], got {video.dtype} {video.shape}.")
  return video


def write_mp4(path: str | os.PathLike, video: np.ndarray, fps: int = DEFAULT_FPS) -> None:
  """H.264 mp4 (yuv420p, so any player opens it). H and W are even for our sizes."""
  video = check_clip(video, str(path))
  with _ffmpeg_fork():
    iio.imwrite(path, video, plugin="FFMPEG", fps=fps, codec="libx264",
                pixelformat="yuv420p", output_params=["-crf", "12"], macro_block_size=1)


@contextlib.contextmanager
def _ffmpeg_fork():
  """JAX warns on any fork; imageio-ffmpeg's fork immediately execs its ffmpeg binary."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
    yield


def write_gif(path: str | os.PathLike, video: np.ndarray, fps: int = DEFAULT_FPS) -> None:
  video = check_clip(video, str(path))
  iio.imwrite(path, video, plugin="pillow", duration=int(1000 / fps), loop=0)


def write_clip(stem: str | os.PathLike, video: np.ndarray, *, npy: bool = True,
               mp4: bool = False, gif: bool = False, fps: int = DEFAULT_FPS) -> list[str]:
  """Writes `stem.npy` / `stem.mp4` / `stem.gif`; returns the paths written."""
  stem = os.fspath(stem)
  out = []
  if npy:
    np.save(stem + ".npy", check_clip(video, stem))
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
  if not os.path.exists(path):
    raise FileNotFoundError(f"No such clip file: {path!r}.")
  if path.endswith(".npy"):
    video = np.load(path)
  else:
    with _ffmpeg_fork():
      video = np.asarray(iio.imread(path, index=None if not _is_image(path) else 0))
    if video.ndim == 3:
      video = video[None]
    video = video[..., :3]
  if video.ndim == 3:  # a single [H, W, 3] image
    video = video[None]
  return check_clip(video, path)


def _is_image(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp")
