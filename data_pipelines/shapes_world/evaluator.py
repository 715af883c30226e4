"""The Shapes World analytic evaluator: scores a clip against the prompt it was made from.

Implements "The analytic evaluator" of `shared/shapes_world.md`. Given a clip
`uint8 [T, H, W, 3]` and a prompt (a detailed video caption, an image caption or a short
caption), it parses the prompt and scores each attribute the prompt states: `background`,
`color`, `shape`, `size`, `motion`, `region`, `permanence`, `camera`, and `all`.

Choices the contract leaves open, made here once:
- Every pixel is classified to its nearest palette colour (Euclidean RGB) over the full
  palette: 8 object colours, 4 backgrounds, the pillar and the 4 stripe colours.
- An object's mask in a frame is the largest 8-connected component of its colour's pixels.
  On generator clips this is the object itself; on model samples it ignores stray specks,
  which keeps noise near chance.
- A frame "hides" an object behind the pillar when the object's expected horizontal extent
  (from the motion table) overlaps the pillar's [0.4, 0.6]; hidden frames are not scored.
- `size` compares the median mask area over the frames where the object is present.
- `region` uses the centroid of the first frame where the object is present.
- `camera`: the stripes' phase (period 8 px) is tracked from frame to frame; this is exact
  while the per-frame pan is under 4 px (0.2 W / (T - 1) < 4), which holds for every
  configured size with T >= 9, and for T = 5 up to W = 64.
- With a panning camera, object positions are measured relative to the stripes.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
from scipy import ndimage

from data_pipelines.shapes_world import world as W

ATTRIBUTES = ("background", "color", "shape", "size", "motion", "region", "permanence",
              "camera")

# --- The palette every pixel is classified to ------------------------------------------
_NAMES = ([f"object:{c}" for c in W.OBJECT_COLORS] + [f"bg:{b}" for b in W.BACKGROUNDS]
          + ["pillar"] + [f"stripe:{b}" for b in W.BACKGROUNDS])
_RGB = np.array(list(W.OBJECT_COLORS.values()) + list(W.BACKGROUNDS.values())
                + [W.PILLAR_COLOR] + [W.stripe_color(b) for b in W.BACKGROUNDS], np.float32)
_INDEX = {n: i for i, n in enumerate(_NAMES)}
_BG_RGB = np.array(list(W.BACKGROUNDS.values()), np.float32)
_EIGHT = np.ones((3, 3), bool)

PRESENT_FRACTION = 0.3  # of the expected area, for an object to count as present


# --- Prompt parsing ----------------------------------------------------------------------
def _alt(words) -> str:
  return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_PHRASE_TO_MOTION = {p: m for m, p in W.MOTION_PHRASES.items()}
_OBJECT_RE = re.compile(
    rf"(?:(?P<size>{_alt(W.SIZES)}) )?(?P<color>{_alt(W.OBJECT_COLORS)}) "
    rf"(?P<shape>{_alt(W.SHAPES)})"
    rf"(?: (?:(?P<motion>{_alt(W.MOTION_PHRASES.values())})"
    rf"|stays still in the (?P<still>{_alt(W.REGION_CELLS)})"
    rf"|in the (?P<region>{_alt(W.REGION_CELLS)})))?", re.IGNORECASE)
_BACKGROUND_RE = re.compile(rf"on an? ({_alt(W.BACKGROUNDS)}) background", re.IGNORECASE)
_CAMERA_RE = re.compile(
    rf"the camera ({_alt(W.CAMERAS.values())})", re.IGNORECASE)
_PILLAR_RE = re.compile(r"passing behind a brown pillar", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class StatedObject:
  color: str
  shape: str
  size: str | None = None
  motion: str | None = None  # None: not stated (image or short caption)
  region: str | None = None


@dataclasses.dataclass(frozen=True)
class Prompt:
  objects: tuple[StatedObject, ...]
  background: str | None = None
  camera: str | None = None
  pillar: bool = False


def parse_prompt(prompt: str) -> Prompt:
  """Parses a detailed, image or short Shapes World caption.

  Raises:
    ValueError: when the prompt names no `{color} {shape}` object.
  """
  objects = []
  for m in _OBJECT_RE.finditer(prompt):
    g = {k: (v.lower() if v else None) for k, v in m.groupdict().items()}
    motion = _PHRASE_TO_MOTION[g["motion"]] if g["motion"] else None
    if g["still"]:
      motion = "static"
    objects.append(StatedObject(g["color"], g["shape"], g["size"], motion,
                                g["still"] or g["region"]))
  if not objects:
    raise ValueError(f"Prompt {prompt!r} names no Shapes World object "
                     f"('{{color}} {{shape}}' with colours {tuple(W.OBJECT_COLORS)} and "
                     f"shapes {W.SHAPES}).")
  bg = _BACKGROUND_RE.search(prompt)
  cam = _CAMERA_RE.search(prompt)
  camera = None
  if cam:
    camera = {v: k for k, v in W.CAMERAS.items()}[cam.group(1).lower()]
  return Prompt(tuple(objects), bg.group(1).lower() if bg else None, camera,
                bool(_PILLAR_RE.search(prompt)))


def leftover_words(prompt: str) -> set[str]:
  """The words of a prompt outside every phrase the grammar parses (lower case)."""
  for pattern in (_OBJECT_RE, _BACKGROUND_RE, _CAMERA_RE, _PILLAR_RE):
    prompt = pattern.sub("", prompt)
  return set(prompt.lower().replace(".", " ").replace(",", " ").split())


# --- Measurements --------------------------------------------------------------------
def classify(video: np.ndarray) -> np.ndarray:
  """Nearest palette index per pixel: int32 [T, H, W].

  argmin_c |x - c|^2 = argmax_c (2 x.c - |c|^2), one small matmul.
  """
  x = video.reshape(-1, 3).astype(np.float32)
  score = x @ (2 * _RGB.T) - (_RGB ** 2).sum(-1)
  return np.argmax(score, axis=-1).astype(np.int32).reshape(video.shape[:-1])


def _largest_component(mask: np.ndarray) -> np.ndarray:
  labels, n = ndimage.label(mask, structure=_EIGHT)
  if n <= 1:
    return mask
  counts = np.bincount(labels.ravel())[1:]
  return labels == (1 + int(np.argmax(counts)))


def _background(video: np.ndarray) -> str:
  border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], 1)
  med = np.median(border.reshape(-1, 3).astype(np.float32), axis=0)
  return list(W.BACKGROUNDS)[int(np.argmin(((_BG_RGB - med) ** 2).sum(-1)))]


def _stripe_offsets(classes: np.ndarray, background: str) -> tuple[np.ndarray, bool]:
  """Per-frame screen offset of the stripe pattern relative to frame 0 (pixels)."""
  stripe = classes == _INDEX[f"stripe:{background}"]
  present = float(stripe.mean()) > 0.05
  # Fraction of stripe pixels among the unoccluded (stripe or background) pixels of each
  # column, so objects in front of the stripes do not bias the phase.
  open_ = stripe | (classes == _INDEX[f"bg:{background}"])
  profile = stripe.sum(axis=1) / np.maximum(1, open_.sum(axis=1))  # [T, W]
  cols = np.arange(profile.shape[1]) + 0.5
  phase = np.angle(profile @ np.exp(2j * np.pi * cols / W.STRIPE_PERIOD_PX))
  shift = np.unwrap(phase) * W.STRIPE_PERIOD_PX / (2 * np.pi)
  return (shift - shift[0]) if present else np.zeros(len(phase)), present


@dataclasses.dataclass
class _Track:
  """Per-frame measurements of one object's mask."""
  masks: list  # bool [H, W] per frame
  area: np.ndarray  # [T]
  cx: np.ndarray  # centroid x, fraction of W, world coordinates
  cy: np.ndarray
  visible: np.ndarray  # bool [T]: not hidden behind the pillar
  present: np.ndarray  # bool [T]: visible and area >= PRESENT_FRACTION * expected


