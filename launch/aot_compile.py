"""Compile a config's train step for a target topology without the hardware; print memory.

MaxText's `train_compile.py` idea: build the mesh on compile-only devices of the target,
trace the real train step with the real shardings (`config.sharding.rules`) and let XLA
compile it, so a config that cannot fit, or does not shard, fails here in a minute instead
of on the pod after the queue. Prints one JSON object: the mesh, the rules, parameter
count, and per-device memory from `compiled.memory_analysis()` (arguments, outputs,
temporaries; `total_bytes` = arguments + outputs + temporaries - aliased (donated) bytes).

  python launch/aot_compile.py --config configs/dit.py:variant=B --topology v5e-256 \\
      --mesh fsdp=-1 --rules fsdp
  python launch/aot_compile.py --config configs/dit.py:runlocal=True --topology cpu:8 \\
      --mesh data=2,fsdp=4
  python launch/aot_compile.py \\
      --config configs/dit.py:variant=L,rules=fsdp_context,attention=ring \\
      --topology h100-8x8 --mesh fsdp=8,context=8 \\
      --gpu_target_config launch/gpu_specs/h100_sxm.txtpb

Topologies:
  cpu:N        N fake CPU devices (always available; what the tests use). XLA:CPU memory
               figures are the CPU compiler's, a sanity check of sharding, not of HBM.
  v4-N, v5p-N  TPU, N TensorCores (2 per chip; one megacore device per chip).
  v5e-N, v6e-N TPU, N chips.            TPU targets need libtpu (`pip install 'jax[tpu]'`).
  h100-HxG, a100-HxG, h200-HxG   H hosts of G GPUs. Needs jax's CUDA plugin (`jax[cuda12]`)
               and an XLA GPU target config (`--gpu_target_config`; H100's is in
               launch/gpu_specs/). Run on a one-H100 machine (jax 0.11.2, 2026-11-22):
               DiT-B for h100-2x8 with fsdp=16 compiled in 60 s, 9.8 GiB a device.
A target that cannot be built prints which piece is missing and exits with status 2.

Not a package: run it as a script from the repository root.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys
import time

from data_pipelines import usage

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)  # `configs` and `sora_jax` from this checkout
_TPU_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_TPU_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
           256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}


class TargetError(RuntimeError):
  """The target topology cannot be built here (a missing library or an unknown name)."""


def parse_args(argv=None) -> argparse.Namespace:
  parser = usage.ArgumentParser(
      description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True,
                      help="config file with its argument, e.g. configs/dit.py:variant=B")
  parser.add_argument("--topology", required=True,
                      help="cpu:N, v5e-256, v4-128, v5p-256, v6e-64, h100-8x8, ...")
  parser.add_argument("--mesh", default="",
                      help="mesh sizes replacing config.mesh, e.g. data=2,fsdp=-1,context=2")
  parser.add_argument("--dcn", default="",
                      help="slices per axis (config.mesh.dcn), e.g. data=2")
  parser.add_argument("--rules", default="",
                      help="sharding preset replacing config.sharding.rules")
  parser.add_argument("--num_slices", type=int, default=1, help="TPU slices (multi-slice)")
  parser.add_argument("--gpu_target_config", default="",
                      help="XLA GPU target config text proto (GPU topologies only)")
  parser.add_argument("--compiler_options", default="",
                      help="XLA options for this compile, e.g. "
                           "xla_backend_optimization_level=0 (quicker CPU checks)")
  return parser.parse_args(argv)


def _sizes(text: str, where: str) -> dict[str, int]:
  out = {}
  for item in filter(None, text.split(",")):
    key, eq, value = item.partition("=")
    try:
      out[key.strip()] = int(value)
    except ValueError:
      raise TargetError(f"{where}: {item!r} is not axis=size (e.g. fsdp=8).") from None
    if not eq:
      raise TargetError(f"{where}: {item!r} is not axis=size (e.g. fsdp=8).")
  return out


def compiler_options(text: str) -> dict[str, str | bool | int]:
  """'a=1,b=true' -> {'a': 1, 'b': True} (XLA debug options for `Lowered.compile`)."""
  out = {}
  for item in filter(None, text.split(",")):
    key, eq, value = item.partition("=")
    if not eq:
      raise TargetError(f"--compiler_options: {item!r} is not name=value.")
    low = value.strip().lower()
    out[key.strip()] = (low == "true" if low in ("true", "false") else
                        int(low) if low.lstrip("-").isdigit() else value.strip())
  return out


def prepare_environment(topology: str) -> None:
  """Environment that must be set before jax is imported."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # host work on CPU; the target is compile-only
  match = re.fullmatch(r"cpu:(\d+)", topology)
  if match:
    flags = os.environ.get("XLA_FLAGS", "")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
    os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count="
                               f"{match.group(1)}").strip()
  else:
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off a TPU VM


