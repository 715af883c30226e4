"""The DiT task in the one loop: runlocal training, exact resume with EMA, overfit, bad input.

All on CPU with a randomly initialised tiny VAE encoding Shapes World clips on the fly
(no precompute step); the Shapes World set is built once per module.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from configs import dit as dit_config
from data_pipelines import latents as latents_lib
from data_pipelines import packing
from sora_jax import checkpoints
from sora_jax.data import encode_latents
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.train import dit_task
from sora_jax.train import loop
from sora_jax.train import optim


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("dit_data"))


def _config(data_dir, extra="", steps=4):
  cfg = dit_config.get_config(f"runlocal=True,data_dir={data_dir}{extra}")
  cfg.train.steps = steps
  cfg.train.progress = False
  return cfg


def _state(workdir, step):
  return ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))


def test_runlocal_train_and_resume_equals_uninterrupted(data_dir, tmp_path):
  cfg = _config(data_dir)
  split_dir, straight_dir = str(tmp_path / "split"), str(tmp_path / "straight")
  assert loop.train_and_evaluate(cfg, split_dir, stop_at=2) == {"stopped_at": 2}
  final = loop.train_and_evaluate(cfg, split_dir)  # resumes at step 2
  cfg.train.peak_flops = 1e9  # MFU against a configured peak (a CPU has no table entry)
  straight = loop.train_and_evaluate(cfg, straight_dir)
  a, b = _state(split_dir, 4), _state(straight_dir, 4)
  # Params AND the EMA equal only if the packed data iterator resumed exactly.
  for key in ("params", "ema_params"):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6),
                 a[key], b[key])
  diffs = jax.tree.leaves(jax.tree.map(lambda p, e: float(np.abs(p - e).max()),
                                       a["params"], a["ema_params"]))
  assert max(diffs) > 1e-6  # the EMA lags the params

  rows = [json.loads(l) for l in open(os.path.join(split_dir, "metrics.jsonl"))]
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  for r in train:
    for key in ("loss", "grad_norm", "tokens", "clips", "flops", "captions_full"):
      assert np.isfinite(r[f"train/{key}"]), (key, r)
    assert 0 < r["train/tokens"] <= 8 * 64
  for key in ("val_loss", "val_loss_raw", "val_loss_t0.1", "val_loss_t0.9"):
    assert np.isfinite(final[f"final/{key}"]), key
  # Throughput is timed by the loop between steps, leaving out a (re)start's first and the
  # intervals that hold an evaluation or a checkpoint.
  assert straight["final/tokens_per_s"] > 0 and straight["final/flops_per_s"] > 0
  assert straight["final/mfu"] == pytest.approx(straight["final/flops_per_s"] / 1e9)
  assert "final/mfu" not in final  # no peak configured, none known for a CPU
  assert os.path.exists(os.path.join(split_dir, "tokenizer.model"))
  ckpt = checkpoints.Checkpointer(split_dir)
  extra = ckpt.restore_json(4, "extra")
  assert extra["tokenizer"] == "tokenizer.model" and extra["vae"].startswith("random:")
  assert len(extra["latent_mean"]) == len(extra["latent_std"]) == 8
  assert ckpt.restore_json(4, "config")["task"] == "dit"
  ckpt.close()


def _overfit_batch(cfg, num_clips=8):
  """`num_clips` fixed clips packed into rows of `cfg.packing.seq_len` tokens."""
  task = dit_task.DiTTask(cfg)
  records = task.latent_records("train")
  tok = task.tokenizer
  examples = []
  for i in range(num_clips):
    rec = records[i]
    ids, mask, _ = tok.encode([rec["caption"]], cfg.packing.text_len)
    examples.append(packing.clip_example(rec["latents"], ids[0], mask[0],
                                         tuple(cfg.model.patch), i))
  rows = list(packing.pack_examples(examples, cfg.packing.seq_len, cfg.packing.max_clips))
  return {k: np.stack([r[k] for r in rows]) for k in dit_task.DEVICE_KEYS}


def test_the_train_steps_ema_is_the_debiased_average_of_its_params(data_dir):
  """The EMA the train step keeps (decay 0.9, debiased) is, after n steps, exactly
  sum_i (1 - d) d^(n - i) p_i / (1 - d^n) of the params p_1..p_n it produced (float32:
  rtol 1e-5); the first step's EMA is that step's params."""
  cfg = _config(data_dir, ",cfg_drop=0,lr=3e-3,warmup=1,ema=0.9", steps=150)
  batch = _overfit_batch(cfg)
  task = dit_task.DiTTask(cfg)
  state = task.init_state(jax.random.key(0))
  step = jax.jit(task.make_train_step())
  history = []
  for i in range(4):
    state, _ = step(state, batch, jax.random.key(i))
    history.append(jax.device_get(state.params))
    n, d = i + 1, 0.9
    weights = [(1 - d) * d ** (n - 1 - j) / (1 - d ** n) for j in range(n)]
    expected = jax.tree.map(lambda *ps: sum(w * p for w, p in zip(weights, ps)), *history)
    jax.tree.map(lambda e, x: np.testing.assert_allclose(e, x, rtol=1e-5, atol=1e-6),
                 jax.device_get(state.ema_params), expected)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                       history[0], history[-1]))
  assert max(moved) > 1e-3  # the params moved, so the average is not trivially equal


def test_condition_tokens_gives_the_drawn_frames_clean_at_t0():
  """i2v on a packed row: the first latent frame of the 2-frame clip is given (its clean
  tokens, t = 0); an image (1 frame) and padding never are; the rest is left as it was."""
  seg = np.array([[1] * 8 + [2] * 4 + [0] * 4], np.int32)
  positions = np.zeros((1, 16, 3), np.int32)
  positions[0, 4:8, 0] = 1  # clip 1: latent frames 0 and 1, 4 tokens each; clip 2: an image
  rng = np.random.default_rng(0)
  tokens, xt = (rng.normal(size=(1, 16, 5)).astype(np.float32) for _ in range(2))
  t = np.full((1, 16), 0.7, np.float32)
  batch = {"segment_ids": seg, "positions": positions, "tokens": tokens}
  given, t2, xt2 = dit_task.condition_tokens(jax.random.key(0), batch, (("i2v", 1.0),), t, xt)
  want = np.zeros((1, 16), bool)
  want[0, :4] = True
  np.testing.assert_array_equal(given, want)
  np.testing.assert_array_equal(t2, np.where(want, 0.0, t))
  np.testing.assert_array_equal(xt2, np.where(want[..., None], tokens, xt))
  # Plain text-to-video gives nothing.
  given, t2, xt2 = dit_task.condition_tokens(jax.random.key(0), batch, (("t2v", 1.0),), t, xt)
  assert not np.any(given) and np.array_equal(t2, t) and np.array_equal(xt2, xt)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_overfit_eight_clips(data_dir, optimizer):
  """With fixed noise and timesteps, 150 steps drive the loss below 25% of its start."""
  cfg = _config(data_dir, f",cfg_drop=0,lr=3e-3,warmup=1,optimizer={optimizer}", steps=150)
  batch = _overfit_batch(cfg)
  task = dit_task.DiTTask(cfg)
  state = task.init_state(jax.random.key(0))
  step = jax.jit(task.make_train_step())
  rng = jax.random.key(1)  # the same t and noise every step: a fixed regression target
  losses = []
  for _ in range(cfg.train.steps):
    state, metrics = step(state, batch, rng)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.25 * losses[0], losses[::10]


def test_adaln_single_state_shards_on_an_fsdp_tensor_mesh(data_dir):
  """adaLN-single's per-block tables get logical axes that the sharded init accepts."""
  cfg = _config(data_dir, ",adaln=single,rules=fsdp_tensor")
  task = dit_task.DiTTask(cfg)
  abstract = jax.eval_shape(lambda: task.init_state(jax.random.key(0)))
  mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
  table = task.state_shardings(mesh, abstract).params["dit"]["params"]["blocks"][
      "adaln_table"]
  assert table.spec == P(None, "tensor")  # [layers, 6D]: the 6D over tensor, like an MLP


