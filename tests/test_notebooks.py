"""The notebooks, and the scaling ladder end to end.

Fast: every notebook is valid nbformat with empty outputs, has one `parameters` cell, and
only imports and calls (no `def`/`class`: notebooks never redefine the library's logic);
every name it imports from the project, and every attribute it reads from an imported
module, exists.

Slow (`make test-all`; a few minutes on 2 cores): tiny artefacts are made once (a runlocal
VAE; a runlocal 2-rung ladder that `launch/sweep.py` trains on latents it precomputes
with that VAE and then evaluates, writing each rung's adherence.json; the ladder's report
with a contact sheet), the ladder's results are checked, and every notebook is executed
headless with nbclient (kernel `python3`, JAX on the CPU) on those artefacts, parameters
injected papermill-style after the `parameters` cell.
"""
import ast
import importlib
import json
import os
import types

import imageio.v3 as iio
import nbformat
import pytest

import scripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
NAMES = ("shapes_world_tour", "vae_reconstructions", "sampling_tasks", "scaling_laws")
# Packages a notebook may import from: the project's and the display stack.
ALLOWED = {"sora_jax", "data_pipelines", "numpy", "matplotlib", "IPython", "jax", "os",
           "json", "dataclasses"}
# The default artefact paths (what `make demo` / `make scaling-demo` write).
DEFAULTS = {"vae_reconstructions": {"VAE_WORKDIR": "runs/demo/vae"},
            "sampling_tasks": {"DIT_WORKDIR": "runs/demo/dit"},
            "scaling_laws": {"SCALING_ROOT": "runs/scaling"}}


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)


def _code(nb) -> list:
  return [c for c in nb.cells if c.cell_type == "code"]


def _parameters_cell(nb):
  cells = [c for c in _code(nb) if "parameters" in c.metadata.get("tags", [])]
  assert len(cells) == 1, f"{len(cells)} cells tagged 'parameters'; expected one"
  return cells[0]


