"""Metric writers: TensorBoard (tensorboardX) and a JSONL file, process 0 only.

Every process calls the writer with the same (global) metrics, so a value that is not
fully replicated is gathered across processes on all of them (a collective), and only
process 0 writes; to Weights & Biases too with `config.train.wandb=PROJECT`. A `gs://` workdir gets both files through epath (`storage.AppendFile`:
the object is rewritten at each flush).
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from etils import epath
import jax
import numpy as np

from data_pipelines import storage

from sora_jax.sharding import mesh as mesh_lib


def _scalar(v: Any) -> float:
  """A metric as a Python float; global arrays spanning processes are gathered first."""
  return float(mesh_lib.to_host(v))


class _EpathRecordFiles:
  """tensorboardX's writer factory for URLs: event files through epath."""

  def open(self, path: str) -> storage.AppendFile:
    return storage.AppendFile(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _register_object_stores() -> None:
  """Event files under gs:// (s3://, az://) go through epath, not tensorboardX's own
  clients (google-cloud-storage, boto3), which are not dependencies here."""
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  for scheme in ("gs", "s3", "az"):
    record_writer.register_writer_factory(scheme, _EpathRecordFiles())


class MetricWriter:
  """Writes scalars and images to `workdir/tensorboard` and `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str, enabled: bool | None = None, wandb: str = "",
               run_config: dict[str, Any] | None = None):
    """`wandb`: a Weights & Biases project to log to as well ('' = off; wandb is imported
    only then). A run's W&B id comes from its workdir, so a resumed run continues it."""
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    self._wandb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      _register_object_stores()
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(storage.join(workdir, "tensorboard"))
      self._jsonl = storage.AppendFile(storage.join(workdir, "metrics.jsonl"))
      if wandb:
        import wandb as wandb_lib  # pylint: disable=g-import-not-at-top
        run_id = hashlib.sha1(storage.absolute(workdir).encode()).hexdigest()[:16]
        self._wandb = wandb_lib.init(project=wandb, name=epath.Path(workdir).name, id=run_id,
                                     resume="allow", config=run_config)

  def write_scalars(self, step: int, scalars: dict[str, Any], prefix: str = "") -> dict:
    """Writes scalars (arrays are fetched); returns them as Python floats."""
    values = {f"{prefix}{k}": _scalar(v) for k, v in scalars.items()}
    if self.enabled:
      for k, v in values.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
      self._jsonl.flush()
      if self._wandb is not None:
        self._wandb.log({k: v for k, v in values.items() if math.isfinite(v)}, step=int(step))
    return values

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: uint8 [H, W, 3]."""
    if self.enabled:
      self._tb.add_image(name, np.asarray(image), step, dataformats="HWC")
      if self._wandb is not None:
        import wandb as wandb_lib  # pylint: disable=g-import-not-at-top
        self._wandb.log({name: wandb_lib.Image(np.asarray(image))}, step=int(step))

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      if self._wandb is not None:
        self._wandb.finish()
