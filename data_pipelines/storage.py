"""Files on any file system `etils.epath` reads: local paths and `gs://` (or `s3://`) URLs.

Every run file the project reads or writes goes through here or through `epath.Path`
directly, so a `gs://bucket/...` workdir works like a local one. Object stores have no
append and no partial writes, and libraries that only take a local file name (imageio,
ffmpeg) get a local temporary file that is uploaded when it is closed (`local_file`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from etils import epath

PathLike = str | os.PathLike


def is_local(path: PathLike) -> bool:
  """Whether `path` is on the local file system (no `scheme://`)."""
  return "://" not in os.fspath(path)


def join(path: PathLike, *parts: str) -> str:
  """`path/part/...` as a string, for local paths and URLs alike."""
  return os.fspath(epath.Path(path).joinpath(*parts))


def absolute(path: PathLike) -> str:
  """An absolute local path, or the URL as given."""
  return os.path.abspath(path) if is_local(path) else os.fspath(path)


def read_json(path: PathLike) -> Any:
  return json.loads(epath.Path(path).read_text())


def read_json_if_exists(path: PathLike) -> Any:
  """`read_json(path)`, or None when there is no such file."""
  return read_json(path) if epath.Path(path).exists() else None


def write_json(path: PathLike, value: Any, **kwargs) -> None:
  """Writes `value` as JSON (parent directories made), never half: a local file through a
  temporary name renamed over it, an object in one write."""
  text = json.dumps(value, **kwargs)
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  if is_local(path):
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  else:
    epath.Path(path).write_text(text)


@contextlib.contextmanager
def local_file(path: PathLike, suffix: str = "") -> Iterator[str]:
  """A local file name standing for `path` while writing it.

  Local: `path` itself (its directory made). Elsewhere: a temporary file, copied to
  `path` when the block ends without an error.
  """
  if is_local(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    yield os.fspath(path)
    return
  suffix = suffix or os.path.splitext(os.fspath(path))[1]
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, "file" + suffix)
    yield local
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(local, "rb") as src, target.open("wb") as dst:
      shutil.copyfileobj(src, dst)


class AppendFile:
  """A file opened for appending: local files append; on an object store the content is
  kept here and the whole object rewritten at each `flush` (the existing object's content
  first, so a resumed run keeps its earlier lines)."""

  def __init__(self, path: PathLike):
    self._path = epath.Path(path)
    self._path.parent.mkdir(parents=True, exist_ok=True)
    if is_local(path):
      self._file, self._buffer = open(path, "ab"), None
    else:
      self._file = None
      self._buffer = bytearray(self._path.read_bytes() if self._path.exists() else b"")
    self.closed = False

  def write(self, data: bytes | str) -> None:
    data = data.encode() if isinstance(data, str) else data
    if self._file is not None:
      self._file.write(data)
    else:
      self._buffer += data

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    else:
      self._path.write_bytes(bytes(self._buffer))

  def close(self) -> None:
    if self.closed:
      return
    self.flush()
    if self._file is not None:
      self._file.close()
    self.closed = True


def copy_tree(local_dir: PathLike, target: PathLike) -> None:
  """Copies the files under `local_dir` to `target` (a local path or a URL), merging."""
  for root, _, files in os.walk(local_dir):
    for name in files:
      src = os.path.join(root, name)
      dst = epath.Path(target) / os.path.relpath(src, local_dir)
      dst.parent.mkdir(parents=True, exist_ok=True)
      with open(src, "rb") as f, dst.open("wb") as out:
        shutil.copyfileobj(f, out)
