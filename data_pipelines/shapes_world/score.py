"""Scores clips listed in a manifest with the Shapes World analytic evaluator.

  python -m data_pipelines.shapes_world.score DIR [--per_clip OUT.jsonl] [--prompt_key K]

Reads `DIR/manifest.jsonl` (one JSON object a line with `file`, relative to DIR, and
`prompt`), scores every clip against its `prompt` (or the field `--prompt_key`, e.g.
`user_prompt`: the prompt as given, before upsampling), and prints as its last line one JSON object with the rate of
each stated attribute, of `all`, and `n`. When the manifest lines carry `split` (or
`task`), rates per split (per task) follow under `by_split` (`by_task`).
"""
from __future__ import annotations

import json

from absl import flags
from etils import epath

from data_pipelines import media
from data_pipelines import storage
from data_pipelines import usage
from data_pipelines.shapes_world import evaluator

def read_manifest(directory: str, prompt_key: str = "prompt") -> list[dict]:
  """Reads and validates DIR/manifest.jsonl; every error names the line."""
  path = storage.join(directory, "manifest.jsonl")
  if not epath.Path(directory).is_dir():
    raise ValueError(f"Clip directory {directory!r} does not exist.")
  if not epath.Path(path).exists():
    raise ValueError(f"{path!r} is missing; expected one JSON object a line with "
                     "'file' and 'prompt'.")
  rows = []
  with epath.Path(path).open() as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e.msg}): {line.strip()[:200]!r}") from None
      if not isinstance(row, dict) or not {"file", prompt_key} <= set(row):
        raise ValueError(f"{path}:{n}: needs 'file' and {prompt_key!r}, got "
                         f"{line.strip()[:200]!r}")
      rows.append(row)
  if not rows:
    raise ValueError(f"{path!r} lists no clips.")
  return rows


def evaluate_dir(directory: str, per_clip: str | None = None,
                 prompt_key: str = "prompt") -> dict:
  rows = read_manifest(directory, prompt_key)
  scores = []
  for row in rows:
    video = media.read_clip(storage.join(directory, row["file"]))
    scores.append(evaluator.score_clip(video, row[prompt_key]))
  result = evaluator.aggregate(scores)
  for key in ("split", "task"):
    groups = sorted({r[key] for r in rows if key in r})
    if groups:
      result[f"by_{key}"] = {g: evaluator.aggregate(
          [s for s, r in zip(scores, rows) if r.get(key) == g]) for g in groups}
  if per_clip:
    with epath.Path(per_clip).open("w") as f:
      for row, s in zip(rows, scores):
        f.write(json.dumps({"file": row["file"], **s}) + "\n")
  return result


def main(argv):
  if len(argv) != 2:
    raise usage.InputError("expected one directory: python -m data_pipelines.shapes_world."
                           "score DIR [--per_clip F]")
  try:
    result = evaluate_dir(argv[1], flags.FLAGS.per_clip, flags.FLAGS.prompt_key)
  except (ValueError, FileNotFoundError) as e:  # a bad manifest or clip file
    raise usage.InputError(str(e)) from e
  print(json.dumps(result))


if __name__ == "__main__":
  # Defined only when run as a script: importing this module defines no flags.
  flags.DEFINE_string("per_clip", None, "Optional JSONL of per-clip scores.")
  flags.DEFINE_string("prompt_key", "prompt", "The manifest field to score against.")
  usage.run(main)
