"""launch/sweep.py's multi-host scripts: byte-for-byte goldens, and what they must do.

Each target's scripts for fixed arguments must equal tests/golden/launch/<target>/. After an
intended change, rewrite the goldens and review their diff:

  UPDATE_GOLDEN=1 python -m pytest -q tests/test_launch.py

No SLURM cluster or TPU pod runs here, so the rest checks what can be checked without one:
the SLURM task layout against jax's own SLURM detection, the TPU set-up run against a local
git repository (pip stubbed), and the XPK command against sora_jax.main's flags.
"""
import difflib
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

from absl import flags
from jax._src import clusters  # the detection jax.distributed.initialize() runs
from ml_collections import config_flags
import pytest

import scripts

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "launch"
CONFIG = "configs/scaling.py:base=gpu,computes=1+4"  # two runs, each with an evaluation
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Every machine-dependent default (remote URL, commit, paths) is given explicitly.
ARGS = {
    "slurm": ["--nodes", "2", "--gpus_per_node", "8", "--cpus_per_task", "12",
              "--partition", "gpu", "--time", "12:00:00", "--repo_dir", "/shared/sora_jax",
              "--workdir_root", "/shared/runs/scaling"],
    "tpu_pod": ["--tpu_name", "my-v5p", "--zone", "us-east5-a", "--project", "my-proj",
                "--repo_url", "https://github.com/example/sora_jax.git", "--commit", COMMIT,
                "--workdir_root", "/mnt/gcs/scaling"],
    "xpk": ["--cluster", "my-gke", "--tpu_type", "v5p-128", "--num_slices", "4",
            "--docker_image", "gcr.io/my-proj/sora_jax", "--project", "my-proj", "--zone",
            "us-east5-a", "--workdir_root", "gs://bucket/scaling"],
}


@pytest.fixture(name="sweep")
def _sweep(monkeypatch):
  monkeypatch.chdir(ROOT)  # the config path in the scripts is relative to the repository
  return scripts.load("sweep", "sweep_launcher")


def _generate(sweep, target, out_dir, *extra) -> dict[str, str]:
  """File name -> text of the scripts `launch/sweep.py` writes for `target`."""
  assert sweep.main([CONFIG, "--target", target, "--out_dir", str(out_dir), *ARGS[target],
                     *extra]) == 0
  return {p.name: p.read_text() for p in sorted(pathlib.Path(out_dir).iterdir())}


@pytest.mark.parametrize("target", ["slurm", "tpu_pod", "xpk"])
def test_scripts_match_the_goldens(sweep, target, tmp_path):
  files = _generate(sweep, target, tmp_path)
  golden = GOLDEN / target
  if os.environ.get("UPDATE_GOLDEN") == "1":
    shutil.rmtree(golden, ignore_errors=True)
    golden.mkdir(parents=True)
    for name, text in files.items():
      (golden / name).write_text(text)
  assert sorted(files) == sorted(p.name for p in golden.iterdir())
  for name, text in files.items():
    want = (golden / name).read_text()
    diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                        f"golden/{name}", f"generated/{name}"))
    assert text == want, f"{diff}\n(UPDATE_GOLDEN=1 rewrites the goldens)"
  for name in files:
    assert subprocess.run(["bash", "-n", str(tmp_path / name)]).returncode == 0, name


# ----------------------------------------------------------------------------- SLURM
def _sbatch(text: str) -> dict[str, str]:
  return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", text, re.M))


def _srun(text: str) -> dict[str, str]:
  (line,) = [l for l in text.splitlines() if l.startswith("srun ")]
  words = shlex.split(line)
  opts = words[1:words.index("python")]
  return dict(o[2:].partition("=")[::2] for o in opts)


