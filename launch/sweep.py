"""Expands a config's `sweep(add, arg)` into runs, and runs or submits them.

  python launch/sweep.py configs/scaling.py:base=tiny_cpu,vae_workdir=runs/vae_tiny10 --dry_run
  python launch/sweep.py configs/scaling.py:base=tiny_cpu,vae_workdir=runs/vae_tiny10 \
      --workdir_root runs/scaling --precompute_latents data/latents/scaling_tiny_cpu
  python launch/sweep.py configs/scaling.py:base=gpu --parallel 2
  python launch/sweep.py configs/scaling.py:base=gpu --target slurm --nodes 2 --gpus_per_node 8 \
      --workdir_root /shared/runs/scaling --out_dir launch/out     # then: bash launch/out/submit.sh
  python launch/sweep.py configs/scaling.py:base=gpu --target tpu_pod --tpu_name my-v5p \
      --zone us-east5-a --workdir_root /mnt/gcs/scaling        # then: bash launch/out/tpu_pod.sh
  python launch/sweep.py configs/scaling.py:base=gpu --target xpk --cluster my-gke \
      --tpu_type v5p-128 --num_slices 2 --docker_image gcr.io/proj/sora_jax \
      --workdir_root gs://bucket/scaling                           # then: bash launch/out/xpk.sh

The config file's `sweep(add, arg)` (big_vision style) calls `add(key=value, ...)` once per
run. A run's config argument is the sweep's own `arg` (the text after the colon) with the
run's keys set on top; its name, `key=value` joined by ',', is its workdir under
`--workdir_root`. Each run is the ordinary training command
`python -m sora_jax.main --config FILE:ARG --workdir ROOT/NAME`, so running it again
resumes it. The local target skips a run that finished with the same config, and an
evaluation already done with the same settings after the run's last training.

Evaluation: when the config file also has `evaluation(arg)` (flag -> value for
`python -m sora_jax.evaluate`, e.g. configs/scaling.py), every run is evaluated after it
trains, with the same flags for every run (hence the same prompts and seeds):
`python -m sora_jax.evaluate --workdir W ... --out_dir W/eval --adherence_json
W/adherence.json`, the adherence `sora_jax/scaling/report.py` reads. Sampling resumes too.

Latents: `--precompute_latents DIR` (local target) encodes the runs' shared pixel data
once with their shared VAE (`vae_workdir=`) into DIR/train and DIR/<eval split>, skipping a
split already there, and trains every run on them (`latents=DIR`): encoding on the fly
would repeat the VAE on every step of every run.

Targets:
  local    run here: one after another, or `--parallel N` at a time (logs: WORKDIR/launch.log).
  slurm    one sbatch script per run (OUT_DIR/slurm_NAME.sbatch) and OUT_DIR/submit.sh that
           sbatch-es them all. `srun` starts one process per GPU (--gpus_per_node tasks on
           each of --nodes nodes; one per node with --gpus_per_node 0, CPU nodes), every
           task seeing all its node's GPUs: jax's SLURM detection then gives each process
           the GPU numbered SLURM_LOCALID. JAX_COORDINATOR_ADDRESS is the first node.
  tpu_pod  OUT_DIR/tpu_pod.sh, a `gcloud compute tpus tpu-vm ssh NAME --zone Z --worker=all`
           per step. First a set-up on every worker: --repo_dir cloned from --repo_url and
           checked out at --commit (defaults: this repository's `origin` and HEAD; push it
           first), with REPO_DIR/.venv holding `pip install -e . jax[tpu]`; idempotent, so
           re-running the script is cheap. Then the runs, in sequence, with .venv/bin/python.
  xpk      OUT_DIR/xpk.sh: one `xpk workload create ...` per run (GKE TPU slices; the image
           has sora_jax installed). `--num_slices N` > 1 adds --config.mesh.dcn.data=N: the
           data axis spans the slices, so only its gradient reduction crosses their network.
Multi-host targets run `python -m sora_jax.main --distributed=on`, which joins the hosts
with `jax.distributed.initialize()` (environment auto-detection: Cloud TPU, SLURM, GKE);
workdirs must then be on storage every host sees (a gs:// bucket or a shared file system).
Their evaluation runs after training on one process: SLURM on the job's first node, TPU
on one chip of worker 0 (TPU_PROCESS_BOUNDS etc. keep the runtime from waiting for the
other hosts). Workdirs on gs:// are read and written through etils.epath (gcsfs, the
`gcs` extra, which the TPU set-up installs); training data read from a bucket needs a
gcsfuse mount (README, "Storage").
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.util
import json
import multiprocessing
import os
import re
import shlex
import subprocess
import sys

from etils import epath

from data_pipelines import storage
from data_pipelines import usage

TARGETS = ("local", "tpu_pod", "slurm", "xpk")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this repository
# The training entry point on every host of a multi-host job: `--distributed=on` joins the
# processes (jax.distributed.initialize) before any device is touched (sora_jax/main.py).
DISTRIBUTED_MAIN = "python -m sora_jax.main --distributed=on"
LOCAL_MAIN = "python -m sora_jax.main"
EVALUATE = "python -m sora_jax.evaluate"
# On a TPU VM the set-up step makes REPO_DIR/.venv; the runs use its interpreter.
TPU_MAIN = ".venv/bin/python -m sora_jax.main --distributed=on"
TPU_EVALUATE = ".venv/bin/python -m sora_jax.evaluate"
# One TPU chip of the host it runs on, as a slice of its own: a lone process on a
# multi-host slice would otherwise wait for the other hosts to join.
ONE_TPU_CHIP = ("TPU_PROCESS_BOUNDS=1,1,1 TPU_CHIPS_PER_PROCESS_BOUNDS=1,1,1 "
                "TPU_VISIBLE_CHIPS=0")


def load_config_module(path: str):
  """Imports a config file (e.g. configs/scaling.py) as a module."""
  if not os.path.isfile(path):
    raise ValueError(f"Config file {path!r} does not exist.")
  spec = importlib.util.spec_from_file_location(
      "sweep_config_" + re.sub(r"\W", "_", os.path.basename(path)[:-3]), path)
  module = importlib.util.module_from_spec(spec)
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:  # `from configs import common` inside the config file
    sys.path.insert(0, root)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise ValueError(f"Config file {path!r} has no sweep(add, arg) function.")
  return module


def _parse_items(arg: str) -> dict[str, str]:
  items = {}
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    items[key.strip()] = value.strip()
  return items


def _format_value(value) -> str:
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  text = str(value)
  if "," in text:
    raise ValueError(f"Sweep value {text!r} contains a comma, which a config argument "
                     "cannot carry.")
  return text


def expand(config_spec: str, workdir_root: str) -> list[dict]:
  """The runs of `FILE[:ARG]` in the sweep's order.

  Returns:
    [{"name", "config" (FILE:ARG of the run), "workdir", "evaluate" (flag -> value of the
     run's evaluation, or None when the config file has no `evaluation(arg)`)}].
  """
  path, _, arg = config_spec.partition(":")
  module = load_config_module(path)
  evaluate = module.evaluation(arg) if hasattr(module, "evaluation") else None
  runs = []

  def add(**overrides):
    if not overrides:
      raise ValueError(f"{path}: sweep called add() without keys.")
    keys = {k: _format_value(v) for k, v in overrides.items()}
    name = ",".join(f"{k}={v}" for k, v in keys.items())
    merged = {**keys, **{k: v for k, v in _parse_items(arg).items() if k not in keys}}
    config_arg = ",".join(f"{k}={v}" for k, v in merged.items())
    runs.append({"name": name, "config": f"{path}:{config_arg}",
                 "workdir": workdir_root.rstrip("/") + "/" + name,
                 "evaluate": dict(evaluate) if evaluate is not None else None})

  module.sweep(add, arg)
  names = [r["name"] for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"{path}: sweep added the same run twice: {names}.")
  if not runs:
    raise ValueError(f"{path}: sweep({arg!r}) added no runs.")
  return runs


def train_command(run: dict, main: str = LOCAL_MAIN, overrides: tuple[str, ...] = ()) -> str:
  """The shell command that trains one run; `overrides` (`--config.FIELD=VALUE`) go last,
  after --config, where ml_collections requires them."""
  return (f"{main} --config {shlex.quote(run['config'])} "
          f"--workdir {shlex.quote(run['workdir'])}"
          + "".join(f" {shlex.quote(o)}" for o in overrides))


def _join(root: str, name: str) -> str:
  return root.rstrip("/") + "/" + name


def evaluate_args(run: dict) -> list[str]:
  """The arguments of `python -m sora_jax.evaluate` for one run ([] without evaluation).

  Samples go to WORKDIR/eval (eval.json there); the adherence to WORKDIR/adherence.json.
  """
  if not run.get("evaluate"):
    return []
  wd = run["workdir"]
  args = ["--workdir", wd]
  for key, value in run["evaluate"].items():
    if isinstance(value, bool):  # absl booleans: --key / --nokey
      args.append(f"--{key}" if value else f"--no{key}")
    else:
      args += [f"--{key}", _format_value(value)]
  return args + ["--out_dir", _join(wd, "eval"), "--adherence_json", _join(wd, "adherence.json")]


def evaluate_command(run: dict, prefix: str = "", evaluate: str = EVALUATE) -> str:
  """The shell command that evaluates one trained run ('' without evaluation)."""
  args = evaluate_args(run)
  if not args:
    return ""
  return (prefix + " " if prefix else "") + evaluate + " " + shlex.join(args)


def run_command(run: dict, main: str = LOCAL_MAIN) -> str:
  """Train, then (if the sweep has an evaluation) evaluate: one shell command."""
  evaluate = evaluate_command(run)
  return train_command(run, main) + (f" && {evaluate}" if evaluate else "")


# ------------------------------------------------------------------------ latents
def _set_arg(config: str, key: str, value: str) -> str:
  """FILE:ARG with `key=value` set in ARG (replacing an existing `key`)."""
  path, _, arg = config.partition(":")
  items = {**_parse_items(arg), key: value}
  return f"{path}:" + ",".join(f"{k}={v}" for k, v in items.items())


def precompute_latents(runs: list[dict], latents_dir: str) -> list[dict]:
  """Encodes the runs' shared data with their shared VAE once; returns runs using it.

  Every run must have the same `data` section (but for `latents`), evaluation split and
  `vae.workdir` (a finished VAE run). Splits whose DIR/SPLIT/metadata.json exists are
  kept (delete DIR to encode again, e.g. after retraining the VAE).

  Returns:
    The runs with `latents=latents_dir` in their config argument.
  """
  configs = []
  for run in runs:
    path, _, arg = run["config"].partition(":")
    cfg = load_config_module(path).get_config(arg)
    if "data" not in cfg or "vae" not in cfg or "latents" not in cfg.data:
      raise ValueError(f"--precompute_latents: {run['config']!r} is not a DiT config "
                       "(no data.latents / vae section).")
    configs.append(cfg)
  keys = {json.dumps({**c.data.to_dict(), "latents": None}, sort_keys=True, default=str)
          + f" vae={c.vae.workdir} eval={c.eval.split}" for c in configs}
  if len(keys) != 1:
    raise ValueError("--precompute_latents: the runs differ in their data, VAE or "
                     f"evaluation split, so they cannot share latents: {sorted(keys)}.")
  cfg = configs[0]
  if not cfg.vae.workdir:
    raise ValueError("--precompute_latents needs the runs' VAE: set vae_workdir=... in the "
                     "config argument (a finished VAE run).")
  # In a child process: on an accelerator, this process's JAX would hold the device's memory
  # (XLA preallocates 75% of a GPU) while every run trains, and the runs would run out of it.
  # Imported here: writing launch scripts for other targets needs no JAX on this machine.
  from sora_jax.data import encode_latents  # pylint: disable=g-import-not-at-top
  child = multiprocessing.get_context("spawn").Process(
      target=encode_latents.encode_splits,
      args=(cfg.data.to_dict(), cfg.vae.workdir, ("train", cfg.eval.split), latents_dir))
  child.start()
  child.join()
  if child.exitcode:
    raise SystemExit(f"[sweep] latents: encoding into {latents_dir} failed (exit code "
                     f"{child.exitcode}; its error is above).")
  return [dict(run, config=_set_arg(run["config"], "latents", latents_dir)) for run in runs]


# ------------------------------------------------------------------------ targets
def finished(run: dict) -> bool:
  """Whether the run trained to its end with exactly the config it would train now.

  Then the local target skips its training (re-running it would only repeat the final
  evaluation); a changed config argument (e.g. more steps) resumes it instead.
  """
  wd = run["workdir"]
  try:
    step = storage.read_json(storage.join(wd, "final_metrics.json")).get("step")
    saved = storage.read_json(storage.join(wd, "config.json"))
  except (OSError, ValueError):
    return False
  path, _, arg = run["config"].partition(":")
  config = load_config_module(path).get_config(arg)
  return step == config.train.steps and saved == json.loads(config.to_json_best_effort())


def _stale(run: dict) -> bool:
  """Whether the run's adherence.json is missing, older than its last training, or from
  other evaluation settings than the sweep's."""
  path = storage.join(run["workdir"], "adherence.json")
  final = storage.join(run["workdir"], "final_metrics.json")
  try:
    record = storage.read_json(path)
    if _mtime(path) < _mtime(final):
      return True
  except (OSError, ValueError):
    return True
  size, sampling = record.get("size") or [None] * 3, record.get("sampling") or {}
  done = {"split": record.get("split"), "n": record.get("n"), "seed": record.get("seed"),
          "frames": size[0], "height": size[1], "width": size[2],
          "steps": sampling.get("steps"), "guidance": sampling.get("guidance")}
  wanted = dict(run["evaluate"])
  if "split" in wanted:
    wanted["split"] = str(wanted["split"]).split(",")[0]
  return any(done[k] != v for k, v in wanted.items() if k in done)


def _mtime(path: str) -> float:
  return os.path.getmtime(path) if storage.is_local(path) else epath.Path(path).stat().mtime


@contextlib.contextmanager
def _launch_log(workdir: str):
  """WORKDIR/launch.log opened for appending (a gs:// one through a local copy, uploaded
  when the run is done)."""
  path = storage.join(workdir, "launch.log")
  with storage.local_file(path) as local:
    if local != path and epath.Path(path).exists():
      epath.Path(local).write_bytes(epath.Path(path).read_bytes())
    with open(local, "a") as log:
      yield log


def run_local(runs: list[dict], parallel: int = 1) -> int:
  """Trains (and evaluates) the runs here; returns the number of failed runs."""
  def one(run):
    epath.Path(run["workdir"]).mkdir(parents=True, exist_ok=True)
    with _launch_log(run["workdir"]) as log:
      cmd = [sys.executable, "-m", "sora_jax.main", "--config", run["config"],
             "--workdir", run["workdir"]]
      if finished(run):
        print(f"[sweep] {run['name']} is trained (final_metrics.json, same config).",
              flush=True)
        code = 0
      else:
        print(f"[sweep] start {run['name']}: {train_command(run)}", flush=True)
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
      if code == 0 and run.get("evaluate") and _stale(run):
        log.flush()
        print(f"[sweep] evaluate {run['name']}: {evaluate_command(run)}", flush=True)
        code = subprocess.call([sys.executable, "-m", "sora_jax.evaluate",
                                *evaluate_args(run)], stdout=log, stderr=subprocess.STDOUT)
      print(f"[sweep] {'done' if code == 0 else f'FAILED ({code})'} {run['name']} "
            f"(log: {storage.join(run['workdir'], 'launch.log')})", flush=True)
      return code

  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    codes = list(pool.map(one, runs))
  return sum(code != 0 for code in codes)


def _k8s_name(prefix: str, name: str) -> str:
  """A DNS-1123 workload name: lowercase letters, digits and '-', at most 40 characters."""
  text = re.sub(r"[^a-z0-9]+", "-", f"{prefix}-{name}".lower()).strip("-")
  return text[:40].rstrip("-")


def _path(path: str) -> str:
  """PATH quoted for the shell, keeping a leading ~/ expandable on the remote host."""
  if path == "~" or path.startswith("~/"):
    rest = path[2:]
    return "~" + (f"/{shlex.quote(rest)}" if rest else "")
  return shlex.quote(path)


def _cd(path: str) -> str:
  return f"cd {_path(path)}"


def _git(*args: str) -> str | None:
  """The output of `git -C ROOT ARGS`, or None where git or the repository is missing."""
  try:
    out = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True,
                         timeout=30, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def tpu_checkout(repo_url: str = "", commit: str = "") -> tuple[str, str]:
  """The repository URL and the full commit id that the TPU workers check out.

  Defaults: this repository's `origin` remote and its HEAD. A branch, tag or short id is
  resolved here, so the script pins one commit whatever the remote does later.
  """
  repo_url = repo_url or _git("remote", "get-url", "origin") or ""
  if not repo_url:
    raise ValueError(f"--target tpu_pod needs --repo_url (the repository the workers "
                     f"clone): {ROOT} has no 'origin' remote to default to.")
  if re.fullmatch(r"[0-9a-fA-F]{40}", commit):
    return repo_url, commit.lower()
  resolved = _git("rev-parse", "--verify", "--quiet", f"{commit or 'HEAD'}^{{commit}}")
  if not resolved:
    raise ValueError(f"--commit={commit!r} is not a commit of {ROOT}; expected a 40-hex "
                     "commit id or a revision that `git rev-parse` resolves here."
                     if commit else f"--target tpu_pod needs --commit: {ROOT} is not a "
                     "git repository to take HEAD from.")
  if not commit and _git("status", "--porcelain", "--untracked-files=no"):
    print(f"[sweep] warning: {ROOT} has uncommitted changes; the TPU workers run commit "
          f"{resolved[:12]} without them.", file=sys.stderr, flush=True)
  return repo_url, resolved


def tpu_setup(repo_url: str, commit: str, repo_dir: str) -> str:
  """The set-up each TPU worker runs before training: REPO_DIR at COMMIT, with .venv.

  Idempotent and cheap to repeat: it clones only where REPO_DIR has no repository, fetches
  only when the commit is missing, and installs only when pyproject.toml differs from the
  one last installed (the editable install keeps the checked-out code itself live).
  """
  if not re.fullmatch(r"[0-9a-f]{40}", commit):
    raise ValueError(f"commit={commit!r}; expected a 40-hex commit id (as tpu_checkout "
                     "gives).")
  repo = _path(repo_dir)
  stamp = ".venv/installed-pyproject.toml"
  return "\n".join([
      "set -e",
      f"[ -d {repo}/.git ] || git clone -q {shlex.quote(repo_url)} {repo}",
      _cd(repo_dir),
      f"git cat-file -e {commit} 2>/dev/null || git fetch -q origin",
      f"git checkout -q --detach {commit}",
      "[ -x .venv/bin/pip ] || python3 -m venv .venv",
      f"if ! cmp -s pyproject.toml {stamp}; then",
      '  .venv/bin/pip install -q -e ".[gcs]" "jax[tpu]"',
      f"  cp pyproject.toml {stamp}",
      "fi"])


def tpu_pod_script(runs, tpu_name: str, zone: str, repo_dir: str, repo_url: str,
                   commit: str, project: str = "") -> str:
  """A bash script: set up every worker of a multi-host TPU VM, then train each run there.

  Args:
    runs: the runs (`expand`).
    tpu_name, zone, project: the TPU VM.
    repo_dir: where the repository lives on the workers.
    repo_url, commit: what the workers check out there (`tpu_checkout`).
  """
  if not tpu_name or not zone:
    raise ValueError(f"--target tpu_pod needs --tpu_name and --zone (got "
                     f"{tpu_name!r}, {zone!r}).")
  project_flag = f" --project {shlex.quote(project)}" if project else ""
  ssh = (f"gcloud compute tpus tpu-vm ssh {shlex.quote(tpu_name)} --zone "
         f"{shlex.quote(zone)}{project_flag}")
  lines = ["#!/bin/bash",
           "# Generated by launch/sweep.py: set up all workers of the TPU VM, then train the",
           "# runs one after another on all of them, each followed by its evaluation.",
           "set -euo pipefail", "",
           f"# Set-up, on every worker: {repo_dir} at commit {commit[:12]} with a .venv",
           "# holding sora_jax and jax[tpu]. Run again, it does only what is missing or changed.",
           "SETUP=$(cat <<'EOF'", tpu_setup(repo_url, commit, repo_dir), "EOF", ")",
           f'{ssh} --worker=all --command "$SETUP"', ""]
  for run in runs:
    remote = f"{_cd(repo_dir)} && {train_command(run, TPU_MAIN)}"
    lines += [f"# {run['name']}", f"{ssh} --worker=all --command {shlex.quote(remote)}"]
    if run.get("evaluate"):  # after training, on one chip of worker 0
      remote = f"{_cd(repo_dir)} && {evaluate_command(run, ONE_TPU_CHIP, TPU_EVALUATE)}"
      lines.append(f"{ssh} --worker=0 --command {shlex.quote(remote)}")
    lines.append("")
  return "\n".join(lines)


def slurm_script(run, nodes: int, gpus_per_node: int, time_limit: str, repo_dir: str,
                 partition: str = "", cpus_per_task: int = 0) -> str:
  """An sbatch script: one JAX process per GPU (per node on CPU nodes), started by srun."""
  if nodes < 1 or gpus_per_node < 0 or cpus_per_task < 0:
    raise ValueError(f"--nodes={nodes} must be >= 1, --gpus_per_node={gpus_per_node} >= 0 "
                     f"and --cpus_per_task={cpus_per_task} >= 0.")
  per_node = max(gpus_per_node, 1)
  tasks = nodes * per_node
  header = [f"#SBATCH --job-name={_k8s_name('sora', run['name'])}",
            f"#SBATCH --nodes={nodes}", f"#SBATCH --ntasks={tasks}",
            f"#SBATCH --ntasks-per-node={per_node}"]
  srun = f"srun --nodes={nodes} --ntasks={tasks} --ntasks-per-node={per_node}"
  if gpus_per_node:
    header.append(f"#SBATCH --gpus-per-node={gpus_per_node}")
  if cpus_per_task:  # srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05)
    header.append(f"#SBATCH --cpus-per-task={cpus_per_task}")
    srun += f" --cpus-per-task={cpus_per_task}"
  if gpus_per_node:
    srun += " --gpu-bind=none"
  header += [f"#SBATCH --time={time_limit}",
             f"#SBATCH --output={run['workdir']}/slurm-%j.out"]
  if partition:
    header.append(f"#SBATCH --partition={partition}")
  if gpus_per_node:
    why = [f"# Generated by launch/sweep.py: one JAX process per GPU, {per_node} per node, "
           f"{tasks} in all.",
           "# jax.distributed.initialize() takes the process count and rank from SLURM",
           "# (SLURM_NTASKS, SLURM_PROCID) and, as the process's only GPU, the one numbered",
           f"# SLURM_LOCALID (0-{per_node - 1} on each node). --gpu-bind=none keeps all the "
           "node's GPUs",
           "# visible to each of its tasks, so that number picks a different GPU per task;",
           "# with one task per node, each node would train on its first GPU alone."]
  else:
    why = [f"# Generated by launch/sweep.py: one JAX process per node (CPU nodes), {tasks} "
           "in all.",
           "# jax.distributed.initialize() takes the process count and rank from SLURM",
           "# (SLURM_NTASKS, SLURM_PROCID)."]
  return "\n".join([
      "#!/bin/bash", *header, *why,
      "# The coordinator: the first node, on the port jax's own SLURM detection derives",
      "# from the job id (scontrol expands every node-list form).",
      "set -euo pipefail",
      _cd(repo_dir),
      'export JAX_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" '
      '| head -n 1):$((SLURM_JOB_ID % 4096 + 61440))"',
      f"{srun} {train_command(run, DISTRIBUTED_MAIN)}",
      *(["# The evaluation: one process, here on the first node, after training.",
         evaluate_command(run)] if run.get("evaluate") else []),
      ""])


def xpk_script(runs, cluster: str, tpu_type: str, docker_image: str, num_slices: int = 1,
               project: str = "", zone: str = "") -> str:
  """A bash script with one `xpk workload create` per run (GKE TPU slices).

  With several slices the mesh's data axis spans them (`--config.mesh.dcn.data=N`): only
  the data-parallel gradient reduction crosses the slower network between slices.
  """
  if not cluster or not tpu_type or not docker_image:
    raise ValueError(f"--target xpk needs --cluster, --tpu_type and --docker_image (got "
                     f"{cluster!r}, {tpu_type!r}, {docker_image!r}).")
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices} must be >= 1.")
  extra = "".join(f" --{k} {shlex.quote(v)}" for k, v in (("project", project),
                                                          ("zone", zone)) if v)
  overrides = (f"--config.mesh.dcn.data={num_slices}",) if num_slices > 1 else ()
  lines = ["#!/bin/bash", "# Generated by launch/sweep.py: one XPK workload per run.",
           "set -euo pipefail", ""]
  for run in runs:
    command = train_command(run, DISTRIBUTED_MAIN, overrides)
    if run.get("evaluate"):  # after training, on one chip of worker 0 of slice 0
      command += (' && if [ "${TPU_WORKER_ID:-0}" = 0 ] && [ "${MEGASCALE_SLICE_ID:-0}" = 0 ];'
                  f" then {evaluate_command(run, ONE_TPU_CHIP)}; fi")
    lines += [f"# {run['name']}",
              f"xpk workload create --cluster {shlex.quote(cluster)}"
              f" --workload {_k8s_name('sora', run['name'])} --tpu-type {shlex.quote(tpu_type)}"
              f" --num-slices {num_slices} --docker-image {shlex.quote(docker_image)}{extra}"
              f" --command {shlex.quote(command)}", ""]
  return "\n".join(lines)


def write_scripts(runs, args) -> list[str]:
  """Writes the submission script(s) of `args.target` to `args.out_dir`; returns paths."""
  root = args.workdir_root
  if not (root.startswith("/") or "://" in root):
    raise ValueError(f"--workdir_root={root!r} is relative; --target {args.target} runs on "
                     "other hosts, whose checkpoints must go to storage they all see: give "
                     "an absolute shared path or a gs:// bucket.")
  files = {}
  if args.target == "tpu_pod":
    files["tpu_pod.sh"] = tpu_pod_script(runs, args.tpu_name, args.zone, args.repo_dir,
                                         *tpu_checkout(args.repo_url, args.commit),
                                         args.project)
  elif args.target == "xpk":
    files["xpk.sh"] = xpk_script(runs, args.cluster, args.tpu_type, args.docker_image,
                                 args.num_slices, args.project, args.zone)
  else:
    submit = ["#!/bin/bash", "# Generated by launch/sweep.py: submits every run's job.",
              "set -euo pipefail", 'cd "$(dirname "$0")"  # the job scripts lie beside this one']
    for run in runs:
      name = "slurm_" + re.sub(r"[^\w=.-]+", "_", run["name"]) + ".sbatch"
      files[name] = slurm_script(run, args.nodes, args.gpus_per_node, args.time,
                                 args.repo_dir, args.partition, args.cpus_per_task)
      submit.append(f"mkdir -p {shlex.quote(run['workdir'])}  # holds the job's output file")
      submit.append(f"sbatch {shlex.quote(name)}")
    files["submit.sh"] = "\n".join(submit) + "\n"
  os.makedirs(args.out_dir, exist_ok=True)  # after the checks: a bad input writes nothing
  paths = []
  for name, text in files.items():
    path = os.path.join(args.out_dir, name)
    with open(path, "w") as f:
      f.write(text)
    os.chmod(path, 0o755)
    paths.append(path)
  return paths


def parse_args(argv=None) -> argparse.Namespace:
  parser = usage.ArgumentParser(
      prog="launch/sweep.py", description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("config", help="config file with a sweep(add, arg), optionally "
                      ":ARG, e.g. configs/scaling.py:base=tiny_cpu")
  parser.add_argument("--dry_run", action="store_true",
                      help="print one command per run (train, then evaluate) and exit")
  parser.add_argument("--precompute_latents", default="", metavar="DIR",
                      help="local: encode the runs' data once with their VAE into DIR and "
                      "train every run on it (latents=DIR)")
  parser.add_argument("--workdir_root", default="runs/scaling",
                      help="runs go to WORKDIR_ROOT/NAME (default: %(default)s)")
  parser.add_argument("--target", default="local", choices=TARGETS,
                      help="where the runs go (default: %(default)s)")
  parser.add_argument("--parallel", type=int, default=1,
                      help="local: runs at a time (default: %(default)s)")
  parser.add_argument("--out_dir", default="launch/out",
                      help="where submission scripts are written (default: %(default)s)")
  parser.add_argument("--repo_dir", default="~/sora_jax",
                      help="the repository on the remote hosts (default: %(default)s)")
  parser.add_argument("--repo_url", default="",
                      help="tpu_pod: the repository the workers clone (default: this "
                      "repository's 'origin' remote)")
  parser.add_argument("--commit", default="",
                      help="tpu_pod: the commit the workers check out (default: this "
                      "repository's HEAD)")
  parser.add_argument("--project", default="", help="tpu_pod, xpk: GCP project")
  parser.add_argument("--zone", default="", help="tpu_pod, xpk: GCP zone")
  parser.add_argument("--tpu_name", default="", help="tpu_pod: the TPU VM's name")
  parser.add_argument("--nodes", type=int, default=1, help="slurm: nodes per run")
  parser.add_argument("--gpus_per_node", type=int, default=8,
                      help="slurm: GPUs per node, one process each (0: CPU nodes, one "
                      "process per node; default: %(default)s)")
  parser.add_argument("--cpus_per_task", type=int, default=0,
                      help="slurm: CPU cores per process (default: SLURM's, often 1)")
  parser.add_argument("--time", default="24:00:00", help="slurm: time limit per run")
  parser.add_argument("--partition", default="", help="slurm: partition")
  parser.add_argument("--cluster", default="", help="xpk: GKE cluster")
  parser.add_argument("--tpu_type", default="", help="xpk: slice type, e.g. v5p-128")
  parser.add_argument("--num_slices", type=int, default=1,
                      help="xpk: slices per run; N > 1 spans the data axis over them")
  parser.add_argument("--docker_image", default="", help="xpk: image with sora_jax installed")
  args = parser.parse_args(argv)
  for flag, value, least in (("--parallel", args.parallel, 1), ("--nodes", args.nodes, 1),
                             ("--gpus_per_node", args.gpus_per_node, 0),
                             ("--cpus_per_task", args.cpus_per_task, 0),
                             ("--num_slices", args.num_slices, 1)):
    if value < least:
      parser.error(f"{flag}={value} must be >= {least}.")
  if args.precompute_latents and args.target != "local":
    parser.error(f"--precompute_latents={args.precompute_latents!r} is for --target local; "
                 "for other targets encode with `python -m sora_jax.data.encode_latents` and pass "
                 "latents=DIR in the config argument.")
  if args.target == "tpu_pod" and not args.dry_run:
    try:  # resolved once, here: the defaults come from this repository
      args.repo_url, args.commit = tpu_checkout(args.repo_url, args.commit)
    except ValueError as e:
      parser.error(str(e))
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    runs = expand(args.config, args.workdir_root)
  except (ValueError, OSError) as e:  # the config file or its argument
    usage.fail(f"{args.config}: {e}")
  if args.dry_run:
    if args.precompute_latents:
      runs = [dict(r, config=_set_arg(r["config"], "latents", args.precompute_latents))
              for r in runs]
    for run in runs:
      print(run_command(run))
    return 0
  if args.precompute_latents:
    runs = precompute_latents(runs, args.precompute_latents)
  if args.target == "local":
    failed = run_local(runs, args.parallel)
    print(f"[sweep] {len(runs) - failed}/{len(runs)} runs finished; "
          f"{failed} failed.", flush=True)
    return 1 if failed else 0
  try:
    paths = write_scripts(runs, args)
  except (ValueError, OSError) as e:  # a missing or bad target flag, an unwritable --out_dir
    usage.fail(str(e))
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
