"""Every Sora task as a plain function over a `Sampler`, plus batch sampling to files.

  sampler = Sampler(Run.load("runs/demo/dit"))
  video = t2v(sampler, "A large red circle moving to the right on a black background. ...",
              frames=17, height=64, width=64, seed=0)          # uint8 [T, H, W, 3]
  image = t2i(sampler, prompt, height=64, width=64)             # [1, H, W, 3]
  video = i2v(sampler, prompt, image, frames=17)
  longer = extend(sampler, prompt, video, direction="forward")  # video + new frames
  bridge_ = interpolate(sampler, prompt, video_a, video_b)      # a + middle + b
  looped = loop(sampler, prompt, frames=17)                     # clip + bridge to its start
  edited = edit(sampler, new_prompt, video, strength=0.6)       # SDEdit
  for chunk in long_video(sampler, prompt, 480): ...            # streamed, bounded memory

How each task conditions the model (`diffusion/conditioning.py`): a pixel clip of the
window's size is assembled from the known frames (the end of a video to extend, the start
of the one to reach, an image) and filler (copies of the nearest known frame), encoded by
the causal VAE, and the latent frames that cover known frames are *given*: held exactly by
the solver and seen by the DiT at t = 0. For forward extension and i2v this is exact (a
causal encoder's first latent frames depend only on the first pixel frames); for a
backward extension or an interpolation's end the given latents were encoded after filler
frames, an approximation whose error is limited to the VAE's short temporal receptive
field.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from etils import epath
import numpy as np
from tqdm import tqdm

from data_pipelines import media
from data_pipelines import storage
from sora_jax.diffusion import conditioning
from sora_jax.inference.sampler import Sampler


def t2v(sampler: Sampler, prompt: str, frames: int = 17, height: int = 64, width: int = 64,
        seed: int = 0) -> np.ndarray:
  """Text to video: uint8 [frames, height, width, 3]."""
  return t2v_batch(sampler, [prompt], frames, height, width, [seed])[0]


def t2v_batch(sampler: Sampler, prompts: Sequence[str], frames: int, height: int, width: int,
              seeds: Sequence[int]) -> list[np.ndarray]:
  """Text to video for B prompts in one batch (batch CLI and evaluation)."""
  shape = sampler.latent_shape(frames, height, width)
  z = sampler.sample_latents(prompts, shape, seeds)
  return [sampler.decode(zi) for zi in z]


def t2i(sampler: Sampler, prompt: str, height: int = 64, width: int = 64,
        seed: int = 0) -> np.ndarray:
  """Text to image: uint8 [1, height, width, 3] (a one-frame video)."""
  return t2v(sampler, prompt, 1, height, width, seed)


def _conditioned(sampler: Sampler, prompt: str, clip: np.ndarray, seed: int,
                 frames_given: np.ndarray) -> np.ndarray:
  """Samples a window whose latent frames `frames_given` come from encoding `clip`."""
  shape = sampler.latent_shape(*clip.shape[:3])
  cond = sampler.encode(clip)
  z = sampler.sample_latents([prompt], shape, [seed], given=frames_given,
                                 cond_latents=cond[None])
  return sampler.decode(z[0])


def _check_video(video: np.ndarray, where: str, height=None, width=None) -> np.ndarray:
  video = np.asarray(video)
  if video.ndim == 3:
    video = video[None]
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"{where}: expected uint8 [T, H, W, 3] (or an [H, W, 3] image); got "
                     f"{video.dtype} {video.shape}.")
  if height is not None and video.shape[1:3] != (height, width):
    raise ValueError(f"{where}: frames are {video.shape[1]}x{video.shape[2]} (HxW) but "
                     f"{height}x{width} was asked; resize it or pass --height/--width "
                     "to match.")
  return video


def i2v(sampler: Sampler, prompt: str, image: np.ndarray, frames: int = 17,
        seed: int = 0) -> np.ndarray:
  """Animates an image (uint8 [H, W, 3] or [1, H, W, 3]): uint8 [frames, H, W, 3]."""
  image = _check_video(image, "i2v image")[:1]
  h, w = image.shape[1:3]
  clip = np.repeat(image, frames, axis=0)
  mask = conditioning.condition_frames("i2v", sampler.latent_shape(frames, h, w)[0])
  return _conditioned(sampler, prompt, clip, seed, mask)


def extend_window(sampler: Sampler, prompt: str, video: np.ndarray, direction: str = "forward",
                  frames: int = 17, given: int = 2, seed: int = 0) -> np.ndarray:
  """One window of extension: the NEW frames only, uint8 [n, H, W, 3].

  Forward: the window starts with `video`'s last `1 + ft (given - 1)` frames (exact
  latents); backward: it ends with `video`'s first `ft * given` frames.
  """
  video = _check_video(video, f"extend {direction} video")
  h, w = video.shape[1:3]
  t_lat = sampler.latent_shape(frames, h, w)[0]
  mask = conditioning.condition_frames("extend", t_lat, given=given, direction=direction)
  start, end = sampler.overlap_frames(given)
  if direction == "forward":
    if video.shape[0] < start:
      raise ValueError(f"extend forward: the video has {video.shape[0]} frames; "
                       f"{start} are needed to give {given} latent frames.")
    known = video[-start:]
    clip = np.concatenate([known, np.repeat(known[-1:], frames - start, 0)])
    return _conditioned(sampler, prompt, clip, seed, mask)[start:]
  if video.shape[0] < end:
    raise ValueError(f"extend backward: the video has {video.shape[0]} frames; {end} "
                     f"are needed to give {given} latent frames.")
  known = video[:end]
  clip = np.concatenate([np.repeat(known[:1], frames - end, 0), known])
  return _conditioned(sampler, prompt, clip, seed, mask)[:frames - end]


def extend(sampler: Sampler, prompt: str, video: np.ndarray, direction: str = "forward",
           frames: int = 17, given: int = 2, seed: int = 0) -> np.ndarray:
  """The video extended by one window, forward (after) or backward (before)."""
  new = extend_window(sampler, prompt, video, direction, frames, given, seed)
  return np.concatenate([video, new] if direction == "forward" else [new, video])


def interpolate(sampler: Sampler, prompt: str, video_a: np.ndarray, video_b: np.ndarray,
                frames: int = 17, given: int = 1, given_end: int = 1,
                seed: int = 0) -> np.ndarray:
  """Connects the end of `video_a` to the start of `video_b`: a + middle + b."""
  a = _check_video(video_a, "interpolate video (start)")
  b = _check_video(video_b, "interpolate video_end", *a.shape[1:3])
  return np.concatenate([a, bridge(sampler, prompt, a, b, frames, given, given_end, seed), b])


def bridge(sampler: Sampler, prompt: str, video_a: np.ndarray, video_b: np.ndarray,
           frames: int = 17, given: int = 1, given_end: int = 1,
           seed: int = 0) -> np.ndarray:
  """The generated middle frames between `video_a`'s end and `video_b`'s start."""
  h, w = video_a.shape[1:3]
  t_lat = sampler.latent_shape(frames, h, w)[0]
  mask = conditioning.condition_frames("interpolate", t_lat, given=given, given_end=given_end)
  start, _ = sampler.overlap_frames(given)
  _, end = sampler.overlap_frames(given_end)
  if video_a.shape[0] < start or video_b.shape[0] < end:
    raise ValueError(f"interpolate: need >= {start} frames of the first video and >= "
                     f"{end} of the second; got {video_a.shape[0]} and {video_b.shape[0]}.")
  middle = frames - start - end
  clip = np.concatenate([video_a[-start:], np.repeat(video_a[-1:], middle, 0),
                         video_b[:end]])
  return _conditioned(sampler, prompt, clip, seed, mask)[start:frames - end]


def loop(sampler: Sampler, prompt: str, frames: int = 17, height: int = 64, width: int = 64,
         seed: int = 0) -> np.ndarray:
  """A seamless loop: a clip, then a bridge from its end back to its start.

  Played on repeat, the last frame flows into the first.
  """
  clip = t2v(sampler, prompt, frames, height, width, seed)
  return np.concatenate([clip, bridge(sampler, prompt, clip, clip, frames, seed=seed + 1)])


def edit(sampler: Sampler, prompt: str, video: np.ndarray, strength: float = 0.6,
         seed: int = 0) -> np.ndarray:
  """SDEdit: noise `video`'s latents to t = strength and denoise under `prompt`."""
  if not 0.0 <= float(strength) <= 1.0:
    raise ValueError(f"strength={strength}; expected a value in [0, 1].")
  video = _check_video(video, "edit video")
  if strength == 0:
    return video
  z = sampler.encode(video)
  out = sampler.sample_latents([prompt], z.shape, [seed], t_start=float(strength),
                                init_latents=z[None])
  return sampler.decode(out[0])


