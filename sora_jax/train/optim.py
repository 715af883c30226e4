"""The optimizer every task trains with: AdamW, linear warm-up, cosine decay."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax


def make_optimizer(o: Mapping[str, Any], steps: int) -> optax.GradientTransformation:
  """AdamW with global-norm clipping; LR warms up linearly, then decays (cosine) to
  `final_lr_frac` of its peak at `steps`.

  Args:
    o: the config's `optim` section: lr, warmup_steps, final_lr_frac, b1, b2,
      weight_decay, grad_clip.
    steps: total training steps.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o["lr"], o["warmup_steps"], max(o["warmup_steps"] + 1, steps),
      o["lr"] * o["final_lr_frac"])
  return optax.chain(optax.clip_by_global_norm(o["grad_clip"]),
                     optax.adamw(schedule, b1=o["b1"], b2=o["b2"], weight_decay=o["weight_decay"]))
