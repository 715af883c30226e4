"""Traces chosen training steps with `jax.profiler`, for TensorBoard's profile tab or xprof.

  python -m sora_jax.main --config ... --config.train.profile_start=100 \
      --config.train.profile_steps=3
  tensorboard --logdir WORKDIR/profile     # with tensorboard-plugin-profile installed

Every process traces its own devices into WORKDIR/profile/plugins/profile/<time>/
(<host>.xplane.pb and a trace.json.gz); each step carries a `StepTraceAnnotation`, so the
viewers split the trace by step. A gs:// workdir gets the trace written locally first and
copied when it stops.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile

import jax

from data_pipelines import storage


class StepProfiler:
  """Starts a trace before step `start` and stops it after step `start + steps - 1`."""

  def __init__(self, workdir: str, start: int = 0, steps: int = 3):
    if start < 0 or (start and steps < 1):
      raise ValueError(f"config.train.profile_start={start}, profile_steps={steps}; "
                       "expected start >= 0 (0 = off) and steps >= 1.")
    self.start, self.stop = start, start + steps
    self.target = storage.join(workdir, "profile")
    self._local = None

  def step(self, step: int) -> contextlib.AbstractContextManager:
    """The context a step is dispatched in (its trace annotation once tracing)."""
    if self.start and step == self.start:
      self._local = self.target if storage.is_local(self.target) else tempfile.mkdtemp()
      jax.profiler.start_trace(self._local)
    if self._local is None:
      return contextlib.nullcontext()
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def after(self, step: int, outputs, last: bool = False) -> None:
    """Stops the trace after its last step has run on the devices (or the run's last)."""
    if self._local is None or not (step == self.stop - 1 or last):
      return
    jax.block_until_ready(outputs)
    jax.profiler.stop_trace()
    if self._local != self.target:
      storage.copy_tree(self._local, self.target)
    logging.warning("Profiled steps %d-%d into %s.", self.start, step, self.target)
    self._local = None
