"""Device meshes built from config, with the axes `data`, `fsdp`, `context`, `tensor`.

Sizes come from `config.mesh` (a mapping axis -> size; one size may be -1, "the rest").
Axis types are Auto: `jax.make_mesh` defaults to Explicit, which breaks Linen's logical
constraints. The mesh is validated before any compile: the product must equal the device
count, and `check_divisible` checks that every sharded dimension divides by its axes.

Several TPU slices (or GPU hosts joined by a slower network): `config.mesh.dcn` maps an
axis to how many slices it spans (its total size stays in `config.mesh`); the devices are
then laid out by `jax.experimental.mesh_utils.create_hybrid_device_mesh`, so only that
axis's collectives cross the data-centre network (usually `data`, the cheapest one).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "context", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over these


def mesh_shape(sizes: Mapping[str, int] | None, num_devices: int) -> tuple[int, ...]:
  """Resolves axis sizes (one may be -1) against the device count; clear errors."""
  sizes = dict(sizes or {"data": -1})
  unknown = sorted(set(sizes) - set(AXES))
  if unknown:
    raise ValueError(f"Unknown mesh axes {unknown}; allowed axes: {AXES}.")
  shape = [int(sizes.get(a, 1)) for a in AXES]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh {sizes}: at most one axis may be -1.")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh {sizes}: sizes must be positive (or one -1).")
  known = 1
  for s in shape:
    known *= s if s != -1 else 1
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh {sizes}: fixed axes multiply to {known}, which does not "
                       f"divide the {num_devices} devices.")
    shape[shape.index(-1)] = num_devices // known
  total = 1
  for s in shape:
    total *= s
  if total != num_devices:
    raise ValueError(f"mesh {sizes}: axes multiply to {total} but there are {num_devices} "
                     f"devices; sizes must multiply to the device count (or use -1).")
  return tuple(shape)


def dcn_shape(dcn: Mapping[str, int] | None, shape: tuple[int, ...]) -> tuple[int, ...]:
  """Slices spanned by each axis (`config.mesh.dcn`), checked against the total sizes."""
  dcn = {k: int(v) for k, v in dict(dcn or {}).items()}
  unknown = sorted(set(dcn) - set(AXES))
  if unknown:
    raise ValueError(f"Unknown mesh.dcn axes {unknown}; allowed axes: {AXES}.")
  out = tuple(dcn.get(a, 1) for a in AXES)
  for axis, total, n in zip(AXES, shape, out):
    if n < 1 or total % n:
      raise ValueError(f"mesh.dcn.{axis}={n} must be a positive divisor of the axis's total "
                       f"size mesh.{axis}={total} (the total spans all slices).")
  return out


def _granules(devices) -> tuple[list[Any], bool]:
  """Groups devices by slice (TPU `slice_index`), else by process; (groups, by_process)."""
  by_process = getattr(devices[0], "slice_index", None) is None
  key = (lambda d: d.process_index) if by_process else (lambda d: d.slice_index)
  groups: dict[int, list[Any]] = {}
  for d in devices:
    groups.setdefault(key(d), []).append(d)
  return [groups[k] for k in sorted(groups)], by_process


def hybrid_device_array(shape: tuple[int, ...], dcn: tuple[int, ...], devices) -> np.ndarray:
  """Devices laid out as `shape`, axis i spanning `dcn[i]` slices (or processes)."""
  granules, by_process = _granules(devices)
  if len(granules) != math.prod(dcn):
    unit = "processes" if by_process else "slices"
    raise ValueError(f"mesh.dcn {dict(zip(AXES, dcn))} multiplies to {math.prod(dcn)} "
                     f"slices, but the {len(devices)} devices form {len(granules)} {unit}.")
  ici = tuple(s // n for s, n in zip(shape, dcn))
  return mesh_utils.create_hybrid_device_mesh(
      ici, dcn, devices, process_is_granule=by_process, allow_split_physical_axes=True)


def parse_sizes(text: str, where: str = "--mesh") -> dict[str, int]:
  """'fsdp=2,context=4' -> {"fsdp": 2, "context": 4}; one clear error otherwise."""
  out = {}
  for item in filter(None, (i.strip() for i in text.split(","))):
    key, eq, value = item.partition("=")
    try:
      size = int(value)
    except ValueError:
      size = None
    if not eq or size is None or key.strip() not in AXES:
      raise ValueError(f"{where}={text!r}: {item!r} is not axis=size with an axis of "
                       f"{AXES} (e.g. fsdp=2,context=4).")
    out[key.strip()] = size
  return out


def make_mesh(sizes: Mapping[str, Any] | None = None, devices=None) -> Mesh:
  """A mesh over `devices` (default: all) with the four named axes.

  Args:
    sizes: axis -> total size (one may be -1), optionally with "dcn": axis -> slices.
    devices: the devices (default `jax.devices()`; AOT compiles pass a topology's).
  """
  devices = jax.devices() if devices is None else list(devices)
  sizes = dict(sizes or {"data": -1})
  dcn = sizes.pop("dcn", None)
  shape = mesh_shape(sizes, len(devices))
  slices = dcn_shape(dcn, shape)
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  if math.prod(slices) == 1:
    return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
  return Mesh(hybrid_device_array(shape, slices, devices), AXES, axis_types=auto)


def batch_size_per_shard(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(batch_size: int, mesh: Mesh, where: str = "batch_size") -> None:
  n = batch_size_per_shard(mesh)
  if batch_size < 1:
    raise ValueError(f"{where}={batch_size}; expected >= 1 (and divisible by the mesh's "
                     f"data x fsdp size {n}).")
  if batch_size % n:
    raise ValueError(f"{where}={batch_size} must be divisible by the mesh's data x fsdp "
                     f"size {n} (mesh {dict(mesh.shape)}).")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over data and fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def axes_of(entry) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (None, a name or a tuple of names)."""
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def check_divisible(abstract: Any, shardings: Any, where: str = "state",
                    logical: Any = None) -> None:
  """Raises a ValueError unless every sharded dimension divides by its mesh axes' size.

  Run before any compile; jax's own error comes later and names no parameter.

  Args:
    abstract: pytree of arrays or ShapeDtypeStructs.
    shardings: matching pytree of NamedShardings.
    where: what the tree is, for the message ("state", "batch").
    logical: optional matching pytree of logical PartitionSpecs (names in the message).
  """
  leaves = jax.tree_util.tree_leaves_with_path(abstract)
  shards = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  names = (jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, P))
           if logical is not None else [None] * len(leaves))
  if not len(leaves) == len(shards) == len(names):
    raise ValueError(f"check_divisible: {where} has {len(leaves)} arrays but {len(shards)} "
                     f"shardings and {len(names)} logical specs; the trees differ.")
  for (path, x), sharding, name in zip(leaves, shards, names):
    for dim, entry in enumerate(sharding.spec):
      axes = axes_of(entry)
      size = math.prod(sharding.mesh.shape[a] for a in axes)
      if axes and x.shape[dim] % size:
        logical_name = f" (logical axis {name[dim]!r})" if name is not None else ""
        raise ValueError(
            f"{where}{jax.tree_util.keystr(path)}: dimension {dim}{logical_name} of shape "
            f"{tuple(x.shape)} has size {x.shape[dim]}, which is not divisible by mesh axes "
            f"{axes} of sizes {[sharding.mesh.shape[a] for a in axes]} (= {size}). Change "
            f"config.mesh or config.sharding.rules, or the model size.")


