"""Shapes World generator: a clip is a pure function of (split, index, T, H, W, level).

Follows `shared/shapes_world.md` exactly (see `world.py` for the shared vocabulary).
Determinism across machines: the random stream is numpy's PCG64 seeded by a SHA-256 of
the arguments, and only `Generator.random()` (uniform doubles, a stable stream) is drawn;
every discrete choice is derived from those doubles here.

Usage:
  clip = make_clip("train", 7, frames=17, height=64, width=64, level="full")
  clip.video  # uint8 [17, 64, 64, 3]; clip.caption, clip.short_caption, clip.scene
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from data_pipelines import features
from data_pipelines.shapes_world import world as W

MAX_SIDE = 256
_MAX_ATTEMPTS = 10_000
_BOX_MARGIN_PX = 1.0  # two objects' boxes must stay this far apart (so masks never touch)


@dataclasses.dataclass(frozen=True)
class Clip:
  video: np.ndarray  # uint8 [T, H, W, 3]
  caption: str
  short_caption: str
  scene: W.Scene


class _Draws:
  """Discrete and continuous draws from a stable stream of uniform doubles."""

  def __init__(self, seed: int):
    self._rng = np.random.Generator(np.random.PCG64(seed))

  def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(self._rng.random())

  def choice(self, options):
    options = tuple(options)
    return options[min(len(options) - 1, int(self.uniform() * len(options)))]

  def chance(self, p: float) -> bool:
    return self.uniform() < p


def clip_seed(split: str, index: int, frames: int, height: int, width: int,
              level: str) -> int:
  key = f"shapes_world/v1/{split}/{index}/{frames}/{height}/{width}/{level}"
  return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def validate_args(split: str, index: int, frames: int, height: int, width: int,
                  level: str) -> None:
  """Raises one clear ValueError for arguments outside the contract."""
  if split not in W.SPLITS:
    raise ValueError(f"split={split!r} is not a Shapes World split; allowed: {W.SPLITS}.")
  if level not in W.LEVELS:
    raise ValueError(f"level={level!r} is not a Shapes World level; allowed: {W.LEVELS}.")
  if index < 0:
    raise ValueError(f"index={index} must be >= 0.")
  features.check_clip_size(frames, height, width, where="Shapes World", max_side=MAX_SIDE)


def _draw_object(d: _Draws, color: str, shape: str, motion: str, pan: bool) -> W.ObjectSpec:
  size = d.choice(W.SIZES)
  if motion == "static":
    cols = (1,) if pan else (0, 1, 2)  # with a panning camera: the middle column only
    row, col = d.choice(range(3)), d.choice(cols)
    x0 = W.REGION_ANCHORS[col] + d.uniform(-W.REGION_JITTER, W.REGION_JITTER)
    y0 = W.REGION_ANCHORS[row] + d.uniform(-W.REGION_JITTER, W.REGION_JITTER)
    return W.ObjectSpec(color, shape, size, motion, x0, y0)
  x0 = d.uniform(0.4, 0.6) if pan else d.uniform(0.3, 0.7)
  y0 = d.uniform(0.3, 0.7)
  phi = d.uniform(0.0, 2 * np.pi) if motion == "circle" else 0.0
  return W.ObjectSpec(color, shape, size, motion, x0, y0, phi)


def _draw_structure(d: _Draws, frames: int, level: str) -> tuple[int, str]:
  """Object count and camera: drawn once per clip, so redraws keep their proportions."""
  if level != "full":
    return 1, "still"
  n_objects = 1 if d.chance(0.6) else 2
  camera = "still"
  if frames > 1 and d.chance(0.2):
    camera = d.choice(("right", "left"))
  return n_objects, camera


def _draw_scene(d: _Draws, frames: int, height: int, width: int, level: str,
                n_objects: int, camera: str) -> W.Scene:
  pillar = False
  if frames == 1:
    motions = ["static"] * n_objects
  elif level != "full":
    motions = [d.choice(W.BASIC_MOTIONS)]
  else:
    allowed = ("static", "down", "up") if camera != "still" else W.MOTIONS
    motions = [d.choice(allowed) for _ in range(n_objects)]
    if n_objects == 1 and motions[0] in W.SIDEWAYS:
      pillar = d.chance(0.25)
  colors = [d.choice(W.OBJECT_COLORS)]
  shapes = [d.choice(W.SHAPES)]
  if n_objects == 2:
    colors.append(d.choice([c for c in W.OBJECT_COLORS if c != colors[0]]))
    shapes.append(d.choice([s for s in W.SHAPES if s != shapes[0]]))
  background = d.choice(W.BACKGROUNDS)
  objects = tuple(
      _draw_object(d, c, s, m, pan=camera != "still")
      for c, s, m in zip(colors, shapes, motions))
  return W.Scene(frames, height, width, background, objects, pillar, camera)


def _boxes_intersect(scene: W.Scene) -> bool:
  """Whether two objects' bounding boxes intersect in any frame (world pixel units)."""
  if len(scene.objects) < 2:
    return False
  boxes = []
  for obj in scene.objects:
    x, y = obj.track(scene.frames)
    half = W.extent_px(obj.size, scene.height, scene.width) / 2 + _BOX_MARGIN_PX / 2
    boxes.append((x * scene.width - half, x * scene.width + half,
                  y * scene.height - half, y * scene.height + half))
  (ax0, ax1, ay0, ay1), (bx0, bx1, by0, by1) = boxes
  hit = (ax0 < bx1) & (bx0 < ax1) & (ay0 < by1) & (by0 < ay1)
  return bool(np.any(hit))


