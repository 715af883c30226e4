"""The trainable tasks: `config.task` -> its class, and the `Task` protocol the loop uses.

A task is a per-run object built from the run's config (`make(config)`); whatever it reads
or builds once (a frozen VAE, latent records, a tokenizer, evaluation clips) belongs to it.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

import jax
import ml_collections

TASKS = {
    "vae": "sora_jax.train.vae_task:VAETask",
    "dit": "sora_jax.train.dit_task:DiTTask",
    "captioner": "sora_jax.train.captioner_task:CaptionerTask",
}


class Task(Protocol):
  """What a model contributes to the one loop (`loop.py`); the loop does the rest."""
  config: ml_collections.ConfigDict
  # True: `checkpoint_extra` does not depend on the state and goes with every checkpoint;
  # False: it is measured once, for the last checkpoint.
  extra_every_checkpoint: bool

  def validate(self) -> None:
    """One clear ValueError for bad input, before any compile or long work."""

  def prepare(self, workdir: str) -> None:
    """Run files written at start (e.g. the DiT's tokenizer)."""

  def make_train_data(self, process_shard: tuple[int, int] | None) -> Any:
    """The training stream (a grain IterDataset) of this process's (index, count) share of
    the batch rows (`mesh.process_batch_shard`)."""

  def init_state(self, rng: jax.Array) -> Any:
    """The initial train state; pure (the loop jits it with out_shardings)."""

  def state_shardings(self, mesh: jax.sharding.Mesh, abstract_state: Any) -> Any:
    """The state's placement on `mesh`."""

  def device_batch(self, batch: dict[str, Any], mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """A host batch as global jax.Arrays."""

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    """One global batch as `device_batch` gives it, as shapes (ahead-of-time compiles)."""

  def make_train_step(self) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """step(state, batch, rng) -> (state, metrics with "loss" and "flops")."""

  def evaluate(self, state: Any, step: int, workdir: str, writer: Any,
               final: bool) -> dict[str, float]:
    """Host-side evaluation: {name: scalar}."""

  def checkpoint_extra(self, state: Any) -> dict[str, Any] | None:
    """JSON saved with the checkpoint (e.g. the VAE's latent statistics)."""


def get(name: str) -> type[Task]:
  """The task class of `config.task` = name."""
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}; known tasks: {sorted(TASKS)}.")
  module, _, cls = TASKS[name].partition(":")
  return getattr(importlib.import_module(module), cls)


def make(config: ml_collections.ConfigDict) -> Task:
  """The task of a run: `get(config.task)(config)`."""
  return get(config.task)(config)
