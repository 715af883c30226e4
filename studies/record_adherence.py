"""Record a trained model's Shapes World adherence in benchmarks/results/adherence.json.

  python studies/record_adherence.py --report runs/demo/report.json --config demo \
      --machine "2-core CPU (x86_64), 24 GiB" [--out benchmarks/results/adherence.json]

Reads a demo report (`sora_jax/demo.py`: its `dit` stage's training time and its
`evaluate` stage's rates, which the batch sampler and the analytic evaluator measured) and
appends one row: config, train_minutes, every attribute's rate, all, n, the sampling
settings, machine and date. Prints the row as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os


def row_from_report(report: dict, config: str, machine: str) -> dict:
  stages = report.get("stages", {})
  missing = [s for s in ("dit", "evaluate") if s not in stages]
  if missing:
    raise ValueError(f"The report has no {missing} stage(s); run the demo to the end first.")
  ev = stages["evaluate"]["result"]
  rates = dict(ev["adherence"])
  return {"config": config, "train_minutes": round(stages["dit"]["seconds"] / 60, 1),
          "rates": {k: v for k, v in rates.items() if k not in ("all", "n")},
          "all": rates.get("all"), "n": rates.get("n"), "level": ev.get("level"),
          "sampling": ev.get("sampling"), "tasks": ev.get("tasks"),
          "t2i": ev.get("adherence_t2i"),  # image prompts' rates (None: an older report)
          "demo_minutes": round(sum(s["seconds"] for s in stages.values()) / 60, 1),
          "machine": machine, "date": datetime.date.today().isoformat()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--report", required=True, help="A demo's report.json.")
  parser.add_argument("--config", required=True, help="Name of the recipe (e.g. demo).")
  parser.add_argument("--machine", required=True, help="Where it ran, in words.")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "adherence.json"))
  args = parser.parse_args()
  with open(args.report) as f:
    row = row_from_report(json.load(f), args.config, args.machine)
  rows = []
  if os.path.exists(args.out):
    with open(args.out) as f:
      rows = json.load(f)["rows"]
  rows.append(row)
  with open(args.out, "w") as f:
    json.dump({"rows": rows}, f, indent=2)
  print(json.dumps(row))


if __name__ == "__main__":
  main()