def _allowed_in_split(scene: W.Scene, split: str) -> bool:
  held = any((o.color, o.shape) in W.HELD_OUT_PAIRS for o in scene.objects)
  return held if split == "compositional" else not held


def sample_scene(split: str, index: int, frames: int, height: int, width: int,
                 level: str) -> W.Scene:
  """The scene of clip `index`: drawn again until it respects its split and never overlaps."""
  validate_args(split, index, frames, height, width, level)
  d = _Draws(clip_seed(split, index, frames, height, width, level))
  n_objects, camera = _draw_structure(d, frames, level)
  for _ in range(_MAX_ATTEMPTS):
    scene = _draw_scene(d, frames, height, width, level, n_objects, camera)
    if _allowed_in_split(scene, split) and not _boxes_intersect(scene):
      return scene
  raise RuntimeError(f"No valid scene after {_MAX_ATTEMPTS} draws for {split}/{index}.")


def render(scene: W.Scene) -> np.ndarray:
  """Draws a scene: background, stripes, objects in caption order, then the pillar.

  Returns:
    uint8 [T, H, W, 3].
  """
  t_, h, w = scene.frames, scene.height, scene.width
  u = np.arange(w, dtype=np.float64) + 0.5  # pixel centres, pixel units
  v = np.arange(h, dtype=np.float64) + 0.5
  uu, vv = np.meshgrid(u, v)  # [H, W]
  taus = W.frame_taus(t_)
  offsets = W.camera_offset(scene.camera, taus) * w  # screen minus world, pixels
  video = np.empty((t_, h, w, 3), np.uint8)
  video[:] = W.BACKGROUNDS[scene.background]
  tracks = [o.track(t_) for o in scene.objects]
  pillar = (uu >= W.PILLAR_X[0] * w) & (uu <= W.PILLAR_X[1] * w)
  for t in range(t_):
    if scene.camera != "still":
      world_u = u - offsets[t]
      stripes = np.mod(world_u, W.STRIPE_PERIOD_PX) < W.STRIPE_WIDTH_PX  # [W]
      video[t, :, stripes] = W.stripe_color(scene.background)
    for obj, (xs, ys) in zip(scene.objects, tracks):
      cx, cy = xs[t] * w + offsets[t], ys[t] * h
      inside = W.shape_mask(obj.shape, uu, vv, cx, cy, W.extent_px(obj.size, h, w))
      video[t][inside] = W.OBJECT_COLORS[obj.color]
    if scene.pillar:
      video[t][pillar] = W.PILLAR_COLOR
  return video


def make_clip(split: str, index: int, frames: int = 17, height: int = 64, width: int = 64,
              level: str = "full") -> Clip:
  """The clip `index` of `split`: video, detailed and short captions, and its scene."""
  scene = sample_scene(split, index, frames, height, width, level)
  return Clip(render(scene), W.detailed_caption(scene), W.short_caption(scene), scene)
