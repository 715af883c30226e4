"""Scaling: analytic FLOPs against XLA, the compute ladder, the sweep launcher, fits, report.

The FLOPs checks compile the real training steps (abstract inputs, no run) and compare the
analytic counts with XLA's: the dots and convolutions of the compiled HLO (`hlo_flops`:
the analytic count's convention, so it must agree closely) and `cost_analysis()['flops']`
(which also charges elementwise ops and skips padded conv taps: within 10% on configs
where matmuls dominate).
"""
import json
import math
import os
import shlex
import subprocess
import sys

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scripts

from configs import dit as dit_config
from configs import scaling
from configs import vae as vae_config
from data_pipelines import media
from sora_jax.inference import adherence
from sora_jax.inference import run as run_lib
from sora_jax.inference import sampler as sampler_lib
from sora_jax.inference import tasks
from sora_jax.models import dit as dit_lib
from sora_jax.scaling import fit
from sora_jax.scaling import flops
from sora_jax.scaling import report
from sora_jax.train import dit_task
from sora_jax.train import vae_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rel(a, b):
  return abs(a - b) / abs(b)


# ----------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("adaln", dit_lib.ADALN_KINDS)
def test_dit_train_flops_match_xla(monkeypatch, adaln):
  """One clip per row, no padding, full captions: every token XLA computes is counted."""
  monkeypatch.setattr(dit_task.DiTTask, "latent_shapes", [(4, 8, 8, 8)])
  cfg = dit_config.get_config("runlocal=True")
  with cfg.unlocked():
    cfg.model.overrides = {"width": 128, "depth": 2, "num_heads": 4, "scan_layers": False,
                           "adaln": adaln}
    cfg.text.overrides = {"width": 64, "depth": 1, "num_heads": 2}
    cfg.packing.update({"text_len": 16, "max_clips": 1})
  task = dit_task.DiTTask(cfg)
  dcfg, tcfg = task.dit_config, task.text_config
  b, n, l = 2, 64, 16
  s = jax.ShapeDtypeStruct
  batch = {"tokens": s((b, n, dcfg.token_dim), jnp.float32),
           "positions": s((b, n, 3), jnp.int32), "segment_ids": s((b, n), jnp.int32),
           "text_ids": s((b, 1, l), jnp.int32), "text_mask": s((b, 1, l), jnp.bool_)}
  state = jax.eval_shape(lambda: task.init_state(jax.random.key(0)))
  xla = flops.xla_step_flops(task.make_train_step(), state, batch, jax.random.key(0))
  analytic = float(dit_task.train_flops(dcfg, tcfg, np.ones((b, n), np.int32),
                                        np.ones((b, 1, l), bool)))
  assert _rel(analytic, xla["total"]) < 0.02, (analytic, xla)  # measured: exact
  assert _rel(analytic, xla["cost_analysis"]) < 0.10, (analytic, xla)  # measured: -4%
  assert xla["cost_analysis"] > xla["total"]  # XLA's count adds the elementwise ops


def test_dit_flops_charge_real_tokens_only():
  dcfg = dit_lib.get_dit_config("tiny", patch=(1, 2, 2), latent_channels=8)
  tcfg = dit_task.text_lib.get_text_config("tiny")
  mask = np.zeros((2, 2, 8), bool)
  mask[:, :, :5] = True
  packed = np.array([[1] * 32 + [2] * 32], np.int32)  # two clips in one row
  apart = np.array([[1] * 32 + [0] * 32] * 2, np.int32)  # one per row, padded
  one = np.array([[1] * 64], np.int32)
  f = lambda seg, m: float(flops.dit_train_flops(dcfg, tcfg, seg, m))
  assert f(packed, mask[:1]) == pytest.approx(f(apart, mask[:, :1]))  # padding is free
  # Block-diagonal attention: two clips of 32 save 12 depth D (64^2 - 2 32^2) FLOPs
  # against one clip of 64 (no captions, so only self-attention differs).
  none = np.zeros((1, 2, 8), bool)
  saved = 12 * dcfg.depth * dcfg.width * (64 ** 2 - 2 * 32 ** 2)
  assert f(one, none) - f(packed, none) == pytest.approx(saved)
  # The traced (jax) count equals the host (numpy) one.
  assert float(flops.dit_train_flops(dcfg, tcfg, jnp.asarray(packed), jnp.asarray(
      mask[:1]))) == pytest.approx(f(packed, mask[:1]), rel=1e-6)


