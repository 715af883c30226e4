"""Shapes World: the vocabulary and geometry of the embedded text-to-video world.

Everything here is fixed by the contract in `shared/shapes_world.md`: the palette, the
shape and size rules, the motion table, the camera and pillar geometry, and the caption
grammar. The generator (`generator.py`) and the analytic evaluator (`evaluator.py`)
both import these definitions, so they cannot drift apart.

Coordinates: positions are fractions of the canvas, `x` in units of W, `y` in units of H,
origin top left, `y` down. Pixel `(i, j)` has its centre at `((j + 0.5) / W, (i + 0.5) / H)`.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# --- Palette (RGB, exact) -------------------------------------------------------------
OBJECT_COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 190, 70),
    "cyan": (40, 210, 220),
    "blue": (40, 80, 235),
    "magenta": (210, 50, 210),
    "white": (245, 245, 245),
}
BACKGROUNDS = {
    "black": (10, 10, 10),
    "gray": (110, 110, 110),
    "navy": (15, 25, 80),
    "olive": (80, 80, 20),
}
PILLAR_COLOR = (150, 100, 50)
STRIPE_DELTA = 40  # stripes are the background colour plus this, clipped to 255


def stripe_color(background: str) -> tuple[int, int, int]:
  return tuple(min(255, c + STRIPE_DELTA) for c in BACKGROUNDS[background])


# --- Objects --------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.16, "large": 0.28}  # extent as a fraction of min(H, W)
# Area of each shape as a fraction of extent**2 (disc, square, triangle of base = height).
AREA_FACTOR = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}

# Colour-shape pairs held out of train/validation/test (only in `compositional`).
HELD_OUT_PAIRS = frozenset({("yellow", "triangle"), ("cyan", "square"), ("magenta", "circle")})
SPLITS = ("train", "validation", "test", "compositional")
LEVELS = ("basic", "full")

# --- Motions --------------------------------------------------------------------------
MOTION_PHRASES = {
    "right": "moves from left to right",
    "left": "moves from right to left",
    "down": "falls from top to bottom",
    "up": "rises from bottom to top",
    "bounce": "bounces across the floor",
    "circle": "moves in a circle",
}  # `static` reads "stays still in the {region}"
MOTIONS = ("static",) + tuple(MOTION_PHRASES)
BASIC_MOTIONS = ("static", "right", "left", "down", "up")
SIDEWAYS = ("right", "left")

# Regions: canvas thirds, (row, column) -> name.
REGION_NAMES = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
REGION_CELLS = {name: cell for cell, name in REGION_NAMES.items()}
REGION_ANCHORS = (0.22, 0.5, 0.78)
REGION_JITTER = 0.06

# --- Scene ----------------------------------------------------------------------------
PILLAR_X = (0.4, 0.6)
CAMERAS = {"still": "is still", "right": "pans to the right", "left": "pans to the left"}
PAN_EXTENT = 0.2  # the world shifts on screen by -0.2 tau (pan right) or +0.2 tau (left)
STRIPE_PERIOD_PX, STRIPE_WIDTH_PX = 8, 2


def region_of(x: float, y: float) -> str:
  """The region name of a centre at fractions (x, y)."""
  col = min(2, int(x * 3))
  row = min(2, int(y * 3))
  return REGION_NAMES[(row, col)]


def motion_xy(motion: str, tau: np.ndarray, x0: float, y0: float,
              phi: float) -> tuple[np.ndarray, np.ndarray]:
  """Object centre (world fractions) at normalised times `tau` (the motion table)."""
  tau = np.asarray(tau, np.float64)
  one = np.ones_like(tau)
  if motion == "static":
    return x0 * one, y0 * one
  if motion == "right":
    return 0.15 + 0.7 * tau, y0 * one
  if motion == "left":
    return 0.85 - 0.7 * tau, y0 * one
  if motion == "down":
    return x0 * one, 0.15 + 0.7 * tau
  if motion == "up":
    return x0 * one, 0.85 - 0.7 * tau
  if motion == "bounce":
    return 0.2 + 0.6 * tau, 0.8 - 0.6 * np.abs(np.cos(2 * np.pi * tau))
  if motion == "circle":
    ang = 2 * np.pi * tau + phi
    return 0.5 + 0.25 * np.cos(ang), 0.5 + 0.25 * np.sin(ang)
  raise ValueError(f"Unknown motion {motion!r}; known: {MOTIONS}.")


def camera_offset(camera: str, tau: np.ndarray) -> np.ndarray:
  """Screen x minus world x, as a fraction of W, at normalised times `tau`."""
  tau = np.asarray(tau, np.float64)
  sign = {"still": 0.0, "right": -1.0, "left": 1.0}[camera]
  return sign * PAN_EXTENT * tau


def frame_taus(frames: int) -> np.ndarray:
  """Normalised time of each frame: t / (T - 1), and 0 for an image."""
  if frames == 1:
    return np.zeros(1)
  return np.arange(frames) / (frames - 1)


def extent_px(size: str, height: int, width: int) -> float:
  return SIZES[size] * min(height, width)


def expected_area_px(size: str, shape: str, height: int, width: int) -> float:
  return AREA_FACTOR[shape] * extent_px(size, height, width) ** 2


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, cx: float, cy: float,
               ext: float) -> np.ndarray:
  """Which points (u, v) (pixel units) lie inside `shape` centred at (cx, cy) of extent `ext`."""
  half = ext / 2
  if shape == "circle":
    return (u - cx) ** 2 + (v - cy) ** 2 <= half ** 2
  if shape == "square":
    return (np.abs(u - cx) <= half) & (np.abs(v - cy) <= half)
  if shape == "triangle":  # apex up, base at the bottom, height = base = ext
    top = cy - half
    return (v >= top) & (v <= cy + half) & (np.abs(u - cx) <= (v - top) / 2)
  raise ValueError(f"Unknown shape {shape!r}; known: {SHAPES}.")


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  """One object of a scene. Positions are world fractions."""
  color: str
  shape: str
  size: str
  motion: str
  x0: float
  y0: float
  phi: float = 0.0

  def track(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
    return motion_xy(self.motion, frame_taus(frames), self.x0, self.y0, self.phi)

  @property
  def region(self) -> str:
    """Region of the centre in the first frame."""
    x, y = motion_xy(self.motion, np.zeros(1), self.x0, self.y0, self.phi)
    return region_of(float(x[0]), float(y[0]))


@dataclasses.dataclass(frozen=True)
class Scene:
  """A Shapes World clip, before rendering."""
  frames: int
  height: int
  width: int
  background: str
  objects: tuple[ObjectSpec, ...]
  pillar: bool = False
  camera: str = "still"

  @property
  def is_image(self) -> bool:
    return self.frames == 1


# --- Captions -------------------------------------------------------------------------
def _object_phrase(obj: ObjectSpec, image: bool) -> str:
  head = f"{obj.size} {obj.color} {obj.shape}"
  if image:
    return f"{head} in the {obj.region}"
  if obj.motion == "static":
    return f"{head} stays still in the {obj.region}"
  return f"{head} {MOTION_PHRASES[obj.motion]}"


def detailed_caption(scene: Scene) -> str:
  """The detailed caption (the video or the image form)."""
  objs = " and a ".join(_object_phrase(o, scene.is_image) for o in scene.objects)
  if scene.is_image:
    return f"A {objs} on a {scene.background} background."
  pillar = ", passing behind a brown pillar" if scene.pillar else ""
  return (f"A {objs} on a {scene.background} background{pillar}. "
          f"The camera {CAMERAS[scene.camera]}.")


def short_caption(scene: Scene) -> str:
  return " and ".join(f"a {o.color} {o.shape}" for o in scene.objects)