def long_video(sampler: Sampler, prompt: str, total_frames: int, height: int = 64,
               width: int = 64, frames: int = 17, given: int = 2, seed: int = 0,
               video: np.ndarray | None = None) -> Iterator[np.ndarray]:
  """Yields the frames of a video of `total_frames`, window by window (bounded memory).

  The first window is text-to-video, or `video` (extended forward: it is yielded first);
  each next one extends the last `1 + ft (given - 1)` frames forward. Only the current
  window is held; callers stream chunks to disk.
  """
  if total_frames < 1:
    raise ValueError(f"total frames={total_frames}; expected >= 1.")
  if video is None:
    window, i = t2v(sampler, prompt, frames, height, width, seed), 1
  else:
    window, i = _check_video(video, "extend forward video"), 0
  done = min(total_frames, window.shape[0])
  yield window[:done]
  start, _ = sampler.overlap_frames(given)
  window = window[-start:]
  while done < total_frames:
    new = extend_window(sampler, prompt, window, "forward", frames, given, seed + i)
    new = new[:total_frames - done]
    done += new.shape[0]
    window = np.concatenate([window, new])[-start:]  # what the next window needs
    i += 1
    yield new


# ------------------------------------------------------------------ batches and CLIs
def sample_batch(sampler: Sampler, rows: list[dict], out_dir: str, frames: int, height: int,
                 width: int, seed: int, batch: int, fps: int = media.DEFAULT_FPS,
                 progress: bool = True, mp4: bool = True) -> list[dict]:
  """Batch mode: samples every row, writes npy (+ mp4) and `out_dir/manifest.jsonl`.

  Returns the manifest rows. Resumes: rows whose .npy exists are not sampled again.
  """
  manifest, todo = [], []
  for i, row in enumerate(rows):
    t = 1 if row["task"] == "t2i" else frames
    entry = {"file": f"{row['name']}.npy", "prompt": row["prompt"], "task": row["task"],
             "seed": int(row.get("seed", seed + i)), "frames": t, "height": height,
             "width": width}
    entry.update({k: v for k, v in row.items() if k not in entry and k != "name"})
    manifest.append(entry)
    if not epath.Path(out_dir, entry["file"]).exists():
      todo.append(entry)
  by_size: dict[int, list[dict]] = {}
  for entry in todo:
    by_size.setdefault(entry["frames"], []).append(entry)
  bar = tqdm(total=len(todo), desc="sampling", unit="clip", disable=not progress)
  for t, entries in by_size.items():
    for a in range(0, len(entries), batch):
      chunk = entries[a:a + batch]
      videos = t2v_batch(sampler, [e["prompt"] for e in chunk], t, height, width,
                             [e["seed"] for e in chunk])
      for e, v in zip(chunk, videos):
        stem = storage.join(out_dir, e["file"][:-4])
        media.write_clip(stem, v, npy=True, mp4=mp4, fps=fps)
      bar.update(len(chunk))
  bar.close()
  manifest_path = epath.Path(out_dir, "manifest.jsonl")
  manifest_path.parent.mkdir(parents=True, exist_ok=True)
  manifest_path.write_text("".join(json.dumps(entry) + "\n" for entry in manifest))
  return manifest


