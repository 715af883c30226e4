"""The one training loop, shared by the VAE and the DiT.

A task (`registry.Task`, one object per run) contributes its pieces: how to validate its
config, its input pipeline, `init_state`, a `train_step`, and host-side evaluation. The loop
does everything else the same way for both: mesh, sharded init, checkpoint restore (state
and data iterator), the step loop with a NaN guard, metrics, progress with ETA, throughput
and MFU (`throughput.py`), the host's input and device-wait time, chosen steps traced with
jax.profiler (`profiler.py`), periodic evaluation and checkpoints, preemption, final
evaluation.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from typing import Any

import jax
from etils import epath
import ml_collections
from jax.experimental import multihost_utils
from tqdm import tqdm

from data_pipelines import storage
from data_pipelines import usage
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import rules as rules_lib
from sora_jax import checkpoints
from sora_jax.train import metrics as metrics_lib
from sora_jax.train import profiler as profiler_lib
from sora_jax.train import registry
from sora_jax.train import stepping
from sora_jax.train import throughput as throughput_lib


class _Preemption:
  """SIGTERM as the step to stop at: save, wait, exit.

  One process: a flag its own handler sets. Several: JAX's preemption service (started by
  `jax.distributed.initialize`, which then owns SIGTERM) passes one process's notice to all
  and names the same step on each, so every process saves that step and stops together.
  `reached` must be called at every step on every process.
  """

  def __init__(self):
    self._requested = False
    self._synced = jax.process_count() > 1
    if not self._synced:
      try:
        signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        pass

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    if self._synced:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested


# Config sections a resumed run may change: how it runs, not what it trains.
_RUNTIME_SECTIONS = ("train", "eval", "mesh", "sharding")
# Keys that change the data a run trains on (paths and reader settings may move).
_DATA_KEYS = ("data.source", "data.name", "data.crop", "data.caption", "packing.")


def check_resume(config: ml_collections.ConfigDict, ckpt: checkpoints.Checkpointer,
                 abstract_state: Any) -> None:
  """One ValueError for a run that cannot go on in `ckpt`'s workdir under `config`:
  `train.steps` below 1 or below the latest saved step, params of other shapes than the
  newest whole step's, or other data (unless `train.accept_data_change`), naming the config
  keys that differ from the saved run's."""
  total = config.train.steps
  if total < 1:
    raise ValueError(f"config.train.steps={total}; expected >= 1.")
  steps = sorted(ckpt.all_steps())
  if steps and steps[-1] > total:
    raise ValueError(f"config.train.steps={total}, but {ckpt.directory} holds step "
                     f"{steps[-1]}: pass steps >= {steps[-1]} to resume, or a new --workdir.")
  whole = [s for s in steps if ckpt.problem(s) is None]
  if not whole:
    return
  if converted_step(ckpt) is not None:  # released weights: a fresh run starts from them
    return
  try:
    saved = ckpt.saved_param_shapes(whole[-1])
  except Exception:  # pylint: disable=broad-except  # unreadable: restore moves it aside
    return
  changes = checkpoints.param_shape_changes(saved, abstract_state.params)
  diff = config_changes(ckpt.restore_json(whole[-1], "config") or {},
                        json.loads(config.to_json_best_effort()))
  keys = [f"{k}: {old!r} -> {new!r}" for k, old, new in diff]
  # A key the saved run lacks is newer code, not other data.
  data_keys = [f"{k}: {old!r} -> {new!r}" for k, old, new in diff
               if k.startswith(_DATA_KEYS) and old is not None]
  if data_keys and not changes and not config.train.get("accept_data_change", False):
    raise ValueError(
        f"The run in {ckpt.directory} (step {whole[-1]}) trained on other data: "
        f"{'; '.join(data_keys)}. Pass --config.train.accept_data_change=True to go on with "
        "the new data on purpose, or use a new --workdir.")
  if changes:
    raise ValueError(
        f"The run in {ckpt.directory} (step {whole[-1]}) has params of other shapes than this "
        f"config's ({len(changes)} differ, e.g. {changes[0]}); config keys that differ from "
        f"the saved run: {'; '.join(keys) or 'none'}. Resume with the saved values, or use "
        "a new --workdir.")