def target_devices(topology: str, num_slices: int = 1, gpu_target_config: str = ""):
  """Compile-only devices of `topology` (or real fake-CPU devices for cpu:N)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if match := re.fullmatch(r"cpu:(\d+)", topology):
    devices = jax.devices("cpu")
    if len(devices) != int(match.group(1)):
      raise TargetError(f"--topology {topology}: jax has {len(devices)} CPU devices; "
                        "import jax only after prepare_environment().")
    return devices
  if match := re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", topology):
    kind, n = match.group(1), int(match.group(2))
    chips = n // 2 if kind in ("v4", "v5p") else n
    shapes = _TPU_3D if kind in ("v4", "v5p") else _TPU_2D
    if chips not in shapes:
      raise TargetError(f"--topology {topology}: {chips} chips is not a known {kind} slice; "
                        f"known chip counts: {sorted(shapes)}.")
    name = f"{kind}:{shapes[chips]}"
    try:
      return topologies.get_topology_desc(
          name, "tpu", chip_config_name="megacore" if kind in ("v4", "v5p") else "default",
          chips_per_host_bounds=(2, 2, 1), num_slices=num_slices).devices
    except (RuntimeError, NotImplementedError, ValueError) as e:
      raise TargetError(f"--topology {topology} ({name}) needs libtpu, the TPU compiler "
                        f"(pip install 'jax[tpu]'), which jax could not load: {e}. Use "
                        "--topology cpu:N to check the sharding on N fake CPU devices.") from e
  if match := re.fullmatch(r"(h100|h200|a100)-(\d+)x(\d+)", topology):
    hosts, per_host = int(match.group(2)), int(match.group(3))
    if not gpu_target_config or not os.path.exists(gpu_target_config):
      raise TargetError(f"--topology {topology} needs --gpu_target_config: an XLA GPU target "
                        "config text proto for the GPU (e.g. XLA's xla/tools/hlo_opt/"
                        f"gpu_specs/{match.group(1)}*.txtpb); got {gpu_target_config!r}.")
    try:
      return topologies.get_topology_desc(
          match.group(1), "cuda", target_config=open(gpu_target_config).read(),
          topology=f"1x{hosts}x{per_host}").devices
    except (RuntimeError, NotImplementedError, ValueError) as e:
      raise TargetError(f"--topology {topology} needs jax's CUDA plugin (pip install "
                        f"'jax[cuda12]') with deviceless compilation, which failed: "
                        f"{e}") from e
  raise TargetError(f"Unknown --topology {topology!r}; expected cpu:N, v4-N, v5p-N, v5e-N, "
                    "v6e-N, or h100-HxG / h200-HxG / a100-HxG (H hosts of G GPUs).")


def load_config(spec: str):
  """`configs/x.py:args` -> the config (ml_collections), unlocked overrides applied later."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise TargetError(f"--config: no file {path!r} (run from the repository root).")
  module_spec = importlib.util.spec_from_file_location("aot_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _bytes_per_device(abstract, shardings) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  total = 0
  for x, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    shard = sharding.shard_shape(x.shape)
    total += math.prod(shard) * x.dtype.itemsize
  return total


def compile_train_step(args: argparse.Namespace) -> dict:
  """Builds the mesh on the target, compiles the step, returns the JSON report."""
  import jax  # pylint: disable=g-import-not-at-top
  from sora_jax.sharding import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.sharding import rules as rules_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.train import registry  # pylint: disable=g-import-not-at-top
  from sora_jax.train import stepping  # pylint: disable=g-import-not-at-top

  config = load_config(args.config)
  with config.unlocked():
    if args.mesh:
      config.mesh = {**_sizes(args.mesh, "--mesh"), "dcn": _sizes(args.dcn, "--dcn")}
    elif args.dcn:
      config.mesh.dcn = _sizes(args.dcn, "--dcn")
    if args.rules:
      config.sharding = {"rules": args.rules}
  devices = target_devices(args.topology, args.num_slices, args.gpu_target_config)
  task = registry.make(config)
  task.validate()
  preset = rules_lib.preset_of(config)
  rules_lib.get(preset)  # unknown preset: fail before any work
  mesh = mesh_lib.make_mesh(config.get("mesh"), devices=devices)
  mesh_lib.check_batch_size(config.train.batch_size, mesh, "train.batch_size")

  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(task.init_state, rng)
  state_sh = task.state_shardings(mesh, abstract)
  batch = task.abstract_batch()
  batch_sh = jax.tree.map(lambda _: mesh_lib.batch_sharding(mesh), batch)
  replicated = mesh_lib.replicated(mesh)
  # The step the loop jits: the task's step inside the guard (RNG and non-finite skip).
  step = rules_lib.with_rules(stepping.guarded(task.make_train_step()), preset)
  t0 = time.perf_counter()
  with rules_lib.mesh_and_rules(mesh, preset):
    jitted = jax.jit(step, in_shardings=(state_sh, batch_sh, replicated),
                     out_shardings=(state_sh, replicated), donate_argnums=(0,))
    lowered = jitted.lower(abstract, batch, jax.eval_shape(lambda: rng))
    compiled = lowered.compile(compiler_options(args.compiler_options) or None)
  seconds = time.perf_counter() - t0

  mem = compiled.memory_analysis()
  memory = None
  if mem is not None:
    memory = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in
              ("argument", "output", "temp", "alias", "generated_code")}
    memory["total"] = (memory["argument"] + memory["output"] + memory["temp"]
                       - memory["alias"])
    memory = {f"{k}_bytes": v for k, v in memory.items()}
    memory["total_gib"] = memory["total_bytes"] / 2**30
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
  return {
      "config": args.config, "topology": args.topology, "platform": devices[0].platform,
      "device_kind": getattr(devices[0], "device_kind", ""), "num_devices": len(devices),
      "mesh": {k: int(v) for k, v in mesh.shape.items()}, "rules": preset,
      "global_batch": config.train.batch_size, "params": int(params),
      "state_bytes_per_device": _bytes_per_device(abstract, state_sh),
      "memory_per_device": memory,
      "flops_per_device": float(cost.get("flops", float("nan"))) if cost else None,
      "compile_seconds": round(seconds, 2),
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  prepare_environment(args.topology)
  try:
    report = compile_train_step(args)
  except (TargetError, ValueError) as e:  # bad input (config, target): one line
    print(f"aot_compile: {e}", file=sys.stderr)
    return 2
  print(json.dumps(report, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