def _track(classes, obj: StatedObject, offsets, hidden, expected_area) -> _Track:
  t_, h, w = classes.shape
  masks, area, cx, cy = [], np.zeros(t_), np.full(t_, np.nan), np.full(t_, np.nan)
  for t in range(t_):
    m = _largest_component(classes[t] == _INDEX[f"object:{obj.color}"])
    masks.append(m)
    area[t] = m.sum()
    if area[t]:
      ii, jj = np.nonzero(m)
      cx[t] = ((jj + 0.5).mean() - offsets[t]) / w
      cy[t] = (ii + 0.5).mean() / h
  visible = ~hidden
  present = visible & (area >= PRESENT_FRACTION * expected_area)
  return _Track(masks, area, cx, cy, visible, present)


def _hidden_frames(obj: StatedObject, prompt: Prompt, t_: int, h: int, w: int):
  hidden = np.zeros(t_, bool)
  if prompt.pillar and obj.motion in W.SIDEWAYS:
    xs, _ = W.motion_xy(obj.motion, W.frame_taus(t_), 0.5, 0.5, 0.0)
    half = W.extent_px(obj.size or "small", h, w) / 2
    lo, hi = W.PILLAR_X[0] * w, W.PILLAR_X[1] * w
    hidden = (xs * w + half > lo) & (xs * w - half < hi)
    if hidden.all():
      hidden[:] = False
  return hidden


