"""Results of a compute ladder: collect the runs, fit, plot, and a Sora-style contact sheet.

  python -m sora_jax.scaling.report --root runs/scaling --out benchmarks/results/scaling_cpu.json
  python -m sora_jax.scaling.report --root runs/scaling --out R.json --contact_sheet 4

A run is a workdir (`launch/sweep.py` names them `compute=C`) with what the training loop
writes (`sora_jax/train/loop.py`):
  final_metrics.json  the final evaluation: `final/val_loss` (the DiT's validation flow loss
                      at fixed t, noise and clips), throughput keys;
  metrics.jsonl       every `log_every` steps: `train/flops` (analytic FLOPs of that step,
                      `sora_jax/scaling/flops.py`) and `train/sec_per_step`;
  config.json         the config; `scaling.compute` is the rung's nominal budget;
and optionally `adherence.json` (written by `python -m sora_jax.evaluate --adherence_json`,
which `launch/sweep.py` runs after each rung: the Shapes World evaluator's rates on clips
sampled from the rung's fixed prompts; `adherence_record` below is its format), read for
its `all` rate: a top-level "all" or "adherence_all", or "all" inside "rates". Workdirs
whose config is not a DiT's (e.g. the ladder's VAE kept beside it) are not runs.

Contact sheet (`--contact_sheet K`): the first K prompts of the rungs' evaluation (same
split, level, size, seeds and sampler as adherence.json records; the run config's
defaults without one) sampled from every complete rung's checkpoint
(`scaling/contact_sheet.py`), one row per prompt, one column per rung.

Total training FLOPs: each logged step's `train/flops` stands for the steps since the
previous logged one (packing makes FLOPs vary a little per step); wall time likewise from
`train/sec_per_step` (the first interval holds the compile). The loss fit is against these
measured FLOPs (`sora_jax/scaling/fit.py`); the nominal compute is kept for reference.

Output JSON: {"runs": [{"name", "workdir", "compute", "flops", "steps", "val_loss",
"adherence_all", "adherence_rates" (every attribute's rate, when recorded), "wall_s",
"params", "complete"}], "fit": {"loss": saturating power law,
"loss_power_law": plain power law, "adherence": linear and logistic in log10 C}, "plots",
"contact_sheet": {"path", "columns", "prompts", "seeds", ...} or null}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath
import numpy as np

from data_pipelines import storage
from sora_jax.scaling import contact_sheet
from sora_jax.scaling import fit as fit_lib


# ----------------------------------------------------------------------------- collect
def _metric(d: Mapping[str, Any] | None, key: str):
  """`key` or `final/key` from a final_metrics dict (None if absent)."""
  if not d:
    return None
  for k in (key, f"final/{key}"):
    if k in d and d[k] is not None:
      return float(d[k])
  return None


def adherence_record(result: Mapping[str, Any], split: str) -> dict[str, Any]:
  """A run's adherence.json from `sora_jax.evaluate.evaluate`'s result (its eval.json).

  Args:
    result: the evaluation result, with `splits[split]` = the evaluator's rates.
    split: the split whose rates are the run's adherence.

  Returns:
    {"all", "rates" (every attribute's rate, `all`, `n`), "n", "split", and the
     evaluation's "workdir", "step", "level", "size", "seed", "sampling" when present}.
  """
  if split not in result.get("splits", {}):
    raise ValueError(f"adherence_record: split {split!r} is not in the evaluation result "
                     f"(splits: {sorted(result.get('splits', {}))}).")
  rates = dict(result["splits"][split])
  record = {"all": rates.get("all"), "rates": rates, "n": rates.get("n"), "split": split}
  record.update({k: result[k] for k in ("workdir", "step", "level", "size", "seed",
                                        "sampling") if k in result})
  return record


def write_adherence(path: str, result: Mapping[str, Any], split: str) -> dict[str, Any]:
  """Writes `adherence_record(result, split)` as JSON to `path`; returns it."""
  record = adherence_record(result, split)
  storage.write_json(path, record, indent=2)
  return record


def _adherence(d: Mapping[str, Any] | None) -> float | None:
  if not d:
    return None
  for source in (d, d.get("rates") or {}):
    for key in ("all", "adherence_all"):
      if isinstance(source.get(key), (int, float)):
        return float(source[key])
  return None


def training_totals(metrics_path: str) -> dict[str, float | None]:
  """Total FLOPs, wall seconds and last step from a run's metrics.jsonl.

  Rows are deduplicated by step (a resumed run appends; the last row of a step wins).
  """
  rows: dict[int, dict] = {}
  if epath.Path(metrics_path).exists():
    with epath.Path(metrics_path).open() as f:
      for line in f:
        line = line.strip()
        if line:
          row = json.loads(line)
          if "train/flops" in row or "train/sec_per_step" in row:
            rows[int(row["step"])] = {**rows.get(int(row["step"]), {}), **row}
  flops, wall, prev = 0.0, 0.0, 0
  has_flops, has_wall = False, False
  for step in sorted(rows):
    span = step - prev
    if "train/flops" in rows[step]:
      flops += float(rows[step]["train/flops"]) * span
      has_flops = True
    if "train/sec_per_step" in rows[step]:
      wall += float(rows[step]["train/sec_per_step"]) * span
      has_wall = True
    prev = step
  return {"flops": flops if has_flops else None, "wall_s": wall if has_wall else None,
          "steps": prev if rows else None}


def _compute_of(name: str, config: Mapping[str, Any] | None) -> float | None:
  scaling = (config or {}).get("scaling") or {}
  if isinstance(scaling.get("compute"), (int, float)):
    return float(scaling["compute"])
  m = re.search(r"compute=([0-9.eE+-]+)", name)
  return float(m.group(1)) if m else None


def collect_run(workdir: str) -> dict[str, Any]:
  """One run's results (see the module docstring); missing pieces are None."""
  name = epath.Path(workdir).name
  config = storage.read_json_if_exists(storage.join(workdir, "config.json"))
  final = storage.read_json_if_exists(storage.join(workdir, "final_metrics.json"))
  totals = training_totals(storage.join(workdir, "metrics.jsonl"))
  scaling = (config or {}).get("scaling") or {}
  adherence = storage.read_json_if_exists(storage.join(workdir, "adherence.json"))
  return {"name": name, "workdir": workdir, "compute": _compute_of(name, config),
          "flops": totals["flops"], "steps": totals["steps"],
          "val_loss": _metric(final, "val_loss"), "adherence_all": _adherence(adherence),
          "adherence_rates": (adherence or {}).get("rates"),
          "wall_s": totals["wall_s"], "params": scaling.get("params"),
          "tokens_per_s": _metric(final, "tokens_per_s"), "mfu": _metric(final, "mfu"),
          "complete": final is not None}


def _is_dit_run(path: str) -> bool:
  """A directory with run files whose config (if any) is a DiT's."""
  if not any(epath.Path(path, f).exists() for f in (
      "config.json", "metrics.jsonl", "final_metrics.json")):
    return False
  config = storage.read_json_if_exists(storage.join(path, "config.json"))
  return config is None or config.get("task", "dit") == "dit"


def collect(root: str) -> list[dict[str, Any]]:
  """Every DiT run under `root` (a directory with a config.json, metrics or final metrics;
  other tasks' runs, e.g. a VAE, are left out), sorted by nominal compute, then name."""
  if not epath.Path(root).is_dir():
    raise ValueError(f"--root {root!r} is not a directory of runs.")
  runs = []
  for entry in sorted(p.name for p in epath.Path(root).iterdir()):
    path = storage.join(root, entry)
    if epath.Path(path).is_dir() and _is_dit_run(path):
      runs.append(collect_run(path))
  return sorted(runs, key=lambda r: (r["compute"] is None, r["compute"] or 0, r["name"]))


# ----------------------------------------------------------------------------- fit
def fit_runs(runs: Sequence[Mapping[str, Any]], num_prompts: int | None = None) -> dict:
  """The loss and adherence fits of complete runs (x: measured FLOPs, else compute)."""
  done = [r for r in runs if r["complete"] and r["val_loss"] is not None]
  use_flops = bool(done) and all(r["flops"] for r in done)
  x_key = "flops" if use_flops else "compute"
  pts = [(r[x_key], r["val_loss"]) for r in done if r[x_key]]
  out: dict[str, Any] = {"x": x_key, "num_runs": len(pts)}
  notes = []
  if len(pts) >= 2:
    out["loss_power_law"] = fit_lib.fit_power_law(*zip(*pts))
  if len(pts) >= 3:
    out["loss"] = fit_lib.fit_saturating_power_law(*zip(*pts))
    if out["loss"]["dof"] == 0:
      notes.append("L = a C^-b + c through 3 points is exact: no standard errors; the "
                   "plain power law's b_err is the uncertainty to quote.")
  else:
    notes.append(f"{len(pts)} complete run(s): the saturating fit needs 3.")
  adh = [(r[x_key], r["adherence_all"]) for r in done
         if r[x_key] and r["adherence_all"] is not None]
  if len(adh) >= 2:
    out["adherence"] = {"linear_log10": fit_lib.fit_linear_log(*zip(*adh)),
                        "logistic_log10": None}
    if all(a in (0.0, 1.0) for _, a in adh):  # e.g. 0 on every rung: logit is +-infinity
      notes.append("adherence is 0 or 1 on every run: the logistic fit is not identifiable "
                   "(see the runs' adherence_rates for the attributes that do move).")
    else:
      out["adherence"]["logistic_log10"] = fit_lib.fit_logistic_log(
          *zip(*adh), num_prompts=num_prompts)
  else:
    notes.append(f"{len(adh)} run(s) with adherence.json: no adherence fit.")
  out["notes"] = notes
  return out


# ----------------------------------------------------------------------------- plots
def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Plots need matplotlib: pip install 'sora_jax[notebooks]'.") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _log_x(ax) -> None:
  """Log x axis with labels on the decades only (minor labels overlap on short ranges)."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def plot_fits(runs: Sequence[Mapping[str, Any]], fits: Mapping[str, Any], path: str) -> str:
  """PNG: validation loss against FLOPs (log x) with the fit; adherence beside it if any."""
  plt = _pyplot()
  x_key = fits.get("x", "flops")
  done = [r for r in runs if r["complete"] and r["val_loss"] is not None and r[x_key]]
  has_adh = "adherence" in fits
  fig, axes = plt.subplots(1, 2 if has_adh else 1, figsize=(11 if has_adh else 6, 4.2),
                           squeeze=False)
  ax = axes[0, 0]
  xs = np.array([r[x_key] for r in done], np.float64)
  ax.scatter(xs, [r["val_loss"] for r in done], color="C0", zorder=3, label="runs")
  for r in done:
    ax.annotate(f"{r['compute']:g}x" if r["compute"] else r["name"],
                (r[x_key], r["val_loss"]), textcoords="offset points", xytext=(4, 4),
                fontsize=8)
  if len(xs) >= 2:
    grid = np.geomspace(xs.min() / 1.5, xs.max() * 4, 100)
    if "loss" in fits:
      f = fits["loss"]
      err = f" ± {f['b_err']:.2g}" if f["b_err"] is not None else ""
      ax.plot(grid, f["a"] * grid ** -f["b"] + f["c"], color="C1",
              label=f"L = a C^-b + c, b = {f['b']:.3f}{err}, c = {f['c']:.3f}")
    f = fits.get("loss_power_law")
    if f:
      err = f" ± {f['b_err']:.2g}" if f["b_err"] is not None else ""
      ax.plot(grid, f["a"] * grid ** -f["b"], color="C2", linestyle="--",
              label=f"L = a C^-b, b = {f['b']:.3f}{err}")
  _log_x(ax)
  ax.set_xlabel("training FLOPs" if x_key == "flops" else "compute (x base)")
  ax.set_ylabel("validation flow loss")
  ax.set_title("Loss against compute")
  ax.legend(fontsize=7)
  if has_adh:
    ax = axes[0, 1]
    pts = [(r[x_key], r["adherence_all"]) for r in done if r["adherence_all"] is not None]
    ax.scatter(*zip(*pts), color="C0", zorder=3)
    grid = np.geomspace(min(p[0] for p in pts) / 1.5, max(p[0] for p in pts) * 4, 100)
    f = fits["adherence"]["logistic_log10"]
    if f:
      ax.plot(grid, 1 / (1 + np.exp(-(f["alpha"] + f["beta"] * np.log10(grid)))),
              color="C1", label=f"logistic in log10 C, beta = {f['beta']:.2f}")
    f = fits["adherence"]["linear_log10"]
    ax.plot(grid, f["intercept"] + f["slope"] * np.log10(grid), color="C2", linestyle="--",
            label=f"linear, {f['slope']:.3f} per decade")
    _log_x(ax)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(axes[0, 0].get_xlabel())
    ax.set_ylabel("adherence (evaluator 'all')")
    ax.set_title("Prompt adherence against compute")
    ax.legend(fontsize=7)
  fig.tight_layout()
  with storage.local_file(path) as local:  # matplotlib writes local files only
    fig.savefig(local, dpi=120)
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------- CLI
def _json_safe(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def _num_prompts(runs: Sequence[Mapping[str, Any]]) -> int | None:
  """The prompts behind the runs' adherence (adherence.json `n`), if all agree."""
  ns = set()
  for r in runs:
    record = storage.read_json_if_exists(storage.join(r["workdir"], "adherence.json"))
    if record and isinstance(record.get("n"), int):
      ns.add(record["n"])
  return ns.pop() if len(ns) == 1 else None


def report(root: str, out: str, plot: str | None = None, num_prompts: int | None = None,
           contact_sheet_prompts: int = 0, contact_sheet_path: str | None = None
           ) -> dict[str, Any]:
  """Collects `root`'s runs, fits, plots, and writes the JSON report to `out`.

  Args:
    root: the directory of run workdirs.
    out: the JSON report's path.
    plot: the fits' PNG (default: `out` with .png).
    num_prompts: prompts behind each adherence rate (default: adherence.json's `n` when
      every run agrees).
    contact_sheet_prompts: K > 0 samples K prompts from every rung (`ladder_contact_sheet`).
    contact_sheet_path: its PNG (default: `out` with _contact_sheet.png).
  """
  runs = collect(root)
  if not runs:
    raise ValueError(f"No runs under {root!r} (directories with config.json, "
                     "metrics.jsonl or final_metrics.json).")
  if num_prompts is None:
    num_prompts = _num_prompts(runs)
  fits = fit_runs(runs, num_prompts)
  plot = plot or os.path.splitext(out)[0] + ".png"
  plots = []
  if fits["num_runs"]:
    plots.append(plot_fits(runs, fits, plot))
  sheet = None
  if contact_sheet_prompts:
    sheet = contact_sheet.ladder_contact_sheet(
        runs, contact_sheet_path or os.path.splitext(out)[0] + "_contact_sheet.png",
        contact_sheet_prompts)
  result = {"benchmark": "scaling_ladder", "date": time.strftime("%Y-%m-%d"), "root": root,
            "runs": runs, "fit": fits, "plots": plots, "contact_sheet": sheet}
  storage.write_json(out, _json_safe(result), indent=2)
  return result


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m sora_jax.scaling.report",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--root", required=True, help="directory of run workdirs")
  parser.add_argument("--out", required=True, help="JSON report path")
  parser.add_argument("--plot", default=None, help="PNG path (default: OUT with .png)")
  parser.add_argument("--num_prompts", type=int, default=None,
                      help="prompts behind each adherence rate (weights the logistic fit; "
                      "default: adherence.json's n)")
  parser.add_argument("--contact_sheet", type=int, default=0, metavar="K",
                      help="sample K evaluation prompts from every rung into a contact "
                      "sheet (0 = none; default: %(default)s)")
  parser.add_argument("--contact_sheet_path", default=None,
                      help="its PNG (default: OUT with _contact_sheet.png)")
  args = parser.parse_args(argv)
  if args.contact_sheet < 0:
    parser.error(f"--contact_sheet={args.contact_sheet}; expected K >= 0 prompts.")
  result = report(args.root, args.out, args.plot, args.num_prompts, args.contact_sheet,
                  args.contact_sheet_path)
  summary = {k: result["fit"].get(k) for k in ("x", "num_runs", "loss", "loss_power_law")}
  if summary["loss"]:
    summary["loss"] = {k: v for k, v in summary["loss"].items() if k != "cov"}
  sheet = result["contact_sheet"]
  print(json.dumps(_json_safe({"out": args.out, "plots": result["plots"],
                               "contact_sheet": sheet and sheet["path"], **summary}),
                   indent=2))


if __name__ == "__main__":
  main()
