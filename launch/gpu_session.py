"""What one lent GPU runs for this repo's GPU figures, in two commands that fit a short lease.

  python launch/gpu_session.py pipeline --out_dir D [--budget_s 540] [--vae_s 170]
  python launch/gpu_session.py pipeline --out_dir D --vae_workdir runs/demo/vae \
      --levels basic --attention_s 110     # a carried VAE: no VAE training
  python launch/gpu_session.py pipeline --out_dir D --vae_workdir runs/d21/vae \
      --levels basic --base gpu_demo --computes 64 --config_args optimizer=muon
  python launch/gpu_session.py benchmarks --out_dir D

`pipeline` (issues 3, 6 and 7 on a GPU): builds Shapes World at both levels with 16384
training clips each (two processes, in parallel); trains the tiny VAE (the long60 recipe
at batch 32) for about `--vae_s` seconds: a first run measures the seconds per step and,
when its step count would miss the time by more than 30%, is stopped and started again
with the steps that fit (one restart at most, recorded); then the `gpu_basic` compute
ladder of configs/scaling.py (latents encoded once, every rung followed by its fixed
evaluation), adding the next rung only while its projected time (the 1x rung's seconds
per step scaled by the rung's FLOPs per step, plus the 1x rung's start-up and evaluation)
fits what is left of `--budget_s`; then `sora_jax.scaling.report`. D gets summary.json, the
report, its plot and contact sheet, the VAE's last reconstruction sheet and its last
checkpoint with its config and metrics (vae.tar.gz), each rung's last checkpoint, config,
metrics and logs (ladder.tar.gz), and the log. With `--vae_workdir` (a finished VAE run
carried to the machine, e.g. the demo's dct10) the VAE is not trained and only `--levels`
are built; `--attention_s` runs context_attention.py --gpu while the data set builds.
2026-11-23: the ladder's rungs take ~60 ms a step whatever their size, so 1x alone fits a
10-minute call with the carried VAE (latents and 1x in 176 s); launch/sweep.py resumes
finished rungs, so further rungs can follow in calls made while the machine is warm.

2026-11-24: `--base gpu_demo --computes 64` with the dct21 VAE carried (runs/d21/vae): data,
latents and the 64x rung (224 x 14, 5979 steps at 14.9 steps/s) in one 9-minute call. A
lease lapses 30 s after a call returns, with everything on the machine: for runs longer
than one call, start this script under `setsid nohup` and poll it in calls made at once.
The image has no imageio-ffmpeg, so the ladder evaluates with --nomp4 (scores read .npy).

`benchmarks` (issues 3, 4 and 5): train_step.py B and L in bf16 with cuDNN attention beside
the PyTorch peer on the same GPU; context_attention.py --gpu (8k-32k tokens); vae.py with
720p x 33 clips; launch/aot_compile.py for an H100 target from its XLA target config.
Issue 37's GPU figures (B and L tokens/s and MFU beside the peer, attention TFLOP/s at
8k-32k tokens, the loop's steps/s against the bare step of the tiny DiT at 2k and 64k
records) in one call of at most 490 s: `benchmarks --only train_step,attention,loop_overhead`.
Each JSON goes to D, each step under its own time limit so one failure keeps the rest.

Results are copied into benchmarks/results/ by hand, with the machine named. Not for CI.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ (read lazily, after main() keeps this process on the CPU)
PY = sys.executable
CHILD_ENV = dict(os.environ)  # the children get the GPU; this process stays on the CPU
NUM_TRAIN = 16384
RUNS = "runs/gpu"
LADDER = "ladder"  # under RUNS; "ladder_<config_args>" with --config_args (own checkpoints)
SMOKE = ""  # --smoke: config suffix that shrinks every run to seconds (a CPU check of this)


def _log(msg: str) -> None:
  print(f"[gpu_session {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _run(cmd: list[str], timeout: float, log_path: str) -> tuple[int, float]:
  """Runs `cmd` from the repo root, output appended to log_path; (return code, seconds)."""
  _log(" ".join(cmd))
  t0 = time.time()
  with open(log_path, "a") as log:
    try:
      rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                          timeout=max(timeout, 1), env=CHILD_ENV).returncode
    except subprocess.TimeoutExpired:
      rc = 124
  _log(f"  -> rc {rc} in {time.time() - t0:.0f} s")
  return rc, time.time() - t0


def _metrics(workdir: str) -> list[dict]:
  path = os.path.join(ROOT, workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = []
  for line in open(path):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      pass  # a line being written
  return rows


def _sec_per_step(workdir: str) -> tuple[int, float] | None:
  """(step, s/step) of the latest logged training row, once past the first log."""
  rows = [r for r in _metrics(workdir) if "train/sec_per_step" in r]
  if len(rows) < 2:  # the first interval includes compilation
    return None
  return rows[-1]["step"], float(rows[-1]["train/sec_per_step"])


# ------------------------------------------------------------------------------- pipeline
def start_data(log: str, levels: str = "full,basic",
               basic_sizes: str = "17x64x64+1x64x64") -> list[subprocess.Popen]:
  """Starts building Shapes World at `levels` (one process each) on the CPUs; the basic level
  at the ladder base's `sizes` (the data set the rungs read)."""
  from configs import common  # pylint: disable=g-import-not-at-top
  procs = []
  for level, sizes in (("full", "((17, 64, 64),)"),
                       ("basic", repr(common.parse_sizes(basic_sizes)))):
    if level not in levels.split(","):
      continue
    code = ("from data_pipelines.shapes_world import builder; builder.build(builder.make_config("
            f"{level!r}, {sizes}, num_examples={{'train': {NUM_TRAIN}, 'validation': 64, "
            "'test': 64, 'compositional': 64}), 'data/tfds')")
    procs.append(subprocess.Popen([PY, "-c", code], cwd=ROOT, stdout=open(log, "a"),
                                  stderr=subprocess.STDOUT, env=CHILD_ENV))
  return procs