def converted_step(ckpt: checkpoints.Checkpointer) -> int | None:
  """The newest step when it holds converted released weights (`python -m
  sora_jax.convert`: params only, no train state), else None."""
  steps = sorted(ckpt.all_steps())
  if steps and ckpt.problem(steps[-1]) is None and (
      ckpt.restore_json(steps[-1], "extra") or {}).get("converted_from"):
    return steps[-1]
  return None


def config_changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
  """(key, old, new) for each config leaf that differs, outside `_RUNTIME_SECTIONS`."""
  if isinstance(old, dict) and isinstance(new, dict):
    return [c for k in sorted(set(old) | set(new))
            if not (not prefix and k in _RUNTIME_SECTIONS)
            for c in config_changes(old.get(k), new.get(k), f"{prefix}{k}.")]
  return [] if old == new else [(prefix[:-1], old, new)]


def _checked_run(config: ml_collections.ConfigDict, workdir: str, init_rng: jax.Array):
  """(task, mesh, abstract state, checkpointer, profiler) once every input check has passed;
  each bad input is one `usage.InputError`, raised before any compile or file is
  rewritten."""
  with usage.checking():
    profiler = profiler_lib.StepProfiler(workdir, config.train.get("profile_start", 0),
                                         config.train.get("profile_steps", 3))
    task = registry.make(config)
    task.validate()
    usage.check_directory("--workdir", workdir)
    if config.get("data") and config.data.get("data_dir"):  # read, or built there
      usage.check_directory("config.data.data_dir", config.data.data_dir, writable=False)
    mesh = mesh_lib.make_mesh(config.get("mesh"))
    mesh_lib.check_batch_size(config.train.batch_size, mesh, "train.batch_size")
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    abstract = jax.eval_shape(task.init_state, init_rng)
    ckpt = checkpoints.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    check_resume(config, ckpt, abstract)
  return task, mesh, abstract, ckpt, profiler


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_at: int | None = None) -> dict[str, Any]:
  """Trains `config.task` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: the experiment config (configs/*.py).
    workdir: run directory; holds checkpoints, metrics and evaluation outputs.
    stop_at: stop after this step with a checkpoint, as on preemption (splits a run
      across jobs; running again resumes).

  Returns:
    The final evaluation metrics (also written to `workdir/final_metrics.json`), or
    {"stopped_at": step} when stopped early.
  """
  # ------------------------------------------------------------------ setup
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  task, mesh, abstract, ckpt, profiler = _checked_run(config, workdir, init_rng)
  task.prepare(workdir)  # e.g. the DiT writes its tokenizer into the run
  writer = metrics_lib.MetricWriter(workdir, wandb=config.train.get("wandb", ""),
                                    run_config=config.to_dict())
  if jax.process_index() == 0:
    (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))

  # ------------------------------------------------------------------ input
  # Processes holding the same batch rows (a context or tensor axis spanning hosts) load
  # the same shard; otherwise this is (process index, process count).
  process_shard = mesh_lib.process_batch_shard(mesh.devices, jax.process_index())
  train_ds = task.make_train_data(process_shard)

  # ------------------------------------------------------------------ sharded init
  # eval_shape -> shardings -> jit(init, out_shardings): params are never materialised
  # unsharded (the sharding rules of each task decide the placement).
  shardings = task.state_shardings(mesh, abstract)

  # ------------------------------------------------------------------ checkpoint restore
  # The newest step that restores; damaged ones are moved aside with a warning.
  # A workdir of converted released weights (params only) starts a fresh run from them.
  converted = converted_step(ckpt)
  start, state, train_iter = (None, None, iter(train_ds)) if converted is not None else (
      ckpt.restore_latest(checkpoints.abstract_with_shardings(abstract, shardings),
                          lambda: iter(train_ds)))
  if start is not None:
    logging.warning("Resuming from step %d in %s", start, ckpt.directory)
  else:
    start = 0
    with jax.set_mesh(mesh):  # placement comes from out_shardings; no activation rules
      state = jax.jit(task.init_state, out_shardings=shardings)(init_rng)
    if hasattr(task, "load_pretrained"):  # released weights (fine-tuning)
      state = task.load_pretrained(
          state, None if converted is None else (workdir, converted))

  # ------------------------------------------------------------------ step function
  train_step = jax.jit(stepping.guarded(task.make_train_step()), donate_argnums=(0,))
  total = config.train.steps
  config_json = json.loads(config.to_json_best_effort())
  batches = stepping.DevicePrefetch(train_iter, lambda b: task.device_batch(b, mesh))

  extras = {}  # computed once: {"value": JSON}

  def save(step):
    # Extras that depend on the state (the VAE's latent statistics) are measured for the
    # last step only; state-independent ones (the DiT's) go with every checkpoint.
    extra = None
    if task.extra_every_checkpoint or step == total:
      if "value" not in extras:
        extras["value"] = task.checkpoint_extra(state)
      extra = extras["value"]
    ckpt.save(step, state, batches.snapshot(), config_json, extra)

  # ------------------------------------------------------------------ loop
  preemption = _Preemption()
  bar = tqdm(total=total, initial=start, desc=config.task, unit="step",
             disable=jax.process_index() != 0 or not config.train.progress)
  t0, steps_timed = time.time(), 0
  throughput = throughput_lib.Throughput()  # the first interval holds the compile
  peak = throughput_lib.peak_flops(config.train.get("peak_flops", 0.0))
  inflight = stepping.InFlight()
  # Host seconds since the last log: waiting for input (`data`), or for the devices to
  # finish earlier steps (`wait`); the rest of a step's wall time is dispatch and Python.
  host = {"data": 0.0, "wait": 0.0}

  def check():
    """Reads the held steps' metrics in one transfer: NaN guard, throughput, logs."""
    nonlocal t0, steps_timed
    bar.update(len(inflight) - inflight.done)
    t = time.perf_counter()
    read = inflight.read()
    host["wait"] += time.perf_counter() - t
    for step, metrics in read:  # fail before a checkpoint (the state skipped the update)
      if not math.isfinite(float(metrics["loss"])):
        raise FloatingPointError(f"Non-finite loss {float(metrics['loss'])} at step {step}; "
                                 f"metrics: { {k: float(v) for k, v in metrics.items()} }")
    steps_timed += len(read)
    throughput.step({k: sum(float(m[k]) for _, m in read) for k in ("flops", "tokens")
                     if k in read[-1][1]})
    step, metrics = read[-1]
    bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
    if step % config.train.log_every == 0 or step == total:
      dt = (time.time() - t0) / steps_timed
      writer.write_scalars(step, {**metrics, "sec_per_step": dt,
                                  **{f"{k}_s": v / steps_timed for k, v in host.items()}},
                           prefix="train/")
      t0, steps_timed = time.time(), 0
      host.update(data=0.0, wait=0.0)

  # Steps are dispatched ahead (asynchronously) and their metrics read every log_every
  # steps: the host prepares the next batches while the device runs (stepping.py).
  for step in range(start + 1, total + 1):
    t = time.perf_counter()
    batch = next(batches)
    host["data"] += time.perf_counter() - t
    with rules_lib.mesh_and_rules(mesh, rules_lib.preset_of(config)), profiler.step(step):
      state, metrics = train_step(state, batch, step_rng)
    t = time.perf_counter()
    bar.update(inflight.add(step, metrics))
    host["wait"] += time.perf_counter() - t
    evaluate = config.train.eval_every and step % config.train.eval_every == 0 and step != total
    stop = preemption.reached(step) or step == stop_at
    profiler.after(step, metrics, last=stop or step == total)
    checkpoint = step % config.train.checkpoint_every == 0 or step == total or stop
    if evaluate or checkpoint or step % config.train.log_every == 0:
      check()  # every loss up to here is checked before any evaluation or checkpoint
    if evaluate:
      result = task.evaluate(state, step, workdir, writer, final=False)
      writer.write_scalars(step, {**result, **throughput.report(peak)}, prefix="eval/")
    if checkpoint:
      save(step)
    if evaluate or checkpoint:
      throughput.skip()
    if stop and step != total:
      logging.warning("Stopping at step %d: checkpoint saved; run again to resume.", step)
      ckpt.close()
      writer.close()
      bar.close()
      return {"stopped_at": step}
  bar.close()
  if ckpt.latest_step() != total:
    save(total)
  ckpt.wait()

  # ------------------------------------------------------------------ final evaluation
  final = {**task.evaluate(state, total, workdir, writer, final=True),
           **throughput.report(peak)}
  final = writer.write_scalars(total, final, prefix="final/")
  if jax.process_index() == 0:
    storage.write_json(storage.join(workdir, "final_metrics.json"), {"step": total, **final},
                       indent=2)
  ckpt.close()
  writer.close()
  return final
