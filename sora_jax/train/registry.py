"""Registry of trainable tasks: config.task -> the module with its pure pieces.

A task module provides:
  validate(config)                               bad input, before any compile
  make_train_data(config, process_shard) -> grain IterDataset   the training stream, this
      process's (index, count) shard of the batch rows (`mesh.process_batch_shard`)
  init_state(config, rng) -> state               pure; the loop jits it with out_shardings
  state_shardings(config, mesh, abstract_state)  placement of the state on the mesh
  device_batch(config, batch, mesh) -> batch     host batch -> global jax.Arrays
  make_train_step(config) -> step(state, batch, rng) -> (state, metrics with "loss")
  evaluate(config, state, step, workdir, writer, final) -> {name: scalar}
  checkpoint_extra(config, state) -> JSON dict or None (saved with the last checkpoint)
  EXTRA_EVERY_CHECKPOINT = True                  optional: the extra does not depend on the
      state; it is computed once and saved with every checkpoint (so any step can sample)
  prepare(config, workdir)                       optional: run files written at start
"""
from __future__ import annotations

import importlib
from types import ModuleType

TASKS = {
    "vae": "sora_jax.train.vae_task",
    "dit": "sora_jax.train.dit_task",
}


def get(name: str) -> ModuleType:
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}; known tasks: {sorted(TASKS)}.")
  return importlib.import_module(TASKS[name])