def wait_data(procs: list[subprocess.Popen], log: str) -> None:
  for p in procs:
    if p.wait():
      raise SystemExit(f"Shapes World build failed (rc {p.returncode}); see {log}.")


def train_vae(seconds: float, log: str) -> dict:
  """The long60 recipe at batch 32, sized to `seconds` of wall time (see the docstring)."""
  workdir = f"{RUNS}/vae"

  def command(steps):
    return [PY, "-m", "sora_jax.main", "--config",
            f"configs/vae.py:preset=long60,steps={steps},batch=32,warmup=100,"
            f"num_train={NUM_TRAIN},eval_every=0{SMOKE}", "--workdir", workdir]

  def attempt(steps, resize):
    """Runs `steps`; with `resize`, returns early with the step count that fits instead."""
    shutil.rmtree(os.path.join(ROOT, workdir), ignore_errors=True)
    _log(" ".join(command(steps)))
    t0 = time.time()
    proc = subprocess.Popen(command(steps), cwd=ROOT, stdout=open(log, "a"),
                            stderr=subprocess.STDOUT, env=CHILD_ENV)
    while resize and proc.poll() is None:
      time.sleep(2)
      if measured := _sec_per_step(workdir):
        step, sps = measured
        startup = (time.time() - t0) - step * sps  # compilation, data, first steps
        fit = int((seconds - (time.time() - t_start) - startup - 20) / sps)
        if abs(fit - steps) <= 0.3 * steps or fit < 200:
          break
        _log(f"VAE: {sps * 1e3:.0f} ms/step, so {steps} steps miss the {seconds:.0f} s "
             f"budget; restarting with {fit}")
        proc.kill()
        proc.wait()
        return None, {"steps": steps, "killed_at_step": step, "sec_per_step": sps, "fit": fit}
    return proc.wait(), None

  t_start, steps, restarts = time.time(), 4000, []
  rc, restart = attempt(steps, resize=True)
  if restart:
    restarts.append(restart)
    steps = restart["fit"]
    rc, _ = attempt(steps, resize=False)
  final = os.path.join(ROOT, workdir, "final_metrics.json")
  result = json.load(open(final)) if os.path.exists(final) else {}
  sps = _sec_per_step(workdir)
  return {"rc": rc, "steps": steps, "batch": 32, "restarts": restarts,
          "sec_per_step": sps[1] if sps else None, "wall_s": time.time() - t_start,
          "final": result}


def _log_tail(path: str, lines: int = 60) -> None:
  """The end of a failed run's log, printed (the machine and its files may not come back)."""
  if os.path.exists(path):
    _log(f"the last {lines} lines of {path}:\n" + "".join(open(path).readlines()[-lines:]))


def _rung_dir(compute) -> str:
  return f"{RUNS}/{LADDER}/compute={compute}"


