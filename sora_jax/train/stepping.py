"""What runs around the jitted train step, so the host keeps ahead of the device.

* `guarded(step_fn)` is the step the loop jits: it derives the step's RNG from the state's
  step counter inside jit (no eager `fold_in` a step), and skips a non-finite update on the
  device (params, optimiser state and EMA keep their values; the counter still advances),
  so a NaN never reaches the state even between the loop's checks.
* `DevicePrefetch` keeps the next batches on the device ahead of the steps that use them,
  and checkpoints as the iterator it wraps at the first batch no step has used yet (so a
  resumed run reads the same batches as an uninterrupted one).
* `InFlight` holds the metrics of the steps dispatched since the loop last read them: the
  loop reads them all in one transfer every `log_every` steps (and before an evaluation or
  a checkpoint), and waits for a step only once `depth` newer ones are queued, which bounds
  the batches and metrics held on the device without a transfer a step.
"""
from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp


def guarded(step_fn: Callable) -> Callable:
  """(state, batch, base_rng) -> (state, metrics) around a task's (state, batch, rng) step.

  The step's RNG is `fold_in(base_rng, state.step + 1)`: step s gets the same key wherever
  a run resumes. A step whose loss (or `grad_norm`, when the task reports it) is not
  finite returns the old state with the counter advanced; its metrics still show the
  non-finite loss, which the loop raises on.
  """

  def step(state, batch, base_rng):
    new, metrics = step_fn(state, batch, jax.random.fold_in(base_rng, state.step + 1))
    ok = jnp.isfinite(metrics["loss"])
    if "grad_norm" in metrics:
      ok &= jnp.isfinite(metrics["grad_norm"])
    kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
    return kept.replace(step=new.step), metrics

  return step


class DevicePrefetch:
  """Iterates `put(batch)` (device arrays) `size` batches ahead of its consumer.

  `get_state()` is the wrapped iterator's state before the first batch not yet returned,
  in the form grain's checkpoint handler writes for a `DatasetIterator` (restore into a
  fresh iterator of the same pipeline, then wrap it again).
  """

  def __init__(self, iterator: Iterator, put: Callable[[Any], Any], size: int = 2):
    self._iterator, self._put, self._size = iterator, put, size
    self._queue: collections.deque = collections.deque()

  def __iter__(self):
    return self

  def __next__(self):
    while len(self._queue) <= self._size:
      state = self._iterator.get_state()
      self._queue.append((state, self._put(next(self._iterator))))
    return self._queue.popleft()[1]

  def get_state(self) -> bytes:
    state = self._queue[0][0] if self._queue else self._iterator.get_state()
    return state if isinstance(state, bytes) else json.dumps(state, indent=4).encode()

  def snapshot(self) -> "_Position":
    """The position now, fixed (a checkpoint written later still saves this one)."""
    return _Position(self.get_state())


class _Position:
  """A data position in the form grain's checkpoint handler saves (`get_state`)."""

  def __init__(self, state: bytes):
    self._state = state

  def get_state(self) -> bytes:
    return self._state


class InFlight:
  """(step, metrics) of the dispatched steps not yet read (see the module docstring)."""

  def __init__(self, depth: int = 2):
    self.depth = depth
    self._steps: list[tuple[int, dict[str, jax.Array]]] = []
    self.done = 0  # of the steps held, how many have been waited for

  def add(self, step: int, metrics: dict[str, jax.Array]) -> int:
    """Holds a dispatched step; returns how many more held steps are now known done."""
    self._steps.append((step, metrics))
    waited = 0
    while len(self._steps) - self.done > self.depth:
      jax.block_until_ready(self._steps[self.done][1]["loss"])
      self.done += 1
      waited += 1
    return waited

  def read(self) -> list[tuple[int, dict[str, Any]]]:
    """Every held step's metrics on the host (one transfer); empties the list."""
    steps = [s for s, _ in self._steps]
    values = jax.device_get([m for _, m in self._steps])
    self._steps, self.done = [], 0
    return list(zip(steps, values))

  def __len__(self) -> int:
    return len(self._steps)