def test_muon_state_shards_like_the_params(data_dir):
  """Muon's momentum (and its Adam half's moments) sit where their params sit."""
  cfg = _config(data_dir, ",optimizer=muon,rules=fsdp_tensor")
  task = dit_task.DiTTask(cfg)
  abstract = jax.eval_shape(lambda: task.init_state(jax.random.key(0)))
  mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
  shardings = task.state_shardings(mesh, abstract)
  params = {jax.tree_util.keystr(p): s.spec
            for p, s in jax.tree_util.tree_leaves_with_path(shardings.params)}
  checked = 0
  for path, s in jax.tree_util.tree_leaves_with_path(shardings.opt_state):
    key = jax.tree_util.keystr(path)
    name = key[key.find("['dit']"):] if "['dit']" in key else key[key.find("['text']"):]
    if name in params:
      assert s.spec == params[name], (key, s.spec, params[name])
      checked += params[name] != P()
  assert checked >= 10  # the sharded kernels' Muon momenta and Adam moments were found


def test_muon_orthogonalises_each_layer_and_leaves_the_head_to_adam():
  """A badly conditioned gradient of a scanned [layers, in, out] kernel (singular values 1 to
  20, the second layer's 100x the first's) becomes, per layer, an update with near-equal
  singular values (Muon, each layer on its own); the final linear layer gets Adam's
  first-step update, of the same size for every entry."""
  rng = np.random.default_rng(0)

  def conditioned(scale):
    u, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    v, _ = np.linalg.qr(rng.normal(size=(32, 16)))
    return scale * (u * np.linspace(1.0, 20.0, 16)) @ v.T

  kernel = np.stack([conditioned(1.0), conditioned(100.0)]).astype(np.float32)
  g = {"blocks": {"mlp": {"up": {"kernel": kernel}}},
       "final": {"linear": {"kernel": rng.normal(size=(16, 4)).astype(np.float32)}}}
  o = {"name": "muon", "lr": 1e-2, "warmup_steps": 0, "final_lr_frac": 1.0, "b1": 0.9,
       "b2": 0.99, "weight_decay": 0.0, "grad_clip": 1e9}
  tx = optim.make_optimizer(o, steps=10)
  params = jax.tree.map(np.zeros_like, g)
  updates = tx.update(g, tx.init(params), params)[0]
  s = np.linalg.svd(np.asarray(updates["blocks"]["mlp"]["up"]["kernel"]), compute_uv=False)
  assert np.all(s.max(-1) / s.min(-1) < 2.0), s  # the gradient's spread is 20
  head = np.abs(np.asarray(updates["final"]["linear"]["kernel"]))
  np.testing.assert_allclose(head, head.mean(), rtol=1e-3)


