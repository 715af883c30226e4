"""A stand-in for Google Cloud Storage: `gs://BUCKET/PATH` lives in `$FAKE_GCS_ROOT/BUCKET/PATH`.

  FAKE_GCS_ROOT=/tmp/gcs python tests/fake_gcs.py sora_jax.main --workdir gs://b/run ...

runs a module as `python -m MODULE ARGS...` with `gs://` served from a local directory, through
the same layers real GCS goes through: etils.epath's fsspec backend (fsspec's `gs` protocol,
registered here instead of gcsfs), and orbax's TensorStore `gcs` kvstore (here TensorStore's
`file` driver under the same root). Code that opens "gs://..." with `os` or `open` writes a
local `gs:` folder in its working directory instead, which is what the tests look for.
"""
from __future__ import annotations

import glob
import os
import runpy
import sys

import fsspec
from fsspec.implementations.local import LocalFileSystem


def _root() -> str:
  return os.environ["FAKE_GCS_ROOT"]


class FakeGCSFileSystem(LocalFileSystem):
  """fsspec's local file system, addressed by gs:// URLs under FAKE_GCS_ROOT."""

  protocol = ("gs", "gcs")
  root_marker = ""

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = os.path.join(_root(), path[len(prefix):])
    return super()._strip_protocol(path)

  def _to_url(self, local: str) -> str:
    """BUCKET/PATH: names without the protocol, as gcsfs gives them."""
    return os.path.relpath(local, _root())

  def glob(self, path, **kwargs):
    del kwargs
    return [self._to_url(p) for p in sorted(glob.glob(self._strip_protocol(path)))]

  def ls(self, path, detail=False, **kwargs):
    entries = super().ls(path, detail=detail, **kwargs)
    if detail:
      return [dict(e, name=self._to_url(e["name"])) for e in entries]
    return [self._to_url(e) for e in entries]

  def info(self, path, **kwargs):
    out = super().info(path, **kwargs)
    return dict(out, name=self._to_url(out["name"]))


def install() -> None:
  """Serves gs:// from FAKE_GCS_ROOT in this process (fsspec, epath, orbax/TensorStore)."""
  fsspec.register_implementation("gs", FakeGCSFileSystem, clobber=True)
  fsspec.register_implementation("gcs", FakeGCSFileSystem, clobber=True)
  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.path import gcs_utils

  def file_kvstore(ckpt_path: str) -> dict:
    bucket, path = gcs_utils.parse_gcs_path(ckpt_path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(_root(), bucket, path)}

  gcs_utils.get_kvstore_for_gcs = file_kvstore
  gcs_utils.is_hierarchical_namespace_enabled = lambda path: False


if __name__ == "__main__":
  install()
  module, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
  runpy.run_module(module, run_name="__main__", alter_sys=True)
