"""Reading and writing safetensors checkpoints without torch, and placing tensors into params.

`read_tensors` takes what diffusers and transformers save: one `.safetensors` file, a folder
of them (sharded checkpoints with or without their `*.index.json`), or a list of files, and
returns numpy arrays by name (bfloat16 as `ml_dtypes.bfloat16`, through safetensors' flax
reader, since numpy has no bfloat16 of its own). `Placer` fills a params tree from such a
dict by a key map, checking every shape against the model's and naming the tensor that does
not fit, and tells which tensors of the file nothing used.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

SUFFIX = ".safetensors"


class ConversionError(ValueError):
  """A checkpoint that does not fit the model: a missing or misshapen tensor, a bad path."""


def safetensors_files(path: str | epath.PathLike | Iterable) -> list[epath.Path]:
  """The safetensors files of a file, a folder (all `*.safetensors` in it) or a list."""
  if not isinstance(path, (str, epath.Path)) and isinstance(path, Iterable):
    return [f for p in path for f in safetensors_files(p)]
  p = epath.Path(path)
  if p.is_dir():
    files = sorted(p.glob(f"*{SUFFIX}"))
    if not files:
      raise ConversionError(f"{p}: no *{SUFFIX} files in this folder.")
    return files
  if not p.exists():
    raise ConversionError(f"{p}: no such file or folder.")
  if not p.name.endswith(SUFFIX):
    raise ConversionError(f"{p}: expected a {SUFFIX} file or a folder of them.")
  return [p]


def read_tensors(path, dtype: str | None = None,
                 select: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
  """All tensors of `path` (see `safetensors_files`) as numpy arrays, by name.

  Args:
    path: a file, a folder or a list of files.
    dtype: cast every floating tensor to this dtype name ("float32", "bfloat16"); None keeps
      each tensor's stored dtype.
    select: keep only the names for which this is True (reads nothing else).

  Raises:
    ConversionError: no such file, or a name held by two files.
  """
  from safetensors import safe_open  # the interop extra; imported only when converting
  out: dict[str, np.ndarray] = {}
  for f in safetensors_files(path):
    # Concrete host arrays even when first asked for inside a trace (a task's init).
    with safe_open(str(f), framework="flax") as reader, jax.ensure_compile_time_eval():
      for name in reader.keys():
        if select is not None and not select(name):
          continue
        if name in out:
          raise ConversionError(f"{f}: tensor {name!r} is also in another file of {path}.")
        x = np.asarray(reader.get_tensor(name))
        if dtype is not None and jnp.issubdtype(x.dtype, jnp.floating):
          x = x.astype(jnp.dtype(dtype))
        out[name] = x
  return out


def write_tensors(path: str | epath.PathLike, tensors: Mapping[str, Any],
                  metadata: Mapping[str, str] | None = None) -> None:
  """Writes one safetensors file (any float dtype, bfloat16 included)."""
  from safetensors.flax import save_file
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  arrays = {k: jnp.asarray(v) for k, v in tensors.items()}
  save_file(arrays, str(p), metadata=dict(metadata or {}))


def read_json(path: str | epath.PathLike) -> dict[str, Any]:
  """A config.json, with a one-line error when it is missing or not JSON."""
  p = epath.Path(path)
  if not p.exists():
    raise ConversionError(f"{p}: no such file.")
  try:
    return json.loads(p.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}).") from None


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_shapes(params: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{'a/b/kernel': (shape, dtype)} of a params tree (arrays or ShapeDtypeStructs)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return {_path_str(p): (tuple(x.shape), x.dtype) for p, x in leaves}


class Placer:
  """Fills a params tree from named source tensors, checking shapes, tracking what is used.

  Typical use:
    placer = Placer(tensors, abstract_params, source="diffusion_pytorch_model.safetensors")
    placer.put("blocks/attn/query/kernel", "blocks.0.attn1.to_q.weight", transform=fn)
    params = placer.finish()   # raises on a param nobody filled or an unused source tensor

  Attributes:
    tensors: source name -> numpy array.
    source: how error messages name the checkpoint.
  """

  def __init__(self, tensors: Mapping[str, np.ndarray], abstract_params: Any, source: str,
               dtype: str | None = None):
    self.tensors = tensors
    self.source = source
    self.dtype = dtype
    self._treedef = jax.tree_util.tree_structure(abstract_params)
    self._shapes = param_shapes(abstract_params)
    self._order = list(self._shapes)
    self._values: dict[str, np.ndarray] = {}
    self._used: set[str] = set()

  def get(self, name: str) -> np.ndarray:
    """A source tensor by name (marked used); a one-line error naming it when missing."""
    if name not in self.tensors:
      raise ConversionError(f"{self.source}: tensor {name!r} is missing "
                            f"(the model needs it; {len(self.tensors)} tensors in the file).")
    self._used.add(name)
    return self.tensors[name]

  def has(self, name: str) -> bool:
    return name in self.tensors

  def transformed(self, name: str, transform, target: str) -> np.ndarray:
    """`transform` of source tensor `name`; a tensor it cannot reshape is named."""
    x = self.get(name)
    try:
      return transform(x)
    except ValueError:
      raise ConversionError(
          f"{self.source}: tensor {name!r} has shape {tuple(x.shape)}, which does not fit "
          f"the model's {target} {self._shapes.get(target, ('?',))[0]} (a config that does "
          "not match the weights?).") from None

  def put(self, target: str, value: np.ndarray | str, transform=None) -> None:
    """Sets the param at `target` ('a/b/kernel') to `value` (an array, or a source name),
    through `transform` first; the shape must equal the model's."""
    if target not in self._shapes:
      raise ConversionError(f"{self.source}: the model has no parameter {target!r} "
                            f"(filling it from {value if isinstance(value, str) else 'an array'}).")
    src = value if isinstance(value, str) else None
    if src is not None:
      x = self.transformed(src, transform or (lambda v: v), target)
    else:
      x = value if transform is None else transform(value)
    want, want_dtype = self._shapes[target]
    if tuple(x.shape) != want:
      raise ConversionError(
          f"{self.source}: tensor {src or target!r} has shape {tuple(x.shape)} but the "
          f"model's {target} needs {want} (a config that does not match the weights?).")
    self._values[target] = np.asarray(x).astype(self.dtype or want_dtype)

  def finish(self, allow_unused: Callable[[str], bool] | None = None) -> Any:
    """The params tree. Raises when a param was not filled or a source tensor was not used
    (unless `allow_unused(name)`)."""
    missing = [k for k in self._order if k not in self._values]
    if missing:
      raise ConversionError(f"{self.source}: nothing filled the model's {missing[0]!r}"
                            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}.")
    unused = sorted(k for k in self.tensors if k not in self._used
                    and not (allow_unused and allow_unused(k)))
    if unused:
      raise ConversionError(f"{self.source}: tensor {unused[0]!r}"
                            f"{f' and {len(unused) - 1} more' if len(unused) > 1 else ''} "
                            "not used by the model (a config that does not match the weights?).")
    return jax.tree_util.tree_unflatten(self._treedef, [self._values[k] for k in self._order])


def linear(w: np.ndarray) -> np.ndarray:
  """torch nn.Linear weight [out, in] -> Flax kernel [in, out]."""
  return np.ascontiguousarray(np.swapaxes(w, 0, 1))
