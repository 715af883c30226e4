"""Sample every Sora task from a trained DiT run: mp4 + gif (+ npy), or a batch of prompts.

  python -m sora_jax.sample --workdir runs/demo/dit --task t2v \
      --prompt "A large red circle moving to the right on a black background. The camera is still." \
      --out samples/red.mp4
  python -m sora_jax.sample --workdir W --task i2v --image first.png --prompt "..." --out a.mp4
  python -m sora_jax.sample --workdir W --task extend --video a.mp4 --direction backward ...
  python -m sora_jax.sample --workdir W --task interpolate --video a.mp4 --video_end b.mp4 ...
  python -m sora_jax.sample --workdir W --task edit --video a.mp4 --strength 0.6 ...
  python -m sora_jax.sample --workdir W --task t2v --seconds 60 ...   # a minute, windowed
  python -m sora_jax.sample --workdir W --prompts_file prompts.txt --out_dir D   # batch

Tasks: t2v, t2i, i2v, extend, interpolate, loop, edit (`sora_jax/diffusion/conditioning.py`).
`--seconds N` (t2v and extend) makes a long video by chained forward extension at the
nominal 8 fps; a long t2v video, or one extended forward, is streamed to its files window by
window (memory does not grow with its length; no gif), up to MAX_SECONDS. `--prompt ""`
needs `--unconditional`.

Batch mode: `--prompts_file` is a text file with one prompt a line, or a JSON-lines file
with {"prompt": ..., optional "name", "seed", "task" (t2v or t2i)}; it writes
`D/<name>.npy` (uint8 [T, H, W, 3]) and `D/<name>.mp4` for every prompt, and
`D/manifest.jsonl` with `file`, `prompt`, `task`, `seed` (and frames, height, width).
Prompts of one size are sampled `--batch` at a time. Progress bars: over the solver's
model calls (single mode) and over clips (batch mode).

Prompt upsampling: `--upsampler W` (a `configs/captioner.py:source=text` run) expands each
prompt into a detailed caption of the training distribution, sampled at
`--upsample_temperature` with the prompt's seed (the same seed, the same expansion); the
clip is sampled from the expansion. The output JSON (single mode) and `manifest.jsonl`
(batch mode: `prompt` = what was sampled, `user_prompt` = the line as given) carry both.

Every bad input (missing file, wrong size, a task without its input, a strength outside
[0, 1], a workdir without a checkpoint) is one clear error before the model is loaded.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import flags
from etils import epath
import numpy as np
from tqdm import tqdm

from data_pipelines import media
from data_pipelines import storage
from data_pipelines import usage
from sora_jax.diffusion import conditioning
from sora_jax.inference import captioning
from sora_jax.inference import cli
from sora_jax.inference import run as run_lib
from sora_jax.inference import sampler as sampler_lib
from sora_jax.inference import tasks
from sora_jax.sharding import mesh as mesh_lib

FLAGS = flags.FLAGS


def define_flags():
  cli.define_flags()
  flags.DEFINE_enum("task", "t2v", conditioning.TASKS, "What to generate.")
  flags.DEFINE_string("prompt", None, "The caption.")
  flags.DEFINE_bool("unconditional", False, "Allow an empty --prompt (no caption).")
  flags.DEFINE_string("image", None, "i2v: the image (png/jpg/npy, or a video's first frame).")
  flags.DEFINE_string("video", None, "extend / interpolate (start) / edit: a video file.")
  flags.DEFINE_string("video_end", None, "interpolate: the video to reach.")
  flags.DEFINE_enum("direction", "forward", conditioning.DIRECTIONS, "extend: which way.")
  flags.DEFINE_float("strength", 0.6, "edit: noise level in [0, 1] (1 = ignore the video).")
  flags.DEFINE_float("seconds", 0.0, "t2v / extend: total length in seconds (chained "
                     "windows); 0 = one window.")
  flags.DEFINE_integer("fps", media.DEFAULT_FPS, "Frames per second of --seconds and files.")
  flags.DEFINE_integer("frames", 17, "T of a window (1 + a multiple of the VAE's factor).")
  flags.DEFINE_integer("height", 64, "H.")
  flags.DEFINE_integer("width", 64, "W.")
  flags.DEFINE_integer("given", 2, "extend / long videos: latent frames of overlap.")
  flags.DEFINE_integer("seed", 0, "Noise seed (same seed, same sample).")
  flags.DEFINE_string("out", None, "Output .mp4 (a .gif is written beside it).")
  flags.DEFINE_bool("npy", False, "Also write .npy (uint8 [T, H, W, 3]).")
  flags.DEFINE_string("prompts_file", None, "Batch mode: prompts (txt or jsonl).")
  flags.DEFINE_string("out_dir", None, "Batch mode: output directory.")
  flags.DEFINE_integer("batch", 8, "Batch mode: clips sampled together.")
  flags.DEFINE_string("upsampler", None, "A prompt upsampler run (configs/captioner.py "
                      "source=text): expand each prompt before sampling.")
  flags.DEFINE_float("upsample_temperature", 1.0, "Upsampling temperature (0 = greedy).")
  flags.DEFINE_string("mesh", "", "Sample sharded over a device mesh, e.g. fsdp=2,context=4 "
                      "(context > 1: ring attention over each clip's tokens); '' = one device.")


# ------------------------------------------------------------------ input checks
NEEDS = {"i2v": ("image",), "extend": ("video",), "interpolate": ("video", "video_end"),
         "edit": ("video",)}


def read_inputs(task: str, paths: dict[str, str | None], height: int,
                width: int) -> dict[str, np.ndarray]:
  """Reads the files a task needs; one clear error for a missing, unreadable or wrong one."""
  missing = [f"--{k}" for k in NEEDS.get(task, ()) if not paths.get(k)]
  if missing:
    raise ValueError(f"--task={task} needs {' and '.join(missing)}.")
  out = {}
  for key in NEEDS.get(task, ()):
    path = paths[key]
    if not epath.Path(path).exists():
      raise ValueError(f"--{key}={path!r}: no such file.")
    try:
      clip = media.read_clip(path)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"--{key}={path!r} cannot be read as an image or video: {e}") from e
    if clip.shape[1:3] != (height, width):
      raise ValueError(f"--{key}={path!r} is {clip.shape[1]}x{clip.shape[2]} (HxW) but "
                       f"--height={height} --width={width} was asked; give a file of "
                       "that size or change --height/--width.")
    out[key] = clip[:1] if key == "image" else clip
  return out


MAX_SECONDS = 3600.0  # an hour at 8 fps: 28,800 frames, ~3,600 windows


def check_args(task: str, strength: float, seconds: float, out: str | None,
               prompt: str | None, unconditional: bool = False, given: int = 2) -> None:
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"--strength={strength}; expected a value in [0, 1].")
  if seconds < 0:
    raise ValueError(f"--seconds={seconds}; expected >= 0.")
  if seconds and task not in ("t2v", "extend"):
    raise ValueError(f"--seconds applies to --task t2v or extend, not {task!r}.")
  if seconds > MAX_SECONDS:
    raise ValueError(f"--seconds={seconds}; expected <= {MAX_SECONDS:g} (an hour).")
  if given < 1 and (task == "extend" or seconds):
    raise ValueError(f"--given={given}; expected >= 1 latent frames of overlap.")
  if not out:
    raise ValueError("--out is required (e.g. --out samples/clip.mp4).")
  if not out.endswith(".mp4"):
    raise ValueError(f"--out={out!r}: expected a path ending in .mp4.")
  usage.check_directory(f"--out={out!r}: its directory",
                        os.fspath(epath.Path(storage.absolute(out)).parent))
  if prompt is None:
    raise ValueError("--prompt is required.")
  if not prompt.strip() and not unconditional:
    raise ValueError("--prompt is empty; pass --unconditional to sample without a caption.")


def read_prompts(path: str) -> list[dict]:
  """Batch prompts: txt (one a line) or jsonl ({"prompt", optional name/seed/task})."""
  if not epath.Path(path).exists():
    raise ValueError(f"--prompts_file={path!r}: no such file.")
  rows = []
  with epath.Path(path).open() as f:
    for i, line in enumerate(f):
      line = line.strip()
      if not line:
        continue
      if line.startswith("{"):
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{i + 1}: not valid JSON: {e}") from e
        if "prompt" not in row:
          raise ValueError(f"{path}:{i + 1}: a JSON line needs a 'prompt'.")
      else:
        row = {"prompt": line}
      row.setdefault("name", f"{len(rows):04d}")
      task = row.setdefault("task", "t2v")
      if task not in ("t2v", "t2i"):
        raise ValueError(f"{path}:{i + 1}: batch mode samples t2v or t2i, not {task!r}.")
      rows.append(row)
  if not rows:
    raise ValueError(f"--prompts_file={path!r} holds no prompts.")
  return rows


def check_upsampler(workdir: str, temperature: float) -> None:
  """--upsampler is a prompt upsampler run and the temperature is >= 0 (JSON only)."""
  if temperature < 0:
    raise ValueError(f"--upsample_temperature={temperature}; expected >= 0 (0 = greedy).")
  _, config, _ = captioning.read_captioner_run(workdir)
  if config["model"]["source"] != "text":
    raise ValueError(f"--upsampler={workdir!r} is a video captioner (source="
                     f"{config['model']['source']!r}); give a prompt upsampler, trained with "
                     "configs/captioner.py:source=text.")


# ------------------------------------------------------------------ writing
def stream_long_video(sampler, prompt: str, seconds: float, fps: int, stem: str,
                      frames: int, height: int, width: int, given: int, seed: int,
                      npy: bool, video: np.ndarray | None = None) -> tuple[list[str], int]:
  """A long video written window by window to `stem.mp4` (+ `.npy`): (paths, frames).

  t2v, or `video` extended forward (its frames first).
  """
  total = int(round(seconds * fps))
  if video is not None:
    height, width = video.shape[1:3]
  with media.StreamWriter(stem, total, height, width, npy=npy, fps=fps) as writer, \
      tqdm(total=total, desc="frames", unit="frame") as bar:
    for chunk in tasks.long_video(sampler, prompt, total, height, width, frames, given, seed,
                                  video):
      writer.write(chunk)
      bar.update(chunk.shape[0])
  return writer.paths, writer.written


def write_outputs(stem: str, video: np.ndarray, fps: int, npy: bool) -> list[str]:
  return media.write_clip(stem, video, npy=npy, mp4=True, gif=True, fps=fps)


def main(argv: Sequence[str]) -> None:
  del argv
  with usage.checking():  # every input, before any input file is read or the model loads
    cli.check_run()
    mesh = mesh_lib.make_mesh(mesh_lib.parse_sizes(FLAGS.mesh)) if FLAGS.mesh else None
    batch_mode = bool(FLAGS.prompts_file or FLAGS.out_dir)
    if batch_mode and not (FLAGS.prompts_file and FLAGS.out_dir):
      raise usage.InputError("Batch mode needs both --prompts_file and --out_dir.")
    if batch_mode:
      rows = read_prompts(FLAGS.prompts_file)
      if FLAGS.batch < 1:
        raise usage.InputError(f"--batch={FLAGS.batch}; expected >= 1.")
      usage.check_directory("--out_dir", FLAGS.out_dir)
    else:
      check_args(FLAGS.task, FLAGS.strength, FLAGS.seconds, FLAGS.out, FLAGS.prompt,
                 FLAGS.unconditional, FLAGS.given)
      inputs = read_inputs(FLAGS.task, {"image": FLAGS.image, "video": FLAGS.video,
                                        "video_end": FLAGS.video_end}, FLAGS.height,
                           FLAGS.width)
    cli.check_prompts([r["prompt"] for r in rows] if batch_mode else [FLAGS.prompt])
    options = cli.sampling_options()
    cli.check_window(FLAGS.batch if batch_mode else 1, mesh.size if mesh else 1)
    if FLAGS.upsampler:
      check_upsampler(FLAGS.upsampler, FLAGS.upsample_temperature)
  upsampled = {}
  if FLAGS.upsampler:
    upsampler = captioning.CaptionerRun.load(FLAGS.upsampler)
    if batch_mode:
      rows = captioning.upsample_rows(upsampler, rows, FLAGS.seed,
                                      FLAGS.upsample_temperature)
    else:
      upsampled = {"user_prompt": FLAGS.prompt, "prompt": upsampler.upsample(
          [FLAGS.prompt], FLAGS.seed, FLAGS.upsample_temperature)[0]}
  prompt = upsampled.get("prompt", FLAGS.prompt)
  if FLAGS.upsampler:  # the expansions pass the policy too, before the DiT loads
    with usage.checking():
      cli.check_prompts([r["prompt"] for r in rows] if batch_mode else [prompt])
  run = run_lib.Run.load(FLAGS.workdir, FLAGS.step, mesh)
  sampler = sampler_lib.Sampler(run, options, progress=not batch_mode)
  if batch_mode:
    tasks.sample_batch(sampler, rows, FLAGS.out_dir, FLAGS.frames, FLAGS.height, FLAGS.width,
                       FLAGS.seed, FLAGS.batch, FLAGS.fps)
    print(json.dumps({"out_dir": FLAGS.out_dir, "num": len(rows)}))
    return
  if FLAGS.seconds and (FLAGS.task == "t2v" or FLAGS.direction == "forward"):
    # Streamed: one window in memory at a time.
    paths, total = stream_long_video(sampler, prompt, FLAGS.seconds, FLAGS.fps,
                                     FLAGS.out[:-4], FLAGS.frames, FLAGS.height,
                                     FLAGS.width, FLAGS.given, FLAGS.seed, FLAGS.npy,
                                     inputs.get("video") if FLAGS.task == "extend" else None)
    print(json.dumps({"task": FLAGS.task, "frames": total, "files": paths, **upsampled}))
    return
  video = tasks.run_task(sampler, FLAGS.task, prompt, inputs, frames=FLAGS.frames,
                         height=FLAGS.height, width=FLAGS.width, seed=FLAGS.seed,
                         direction=FLAGS.direction, strength=FLAGS.strength,
                         seconds=FLAGS.seconds, fps=FLAGS.fps, given=FLAGS.given)
  paths = write_outputs(FLAGS.out[:-4], video, FLAGS.fps, FLAGS.npy)
  print(json.dumps({"task": FLAGS.task, "frames": int(video.shape[0]), "files": paths,
                    **upsampled}))


if __name__ == "__main__":
  define_flags()
  usage.run(main)
