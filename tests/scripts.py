"""The scripts in launch/, benchmarks/ and studies/ (not packages): loaded as modules for the
tests that drive them, or run as commands."""
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str, alias: str | None = None, folder: str = "launch"):
  """<folder>/<name>.py as a fresh module."""
  spec = importlib.util.spec_from_file_location(alias or f"{folder}_{name}",
                                                os.path.join(ROOT, folder, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run(*args: str) -> subprocess.CompletedProcess:
  """`python ARGS` from the repository root, on the host's own devices (no fake ones)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
