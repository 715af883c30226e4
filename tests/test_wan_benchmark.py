"""benchmarks/wan_dit.py (our DiT vs diffusers' Wan transformer): bad input is one line and
exit 2 before any model is built; the tiny case runs both sides end to end and agrees."""
import json
import os
import shutil

import pytest
import scripts

SCRIPT = "benchmarks/wan_dit.py"
REL = 1e-4  # fp32 parity, as tests/test_interop_dit.py: never loosen


def _one_line_exit_2(out):
  assert out.returncode == 2, out.stderr
  assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert out.stdout == ""


@pytest.mark.parametrize("args, message", [
    (("--cases", "cpu_tiny,bogus"),
     "unknown case(s) ['bogus']; known: ['cpu_tiny', 'cpu_small', 'wan1.3b_480p']"),
    (("--dtype", "float16"), "--dtype 'float16'; expected one of ['float32', 'bfloat16']"),
    (("--cases", "cpu_tiny", "--attention", "flash"),
     "--attention 'flash'; expected one of ['xla', 'cudnn', 'auto', 'blocked']"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
  out = scripts.run(SCRIPT, *args)
  _one_line_exit_2(out)
  assert message in out.stderr


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None,
                    reason="the 1.3B case runs where there is a GPU")
def test_gpu_case_is_refused_on_cpu():
  out = scripts.run(SCRIPT, "--cases", "wan1.3b_480p", "--dtype", "bfloat16")
  _one_line_exit_2(out)
  assert "case(s) ['wan1.3b_480p'] need a GPU and this machine has none" in out.stderr


def test_tiny_case_runs_both_sides_and_they_agree(tmp_path):
  out = scripts.run(SCRIPT, "--cases", "cpu_tiny", "--repeats", "1",
                    "--out", str(tmp_path / "r.json"))
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout)
  assert json.loads((tmp_path / "r.json").read_text()) == report
  (row,) = report["results"]
  assert row["case"] == "cpu_tiny" and row["dtype"] == "float32"
  assert row["config"]["tokens_per_row"] == 24 and row["ours"]["batch_per_call"] == 2
  assert row["peer"]["calls_per_step"] == 2 and row["ours_over_peer"] > 0
  for side in ("ours", "peer"):
    assert row[side]["step_s"] > 0 and len(row[side]["step_s_all"]) == 1
  assert row["output_max_abs"] > 0.1  # a real output, not zeros
  assert row["max_abs_diff"] <= REL * max(1.0, row["output_max_abs"]), row