def run_ladder(deadline: float, log: str, vae_workdir: str, base_name: str = "gpu_basic",
               computes: str = "", config_args: str = "") -> dict:
  """1x, then each larger rung whose projected time fits; or exactly `computes` ('4+64').

  `config_args`: more configs/scaling.py arguments for every rung, e.g. 'optimizer=muon'.
  """
  from configs import scaling  # pylint: disable=g-import-not-at-top
  base = scaling.BASES[base_name]
  spec = (f"configs/scaling.py:base={base_name},vae_workdir={vae_workdir},data_dir=data/tfds"
          f"{',' + config_args if config_args else ''}{SMOKE}")
  sweep = [PY, "launch/sweep.py", "--workdir_root", f"{RUNS}/{LADDER}",
           "--precompute_latents", f"{RUNS}/latents"]
  done, skipped = [], []
  t0 = time.time()
  if computes:  # the rungs asked for, in order, each trained then evaluated (sweep resumes)
    rc, _ = _run(sweep + [f"{spec},computes={computes}"], deadline - time.time(), log)
    if rc:
      _log_tail(os.path.join(ROOT, _rung_dir(computes.split("+")[-1]), "launch.log"))
    return {"rc": rc, "computes": computes, "wall_s": time.time() - t0}
  rc, wall = _run(sweep + [spec + ",computes=1"], deadline - time.time(), log)
  if rc:
    _log_tail(os.path.join(ROOT, _rung_dir(1), "launch.log"))
    return {"rc": rc, "computes": done}
  done.append(1)
  rows = [r for r in _metrics(_rung_dir(1)) if "train/sec_per_step" in r]
  sps1 = float(rows[-1]["train/sec_per_step"])
  steps1 = scaling.ladder_steps(base, 1)
  overhead = max(wall - steps1 * sps1, 30.0)  # latents, start-up, compilation, evaluation
  for compute in (4, 16, 64):
    shape = scaling.ladder_shape(base, compute)
    per_step = sps1 * shape["params"] / scaling.block_params(base["width"], base["depth"],
                                                             base["head_dim"])
    estimate = overhead + scaling.ladder_steps(base, compute) * max(per_step, sps1)
    if time.time() + estimate > deadline - 45:
      skipped.append({"compute": compute, "estimate_s": round(estimate)})
      continue
    rc, _ = _run(sweep + [spec + f",computes={'+'.join(map(str, done + [compute]))}"],
                 deadline - time.time(), log)
    if rc:
      _log_tail(os.path.join(ROOT, _rung_dir(compute), "launch.log"))
      skipped.append({"compute": compute, "rc": rc})
      break
    done.append(compute)
  return {"rc": 0, "computes": done, "skipped": skipped, "sec_per_step_1x": sps1,
          "overhead_1x_s": overhead, "wall_s": time.time() - t0}


def pipeline(args) -> dict:
  t_start = time.time()
  deadline = t_start + args.budget_s
  log = os.path.join(args.out_dir, "pipeline.log")
  summary = {"stage": "pipeline", "budget_s": args.budget_s}
  from configs import scaling  # pylint: disable=g-import-not-at-top
  data = start_data(log, args.levels, scaling.BASES[args.base]["sizes"])  # on the CPUs
  if args.attention_s > 0:
    summary["attention"] = _benchmark(
        "attention", [PY, "benchmarks/context_attention.py", "--gpu", "--reps", "3"],
        args.attention_s, args.out_dir, log)
  wait_data(data, log)
  summary["data_s"] = time.time() - t_start
  _log(f"data built in {summary['data_s']:.0f} s")
  if args.vae_workdir:  # a finished VAE run (e.g. the demo's dct10), not trained here
    vae_workdir = args.vae_workdir
    summary["vae"] = {"rc": 0, "workdir": vae_workdir, "final": json.load(
        open(os.path.join(ROOT, vae_workdir, "final_metrics.json")))}
  else:
    vae_workdir = f"{RUNS}/vae"
    summary["vae"] = train_vae(args.vae_s, log)
    _log(f"VAE: {json.dumps(summary['vae'])}")
    vae_dir = os.path.join(ROOT, vae_workdir)
    grids = sorted(glob.glob(os.path.join(vae_dir, "recon", "*.png")))
    if grids:
      shutil.copy(grids[-1], os.path.join(args.out_dir, "vae_recon.png"))
    _pack(os.path.join(args.out_dir, "vae.tar.gz"), [vae_dir], os.path.dirname(vae_dir),
          ("config.json", "final_metrics.json", "metrics.jsonl"))
    if summary["vae"]["rc"]:
      return summary
  summary["ladder"] = run_ladder(deadline - 40, log, vae_workdir, args.base, args.computes,
                                 args.config_args)
  rc, _ = _run([PY, "-m", "sora_jax.scaling.report", "--root", f"{RUNS}/{LADDER}",
                "--out", os.path.join(args.out_dir, "scaling_gpu.json"),
                "--contact_sheet", "4"], max(deadline - time.time(), 60), log)
  summary["report_rc"] = rc
  _pack(os.path.join(args.out_dir, "ladder.tar.gz"),
        sorted(glob.glob(os.path.join(ROOT, RUNS, LADDER, "compute=*"))),
        os.path.join(ROOT, RUNS), ("config.json", "metrics.jsonl", "adherence.json",
                                   "launch.log"))
  summary["wall_s"] = time.time() - t_start
  return summary


