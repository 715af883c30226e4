"""Exports Shapes World clips as files, with a manifest other tools read.

  python -m data_pipelines.shapes_world.export --split test --level full --num 16 \
      --frames 17 --height 64 --width 64 --out /tmp/sw [--start 0] [--mp4]

Writes `OUT/<name>.npy` (uint8 [T, H, W, 3]) and `OUT/manifest.jsonl`, one JSON object a
line: `file`, `prompt` (detailed caption), `short_prompt`, `split`, `index`, `level`,
`frames`, `height`, `width`. With `--mp4`, also a playable `<name>.mp4` and `<name>.gif`.
"""
from __future__ import annotations

import json

from absl import flags
from etils import epath

from data_pipelines import media
from data_pipelines import storage
from data_pipelines import usage
from data_pipelines.shapes_world import generator
from data_pipelines.shapes_world import world as W

def export(out: str, split: str, level: str, num: int, frames: int, height: int,
           width: int, start: int = 0, mp4: bool = False) -> str:
  """Writes the clips and the manifest; returns the manifest path."""
  generator.validate_args(split, start, frames, height, width, level)  # before any writing
  epath.Path(out).mkdir(parents=True, exist_ok=True)
  manifest = storage.join(out, "manifest.jsonl")
  with epath.Path(manifest).open("w") as f:
    for index in range(start, start + num):
      clip = generator.make_clip(split, index, frames, height, width, level)
      name = f"{split}_{level}_{height}x{width}x{frames}_{index:06d}"
      media.write_clip(storage.join(out, name), clip.video, mp4=mp4, gif=mp4)
      f.write(json.dumps({
          "file": name + ".npy", "prompt": clip.caption, "short_prompt": clip.short_caption,
          "split": split, "index": index, "level": level, "frames": frames,
          "height": height, "width": width}) + "\n")
  return manifest


def define_flags() -> None:
  """The command's flags (defined only when run as a script: importing defines none)."""
  flags.DEFINE_enum("split", "test", list(W.SPLITS), "Which split.")
  flags.DEFINE_enum("level", "full", list(W.LEVELS), "Scene level.")
  flags.DEFINE_integer("num", 16, "How many clips.", lower_bound=1)
  flags.DEFINE_integer("start", 0, "First clip index.", lower_bound=0)
  flags.DEFINE_integer("frames", 17, "T = 4k + 1 (1 is an image).")
  flags.DEFINE_integer("height", 64, "H, a multiple of 16 in [32, 256].")
  flags.DEFINE_integer("width", 64, "W, a multiple of 16 in [32, 256].")
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_boolean("mp4", False, "Also write playable mp4 and gif files.")


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    path = export(f.out, f.split, f.level, f.num, f.frames, f.height, f.width, f.start, f.mp4)
  except ValueError as e:  # sizes the generator does not make
    raise usage.InputError(str(e)) from e
  print(json.dumps({"manifest": path, "n": f.num}))


if __name__ == "__main__":
  define_flags()
  usage.run(main)
