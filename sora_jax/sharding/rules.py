"""Sharding rule presets (logical axis -> mesh axes) and the placement of train states.

Model code names only logical axes (MaxText's scheme): parameters through
`nn.with_logical_partitioning`, activations through `nn.with_logical_constraint` at block
boundaries. A preset is a short, ordered table mapping those names to mesh axes
(`mesh.AXES`); earlier rules win, and a mesh axis already used by an array is skipped, so
activations `[batch, tokens, embed]` get `batch -> (data, fsdp)` and leave `embed`
unsharded while parameters (which have no batch axis) put `embed` on `fsdp`.

Logical names:
  batch, tokens, embed, mlp, heads, kv (head dim), layers (scan axis), vocab   DiT, text
  frames, height, width, channels (activations), conv_in, conv_out (kernels)   VAE

Presets (`config.sharding.rules`):
  dp            data parallel: every parameter replicated, batch over data x fsdp.
  fsdp          + parameters' embed dimension split over fsdp (ZeRO-3 style: gathered
                per layer, gradients reduce-scattered).
  fsdp_tensor   + Megatron tensor parallelism: heads, MLP hidden and vocab over tensor.
  fsdp_context  fsdp + activations' tokens over context (pair with the "ring" or
                "all_to_all" attention backend, `context.py`).
  vae_spatial   the VAE's frames split spatially: activations' height over fsdp x context,
                batch over data; parameters replicated (they are small).
  vae_fsdp      the VAE data parallel over data x fsdp, its conv kernels split by output
                channel over fsdp wherever fsdp divides them (big_vision's fsdp rule: the
                RGB convs, 3 channels, stay whole), with their Adam moments.

State init follows `eval_shape -> shardings -> jit(init, out_shardings)`: `state_shardings`
turns an abstract train state into NamedShardings, giving optimizer moments and the EMA the
shardings of the params they mirror and replicating counters. Activation constraints need
the rules active while the step is traced: `mesh_and_rules(mesh, preset)` around the jitted
call. jax's trace cache does not see flax's rules, so a function already traced under one
preset keeps it; jit a fresh wrapper (`with_rules`) to trace under another.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sora_jax.sharding import mesh as mesh_lib

Rules = tuple[tuple[str, Any], ...]
_BATCH = ("batch", mesh_lib.BATCH_AXES)
_FSDP = (("embed", "fsdp"),)

PRESETS: dict[str, Rules] = {
    "dp": (_BATCH,),
    "fsdp": (_BATCH,) + _FSDP,
    "fsdp_tensor": (_BATCH,) + _FSDP + (("heads", "tensor"), ("mlp", "tensor"),
                                        ("vocab", "tensor")),
    "fsdp_context": (_BATCH, ("tokens", "context")) + _FSDP,
    "vae_spatial": (("batch", "data"), ("height", ("fsdp", "context"))),
    "vae_fsdp": (_BATCH, ("conv_out", "fsdp")),
}
DEFAULT = "dp"
# Presets whose parameter rules apply only where the mesh axes divide the dimension; for the
# others an indivisible dimension is an error (`mesh.check_divisible`).
_WHERE_DIVISIBLE = frozenset({"vae_fsdp"})


def get(preset: str | Rules) -> Rules:
  """The rule table of a preset name (a table passes through)."""
  if not isinstance(preset, str):
    return tuple((name, axes) for name, axes in preset)
  if preset not in PRESETS:
    raise ValueError(f"Unknown sharding rules {preset!r} (config.sharding.rules); known "
                     f"presets: {sorted(PRESETS)}.")
  return PRESETS[preset]


def preset_of(config) -> str:
  """`config.sharding.rules`, or the default for configs without a sharding section."""
  sharding = config.get("sharding") or {}
  return sharding.get("rules", DEFAULT) or DEFAULT


@contextlib.contextmanager
def mesh_and_rules(mesh: Mesh, preset: str | Rules) -> Iterator[None]:
  """`jax.set_mesh(mesh)` with the preset's logical axis rules active (trace steps here)."""
  rules = get(preset)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def with_rules(fn: Callable, preset: str | Rules) -> Callable:
  """A fresh function that runs `fn` under the preset's rules (to jit per preset)."""
  rules = get(preset)

  def wrapped(*args, **kwargs):
    with nn.logical_axis_rules(rules):
      return fn(*args, **kwargs)

  return wrapped