def _pack(path: str, run_dirs: list[str], root: str, names: tuple[str, ...]) -> None:
  """Each run's last checkpoint and its `names` files into the tarball at `path` (a lease's
  files come back small), named relative to `root`."""
  with tarfile.open(path, "w:gz") as tar:
    for run in run_dirs:
      steps = sorted(glob.glob(os.path.join(run, "checkpoints", "[0-9]*")),
                     key=lambda p: int(os.path.basename(p)))
      for item in steps[-1:] + [os.path.join(run, n) for n in names]:
        if os.path.exists(item):
          tar.add(item, arcname=os.path.relpath(item, root))


# ----------------------------------------------------------------------------- benchmarks
def benchmarks(args) -> dict:
  log = os.path.join(args.out_dir, "benchmarks.log")
  spec = os.path.join(ROOT, "launch", "gpu_specs", "h100_sxm.txtpb")
  steps = [
      ("train_step", [PY, "benchmarks/train_step.py", "--cases", "B,L", "--dtype", "bfloat16",
                      "--attention", "auto", "--steps", "10", "--peer"], 200),
      ("attention", [PY, "benchmarks/context_attention.py", "--gpu", "--reps", "3"], 200),
      ("loop_overhead", [PY, "benchmarks/loop_overhead.py", "--records", "2000,64000",
                         "--steps", "100"], 90),
      ("vae", [PY, "benchmarks/vae.py", "--sizes", "17x64x64,33x256x256,33x720x1280"], 120),
      ("aot", [PY, "launch/aot_compile.py", "--config", "configs/dit.py:variant=B",
               "--topology", "h100-2x8", "--mesh", "fsdp=-1", "--rules", "fsdp",
               "--gpu_target_config", spec], 120),
  ]
  summary = {"stage": "benchmarks"}
  for name, cmd, limit in steps:
    if args.only and name not in args.only.split(","):
      continue
    summary[name] = _benchmark(name, cmd, limit, args.out_dir, log)
  return summary


def _benchmark(name: str, cmd: list[str], limit: float, out_dir: str, log: str) -> dict:
  """Runs one benchmark script: its stdout (JSON) to out_dir/name.json, stderr (rows as they
  are measured) to the log, written as they come so a timeout keeps them."""
  _log(" ".join(cmd))
  t0 = time.time()
  with open(os.path.join(out_dir, f"{name}.json"), "w") as out, open(log, "a") as err:
    err.write(f"==== {name}\n")
    err.flush()
    try:
      rc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=err, timeout=limit,
                          env=dict(CHILD_ENV, PYTHONUNBUFFERED="1")).returncode
    except subprocess.TimeoutExpired:
      rc = 124
  _log(f"  -> rc {rc} in {time.time() - t0:.0f} s")
  return {"rc": rc, "seconds": round(time.time() - t0, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("stage", choices=("pipeline", "benchmarks"))
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--budget_s", type=float, default=540,
                      help="pipeline: wall seconds for everything")
  parser.add_argument("--vae_s", type=float, default=170,
                      help="pipeline: wall seconds for the VAE's training")
  parser.add_argument("--vae_workdir", default="",
                      help="pipeline: a finished VAE run to encode with (no VAE training)")
  parser.add_argument("--base", default="gpu_basic", choices=("gpu_basic", "gpu_demo"),
                      help="pipeline: the ladder's base (configs/scaling.py BASES)")
  parser.add_argument("--computes", default="",
                      help="pipeline: exactly these rungs, '+'-separated (default: 1x, then "
                      "what fits the budget)")
  parser.add_argument("--config_args", default="",
                      help="pipeline: more configs/scaling.py arguments for every rung, "
                      "comma-separated (e.g. optimizer=muon)")
  parser.add_argument("--levels", default="full,basic",
                      help="pipeline: Shapes World levels to build")
  parser.add_argument("--attention_s", type=float, default=0,
                      help="pipeline: seconds for context_attention.py --gpu while the data "
                      "builds (0 = not run)")
  parser.add_argument("--only", default="",
                      help="benchmarks: comma-separated subset of train_step,attention,vae,aot")
  parser.add_argument("--smoke", action="store_true",
                      help="runlocal-sized runs: seconds, for checking this script on a CPU")
  args = parser.parse_args()
  os.environ["JAX_PLATFORMS"] = "cpu"  # this process only reads configs (CHILD_ENV is kept)
  global SMOKE, NUM_TRAIN, RUNS, LADDER
  if args.smoke:
    SMOKE, NUM_TRAIN, RUNS = ",runlocal=True", 16, "runs/gpu_smoke"
  if args.config_args:  # other rungs than the plain ladder's: not resumed from its workdirs
    LADDER = "ladder_" + "".join(c if c.isalnum() else "_" for c in args.config_args)
  os.makedirs(args.out_dir, exist_ok=True)
  summary = pipeline(args) if args.stage == "pipeline" else benchmarks(args)
  with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
