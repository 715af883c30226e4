"""One conditioning mechanism for every Sora task: a per-latent-frame mask + clean latents.

A clip's latent frames are either *generated* (noised, denoised by the sampler, trained
with the flow loss) or *given* (clean latents of an image or video, held exactly as given
by the sampler, seen by the DiT with timestep t = 0, excluded from the loss). The DiT's
per-token timestep (`models/dit.py`) is what makes this one model: a given token simply
carries t = 0 inside a noisy clip. This is the "frame-level mask" design of the Sora
report's extensions (and of e.g. Open-Sora's masked training).

Tasks and their masks over T' latent frames (True = given):
  t2v            none                          text to video
  t2i            none, T = 1                   an image is a one-frame video
  i2v            frame 0                       animate an image (the causal VAE encodes the
                                               first frame alone, so an image's latent IS
                                               a video's first latent frame)
  extend         forward: the first k frames (the end of the given video, re-encoded);
                 backward: the last k frames (the start of the given video)
  interpolate    the first k1 and the last k2 frames (end of video A, start of video B)
  loop           built from interpolate: a clip, then a bridge from its end to its start
  edit           none; SDEdit (Meng et al., 2021): noise the video's latents to t = s and
                 denoise under the new prompt (`solvers.edit_start`)

Training draws one of the mask *kinds* per packed clip from `config.tasks` (a mixture):
`t2v`, `i2v`, `extend_forward`, `extend_backward`, `interpolate`; the number of given
frames is uniform over what leaves at least one frame to generate. One-frame clips
(images) are always unconditioned.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

TASKS = ("t2v", "t2i", "i2v", "extend", "interpolate", "loop", "edit")
TRAIN_KINDS = ("t2v", "i2v", "extend_forward", "extend_backward", "interpolate")
DIRECTIONS = ("forward", "backward")


def check_mixture(mixture: Mapping[str, float], where: str = "config.tasks") -> None:
  """Raises a ValueError unless `mixture` maps known kinds to weights >= 0, not all 0."""
  unknown = sorted(set(mixture) - set(TRAIN_KINDS))
  if unknown:
    raise ValueError(f"{where}: unknown task kinds {unknown}; allowed: {TRAIN_KINDS}.")
  weights = [float(w) for w in mixture.values()]
  if any(w < 0 for w in weights) or sum(weights) <= 0:
    raise ValueError(f"{where}={dict(mixture)}: weights must be >= 0 and sum to > 0.")


def _segment_reduce(values, segment_ids, op):
  """Per-token reduction of `values` [B, N] over each token's segment (numpy-free, jit)."""
  b, n = segment_ids.shape
  flat = (segment_ids + (n + 1) * jnp.arange(b)[:, None]).reshape(-1)
  reduced = op(values.reshape(-1), flat, num_segments=b * (n + 1))
  return reduced[flat].reshape(b, n)


def random_condition_mask(rng: jax.Array, frame_index: jax.Array, segment_ids: jax.Array,
                          mixture: Mapping[str, float]) -> jax.Array:
  """Draws a training task per packed clip and returns which tokens are given (clean).

  Args:
    rng: PRNG key.
    frame_index: int [B, N], each token's latent time-patch index within its clip
      (`positions[..., 0]`).
    segment_ids: int [B, N], 1..k = packed clip, 0 = padding.
    mixture: kind -> weight over TRAIN_KINDS (missing kinds weigh 0).

  Returns:
    bool [B, N]: True where the token's frame is given (t = 0, no loss). Padding: False.
  """
  check_mixture(mixture)
  b, n = segment_ids.shape
  probs = np.asarray([float(mixture.get(k, 0.0)) for k in TRAIN_KINDS], np.float32)
  k_rng, a_rng, b_rng = jax.random.split(rng, 3)
  # One draw per (row, segment id), gathered to the tokens.
  kind = jax.random.categorical(k_rng, jnp.log(jnp.asarray(probs / probs.sum())),
                                shape=(b, n + 1))
  ua = jax.random.uniform(a_rng, (b, n + 1))
  ub = jax.random.uniform(b_rng, (b, n + 1))
  take = lambda x: jnp.take_along_axis(x, segment_ids, axis=1)
  kind, ua, ub = take(kind), take(ua), take(ub)
  frames = _segment_reduce(frame_index, segment_ids, jax.ops.segment_max) + 1  # T' per clip
  f = frame_index
  # k in [1, T' - 1] given frames for extensions; k1 + k2 <= T' - 1 for interpolation.
  k = 1 + jnp.floor(ua * (frames - 1)).astype(jnp.int32)
  k1 = 1 + jnp.floor(ua * jnp.maximum(frames - 2, 1)).astype(jnp.int32)
  k2 = 1 + jnp.floor(ub * jnp.maximum(frames - 1 - k1, 1)).astype(jnp.int32)
  given = jnp.select(
      [kind == 1, kind == 2, kind == 3, kind == 4],
      [f == 0, f < k, f >= frames - k,
       jnp.where(frames >= 3, (f < k1) | (f >= frames - k2), f == 0)],
      default=jnp.zeros_like(f, bool))
  return given & (frames > 1) & (segment_ids > 0)


def condition_frames(task: str, num_frames: int, *, given: int = 1, given_end: int = 0,
                     direction: str = "forward") -> np.ndarray:
  """Sampling-time mask over a clip's T' latent frames (True = given), by task.

  Args:
    task: one of TASKS.
    num_frames: T' (latent frames of the clip being sampled).
    given: latent frames given at the start (i2v: 1; extend forward; interpolate's A end),
      or at the end for extend backward.
    given_end: interpolate only: latent frames given at the end (B's start).
    direction: extend only: "forward" or "backward".

  Returns:
    bool numpy [T'].

  Raises:
    ValueError: unknown task or direction, or a mask that leaves nothing to generate.
  """
  if task not in TASKS:
    raise ValueError(f"Unknown task {task!r}; allowed: {TASKS}.")
  if direction not in DIRECTIONS:
    raise ValueError(f"direction={direction!r}; allowed: {DIRECTIONS}.")
  mask = np.zeros((num_frames,), bool)
  if task == "i2v":
    mask[:1] = True
  elif task == "extend":
    if direction == "forward":
      mask[:given] = True
    else:
      mask[num_frames - given:] = True
  elif task in ("interpolate", "loop"):
    mask[:given] = True
    if given_end:
      mask[num_frames - given_end:] = True
  if task != "t2v" and task != "t2i" and task != "edit" and mask.all():
    raise ValueError(f"task {task!r}: {int(mask.sum())} given latent frames of "
                     f"{num_frames} leave nothing to generate; use a longer clip.")
  return mask


def token_mask(frames_mask: np.ndarray, frame_index: np.ndarray) -> np.ndarray:
  """Per-latent-frame mask [T'] -> per-token mask via each token's frame index [..., N]."""
  return np.asarray(frames_mask)[np.asarray(frame_index)]
