"""Metric writers: TensorBoard (tensorboardX) and a JSONL file, process 0 only.

Every process calls the writer with the same (global) metrics, so a value that is not
fully replicated is gathered across processes on all of them (a collective), and only
process 0 writes.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np


def _scalar(v: Any) -> float:
  """A metric as a Python float; global arrays spanning processes are gathered first."""
  if isinstance(v, jax.Array) and not v.is_fully_addressable:
    if v.is_fully_replicated:
      v = v.addressable_data(0)
    else:  # pylint: disable=g-import-not-at-top
      from jax.experimental import multihost_utils
      v = multihost_utils.process_allgather(v, tiled=True)
  return float(np.asarray(v))


class MetricWriter:
  """Writes scalars and images to `workdir/tensorboard` and `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write_scalars(self, step: int, scalars: dict[str, Any], prefix: str = "") -> dict:
    """Writes scalars (arrays are fetched); returns them as Python floats."""
    values = {f"{prefix}{k}": _scalar(v) for k, v in scalars.items()}
    if self.enabled:
      for k, v in values.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
      self._jsonl.flush()
    return values

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: uint8 [H, W, 3]."""
    if self.enabled:
      self._tb.add_image(name, np.asarray(image), step, dataformats="HWC")

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
