"""The optimizer every task trains with: AdamW (or Muon), linear warm-up, cosine decay."""
from __future__ import annotations

from collections.abc import Mapping
import math
from typing import Any

import jax
import optax
from optax.contrib import MuonDimensionNumbers

OPTIMIZERS = ("adamw", "muon")
# Muon's update RMS as a share of the learning rate (Liu et al., 2025, "Muon is Scalable for
# LLM Training", arXiv:2502.16982): 0.2 matches AdamW's, so the AdamW recipe's LR carries over.
MUON_RMS = 0.2
_ATTENTION = ("attention", "self_attention", "cross_attention")


def muon_dims(params: Any) -> Any:
  """Which params Muon orthogonalises, and how: a tree like `params` of MuonDimensionNumbers
  (None = AdamW). Flax names decide: every `kernel` of rank >= 2 except the final layer's
  (the output head stays with AdamW, as in Keller Jordan's Muon and Moonlight; so do lookup
  tables, named `embedding` or `position_embed`, not `kernel`). Attention's q/k/v kernels
  [..., D, H, Dh] reduce over D, its `out` kernel [..., H, Dh, D] over (H, Dh); any leading
  axes (a scanned stack's layer axis) are batch axes, each layer orthogonalised on its own.
  """
  def dims(path, leaf):
    names = [getattr(k, "key", str(k)) for k in path]
    if names[-1] != "kernel" or leaf.ndim < 2 or (len(names) >= 3 and names[-3] == "final"
                                                  and names[-2] == "linear"):
      return None
    attention = len(names) >= 3 and names[-3] in _ATTENTION
    if attention and names[-2] in ("query", "key", "value") and leaf.ndim >= 3:
      return MuonDimensionNumbers(reduction_axis=-3, output_axis=(-2, -1))
    if attention and names[-2] == "out" and leaf.ndim >= 3:
      return MuonDimensionNumbers(reduction_axis=(-3, -2), output_axis=-1)
    return MuonDimensionNumbers(reduction_axis=-2, output_axis=-1)

  return jax.tree_util.tree_map_with_path(dims, params)


def check(o: Mapping[str, Any]) -> None:
  """One ValueError for an optimizer section no run can train with (before any compile)."""
  for key in ("lr", "b1", "b2", "weight_decay", "grad_clip", "final_lr_frac"):
    if key in o and not math.isfinite(o[key]):
      raise ValueError(f"config.optim.{key}={o[key]}; expected a finite number.")
  if o["lr"] <= 0 or o["warmup_steps"] < 0:
    raise ValueError(f"config.optim.lr={o['lr']} must be > 0 and config.optim.warmup_steps="
                     f"{o['warmup_steps']} >= 0.")
  if not (0 <= o["b1"] < 1 and 0 <= o["b2"] < 1):
    raise ValueError(f"config.optim.b1={o['b1']} and b2={o['b2']}; expected each in [0, 1).")


def make_optimizer(o: Mapping[str, Any], steps: int) -> optax.GradientTransformation:
  """AdamW (or Muon) with global-norm clipping; LR warms up linearly, then decays (cosine) to
  `final_lr_frac` of its peak at `steps`.

  Args:
    o: the config's `optim` section: lr, warmup_steps, final_lr_frac, b1, b2,
      weight_decay, grad_clip, and optionally `name` ("adamw", the default, or "muon":
      `optax.contrib.muon` on the matrices `muon_dims` names, at update RMS `MUON_RMS` x LR,
      momentum 0.95, Nesterov; AdamW with (b1, b2) on everything else).
    steps: total training steps.
  """
  name = o.get("name", "adamw")
  if name not in OPTIMIZERS:
    raise ValueError(f"optim.name={name!r} is not one of {OPTIMIZERS}.")
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o["lr"], o["warmup_steps"], max(o["warmup_steps"] + 1, steps),
      o["lr"] * o["final_lr_frac"])
  if name == "muon":
    inner = optax.contrib.muon(
        schedule, weight_decay=o["weight_decay"], adam_b1=o["b1"], adam_b2=o["b2"],
        adam_weight_decay=o["weight_decay"], muon_weight_dimension_numbers=muon_dims,
        consistent_rms=MUON_RMS)
  else:
    inner = optax.adamw(schedule, b1=o["b1"], b2=o["b2"], weight_decay=o["weight_decay"])
  return optax.chain(optax.clip_by_global_norm(o["grad_clip"]), inner)