def process_batch_shard(devices: np.ndarray, process_index: int) -> tuple[int, int]:
  """Which rows of a batch split over data x fsdp this process must load: (index, count).

  Processes whose devices hold the same batch rows (a `context` or `tensor` axis spanning
  hosts) must feed identical data to `jax.make_array_from_process_local_data`, so the input
  pipeline should shard by this index and count, not by `jax.process_index()` and
  `jax.process_count()` (which agree whenever only data and fsdp span processes).

  Args:
    devices: the mesh's device grid (`mesh.devices`), axes ordered as AXES.
    process_index: the process asking (`jax.process_index()`).

  Raises:
    ValueError: a process's devices hold batch rows that are not one contiguous block of
      the same size as every other process's.
  """
  grid = np.asarray(devices)
  num_rows = grid.shape[0] * grid.shape[1]  # data x fsdp
  rows = np.broadcast_to(np.arange(num_rows).reshape(grid.shape[:2])[:, :, None, None],
                         grid.shape)
  blocks: dict[int, set[int]] = {}
  for device, row in zip(grid.ravel(), rows.ravel()):
    blocks.setdefault(device.process_index, set()).add(int(row))
  distinct = sorted({tuple(sorted(b)) for b in blocks.values()})
  contiguous = all(b == tuple(range(b[0], b[0] + len(b))) for b in distinct)
  if not contiguous or sum(len(b) for b in distinct) != num_rows:  # overlap or gaps
    raise ValueError(f"The mesh gives processes batch rows {distinct} (of data x fsdp = "
                     f"{num_rows}); each process needs one contiguous block, and blocks "
                     "must be disjoint or identical. Reorder the mesh axes' sizes or "
                     "mesh.dcn.")
  return distinct.index(tuple(sorted(blocks[process_index]))), len(distinct)


def to_host(tree: Any) -> Any:
  """Numpy copies of a pytree's arrays on every process, whatever their sharding.

  Arrays split over devices of other processes (FSDP across hosts) are gathered with
  `process_allgather`, a collective: every process must call this with the same tree.
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x)) if isinstance(x, jax.Array) else x
  return jax.tree.map(one, tree)


def for_evaluation(tree: Any) -> Any:
  """A pytree of arrays placed for an evaluation pass: whole on one local device when this
  process holds all of it (not replicated over the mesh, which would repeat the work on
  every device), else left as they are, global arrays split over hosts (FSDP across
  processes), which the evaluation then runs over as one SPMD program on every process."""
  leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
  if not all(x.is_fully_addressable for x in leaves):
    return tree
  return jax.device_put(tree, jax.local_devices()[0])