@pytest.mark.parametrize("adaln,layout", [(a, {}) for a in dit_lib.ADALN_KINDS] + [
    ("single", dict(qk_norm_scope="all_heads", final_adaln="table", mlp_dim=200,
                    pooled_text=False))])  # the last: Wan2.1's layout
def test_dit_param_count_matches_init(adaln, layout):
  dcfg = dit_lib.get_dit_config("tiny", width=96, depth=3, num_heads=3, patch=(1, 2, 2),
                                latent_channels=8, adaln=adaln, **layout)
  inputs = dit_lib.dummy_inputs(dcfg, text_dim=64)
  params = jax.eval_shape(lambda: dit_lib.DiT(dcfg).init(
      jax.random.key(0), **{k: jnp.zeros(v.shape, v.dtype) for k, v in inputs.items()}))
  sizes = {jax.tree_util.keystr(p): int(np.prod(v.shape))
           for p, v in jax.tree_util.tree_leaves_with_path(params)}
  counts = flops.dit_param_count(dcfg, text_dim=64)
  assert counts["total"] == sum(sizes.values())
  assert counts["blocks"] == sum(v for k, v in sizes.items() if "blocks" in k)


def _vae_xla(arg, shape, **model):
  cfg = vae_config.get_config(arg)
  with cfg.unlocked():
    cfg.model.update(model)
  task = vae_task.VAETask(cfg)
  state = jax.eval_shape(lambda: task.init_state(jax.random.key(0)))
  xla = flops.xla_step_flops(task.make_train_step(), state,
                             {"video": jax.ShapeDtypeStruct(shape, jnp.float32)},
                             jax.random.key(0))
  return xla, flops.vae_train_flops(task.vae_config, shape, task.disc_config)


def test_vae_train_flops_match_xla():
  """The CPU VAE (tiny: patch stem, (2+1)D convs, shortcuts), a 9x64x64 clip."""
  xla, analytic = _vae_xla("variant=tiny", (1, 9, 64, 64, 3))
  assert _rel(analytic, xla["total"]) < 0.02, (analytic, xla)  # measured: exact
  assert _rel(analytic, xla["cost_analysis"]) < 0.10, (analytic, xla)  # measured: +4%


def test_vae_train_flops_with_a_fixed_dct_encoder_match_xla():
  """encoder=dct (the demo's dct10): the encoder is one matmul, forward only."""
  xla, analytic = _vae_xla("variant=tiny,c=12,encoder=dct", (1, 9, 64, 64, 3))
  learned = flops.vae_train_flops(
      vae_task.VAETask(vae_config.get_config("variant=tiny,c=12")).vae_config, (1, 9, 64, 64, 3))
  assert analytic < 0.8 * learned, (analytic, learned)  # no encoder network charged
  assert _rel(analytic, xla["total"]) < 0.02, (analytic, xla)


@pytest.mark.slow
def test_vae_train_flops_with_3d_convs_and_gan_match_xla():
  """3D convs, temporal down/upsampling, attention, and the GAN (~1 min of compile).

  XLA runs the input gradient of a causal 3D conv over the T + kt - 1 padded frames and
  counts the transposed (strided) convs' taps approximately; the analytic count keeps the
  backward at 2x the forward, so the two differ by a few percent here.
  """
  xla, analytic = _vae_xla("variant=S,gan=0.1", (1, 17, 32, 32, 3), base_channels=16,
                           norm_groups=8, spatial_factor=4, latent_channels=4)
  assert _rel(analytic, xla["total"]) < 0.10, (analytic, xla)