@pytest.mark.parametrize("extra, match", [
    (",patch=1x3x3", r"patch \(pt, ph, pw\)=\(1, 3, 3\) does not divide"),
    (",variant=huge", "config.model.variant='huge' is not a DiT variant"),
    (",vae_workdir=/nonexistent/vae", "has no checkpoints/ directory"),
    (",text_len=0", "text_len=0"),
    (",latents=/nonexistent/latents", "No latent records in"),
    (",optimizer=sgd", r"config.optim.name='sgd'; allowed: adamw, muon"),
])
def test_bad_input_fails_before_any_work(data_dir, tmp_path, extra, match):
  cfg = _config(data_dir, extra)
  with pytest.raises(ValueError, match=match):
    loop.train_and_evaluate(cfg, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")  # validate runs before the workdir exists


def test_precomputed_latents_match_on_the_fly_and_train(data_dir, tmp_path):
  """write_latents + LatentRecords give the on-the-fly latents (float16), and train."""
  cfg = _config(data_dir)
  root = tmp_path / "latents"
  for split in ("train", "validation"):
    otf = dit_task.DiTTask(cfg).latent_records(split)
    meta = encode_latents.write_latents(otf.source, otf.vae, str(root / split))
    assert meta["num_records"] == len(otf)
  recs = latents_lib.LatentRecords(str(root / "validation"))
  for i in range(3):
    np.testing.assert_allclose(recs[i]["latents"], otf[i]["latents"], rtol=1e-3, atol=1e-2)
    assert recs[i]["caption"] == otf[i]["caption"]
    assert tuple(recs.shapes[i]) == recs[i]["latents"].shape
  # Two data worker processes read, tokenize and pack the records (grain mp_prefetch).
  final = loop.train_and_evaluate(_config(data_dir, f",latents={root},workers=2", steps=2),
                                  str(tmp_path / "run"))
  assert np.isfinite(final["final/val_loss"])


def test_latents_in_shards_by_several_workers_resume_and_index_foreign_shards(data_dir,
                                                                              tmp_path):
  """A split cut into 3 shards by 2 workers reads back as the one-shard split, record for
  record; a missing shard is the only one written again; the index appears only when every
  shard is whole. Shards renamed as another tool might write them get an index from
  `index_shards` and read the same; a pre-shard split (one file, no "shards") still reads."""
  otf = dit_task.DiTTask(_config(data_dir)).latent_records("train")
  one, three = str(tmp_path / "one"), str(tmp_path / "three")
  encode_latents.write_latents(otf.source, otf.vae, one)
  assert encode_latents.write_latents(otf.source, otf.vae, three, num_shards=3,
                                      process_index=1, process_count=2) is None
  assert not os.path.exists(os.path.join(three, "metadata.json"))  # shards 0, 2 missing
  meta = encode_latents.write_latents(otf.source, otf.vae, three, num_shards=3,
                                      process_index=0, process_count=2)
  assert meta["shards"] == [f"latents-0000{s}-of-00003.array_record" for s in range(3)]

  def same(a, b):
    a, b = latents_lib.LatentRecords(a), latents_lib.LatentRecords(b)
    assert len(a) == len(b) == len(otf) and np.array_equal(a.shapes, b.shapes)
    for i in range(len(a)):
      ra, rb = a[i], b[i]
      assert ra["index"] == rb["index"] == i and ra["caption"] == rb["caption"]
      np.testing.assert_array_equal(ra["latents"], rb["latents"])

  same(one, three)
  first = os.path.join(three, "latents-00000-of-00003.array_record")
  stamp = os.stat(first).st_mtime_ns
  for name in ("latents-00001-of-00003.json", "metadata.json"):  # as if killed in shard 1
    os.remove(os.path.join(three, name))
  assert encode_latents.write_latents(otf.source, otf.vae, three, num_shards=3,
                                      process_index=1, process_count=2) is not None
  assert os.stat(first).st_mtime_ns == stamp  # shard 0 kept
  same(one, three)

  foreign = tmp_path / "foreign"
  foreign.mkdir()
  for s in range(3):
    os.link(os.path.join(three, f"latents-0000{s}-of-00003.array_record"),
            foreign / f"part-{s}.array_record")
  with pytest.raises(ValueError, match="needs"):
    latents_lib.index_shards(str(foreign), {"vae": "x@1"})
  done = subprocess.run([sys.executable, "-m", "data_pipelines.latents", "--index",
                         str(foreign), "--vae", meta["vae"], "--stats_from", one],
                        capture_output=True, text=True, check=True)
  assert json.loads(done.stdout)["num_records"] == len(otf)
  assert latents_lib.LatentRecords(str(foreign)).metadata["latent_std"] == meta["latent_std"]
  same(one, str(foreign))
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  os.link(os.path.join(one, "latents-00000-of-00001.array_record"),
          legacy / latents_lib.LEGACY_FILE)
  old = json.load(open(os.path.join(one, "metadata.json")))
  del old["shards"]
  (legacy / "metadata.json").write_text(json.dumps(old))
  same(one, str(legacy))


@pytest.mark.parametrize("decay", [0.9, 0.999])
def test_debiased_ema_is_the_weighted_average_of_the_steps_taken(decay):
  """The step-dependent decay (ema_debias) gives, after n updates, exactly
  sum_i (1 - d) d^(n - i) p_i / (1 - d^n) over the params p_1..p_n, whatever the initial
  EMA (the step's decays are float32: rtol 1e-6); the plain EMA keeps d^n of its initial
  value."""
  rng = np.random.default_rng(0)
  params = rng.normal(size=(6, 3))
  for debias in (True, False):
    ema = np.full(3, 100.0)  # an initial value that must vanish when debiased (float64 here:
    # only the decays come from the step's float32)
    for i, p in enumerate(params):
      d = float(dit_task.ema_decay_at(decay, jax.numpy.asarray(i), debias))
      ema = ema + (1 - d) * (p - ema)
    n = len(params)
    weights = (1 - decay) * decay ** np.arange(n - 1, -1, -1)
    if debias:
      expected = weights @ params / (1 - decay**n)
    else:
      expected = weights @ params + decay**n * 100.0
    np.testing.assert_allclose(ema, expected, rtol=1e-6)
  assert float(dit_task.ema_decay_at(decay, jax.numpy.asarray(0), True)) == 0.0
  assert np.isclose(float(dit_task.ema_decay_at(decay, jax.numpy.asarray(10**6), True)), decay)
