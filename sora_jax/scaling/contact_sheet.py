"""A Sora-style contact sheet of a compute ladder: the same prompts and seeds sampled from
every rung's checkpoint, one row per prompt, one column per rung.

`python -m sora_jax.scaling.report --contact_sheet K` makes it; the prompts are the first K
of the rungs' evaluation (same split, level, size, seeds and sampler as adherence.json
records; the run config's defaults without one).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any


from data_pipelines import media
from data_pipelines import storage
from data_pipelines.shapes_world import generator as sw
from data_pipelines.shapes_world import world
from sora_jax.inference import adherence
from sora_jax.inference import run as run_lib
from sora_jax.inference import sampler as sampler_lib
from sora_jax.inference import tasks


def sheet_settings(run: Mapping[str, Any]) -> dict[str, Any]:
  """What the rungs' contact sheet samples: the run's evaluation settings.

  From the run's adherence.json when it has one (the evaluation's split, level, size, first
  seed and sampler), else its config: the test split at its Shapes World level, its first
  video size (T > 1), seed 0, the default sampler.

  Returns:
    {"split", "level", "size" [T, H, W], "seed", "sampling" {"steps", "method",
     "guidance"} (missing keys: the sampler's defaults)}.
  """
  wd = run["workdir"]
  adherence = storage.read_json_if_exists(storage.join(wd, "adherence.json")) or {}
  config = storage.read_json_if_exists(storage.join(wd, "config.json")) or {}
  name = (config.get("data") or {}).get("name")
  name = name if isinstance(name, dict) else {}
  videos = [s for s in name.get("sizes", []) if s[0] > 1] or [[17, 64, 64]]
  return {"split": adherence.get("split", "test"),
          "level": adherence.get("level") or name.get("level", "full"),
          "size": [int(v) for v in adherence.get("size") or videos[0]],
          "seed": int(adherence.get("seed", 0)),
          "sampling": dict(adherence.get("sampling") or {})}


def ladder_contact_sheet(runs: Sequence[Mapping[str, Any]], path: str, num_prompts: int,
                         frames_per_cell: int = 4) -> dict[str, Any]:
  """Samples the same prompts and seeds from every rung's checkpoint into one sheet.

  Args:
    runs: `collect` rows; complete runs with a DiT checkpoint that can sample are the
      columns (in order), the rest are listed as skipped.
    path: the PNG to write.
    num_prompts: K, the rows: the first K prompts of the evaluation split (`sheet_settings`
      of the first column), prompt i with seed `seed + i`, as in the evaluation.
    frames_per_cell: frames shown per video.

  Returns:
    {"path", "columns", "prompts", "short_prompts", "seeds", "split", "level", "size",
     "sampling", "skipped" {name: why}}; "path" is None when no run can sample.
  """
  if num_prompts < 1:
    raise ValueError(f"ladder_contact_sheet: num_prompts={num_prompts}; expected >= 1.")
  columns, skipped = [], {}
  for run in runs:
    if not run["complete"]:
      skipped[run["name"]] = "not finished (no final_metrics.json)"
      continue
    try:
      run_lib.read_dit_run(run["workdir"])
    except ValueError as e:
      skipped[run["name"]] = str(e)
      continue
    columns.append(run)
  out = {"path": None, "columns": [], "skipped": skipped}
  if not columns:
    return out
  settings = sheet_settings(columns[0])
  t, h, w = settings["size"]
  rows = adherence.split_prompts(settings["split"], num_prompts, settings["level"], t, h, w)
  prompts = [r["prompt"] for r in rows]
  short = [world.short_caption(sw.sample_scene(settings["split"], i, t, h, w,
                                               settings["level"]))
           for i in range(num_prompts)]
  seeds = [settings["seed"] + i for i in range(num_prompts)]
  options = sampler_lib.SamplingOptions(**settings["sampling"])
  videos = {}
  for run in columns:
    label = f"{run['compute']:g}x" if run["compute"] else run["name"]
    sampler = sampler_lib.Sampler(run_lib.Run.load(run["workdir"]), options)
    videos[label] = tasks.t2v_batch(sampler, prompts, t, h, w, seeds)
  media.write_contact_sheet(path, videos, frames=frames_per_cell, row_labels=short)
  out.update(path=path, columns=list(videos), prompts=prompts, short_prompts=short,
             seeds=seeds, **{k: settings[k] for k in ("split", "level", "size")},
             sampling=dataclasses.asdict(options))
  return out