def test_hlo_flops_reads_dots_and_convs():
  f = lambda a, b, x, k: (a @ b, jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  s = jax.ShapeDtypeStruct
  got = flops.xla_step_flops(f, s((8, 16), jnp.float32), s((16, 4), jnp.float32),
                             s((2, 6, 6, 3), jnp.float32), s((3, 3, 3, 5), jnp.float32))
  assert got["dot"] == 2 * 8 * 16 * 4
  assert got["conv"] == 2 * (2 * 6 * 6 * 5) * (3 * 3 * 3)


# ----------------------------------------------------------------------------- ladder
@pytest.mark.parametrize("base", ["tiny_cpu", "gpu", "gpu_basic", "gpu_demo"])
def test_ladder_follows_the_rule(base):
  b = scaling.BASES[base]
  computes = [1, 4, 16, 64, 256]
  shapes = [scaling.ladder_shape(b, c) for c in computes]
  steps = [scaling.ladder_steps(b, c) for c in computes]
  n0 = scaling.block_params(b["width"], b["depth"], b["head_dim"])
  for c, shape, st in zip(computes, shapes, steps):
    assert shape["width"] % b["head_dim"] == 0
    assert shape["width"] == shape["num_heads"] * b["head_dim"]
    assert _rel(shape["params"], n0 * c ** 0.57) < 0.10, (c, shape)  # rounding only
    assert st == round(b["steps"] * c ** 0.43)
    assert 0.5 <= shape["width"] / shape["depth"] / (b["width"] / b["depth"]) <= 2
    assert _rel(shape["params"] * st / (n0 * b["steps"]), c) < 0.12  # compute ~ N D
  slope = np.polyfit(np.log(computes), np.log([s["params"] for s in shapes]), 1)[0]
  assert slope == pytest.approx(0.57, abs=0.02)
  assert [s["params"] for s in shapes] == sorted(s["params"] for s in shapes)


def test_ladder_config_is_a_locked_dit_config():
  cfg = scaling.get_config("compute=4,base=tiny_cpu,vae_workdir=runs/v,data_dir=/d")
  shape = scaling.ladder_shape(scaling.BASES["tiny_cpu"], 4)
  assert cfg.task == "dit" and cfg.scaling.compute == 4
  assert (cfg.model.overrides.width, cfg.model.overrides.depth) == (shape["width"],
                                                                    shape["depth"])
  assert cfg.train.steps == scaling.ladder_steps(scaling.BASES["tiny_cpu"], 4)
  assert cfg.vae.workdir == "runs/v" and cfg.data.data_dir == "/d"
  assert cfg.train.eval_every == 0 and 0.9 < cfg.ema < 1
  dcfg = dit_lib.get_dit_config(cfg.model.variant, patch=tuple(cfg.model.patch),
                                latent_channels=32, **cfg.model.overrides.to_dict())
  # The demo's recipe: configs/dit.py's x0-prediction survives the ladder's shape overrides.
  assert (dcfg.prediction, dcfg.pos_embed) == (
      "x0", scaling.BASES["tiny_cpu"].get("pos_embed", "none"))
  with pytest.raises(AttributeError):
    cfg.train.stepz = 1
  with pytest.raises(AttributeError):
    cfg.new_section = {}
  assert cfg.flow.sample_shift == 0.0  # the training rule's shift, unless the base sets one
  demo = scaling.get_config("compute=4,base=gpu_demo")
  assert demo.flow.sample_shift == 8.0 and demo.packing.seq_len == 320
  assert cfg.optim.name == "adamw"  # every rung's optimizer, `optimizer` to change it
  assert scaling.get_config("compute=64,base=gpu_demo,optimizer=muon").optim.name == "muon"
  one = scaling.get_config("base=tiny_cpu,data_dir=/d")
  assert one.eval.to_dict() == cfg.eval.to_dict()  # the same fixed evaluation
  assert one.data.to_dict() == cfg.data.to_dict()  # the same data
  for bad, match in (("compute=0", "compute=0.0"), ("base=huge", "base='huge'"),
                     ("params_exp=2", "params_exp=2.0"), ("widht=3", "Unknown config"),
                     ("optimizer=sgd", "optimizer='sgd'; known: adamw, muon")):
    with pytest.raises(ValueError, match=match):
      scaling.get_config(bad)


# ----------------------------------------------------------------------------- launcher
def _flags(words: list[str]) -> dict[str, str]:
  """--name value pairs of a command line; a lone absl boolean (--nomp4) maps to ''."""
  out, i = {}, 0
  while i < len(words) and words[i].startswith("--"):
    lone = i + 1 == len(words) or words[i + 1].startswith("--")
    out[words[i]] = "" if lone else words[i + 1]
    i += 1 if lone else 2
  return out


def _launcher():
  return scripts.load("sweep", "sweep_launcher")


def test_sweep_dry_run_prints_train_then_evaluate_per_rung(capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  sweep = _launcher()
  assert sweep.main(["configs/scaling.py:base=tiny_cpu,vae_workdir=runs/vae", "--dry_run",
                     "--workdir_root", "runs/sc"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  evaluation = ("--split test --n 100 --seed 0 --frames 17 --height 64 --width 64 "
                "--steps 16 --guidance 4 --batch 20 --task_clips 0 --nomp4")
  assert lines == [f"python -m sora_jax.main --config configs/scaling.py:compute={c},"
                   f"base=tiny_cpu,vae_workdir=runs/vae --workdir runs/sc/compute={c} && "
                   f"python -m sora_jax.evaluate --workdir runs/sc/compute={c} {evaluation} "
                   f"--out_dir runs/sc/compute={c}/eval "
                   f"--adherence_json runs/sc/compute={c}/adherence.json"
                   for c in (1, 4, 16)]
  # A run's config argument is one get_config accepts, and it names the rung.
  arg = shlex.split(lines[1])[4].partition(":")[2]
  assert scaling.get_config(arg).scaling.compute == 4
  # --precompute_latents trains every rung on the latents.
  assert sweep.main(["configs/scaling.py:base=tiny_cpu,vae_workdir=runs/vae", "--dry_run",
                     "--precompute_latents", "data/lat"]) == 0
  words = shlex.split(capsys.readouterr().out.splitlines()[0])
  assert words[4] == "configs/scaling.py:compute=1,base=tiny_cpu,vae_workdir=runs/vae,latents=data/lat"
  with pytest.raises(SystemExit):
    sweep.parse_args(["configs/scaling.py", "--target", "slurm", "--precompute_latents", "d"])
  runs = sweep.expand("configs/scaling.py:base=gpu,computes=1+2.5", "r")
  assert [r["name"] for r in runs] == ["compute=1", "compute=2.5"]
  with pytest.raises(SystemExit):
    sweep.parse_args(["--help"])
  assert "--target" in capsys.readouterr().out


def _script_args(sweep, target, out_dir, *extra):
  return sweep.parse_args(["configs/scaling.py:base=gpu", "--target", target, "--out_dir",
                           str(out_dir), *extra])


def test_submission_scripts(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  sweep = _launcher()
  runs = sweep.expand("configs/scaling.py:base=gpu", "gs://b/sc")
  assert len(runs) == 4
  # TPU pod: gcloud ssh to all workers; the remote command survives the quoting.
  args = _script_args(sweep, "tpu_pod", tmp_path / "tpu", "--tpu_name", "pod", "--zone",
                      "us-east5-a", "--workdir_root", "gs://b/sc", "--repo_url",
                      "https://example.com/sora_jax.git", "--commit", "a" * 40)
  (path,) = sweep.write_scripts(runs, args)
  text = open(path).read()
  lines = [l for l in text.splitlines() if l.startswith("gcloud")]
  assert len(lines) == 9  # the set-up, then per run: train on every worker, evaluate on 0
  assert lines[0].endswith('--worker=all --command "$SETUP"')
  lines = lines[1:]
  words = shlex.split(lines[2])
  assert words[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone"]
  assert "--worker=all" in words
  remote = shlex.split(words[words.index("--command") + 1])
  assert remote[:3] == ["cd", "~/sora_jax", "&&"]
  assert remote[-4:] == ["--config", "configs/scaling.py:compute=4,base=gpu", "--workdir",
                         "gs://b/sc/compute=4"]
  assert remote[3:7] == [".venv/bin/python", "-m", "sora_jax.main", "--distributed=on"]
  words = shlex.split(lines[3])
  assert "--worker=0" in words
  remote = shlex.split(words[words.index("--command") + 1])
  assert "TPU_PROCESS_BOUNDS=1,1,1" in remote and "TPU_VISIBLE_CHIPS=0" in remote
  i = remote.index("sora_jax.evaluate")
  opts = _flags(remote[i + 1:])
  assert opts["--workdir"] == "gs://b/sc/compute=4" and opts["--n"] == "500"
  assert opts["--adherence_json"] == "gs://b/sc/compute=4/adherence.json"
  # SLURM: one sbatch script per run, one task per GPU, srun, a coordinator address.
  args = _script_args(sweep, "slurm", tmp_path / "slurm", "--nodes", "4", "--gpus_per_node",
                      "8", "--workdir_root", "/shared/sc")
  paths = sweep.write_scripts(sweep.expand("configs/scaling.py:base=gpu", "/shared/sc"), args)
  assert len(paths) == 5 and paths[-1].endswith("submit.sh")
  batch = open(paths[1]).read()
  for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks=32", "#SBATCH --ntasks-per-node=8",
               "#SBATCH --gpus-per-node=8", "export JAX_COORDINATOR_ADDRESS=",
               "srun --nodes=4 --ntasks=32 --ntasks-per-node=8 --gpu-bind=none "
               "python -m sora_jax.main --distributed=on",
               "--workdir /shared/sc/compute=4",
               "\npython -m sora_jax.evaluate --workdir /shared/sc/compute=4 --split test",
               "--adherence_json /shared/sc/compute=4/adherence.json"):
    assert line in batch, line
  assert batch.index("export JAX_COORDINATOR_ADDRESS") < batch.index("srun")
  assert batch.index("srun") < batch.index("sora_jax.evaluate")  # after training
  submit = open(paths[-1]).read()
  assert submit.count("sbatch ") == 4 and "mkdir -p /shared/sc/compute=16" in submit
  # XPK: one workload per run, DNS-safe names.
  args = _script_args(sweep, "xpk", tmp_path / "xpk", "--cluster", "gke", "--tpu_type",
                      "v5p-128", "--docker_image", "gcr.io/p/img", "--workdir_root", "gs://b/sc")
  (path,) = sweep.write_scripts(runs, args)
  xpk = [shlex.split(l) for l in open(path).read().splitlines() if l.startswith("xpk")]
  assert len(xpk) == 4 and xpk[2][:3] == ["xpk", "workload", "create"]
  opts = dict(zip(xpk[2][3::2], xpk[2][4::2]))
  assert opts["--workload"] == "sora-compute-16" and opts["--tpu-type"] == "v5p-128"
  train, _, evaluate = opts["--command"].partition(" && ")
  assert train.endswith("--workdir gs://b/sc/compute=16")
  assert evaluate.startswith('if [ "${TPU_WORKER_ID:-0}" = 0 ]')
  assert "sora_jax.evaluate --workdir gs://b/sc/compute=16" in evaluate
  assert subprocess.run(["bash", "-n", "-c", opts["--command"]]).returncode == 0
  for p in paths + [path]:
    assert subprocess.run(["bash", "-n", p], check=False).returncode == 0, p
  with pytest.raises(ValueError, match="relative"):
    sweep.write_scripts(runs, _script_args(sweep, "slurm", tmp_path / "x"))
  with pytest.raises(ValueError, match="--tpu_name and --zone"):
    sweep.write_scripts(runs, _script_args(sweep, "tpu_pod", tmp_path / "x",
                                           "--workdir_root", "gs://b", "--repo_url", "u",
                                           "--commit", "a" * 40))


# ----------------------------------------------------------------------------- fits
def test_fit_recovers_a_saturating_power_law():
  c = 1e12 * 4.0 ** np.arange(6)
  a, b, irreducible = 0.5 * 1e12 ** 0.25, 0.25, 0.3
  clean = a * c ** -b + irreducible
  noisy = clean * (1 + 0.003 * np.random.default_rng(0).standard_normal(len(c)))
  f = fit.fit_saturating_power_law(c, noisy)
  assert f["converged"] and f["dof"] == 3
  assert abs(f["b"] - b) < 3 * f["b_err"] and abs(f["b"] - b) < 0.02
  assert abs(f["c"] - irreducible) < 3 * f["c_err"] and abs(f["c"] - irreducible) < 0.02
  assert _rel(f["a"], a) < 0.3
  exact = fit.fit_saturating_power_law(c[:3], clean[:3])  # 3 points: exact, no errors
  assert exact["b"] == pytest.approx(b, rel=1e-4) and exact["b_err"] is None
  plain = fit.fit_power_law(c, 2.0 * c ** -0.1)
  assert plain["b"] == pytest.approx(0.1) and plain["a"] == pytest.approx(2.0)
  p = 1 / (1 + np.exp(-(-2.0 + 0.7 * np.log10(c / 1e12))))
  logistic = fit.fit_logistic_log(c / 1e12, p, num_prompts=200)
  assert logistic["beta"] == pytest.approx(0.7, rel=1e-3) and logistic["beta_err"] > 0
  with pytest.raises(ValueError, match="at least 3"):
    fit.fit_saturating_power_law(c[:2], clean[:2])
  with pytest.raises(ValueError, match="compute must be finite and > 0"):
    fit.fit_power_law([0, 1], [1, 2])


# ----------------------------------------------------------------------------- report
def _fake_run(root, compute, loss, adherence=None, complete=True, steps=40):
  wd = root / f"compute={compute}"
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps({"task": "dit", "scaling": {
      "compute": compute, "params": 1000 * compute}}))
  with open(wd / "metrics.jsonl", "w") as f:
    for step in range(10, steps + 1, 10):
      f.write(json.dumps({"step": step, "train/loss": 1.0, "train/flops": 1e9 * compute,
                          "train/sec_per_step": 0.5}) + "\n")
      f.write(json.dumps({"step": step, "eval/val_loss": 1.0}) + "\n")
  if complete:
    (wd / "final_metrics.json").write_text(json.dumps({"step": steps, "final/val_loss": loss,
                                                       "final/tokens_per_s": 100.0}))
  if adherence is not None:
    (wd / "adherence.json").write_text(json.dumps({"rates": {"all": adherence}}))


def test_report_on_synthetic_runs(tmp_path, capsys):
  root = tmp_path / "runs"
  root.mkdir()
  for c, adh in ((1, 0.1), (4, 0.2), (16, 0.35), (64, 0.5)):
    flops_total = 40 * 1e9 * c
    _fake_run(root, c, 2e2 * flops_total ** -0.2 + 0.3, adh)
  _fake_run(root, 256, None, complete=False)
  out = tmp_path / "out" / "scaling.json"
  report.main(["--root", str(root), "--out", str(out)])
  result = json.loads(out.read_text())
  assert json.loads(capsys.readouterr().out)["out"] == str(out)
  runs = {r["name"]: r for r in result["runs"]}
  assert len(runs) == 5 and not runs["compute=256"]["complete"]
  r = runs["compute=16"]
  assert r["compute"] == 16 and r["flops"] == pytest.approx(40 * 16e9)
  assert r["wall_s"] == pytest.approx(20.0) and r["adherence_all"] == 0.35
  assert r["val_loss"] > 0 and r["steps"] == 40
  f = result["fit"]
  assert f["x"] == "flops" and f["num_runs"] == 4
  assert f["loss"]["b"] == pytest.approx(0.2, rel=1e-3)
  assert f["adherence"]["linear_log10"]["slope"] > 0
  image = iio.imread(result["plots"][0])
  assert image.ndim == 3 and image.shape[0] > 100


def test_contact_sheet_layout():
  rng = np.random.default_rng(0)
  videos = {f"{c}x": [rng.integers(0, 255, (9, 16, 20, 3), dtype=np.uint8) for _ in range(2)]
            for c in (1, 4, 16)}
  sheet = media.contact_sheet(videos, frames=4, gap=4, labels=False)
  cell_w = 4 * 20 + 3 * 2
  assert sheet.shape == (4 + 2 * (16 + 4), 4 + 3 * (cell_w + 4), 3)
  assert sheet.dtype == np.uint8
  # Row 1 (second prompt), column 2 (16x), frame 2 of 4 = video frame round(8 * 2 / 3) = 5.
  y0, x0 = 4 + 1 * 20, 4 + 2 * (cell_w + 4) + 2 * (20 + 2)
  np.testing.assert_array_equal(sheet[y0:y0 + 16, x0:x0 + 20], videos["16x"][1][5])
  labelled = media.contact_sheet(videos, row_labels=["a red cube", "two balls"])
  assert labelled.shape[0] > sheet.shape[0] and labelled.shape[1] > sheet.shape[1]
  with pytest.raises(ValueError, match="same prompts"):
    media.contact_sheet({"1x": videos["1x"], "4x": videos["4x"][:1]})
  with pytest.raises(ValueError, match="uint8"):
    media.contact_sheet({"1x": [v.astype(np.float32) for v in videos["1x"]]})
  assert math.isclose(len(media._frame_indices(3, 4)), 3)


# ----------------------------------------------------------------------------- evaluation
def test_every_rung_gets_the_same_evaluation(monkeypatch):
  monkeypatch.chdir(ROOT)
  runs = _launcher().expand("configs/scaling.py:base=tiny_cpu,vae_workdir=v", "r")
  assert len(runs) == 3 and all(r["evaluate"] == runs[0]["evaluate"] for r in runs)
  ev = scaling.evaluation("base=tiny_cpu,vae_workdir=v")
  assert ev == runs[0]["evaluate"] and ev["task_clips"] == 0 and ev["split"] == "test"
  cfg = scaling.get_config("base=tiny_cpu")
  assert cfg.data.name.level == "basic"
  sizes = [list(s) for s in cfg.data.name.sizes]
  assert [ev["frames"], ev["height"], ev["width"]] in sizes  # evaluated at a trained size
  local = scaling.evaluation("runlocal=True")
  assert local["n"] == 2 and [local["frames"], local["height"], local["width"]] == [5, 32, 32]
  with pytest.raises(ValueError, match="base='x'"):
    scaling.evaluation("base=x")


def _eval_result(split="test", all_rate=0.25, n=8):
  return {"workdir": "w", "step": 40, "level": "basic", "size": [5, 32, 32], "seed": 0,
          "sampling": {"steps": 2, "method": "dpmpp_2m", "guidance": 4.0},
          "splits": {split: {"color": 0.5, "all": all_rate, "n": n},
                     "compositional": {"all": 0.0, "n": n}}}


def test_adherence_json_is_what_the_report_reads(tmp_path):
  root = tmp_path / "runs"
  root.mkdir()
  _fake_run(root, 4, 1.0)
  path = root / "compute=4" / "adherence.json"
  record = report.write_adherence(str(path), _eval_result(), "test")
  assert json.loads(path.read_text()) == record
  assert record["all"] == 0.25 and record["n"] == 8 and record["split"] == "test"
  assert record["rates"] == {"color": 0.5, "all": 0.25, "n": 8}
  assert record["size"] == [5, 32, 32] and record["sampling"]["steps"] == 2
  assert report.collect_run(str(root / "compute=4"))["adherence_all"] == 0.25
  with pytest.raises(ValueError, match="split 'validation' is not in the evaluation"):
    report.adherence_record(_eval_result(), "validation")


_FAKE_EVALUATE = """
import json, sys
from absl import app
from sora_jax import evaluate
from sora_jax.inference import adherence, run as run_lib, sampler as sampler_lib
class Sampler:
  def __init__(self, run, options):
    self.options = options
  def latent_shape(self, *size):
    return (2, 8, 8, 8)
run_lib.read_dit_run = lambda workdir, step=None: (40, {}, {})
run_lib.Run.load = lambda workdir, step=None: None
run_lib.read_dit_configs = lambda workdir, step=None: (None, None)
sampler_lib.check_window = lambda *args: None
sampler_lib.Sampler = Sampler
adherence.run_level = lambda workdir: "basic"
adherence.evaluate = lambda sampler, out_dir, splits, n, level, *a, **k: json.loads(sys.argv[1])
evaluate.define_flags()
app.run(evaluate.main, argv=["evaluate"] + sys.argv[2:])
"""


def test_evaluate_cli_writes_adherence_json(tmp_path):
  """`--adherence_json` writes the first split's record (the model is faked: seconds)."""
  out = tmp_path / "w" / "adherence.json"
  subprocess.run([sys.executable, "-c", _FAKE_EVALUATE, json.dumps(_eval_result()),
                  "--workdir", str(tmp_path), "--split", "test,compositional", "--n", "8",
                  "--adherence_json", str(out)], check=True, cwd=ROOT, timeout=300,
                 capture_output=True)
  assert json.loads(out.read_text()) == report.adherence_record(_eval_result(), "test")


def test_local_sweep_trains_then_evaluates_and_skips_what_is_done(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  sweep = _launcher()
  calls = []

  def fake_call(cmd, stdout, stderr):  # writes what training / evaluation would
    del stdout, stderr
    calls.append(cmd[2])
    opts = _flags(cmd[3:])
    wd = opts["--workdir"]
    if cmd[2] == "sora_jax.main":
      cfg = scaling.get_config(opts["--config"].partition(":")[2])
      with open(os.path.join(wd, "config.json"), "w") as f:
        f.write(cfg.to_json_best_effort(indent=2))
      with open(os.path.join(wd, "final_metrics.json"), "w") as f:
        json.dump({"step": cfg.train.steps, "final/val_loss": 1.0}, f)
    else:
      result = _eval_result(opts["--split"], n=int(opts["--n"]))
      result.update(size=[int(opts[k]) for k in ("--frames", "--height", "--width")],
                    seed=int(opts["--seed"]), sampling={"steps": int(opts["--steps"]),
                                                        "guidance": float(opts["--guidance"])})
      report.write_adherence(opts["--adherence_json"], result, opts["--split"])
    return 0

  monkeypatch.setattr(sweep.subprocess, "call", fake_call)
  runs = sweep.expand("configs/scaling.py:runlocal=True", str(tmp_path))
  assert sweep.run_local(runs) == 0
  assert calls == ["sora_jax.main", "sora_jax.evaluate"] * 2
  assert (tmp_path / "compute=4" / "adherence.json").exists()
  calls.clear()
  assert sweep.run_local(runs) == 0 and calls == []  # trained and evaluated: nothing to do
  sweep.run_local([dict(r, evaluate=dict(r["evaluate"], n=3)) for r in runs])
  assert calls == ["sora_jax.evaluate"] * 2  # other evaluation settings: evaluate again
  calls.clear()
  sweep.run_local([dict(r, config=r["config"] + ",seed=1") for r in runs])
  assert calls == ["sora_jax.main", "sora_jax.evaluate"] * 2  # another config: train again
  calls.clear()
  monkeypatch.setattr(sweep.subprocess, "call", lambda cmd, **k: calls.append(cmd[2]) or 1)
  assert sweep.run_local([dict(r, config=r["config"] + ",seed=2") for r in runs]) == 2
  assert calls == ["sora_jax.main"] * 2  # a failed training is not evaluated


def test_report_contact_sheet_samples_the_same_prompts_from_every_rung(tmp_path, monkeypatch):
  root = tmp_path / "runs"
  root.mkdir()
  for c in (1, 4):
    _fake_run(root, c, 1.0 / c)
  _fake_run(root, 16, None, complete=False)
  result = _eval_result(n=2)
  result.update(seed=7, sampling={"steps": 2, "method": "euler", "guidance": 3.0})
  report.write_adherence(str(root / "compute=1" / "adherence.json"), result, "test")
  (root / "vae").mkdir()  # the ladder's VAE beside the rungs: not a run
  (root / "vae" / "config.json").write_text(json.dumps({"task": "vae"}))
  (root / "vae" / "final_metrics.json").write_text(json.dumps({"step": 4}))
  sampled = []

  class FakeSampler:
    def __init__(self, workdir, options):
      self.workdir, self.options = workdir, options

  def t2v_batch(sampler, prompts, frames, height, width, seeds):
    sampled.append((sampler.workdir, sampler.options, list(prompts), (frames, height, width),
                    list(seeds)))
    shade = 50 * len(sampled)
    return [np.full((frames, height, width, 3), shade, np.uint8) for _ in prompts]

  monkeypatch.setattr(run_lib.Run, "load", lambda workdir: workdir)
  monkeypatch.setattr(run_lib, "read_dit_run", lambda workdir: (40, {}, {}))
  monkeypatch.setattr(sampler_lib, "Sampler", FakeSampler)
  monkeypatch.setattr(tasks, "t2v_batch", t2v_batch)
  out = tmp_path / "r.json"
  report.main(["--root", str(root), "--out", str(out), "--contact_sheet", "3"])
  got = json.loads(out.read_text())
  assert [r["name"] for r in got["runs"]] == ["compute=1", "compute=4", "compute=16"]
  sheet = got["contact_sheet"]
  assert sheet["columns"] == ["1x", "4x"] and list(sheet["skipped"]) == ["compute=16"]
  prompts = [r["prompt"] for r in adherence.split_prompts("test", 3, "basic", 5, 32, 32)]
  assert sheet["prompts"] == prompts and sheet["seeds"] == [7, 8, 9]
  assert len(sampled) == 2 and sampled[0][2:] == sampled[1][2:] == (
      prompts, (5, 32, 32), [7, 8, 9])  # same prompts, size and seeds on every rung
  assert sampled[0][1] == sampler_lib.SamplingOptions(steps=2, method="euler", guidance=3.0)
  image = iio.imread(sheet["path"])
  assert image.shape[0] > 3 * 32 and image.shape[1] > 2 * 4 * 32
  with pytest.raises(SystemExit):
    report.main(["--root", str(root), "--out", str(out), "--contact_sheet", "-1"])


def test_report_with_zero_adherence_everywhere_has_no_logistic_fit(tmp_path):
  root = tmp_path / "runs"
  root.mkdir()
  for c in (1, 4, 16):
    _fake_run(root, c, 2.0 - 0.1 * math.log(c), adherence=0.0)
  result = report.report(str(root), str(tmp_path / "r.json"))
  adherence = result["fit"]["adherence"]
  assert adherence["logistic_log10"] is None and adherence["linear_log10"]["slope"] == 0
  assert any("not identifiable" in n for n in result["fit"]["notes"])
  assert os.path.exists(result["plots"][0])