def run_task(sampler: Sampler, task: str, prompt: str, inputs: dict[str, np.ndarray], *,
             frames: int, height: int, width: int, seed: int, direction: str = "forward",
             strength: float = 0.6, seconds: float = 0.0, fps: int = media.DEFAULT_FPS,
             given: int = 2) -> np.ndarray:
  """One task's video (uint8 [T, H, W, 3])."""
  if seconds:
    total = int(round(seconds * fps))
    if task == "t2v" or direction == "forward":
      windows = long_video(sampler, prompt, total, height, width, frames, given, seed,
                           inputs.get("video") if task == "extend" else None)
      return np.concatenate(list(tqdm(windows, desc="windows")))
    video = inputs["video"]
    while video.shape[0] < total:  # backward: each window goes before the last
      video = extend(sampler, prompt, video, direction, frames, given, seed)
      seed += 1
    return video[-total:]
  if task in ("t2v", "t2i"):
    return t2v(sampler, prompt, 1 if task == "t2i" else frames, height, width, seed)
  if task == "i2v":
    return i2v(sampler, prompt, inputs["image"], frames, seed)
  if task == "extend":
    return extend(sampler, prompt, inputs["video"], direction, frames, given, seed)
  if task == "interpolate":
    return interpolate(sampler, prompt, inputs["video"], inputs["video_end"], frames,
                       seed=seed)
  if task == "loop":
    return loop(sampler, prompt, frames, height, width, seed)
  return edit(sampler, prompt, inputs["video"], strength, seed)
