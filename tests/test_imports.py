"""The import graph: no cycle, and dependencies run one way (data_pipelines imports nothing
from sora_jax; entry points -> train -> data, scaling -> inference -> models and the rest).

Every import counts, at module level or inside a function, so a cycle cannot hide in a
function body.
"""
import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("sora_jax", "data_pipelines", "configs", "launch")

# A layer may import its own layer and the layers below it, never one above.
LAYERS = (
    ("data_pipelines",),
    ("sora_jax", "sora_jax.models", "sora_jax.diffusion", "sora_jax.sharding", "sora_jax.text",
     "sora_jax.checkpoints", "sora_jax.interop"),
    ("sora_jax.inference",),
    ("sora_jax.data", "sora_jax.scaling"),
    ("sora_jax.train",),
    ("sora_jax.main", "sora_jax.sample", "sora_jax.evaluate", "sora_jax.demo",
     "sora_jax.convert", "configs", "launch"),
)
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, str]:
  """Dotted module name -> path, for every .py file of PACKAGES."""
  out = {}
  for top in PACKAGES:
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      for f in files:
        if f.endswith(".py"):
          path = os.path.join(dirpath, f)
          name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          out[name.removesuffix(".__init__")] = path
  return out


def _resolve(name: str, modules) -> str | None:
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def import_graph() -> dict[str, set[str]]:
  """Module -> the project modules it imports (`from a import b` counts a and a.b)."""
  modules = _modules()
  graph = {m: set() for m in modules}
  for m, path in modules.items():
    package = m if path.endswith("__init__.py") else m.rpartition(".")[0]
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parts + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
      else:
        continue
      for name in names:
        target = _resolve(name, modules)
        if target and target != m:
          graph[m].add(target)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected sets of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def layer(module: str) -> str:
  """The LAYERS entry a module belongs to (its longest listed prefix)."""
  parts = module.split(".")
  for n in range(len(parts), 0, -1):
    if ".".join(parts[:n]) in RANK:
      return ".".join(parts[:n])
  raise KeyError(f"{module} is in no layer of tests/test_imports.py LAYERS; add it.")


def back_edges(graph: dict[str, set[str]]) -> list[str]:
  return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                if RANK[layer(a)] < RANK[layer(b)])


def test_no_import_cycle():
  assert cycles(import_graph()) == []


def test_dependencies_run_one_way():
  graph = import_graph()
  assert not [f"{a} -> {b}" for a, t in graph.items() for b in t
              if a.startswith("data_pipelines") and b.startswith("sora_jax")]
  assert back_edges(graph) == []


def test_the_checks_catch_a_cycle_and_a_back_edge():
  graph = {"sora_jax.models.a": {"sora_jax.models.b"}, "sora_jax.models.b": {"sora_jax.models.a"},
           "data_pipelines.x": {"sora_jax.inference.run"}, "sora_jax.inference.run": set()}
  assert cycles(graph) == [["sora_jax.models.a", "sora_jax.models.b"]]
  assert back_edges(graph) == ["data_pipelines.x -> sora_jax.inference.run"]
  with pytest.raises(KeyError, match="in no layer"):
    layer("elsewhere.module")


# Entry points whose command-line flags are defined at import (absl's usual layout). Every
# other module defines its flags only when run as a script, so importing it (the demo
# imports the Shapes World exporter, say) adds no flag, and no required one.
FLAG_ENTRY_POINTS = ("sora_jax.main", "sora_jax.demo", "data_pipelines.video_folder.build")


def test_importing_a_library_module_defines_no_flags():
  modules = sorted(m for m in _modules() if m.split(".")[0] in ("sora_jax", "data_pipelines")
                   and m not in FLAG_ENTRY_POINTS)
  code = ("import importlib, json, sys\n"
          f"for m in {modules!r}: importlib.import_module(m)\n"
          "from absl import flags\n"
          "print(json.dumps(sorted(k for k, v in flags.FLAGS.flags_by_module_dict().items()"
          " if v)))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  owners = json.loads(out.stdout.strip().splitlines()[-1])
  assert not [o for o in owners if "sora_jax" in o or "data_pipelines" in o], owners