def test_slurm_runs_one_process_per_gpu_each_on_its_own_gpu(sweep, tmp_path, monkeypatch):
  text = _generate(sweep, "slurm", tmp_path)["slurm_compute=1.sbatch"]
  header, srun = _sbatch(text), _srun(text)
  nodes, gpus = 2, 8
  assert header["gpus-per-node"] == str(gpus)
  for opts in (header, srun):
    assert opts["nodes"] == str(nodes)
    assert opts["ntasks-per-node"] == str(gpus) and opts["ntasks"] == str(nodes * gpus)
    assert opts["cpus-per-task"] == "12"  # srun does not inherit it from sbatch
  assert srun["gpu-bind"] == "none"  # every task sees all 8 GPUs of its node
  # The coordinator the script exports (scontrol stubbed) is the one jax would pick itself.
  stub = tmp_path / "bin"
  stub.mkdir()
  (stub / "scontrol").write_text("#!/bin/sh\nprintf 'gpu01\\ngpu02\\n'\n")
  (stub / "scontrol").chmod(0o755)
  (export,) = [l for l in text.splitlines() if l.startswith("export JAX_COORDINATOR")]
  env = {"PATH": f"{stub}:{os.environ['PATH']}", "SLURM_JOB_ID": "123456",
         "SLURM_JOB_NODELIST": "gpu[01-02]"}
  address = subprocess.run(["bash", "-c", f"{export}; echo $JAX_COORDINATOR_ADDRESS"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
  # What jax.distributed.initialize() makes of each task's environment as srun sets it.
  seen = set()
  for node in range(nodes):
    for local in range(gpus):
      task = {"SLURM_JOB_ID": "123456", "SLURM_STEP_NODELIST": "gpu[01-02]",
              "SLURM_NTASKS": srun["ntasks"], "SLURM_PROCID": str(node * gpus + local),
              "SLURM_LOCALID": str(local), "SLURM_STEP_NUM_NODES": str(nodes)}
      for key, value in task.items():
        monkeypatch.setenv(key, value)
      ours = clusters.ClusterEnv.auto_detect_unset_distributed_params(
          address, None, None, None, "slurm", 300)
      assert ours[0] == address
      jax_own = clusters.ClusterEnv.auto_detect_unset_distributed_params(
          None, None, None, None, "slurm", 300)
      assert jax_own[0] == address == "gpu01:" + str(123456 % 4096 + 61440)
      _, count, rank, device_ids = ours
      assert count == nodes * gpus and device_ids == [local]
      seen.add((node, rank, device_ids[0]))
  assert len({(n, d) for n, _, d in seen}) == nodes * gpus  # every GPU, once
  assert sorted(r for _, r, _ in seen) == list(range(nodes * gpus))


def test_slurm_on_cpu_nodes_runs_one_process_per_node(sweep):
  (run,) = sweep.expand("configs/scaling.py:base=gpu,computes=1", "/shared/r")
  text = sweep.slurm_script(run, nodes=3, gpus_per_node=0, time_limit="1:00:00",
                            repo_dir="/shared/sora_jax")
  header, srun = _sbatch(text), _srun(text)
  for opts in (header, srun):
    assert opts["ntasks-per-node"] == "1" and opts["ntasks"] == "3"
  assert "gpus-per-node" not in header and "gpu-bind" not in srun


# ----------------------------------------------------------------------------- TPU pod
def test_tpu_pod_sets_up_every_worker_before_training(sweep, tmp_path):
  lines = _generate(sweep, "tpu_pod", tmp_path)["tpu_pod.sh"].splitlines()
  setup = lines.index('SETUP=$(cat <<\'EOF\'')
  body = lines[setup + 1:lines.index("EOF")]
  assert f"git checkout -q --detach {COMMIT}" in body
  ssh = [i for i, l in enumerate(lines) if l.startswith("gcloud")]
  assert lines[ssh[0]].endswith('--worker=all --command "$SETUP"')
  first_training = next(i for i, l in enumerate(lines) if "sora_jax.main" in l)
  assert setup < ssh[0] < first_training
  for i in ssh[1:]:  # every run's training and evaluation use the set-up's .venv
    words = shlex.split(lines[i])
    remote = shlex.split(words[words.index("--command") + 1])
    assert remote[:3] == ["cd", "~/sora_jax", "&&"]
    assert ".venv/bin/python" in remote and "python" not in remote


def _git(cwd, *args) -> str:
  return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c",
                         "commit.gpgsign=false", *args], cwd=cwd, check=True,
                        capture_output=True, text=True).stdout.strip()


