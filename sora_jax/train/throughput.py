"""Training throughput, timed by the loop: tokens/s, FLOP/s and MFU.

The loop reads the metrics of the steps since its last read together (every `log_every`
steps, and before an evaluation or a checkpoint; `stepping.InFlight`) and charges the wall
time between two reads to the FLOPs and tokens of those steps. The first read after a
(re)start includes the compile and an interval that spans an evaluation or a checkpoint
includes that work: `skip()` drops the next interval. FLOPs and tokens are the steps' own
metrics (`flops`: the analytic count of `scaling/flops.py`; `tokens`, when the task has
them).

MFU = FLOP/s / peak. The peak is `train.peak_flops` when the config sets it (the whole
job's), else the dense bf16 peak of the device kind below times the device count; on a
device kind not listed (a CPU, say) MFU is not reported.
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import jax

# Dense bf16 peak FLOP/s of one chip, by `jax.Device.device_kind` (vendors' data sheets).
PEAK_FLOPS_BY_DEVICE_KIND = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
}


def peak_flops(configured: float = 0.0, devices=None) -> float:
  """The job's peak FLOP/s: `configured` if > 0, else the table's per-chip figure times the
  number of devices (0 when the device kind is not in the table)."""
  if configured > 0:
    return float(configured)
  devices = jax.devices() if devices is None else devices
  return PEAK_FLOPS_BY_DEVICE_KIND.get(devices[0].device_kind, 0.0) * len(devices)


class Throughput:
  """Accumulates (seconds, FLOPs, tokens) between consecutive `step` calls."""

  def __init__(self, clock=time.perf_counter):
    self._clock = clock
    self._last = None
    self.seconds, self.flops, self.tokens = 0.0, 0.0, 0.0

  def skip(self) -> None:
    """The next interval holds other work (compile, evaluation, checkpoint): drop it."""
    self._last = None

  def step(self, metrics: Mapping[str, float]) -> None:
    """Called at each read of the loop: charges the interval since the last call to the
    summed `metrics` of the steps read."""
    now = self._clock()
    if self._last is not None:
      self.seconds += now - self._last
      self.flops += float(metrics.get("flops", 0.0))
      self.tokens += float(metrics.get("tokens", 0.0))
    self._last = now

  def report(self, peak: float) -> dict[str, float]:
    """Throughput since the last report (nothing when no interval was timed); resets."""
    out = {}
    if self.seconds > 0:
      out["flops_per_s"] = self.flops / self.seconds
      if self.tokens:
        out["tokens_per_s"] = self.tokens / self.seconds
      if peak > 0:
        out["mfu"] = out["flops_per_s"] / peak
    self.seconds, self.flops, self.tokens = 0.0, 0.0, 0.0
    return out