def _templates(bh: int, bw: int, grow: float) -> dict[str, np.ndarray]:
  """The three shape templates in a box of (bh + grow, bw + grow) px centred on the bbox."""
  vv, uu = np.meshgrid(np.arange(bh) + 0.5, np.arange(bw) + 0.5, indexing="ij")
  h, w = max(0.5, bh + grow), max(0.5, bw + grow)  # never a zero-size template
  du, dv, top = np.abs(uu - bw / 2), vv - bh / 2, (bh - h) / 2
  return {
      "circle": (du / (w / 2)) ** 2 + (dv / (h / 2)) ** 2 <= 1,
      "square": (du <= w / 2) & (np.abs(dv) <= h / 2),
      "triangle": (vv >= top) & (vv <= top + h) & (du <= (vv - top) / h * w / 2),
  }


# Rasterising a shape of extent e gives a bounding box of e +- 1 px, so each template is
# fitted at the bbox size and half a pixel to a pixel around it; the best fit counts.
_TEMPLATE_GROWTH = (-1.0, -0.5, 0.0, 0.5)


def best_shape(mask: np.ndarray) -> str | None:
  """The shape template (fitted to the mask's bounding box) of highest IoU with the mask."""
  if not mask.any():
    return None
  ii, jj = np.nonzero(mask)
  sub = mask[ii.min():ii.max() + 1, jj.min():jj.max() + 1]
  iou: dict[str, float] = {}
  for grow in _TEMPLATE_GROWTH:
    for name, t in _templates(*sub.shape, grow).items():
      iou[name] = max(iou.get(name, 0.0), (sub & t).sum() / max(1, (sub | t).sum()))
  return max(iou, key=iou.get)


def _color_holds(tr: _Track, frames: np.ndarray) -> bool:
  vis = frames & tr.visible
  if not vis.any():
    vis = frames
  return bool(vis.any()) and (tr.present & vis).sum() >= 0.5 * vis.sum()


def _shape_holds(tr: _Track, frames: np.ndarray, shape: str) -> bool:
  cand = np.where(frames & tr.visible)[0]
  if not len(cand):
    cand = np.where(frames)[0]
  best = cand[int(np.argmax(tr.area[cand]))]
  return best_shape(tr.masks[best]) == shape