def _bind_imports(tree: ast.AST, bound: dict) -> None:
  """Imports every module a cell imports; records what each import binds."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        assert alias.name.split(".")[0] in ALLOWED, f"import {alias.name}"
        module = importlib.import_module(alias.name)
        if alias.asname:
          bound[alias.asname] = module
        else:
          bound[alias.name.split(".")[0]] = importlib.import_module(alias.name.split(".")[0])
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0 and node.module.split(".")[0] in ALLOWED, f"from {node.module}"
      module = importlib.import_module(node.module)
      for alias in node.names:
        if hasattr(module, alias.name):
          value = getattr(module, alias.name)
        else:  # a submodule not yet imported by its package
          value = importlib.import_module(f"{node.module}.{alias.name}")
        bound[alias.asname or alias.name] = value


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_valid_import_only_and_parameterised(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  for cell in _code(nb):
    assert cell.outputs == [] and cell.execution_count is None, "outputs kept in git"
  params = ast.parse(_parameters_cell(nb).source)
  names = {t.id for node in params.body if isinstance(node, ast.Assign)
           for t in ast.walk(node) if isinstance(t, ast.Name)}
  assert names and all(n.isupper() for n in names), names
  for key, value in DEFAULTS.get(name, {}).items():
    assert f'{key} = "{value}"' in _parameters_cell(nb).source, key
  trees = [ast.parse(c.source) for c in _code(nb)]  # no IPython magics: plain Python
  bound: dict = {}
  for tree in trees:
    _bind_imports(tree, bound)
    for node in ast.walk(tree):
      assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), (
          f"{name}: line {node.lineno} defines {node.name!r}; notebooks call sora_jax")
  project = {k: v for k, v in bound.items()
             if isinstance(v, types.ModuleType)
             and v.__name__.split(".")[0] in ("sora_jax", "data_pipelines")}
  assert project, f"{name} imports nothing from sora_jax / data_pipelines"
  for tree in trees:
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in project):
        assert hasattr(project[node.value.id], node.attr), (
            f"{name}: {node.value.id}.{node.attr} does not exist")


def test_every_notebook_is_tested():
  assert sorted(f[:-6] for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb")) == sorted(NAMES)


# ----------------------------------------------------------------------------- slow
def _launcher():
  return scripts.load("sweep", "sweep_launcher_nb")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
  """A runlocal VAE, a 2-rung runlocal ladder trained and evaluated on it, its report."""
  from configs import vae as vae_config  # pylint: disable=g-import-not-at-top
  from sora_jax.scaling import report  # pylint: disable=g-import-not-at-top
  from sora_jax.train import loop  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("notebooks")
  data, vae = str(root / "data"), str(root / "vae")
  cfg = vae_config.get_config(f"variant=tiny,runlocal=True,sizes=5x32x32,data_dir={data}")
  cfg.train.progress = False
  loop.train_and_evaluate(cfg, vae)
  ladder = str(root / "ladder")
  sweep_config = os.path.join(ROOT, "configs", "scaling.py")
  assert _launcher().main([f"{sweep_config}:runlocal=True,vae_workdir={vae},data_dir={data}",
                           "--workdir_root", ladder,
                           "--precompute_latents", str(root / "latents")]) == 0
  out = str(root / "report" / "scaling.json")
  report.main(["--root", ladder, "--out", out, "--contact_sheet", "2"])
  return {"root": root, "vae": vae, "ladder": ladder, "report": out,
          "dit": os.path.join(ladder, "compute=1")}


@pytest.mark.slow
def test_ladder_trains_evaluates_and_reports(artefacts):
  with open(artefacts["report"]) as f:
    result = json.load(f)
  runs = result["runs"]
  assert [r["name"] for r in runs] == ["compute=1", "compute=4"]
  for r in runs:
    assert r["complete"] and r["val_loss"] > 0 and r["flops"] > 0 and r["wall_s"] > 0
    assert 0 <= r["adherence_all"] <= 1
    with open(os.path.join(r["workdir"], "adherence.json")) as f:
      record = json.load(f)
    assert record["n"] == 2 and record["split"] == "test" and record["size"] == [5, 32, 32]
    assert record["all"] == r["adherence_all"] and "color" in record["rates"]
    with open(os.path.join(r["workdir"], "config.json")) as f:  # trained on the latents
      assert json.load(f)["data"]["latents"] == str(artefacts["root"] / "latents")
  assert runs[1]["flops"] > runs[0]["flops"] and runs[1]["params"] > runs[0]["params"]
  assert result["fit"]["x"] == "flops" and result["fit"]["num_runs"] == 2
  assert "loss_power_law" in result["fit"] and "adherence" in result["fit"]
  assert iio.imread(result["plots"][0]).ndim == 3
  sheet = result["contact_sheet"]
  assert sheet["columns"] == ["1x", "4x"] and sheet["seeds"] == [0, 1]
  assert iio.imread(sheet["path"]).shape[0] > 2 * 32


def _inject(nb, values: dict) -> None:
  """Adds a cell setting `values` right after the parameters cell (papermill's way)."""
  cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()))
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(nb.cells.index(_parameters_cell(nb)) + 1, cell)


def _parameters(name: str, artefacts, tmp_path) -> dict:
  if name == "shapes_world_tour":
    return {"NUM_CLIPS": 2, "FRAMES": 9, "HEIGHT": 32, "WIDTH": 32}
  if name == "vae_reconstructions":
    return {"VAE_WORKDIR": artefacts["vae"], "NUM_CLIPS": 2, "FRAMES": 9, "HEIGHT": 32,
            "WIDTH": 32}
  if name == "sampling_tasks":
    return {"DIT_WORKDIR": artefacts["dit"], "STEPS": 2, "FRAMES": 9, "SIZE": 32}
  if name == "scaling_laws":  # rebuilds the report from the runs
    return {"SCALING_ROOT": artefacts["ladder"], "OUT_DIR": str(tmp_path)}
  assert name == "scaling_laws_read"  # reads the written report (with its contact sheet)
  return {"SCALING_ROOT": "", "REPORT_JSON": artefacts["report"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES + ("scaling_laws_read",))
def test_notebook_runs_headless(name, artefacts, tmp_path, monkeypatch):
  import nbclient  # pylint: disable=g-import-not-at-top
  # The kernel inherits this environment: JAX on the CPU, one device, few threads.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    monkeypatch.setenv(var, "1")
  nb = _read(name.removesuffix("_read"))
  _inject(nb, _parameters(name, artefacts, tmp_path))
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                   resources={"metadata": {"path": NOTEBOOKS}})
  client.execute()  # raises CellExecutionError on the first failing cell
  outputs = [o for c in _code(nb) for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert images, f"{name} showed no image"
  if name == "scaling_laws_read":
    assert len(images) == 2  # the fits and the contact sheet