def test_tpu_setup_runs_and_repeats_cheaply(sweep, tmp_path):
  """The set-up as written, on a local `origin`: clone, check out, venv, install; run again
  it only checks out, and installs again only after pyproject.toml changed."""
  origin = tmp_path / "origin"
  origin.mkdir()
  _git(origin, "init", "-q")
  (origin / "pyproject.toml").write_text("[project]\nname = 'x'\n")
  _git(origin, "add", ".")
  _git(origin, "commit", "-q", "-m", "a")
  first = _git(origin, "rev-parse", "HEAD")
  stub = tmp_path / "bin"  # python3 -m venv: a venv whose pip only logs its arguments
  stub.mkdir()
  log = tmp_path / "log"
  (stub / "python3").write_text(
      "#!/bin/sh\nmkdir -p .venv/bin\necho venv >> " + str(log) + "\n"
      "printf '#!/bin/sh\\necho pip \"$*\" >> " + str(log) + "\\n' > .venv/bin/pip\n"
      "chmod +x .venv/bin/pip\n")
  (stub / "python3").chmod(0o755)
  env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "HOME": str(tmp_path),
         "GIT_CONFIG_NOSYSTEM": "1"}
  clone = tmp_path / "work" / "sora_jax"

  def setup(commit):
    subprocess.run(["bash", "-c", sweep.tpu_setup(str(origin), commit, str(clone))],
                   env=env, check=True, capture_output=True)
    return _git(clone, "rev-parse", "HEAD"), log.read_text().splitlines()

  install = 'pip install -q -e .[gcs] jax[tpu]'
  assert setup(first) == (first, ["venv", install])
  assert setup(first) == (first, ["venv", install])  # nothing to do
  (origin / "README").write_text("x")  # a new commit, same dependencies
  _git(origin, "add", ".")
  _git(origin, "commit", "-q", "-m", "b")
  second = _git(origin, "rev-parse", "HEAD")
  assert setup(second) == (second, ["venv", install])  # fetched, no reinstall
  (origin / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '2'\n")
  _git(origin, "commit", "-q", "-am", "c")
  third = _git(origin, "rev-parse", "HEAD")
  assert setup(third) == (third, ["venv", install, install])  # new dependencies
  assert setup(first) == (first, ["venv", install, install, install])  # and back


def test_tpu_checkout_defaults_come_from_this_repository(sweep, monkeypatch):
  answers = {("remote", "get-url", "origin"): "git@example.com:me/sora_jax.git",
             ("rev-parse", "--verify", "--quiet", "HEAD^{commit}"): COMMIT,
             ("rev-parse", "--verify", "--quiet", "main^{commit}"): COMMIT}
  monkeypatch.setattr(sweep, "_git", lambda *args: answers.get(args))
  assert sweep.tpu_checkout() == ("git@example.com:me/sora_jax.git", COMMIT)
  assert sweep.tpu_checkout("u", "main") == ("u", COMMIT)  # a revision is pinned here
  assert sweep.tpu_checkout("u", COMMIT.upper()) == ("u", COMMIT)
  with pytest.raises(ValueError, match="--commit='nope' is not a commit"):
    sweep.tpu_checkout("u", "nope")
  monkeypatch.setattr(sweep, "_git", lambda *args: None)  # no git, or no origin remote
  with pytest.raises(ValueError, match="needs --repo_url"):
    sweep.tpu_checkout()
  with pytest.raises(ValueError, match="needs --commit"):
    sweep.tpu_checkout("u")


# ----------------------------------------------------------------------------- XPK
def _xpk_commands(text: str) -> list[str]:
  lines = [shlex.split(l) for l in text.splitlines() if l.startswith("xpk ")]
  return [words[words.index("--command") + 1] for words in lines]


def test_xpk_spans_the_data_axis_over_slices(sweep, tmp_path):
  commands = _xpk_commands(_generate(sweep, "xpk", tmp_path / "4")["xpk.sh"])
  assert len(commands) == 2
  train = shlex.split(commands[0].partition(" && ")[0])
  assert all("--config.mesh.dcn.data=4" in c for c in commands)
  # sora_jax.main's flags accept the command (the override after --config, as required).
  values = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                           lock_config=True, sys_argv=train[2:])
  flags.DEFINE_string("workdir", None, "", flag_values=values)
  flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"], "", flag_values=values)
  values(["main", *train[3:]])
  assert config.value.mesh.dcn.data == 4 and values.distributed == "on"
  one = _xpk_commands(_generate(sweep, "xpk", tmp_path / "1", "--num_slices", "1")["xpk.sh"])
  assert not any("dcn" in c for c in one)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("args,fragment", [
    (["--target", "slurm", "--nodes", "0", "--workdir_root", "/s"], "--nodes=0 must be >= 1"),
    (["--target", "slurm", "--gpus_per_node", "-1", "--workdir_root", "/s"],
     "--gpus_per_node=-1 must be >= 0"),
    (["--target", "slurm", "--cpus_per_task", "-2", "--workdir_root", "/s"],
     "--cpus_per_task=-2 must be >= 0"),
    (["--target", "slurm"], "--workdir_root='runs/scaling' is relative"),
    (["--target", "xpk", "--num_slices", "0"], "--num_slices=0 must be >= 1"),
    (["--target", "xpk", "--workdir_root", "gs://b"], "--target xpk needs --cluster"),
    (["--target", "tpu_pod", "--workdir_root", "gs://b", "--repo_url", "u", "--commit",
      COMMIT], "--target tpu_pod needs --tpu_name and --zone"),
    (["--target", "tpu_pod", "--tpu_name", "p", "--zone", "z", "--workdir_root", "gs://b",
      "--repo_url", "u", "--commit", "no-such-rev"], "--commit='no-such-rev' is not a commit"),
])
def test_a_bad_launcher_input_is_one_line_and_exit_code_2(args, fragment, tmp_path):
  proc = subprocess.run([sys.executable, "launch/sweep.py", CONFIG, "--out_dir",
                         str(tmp_path / "out"), *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0].startswith("sweep.py: error: ") and fragment in lines[0], lines[0]
  assert not (tmp_path / "out").exists()  # nothing written