def _is_spec(x) -> bool:
  return isinstance(x, P)


def param_specs(module: nn.Module, *args, **kwargs) -> Any:
  """Logical PartitionSpecs of `module.init(rng, *args, **kwargs)`'s variables.

  Traced with `jax.eval_shape`, so nothing is computed; args may be ShapeDtypeStructs.
  Unnamed variables get `P()` (replicated).
  """
  boxed = jax.eval_shape(lambda rng, a, kw: module.init(rng, *a, **kw), jax.random.key(0),
                         args, kwargs)
  return nn.get_partition_spec(boxed)


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _mirror_specs(abstract_state: Any, specs: Any) -> Any:
  """Logical specs for every leaf: subtrees shaped like `specs` (or one of its top-level
  entries) get its specs, everything else `P()`. A subtree with some leaves masked out
  (`optax.MaskedNode`, which `optax.partition` keeps for the params another transform
  updates, as Muon's Adam and Muon halves do) still counts as shaped like them."""
  targets = [specs] + (list(specs.values()) if isinstance(specs, dict) else [])
  by_structure = {}
  for target in targets:
    treedef = jax.tree.structure(target, is_leaf=_is_spec)
    if treedef.num_leaves > 1:
      by_structure.setdefault(treedef, target)

  def structure(node):
    return jax.tree.structure(node, is_leaf=_is_masked)

  def matches(node) -> bool:
    return not isinstance(node, jax.ShapeDtypeStruct) and structure(node) in by_structure

  def assign(node):
    if matches(node):
      return jax.tree.map(lambda leaf, spec: leaf if _is_masked(leaf) else spec, node,
                          by_structure[structure(node)], is_leaf=_is_masked)
    return P()

  return jax.tree.map(assign, abstract_state, is_leaf=matches)


def _divisible_only(x: Any, sharding: NamedSharding) -> NamedSharding:
  """`sharding` without the mesh axes of any dimension of `x` they do not divide."""
  sizes = sharding.mesh.shape
  spec = [entry if x.shape[d] % math.prod(sizes[a] for a in mesh_lib.axes_of(entry)) == 0
          else None for d, entry in enumerate(sharding.spec)]
  return NamedSharding(sharding.mesh, P(*spec))


def state_shardings(mesh: Mesh, abstract_state: Any, preset: str | Rules,
                    param_specs: Any = None) -> Any:
  """NamedShardings of a train state under a preset; checked before any compile.

  Args:
    mesh: the device mesh (`mesh.make_mesh`).
    abstract_state: `jax.eval_shape` of the state init. Its params may be boxed
      (`nn.Partitioned`): then the names come from the boxes, and everything derived from
      the params by tree maps (Adam's mu and nu, an EMA) carries them too.
    preset: a name in PRESETS or a rule table.
    param_specs: for a state whose params were unboxed (`nn.meta.unbox`): the params'
      logical specs (`param_specs(...)` of the boxed init). Every subtree of the state with
      their structure, or with the structure of one of their top-level entries (a state
      holding {"vae": ..., "disc": ...} params and per-model optimizer states), gets them.

  Returns:
    A pytree of NamedShardings shaped like the *unboxed* state. Leaves without logical
    names (step counters, optimizer counts, unnamed params) are replicated.

  Raises:
    ValueError: unknown preset; a sharded dimension that its mesh axes do not divide.
  """
  rules = get(preset)
  if param_specs is None:
    logical = nn.get_partition_spec(abstract_state)
    abstract_state = nn.meta.unbox(abstract_state)
  else:
    abstract_state = nn.meta.unbox(abstract_state)
    logical = _mirror_specs(abstract_state, param_specs)
  shardings = jax.tree.map(
      lambda spec: NamedSharding(mesh, nn.logical_to_mesh_axes(spec, rules)), logical,
      is_leaf=_is_spec)
  if isinstance(preset, str) and preset in _WHERE_DIVISIBLE:
    shardings = jax.tree.map(_divisible_only, abstract_state, shardings)
  mesh_lib.check_divisible(abstract_state, shardings, where="state", logical=logical)
  return shardings
