"""Orbax checkpoints: train state + grain iterator state + config, restored on any mesh.

One composite checkpoint per saved step (MaxText's layout):
  state:  the train state pytree (StandardSave; restored against the *current* mesh's
          abstract state, which is what makes a topology change just work),
  data:   the grain iterator's state (grain's own orbax handler, one file per process;
          a run with another process count cannot map those positions onto its own data
          shards, so it restores the train state only and restarts the data iterator, with a
          warning),
  config: the run's config as JSON (so a notebook or the sampler can rebuild the model),
  extra:  optional JSON the task adds (e.g. the VAE's latent statistics).
Saves are asynchronous; `wait()` before reading a checkpoint or exiting.

A step that fails a cheap file check (`problem`) or its restore is damaged: training moves it
to `workdir/checkpoints_damaged/` (never deletes it) and resumes from the step before;
readers (`read_run`: sampling, evaluation) skip it.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

from absl import logging
from etils import epath
import grain
import jax
import numpy as np
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from data_pipelines import storage

_ITEMS = ("state", "data", "config", "extra")


class Checkpointer:
  """Saves and restores composite checkpoints under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = _directory(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def save(self, step: int, state: Any, data_iter: Any = None,
           config: dict | None = None, extra: dict | None = None) -> None:
    args = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      args["config"] = ocp.args.JsonSave(config)
    if extra is not None:
      args["extra"] = ocp.args.JsonSave(extra)
    self._mgr.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> tuple[Any, Any]:
    """Restores (state, data_iter) at `step` onto the shardings in `abstract_state`.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct carrying the current mesh's shardings.
      data_iter: a fresh iterator of the same pipeline; its position is restored in place.
    """
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    saved = self.data_process_count(step)
    restore_data = data_iter is not None and saved == jax.process_count()
    if data_iter is not None and not restore_data:
      logging.warning(
          "Checkpoint step %d holds the data iterator of %s process(es), this run has %d: "
          "restoring the train state only; the data iterator starts again from its "
          "beginning.", step, saved if saved else "no", jax.process_count())
    if restore_data:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self._mgr.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], (restored["data"] if restore_data else data_iter)

  def problem(self, step: int) -> str | None:
    """Why `step` cannot be restored, from cheap file checks; None when it looks whole.

    Catches a missing `state` item or `state/_METADATA` and an empty or unparsable JSON
    (data iterator, config, extra); damaged array data shows only when restoring.
    """
    return step_problem(self.directory, step)

  def move_aside(self, step: int, reason: str) -> str:
    """Moves a damaged step to `workdir/checkpoints_damaged/<step>[.n]`; returns the path."""
    src = epath.Path(self.directory) / str(step)
    root = epath.Path(self.directory + "_damaged")
    dst, n = root / str(step), 0
    while dst.exists():
      n += 1
      dst = root / f"{step}.{n}"
    if jax.process_index() == 0:
      root.mkdir(parents=True, exist_ok=True)
      src.rename(dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_move_aside_{step}")
    logging.warning("Checkpoint step %d is damaged (%s): moved to %s.", step, reason, dst)
    self._mgr.reload()
    return os.fspath(dst)

  def restore_latest(self, abstract_state: Any, make_iter: Callable[[], Any] | None = None
                     ) -> tuple[int | None, Any, Any]:
    """(step, state, data iterator) of the newest step that restores, or (None, None, a
    fresh iterator) when none does. Damaged steps on the way are moved aside.

    Args:
      abstract_state: as for `restore`.
      make_iter: returns a fresh data iterator (each try starts from a new one).
    """
    for step in sorted(self.all_steps(), reverse=True):
      reason = self.problem(step)
      if reason is None:
        try:
          state, data_iter = self.restore(step, abstract_state, make_iter and make_iter())
          return step, state, data_iter
        except Exception as e:  # pylint: disable=broad-except  # any failure: damaged
          reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
      self.move_aside(step, reason)
    return None, None, make_iter and make_iter()

  def saved_param_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """{'a/b/kernel': shape} of the params saved at `step` (from metadata only)."""
    return _param_shapes(_state_metadata(self.directory, step).get("params", {}))

  def data_process_count(self, step: int) -> int | None:
    """How many processes saved step's data iterator (grain's `process_<i>-of-<n>.json`)."""
    path = epath.Path(self.directory) / str(step) / "data"  # epath: local or gs://
    names = [p.name for p in path.iterdir()] if path.exists() else []
    counts = {int(m.group(1)) for name in names
              if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", name))}
    return counts.pop() if len(counts) == 1 else None

  def restore_json(self, step: int, item: str) -> dict | None:
    """The `config` or `extra` JSON of a step, or None when it was not saved."""
    if not (epath.Path(self.directory) / str(step) / item).exists():
      return None
    restored = self._mgr.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
    return restored[item]

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` carrying `shardings` (a pytree or one sharding)."""
  if not isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings),
                      tree)


def restore_state_host(workdir: str, step: int) -> Any:
  """The train state saved at `step` in `workdir`, as host numpy arrays.

  For frozen models (the VAE, sampling a DiT) that are used whole on one host: no mesh and
  no topology are involved, so nothing depends on the shardings saved with it.
  """
  path = epath.Path(_directory(workdir)) / str(step) / "state"
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                      _state_metadata(_directory(workdir), step))
  return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def _state_metadata(directory: str, step: int) -> Any:
  """The saved state's tree of array metadata (shapes, dtypes), without reading arrays."""
  meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(directory) / str(step) / "state")
  return getattr(meta, "tree", meta)


def _param_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path):
          tuple(leaf.shape) for path, leaf in flat}


def param_shape_changes(saved: dict[str, tuple[int, ...]], abstract_params: Any) -> list[str]:
  """'path: saved (..) -> now (..)' for each param whose shape (or presence) changed."""
  now = _param_shapes(abstract_params)
  return [f"{k}: saved {saved.get(k, 'absent')} -> now {now.get(k, 'absent')}"
          for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


def step_problem(directory: str, step: int) -> str | None:
  """`Checkpointer.problem` on a checkpoints directory."""
  root = epath.Path(directory) / str(step)
  if not (root / "state").exists():
    return "its 'state' item is missing"
  if not (root / "state" / "_METADATA").exists():
    return "state/_METADATA is missing"
  files = list((root / "data").glob("*.json")) + [
      root / item / "metadata" for item in ("config", "extra") if (root / item).exists()]
  for path in files:
    try:
      json.loads(path.read_text())
    except (OSError, ValueError) as e:
      return f"{path.parent.name}/{path.name} is not readable JSON ({type(e).__name__})"
  return None


def _directory(workdir: str) -> str:
  """`workdir/checkpoints`, absolute when local (orbax wants absolute paths)."""
  return storage.absolute(storage.join(workdir, "checkpoints"))


def read_run(workdir: str, train_what: str, name: str = "--workdir", step: int | None = None
             ) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
  """(step, config JSON, extra JSON or None) of a run; one clear error if none.

  Args:
    workdir: the run directory.
    train_what: what to train there, for the error message.
    name: how the caller names the directory in errors.
    step: a saved step; None = the latest. A step that was not saved (or was deleted by
      `keep`) is one clear error listing the saved steps.
  """
  if not epath.Path(_directory(workdir)).is_dir():
    raise ValueError(f"{name} {workdir!r} has no checkpoints/ directory; train "
                     f"{train_what} there first.")
  ckpt = Checkpointer(workdir)
  try:
    steps = sorted(ckpt.all_steps())
    if not steps:
      raise ValueError(f"{name} {workdir!r} has no saved checkpoint step.")
    if step is None:
      good = [s for s in steps if not _skip_damaged(workdir, s)]
      if not good:
        raise ValueError(f"{name} {workdir!r}: every saved step {steps} is damaged.")
      step = good[-1]
    elif step not in steps:
      raise ValueError(f"{name} {workdir!r} has no checkpoint at step {step}; saved steps: "
                       f"{steps}.")
    elif reason := step_problem(_directory(workdir), step):
      raise ValueError(f"{name} {workdir!r} step {step} is damaged: {reason}.")
    config, extra = ckpt.restore_json(step, "config"), ckpt.restore_json(step, "extra")
  finally:
    ckpt.close()
  if not config:
    raise ValueError(f"{name} {workdir!r} step {step} has no config JSON.")
  return step, config, extra


def _skip_damaged(workdir: str, step: int) -> bool:
  reason = step_problem(_directory(workdir), step)
  if reason:
    logging.warning("Skipping damaged checkpoint step %d of %s: %s.", step, workdir, reason)
  return reason is not None
