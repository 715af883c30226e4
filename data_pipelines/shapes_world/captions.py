"""Caption accuracy against the truth, by the Shapes World caption grammar.

A generated caption (a captioner's, or an upsampled prompt) is parsed with the evaluator's
grammar (`evaluator.parse_prompt`) and compared with the clip's true caption attribute by
attribute. Per caption, `compare` gives for every attribute the truth states:
  background, camera, pillar          the scene's
  count                               as many objects as the truth
  color, shape, size, motion, region  per object, in caption order: true when every true
                                      object's attribute matches the generated object at
                                      its place (a missing object matches nothing)
plus `parsed` (the caption names at least one object and parses back to itself: nothing
but grammar), `exact` (the same string) and `all` (every stated attribute holds).
`aggregate` gives the rate of each over a set, and the unparseable share.

Against a short prompt (`against_short`): the colour and shape words of `a red circle`
must be the generated caption's, in order (what an upsampled prompt must keep).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipelines.shapes_world import evaluator

OBJECT_ATTRIBUTES = ("color", "shape", "size", "motion", "region")
SCENE_ATTRIBUTES = ("background", "camera", "pillar", "count")
ATTRIBUTES = SCENE_ATTRIBUTES + OBJECT_ATTRIBUTES


def _parse(text: str) -> evaluator.Prompt | None:
  try:
    return evaluator.parse_prompt(text)
  except ValueError:
    return None


def _grammatical(text: str) -> bool:
  """Whether the text holds nothing but the grammar's phrases (no stray words)."""
  return evaluator.leftover_words(text) <= {"a", "an", "and", "on", "background"}


def compare(generated: str, truth: str) -> dict[str, bool]:
  """{attribute: holds} for each attribute the truth states, with parsed, exact, all."""
  want = evaluator.parse_prompt(truth)
  got = _parse(generated)
  out: dict[str, bool] = {}
  if want.background:
    out["background"] = bool(got) and got.background == want.background
  if want.camera:
    out["camera"] = bool(got) and got.camera == want.camera
  if any(o.motion for o in want.objects):  # videos state whether there is a pillar
    out["pillar"] = bool(got) and got.pillar == want.pillar
  out["count"] = bool(got) and len(got.objects) == len(want.objects)
  for attr in OBJECT_ATTRIBUTES:
    stated = [getattr(o, attr) for o in want.objects]
    if not any(v is not None for v in stated):
      continue
    found = list(getattr(o, attr) for o in got.objects) if got else []
    out[attr] = all(v is None or (i < len(found) and found[i] == v)
                    for i, v in enumerate(stated))
  out["all"] = all(out.values())
  out["parsed"] = bool(got) and _grammatical(generated)
  out["exact"] = generated.strip() == truth.strip()
  return out


def against_short(generated: str, short: str) -> dict[str, bool]:
  """A caption against a short prompt's colour and shape words (an upsampled prompt)."""
  want = evaluator.parse_prompt(short)
  got = _parse(generated)
  found = list(got.objects) if got else []
  out = {attr: len(found) >= len(want.objects) and all(
      getattr(w, attr) == getattr(g, attr) for w, g in zip(want.objects, found))
         for attr in ("color", "shape")}
  out["count"] = len(found) == len(want.objects)
  out["all"] = all(out.values())
  out["parsed"] = bool(got) and _grammatical(generated)
  return out


def aggregate(scores: Sequence[dict[str, bool]]) -> dict[str, float | int]:
  """Rate of each key over the captions that state it, and `n`; `unparseable` = 1 -
  parsed."""
  keys = sorted({k for s in scores for k in s})
  out: dict[str, float | int] = {k: float(np.mean([s[k] for s in scores if k in s]))
                                 for k in keys}
  if "parsed" in out:
    out["unparseable"] = 1.0 - out["parsed"]
  out["n"] = len(scores)
  return out