def _motion_holds(tr: _Track, motion: str) -> bool:
  idx = np.where(tr.present)[0]
  if len(idx) < 2:
    return False
  x, y = tr.cx[idx], tr.cy[idx]
  dx, dy = x[-1] - x[0], y[-1] - y[0]
  if motion in ("right", "left"):
    return abs(dx) > 0.25 and np.sign(dx) == (1 if motion == "right" else -1) and abs(dy) < 0.15
  if motion in ("down", "up"):
    return abs(dy) > 0.25 and np.sign(dy) == (1 if motion == "down" else -1) and abs(dx) < 0.15
  if motion == "static":
    return abs(dx) < 0.08 and abs(dy) < 0.08
  if motion == "bounce":
    steps = np.diff(y)
    signs = np.sign(steps[np.abs(steps) > 0.01])
    reversals = int((signs[1:] != signs[:-1]).sum())
    return reversals >= 2 and (y.max() - y.min()) > 0.2
  if motion == "circle":
    ang = np.unwrap(np.arctan2(y - y.mean(), x - x.mean()))
    return abs(ang[-1] - ang[0]) >= 1.5 * np.pi
  raise ValueError(f"Unknown motion {motion!r}.")


def _region_holds(tr: _Track, region: str) -> bool:
  idx = np.where(tr.present)[0]
  if not len(idx):
    return False
  return W.region_of(float(tr.cx[idx[0]]), float(tr.cy[idx[0]])) == region


def _size_holds(tr: _Track, size: str, shape: str, h: int, w: int) -> bool:
  areas = tr.area[tr.present] if tr.present.any() else tr.area[tr.visible]
  if not len(areas) or not areas.max():
    return False
  a = float(np.median(areas))
  dist = {s: abs(a - W.expected_area_px(s, shape, h, w)) for s in W.SIZES}
  return min(dist, key=dist.get) == size


def score_clip(video: np.ndarray, prompt: str) -> dict[str, bool]:
  """Scores one clip against its prompt.

  Args:
    video: uint8 [T, H, W, 3] (an image is T = 1).
    prompt: a Shapes World caption (detailed, image or short).

  Returns:
    {attribute: holds} for every attribute the prompt states, plus `all`.
  """
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
    raise ValueError(f"Expected a uint8 [T, H, W, 3] clip, got {video.dtype} {video.shape}.")
  p = parse_prompt(prompt)
  t_, h, w, _ = video.shape
  classes = classify(video)
  out: dict[str, bool] = {}
  bg = _background(video)
  if p.background:
    out["background"] = bg == p.background
  offsets, stripes = _stripe_offsets(classes, bg)
  if p.camera:
    total = offsets[-1] / w
    if p.camera == "still":
      out["camera"] = (not stripes) or abs(total) < 0.05
    else:
      out["camera"] = stripes and total * (-1 if p.camera == "right" else 1) > 0.05
  if not stripes:
    offsets = np.zeros(t_)
  taus = W.frame_taus(t_)
  every = np.ones(t_, bool)
  checks: dict[str, list[bool]] = {}
  for obj in p.objects:
    exp_area = W.expected_area_px(obj.size or "small", obj.shape, h, w)
    tr = _track(classes, obj, offsets, _hidden_frames(obj, p, t_, h, w), exp_area)
    checks.setdefault("color", []).append(_color_holds(tr, every))
    checks.setdefault("shape", []).append(_shape_holds(tr, every, obj.shape))
    if obj.size:
      checks.setdefault("size", []).append(_size_holds(tr, obj.size, obj.shape, h, w))
    if obj.motion and t_ > 1:
      checks.setdefault("motion", []).append(_motion_holds(tr, obj.motion))
    if obj.region:
      checks.setdefault("region", []).append(_region_holds(tr, obj.region))
    if p.pillar and t_ > 1:
      quarters = (taus <= 0.25, taus >= 0.75)
      checks.setdefault("permanence", []).append(all(
          _color_holds(tr, q) and _shape_holds(tr, q, obj.shape) for q in quarters))
  out.update({k: all(v) for k, v in checks.items()})
  out["all"] = all(out.values())
  return {k: bool(v) for k, v in out.items()}


def aggregate(scores: list[dict[str, bool]]) -> dict[str, float | int]:
  """Rate of each attribute over the clips that state it, the rate of `all`, and `n`."""
  result: dict[str, float | int] = {}
  for attr in ATTRIBUTES + ("all",):
    vals = [s[attr] for s in scores if attr in s]
    if vals:
      result[attr] = float(np.mean(vals))
  result["n"] = len(scores)
  return result
