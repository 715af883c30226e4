"""The scripts in launch/ (not a package) loaded as modules, for the tests that drive them."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str, alias: str | None = None):
  """launch/<name>.py as a fresh module."""
  spec = importlib.util.spec_from_file_location(alias or f"launch_{name}",
                                                os.path.join(ROOT, "launch", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
