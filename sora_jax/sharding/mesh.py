"""Device meshes built from config, with the axes `data`, `fsdp`, `context`, `tensor`.

Sizes come from `config.mesh` (a mapping axis -> size; one size may be -1, "the rest").
Axis types are Auto: `jax.make_mesh` defaults to Explicit, which breaks Linen's logical
constraints. The mesh is validated before any compile: the product must equal the device
count.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
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


def make_mesh(sizes: Mapping[str, int] | None = None, devices=None) -> Mesh:
  """A mesh over `devices` (default: all) with the four named axes."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(sizes, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
                       devices=devices)


def batch_size_per_shard(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(batch_size: int, mesh: Mesh, where: str = "batch_size") -> None:
  n = batch_size_per_shard(mesh)
  if batch_size % n:
    raise ValueError(f"{where}={batch_size} must be divisible by the mesh's data x fsdp "
                     f"size {n} (mesh {dict(mesh.shape)}).")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over data and fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))
