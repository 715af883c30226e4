"""The captioner and prompt upsampler: causal decoding, packing isolation, caption scores,
training in the one loop, recaptioning latent records and the DiT's caption choices.

All on CPU with tiny models; latents from a randomly initialised tiny VAE.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scripts
from configs import captioner as captioner_config
from configs import dit as dit_config
from data_pipelines import latents as latents_lib
from data_pipelines.shapes_world import captions
from data_pipelines.shapes_world import generator
from data_pipelines.shapes_world import world
from sora_jax.data import encode_latents
from sora_jax.data import recaption
from sora_jax.inference import captioning
from sora_jax.models import attention as attn_lib
from sora_jax.models import captioner as cap_lib
from sora_jax.train import captioner_task
from sora_jax.train import dit_task
from sora_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------ pure pieces
def test_causal_attention_sees_only_earlier_keys_within_its_segment():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 6, 2, 8)), jnp.float32) for _ in range(3))
  seg = jnp.asarray([[1, 1, 1, 2, 2, 2]])
  out = attn_lib.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True)
  v2 = v.at[:, 2].set(100.0).at[:, 5].set(-100.0)  # the last key of each segment
  out2 = attn_lib.attention(q, k, v2, q_segment_ids=seg, kv_segment_ids=seg, causal=True)
  np.testing.assert_array_equal(out[:, [0, 1, 3, 4]], out2[:, [0, 1, 3, 4]])
  assert not np.allclose(out[:, [2, 5]], out2[:, [2, 5]])
  # the first token of segment 2 sees itself only: its own value
  np.testing.assert_allclose(out[0, 3], v[0, 3], rtol=1e-6)
  with pytest.raises(ValueError, match="dense backends"):
    attn_lib.attention(q, k, v, backend="blocked", causal=True)


def _scene_caption(split, i, frames=17):
  return world.detailed_caption(generator.sample_scene(split, i, frames, 64, 64, "full"))


def test_caption_scores_flag_exactly_the_attribute_that_differs():
  truth = "A large red circle moves from left to right on a navy background. The camera is still."
  same = captions.compare(truth, truth)
  assert all(same.values()) and same["exact"]
  for wrong, attr in [(truth.replace("large", "small"), "size"),
                      (truth.replace("red", "blue"), "color"),
                      (truth.replace("circle", "square"), "shape"),
                      (truth.replace("left to right", "right to left"), "motion"),
                      (truth.replace("navy", "olive"), "background"),
                      (truth.replace("is still", "pans to the left"), "camera")]:
    got = captions.compare(wrong, truth)
    assert [k for k, v in got.items() if not v] == [attr, "all", "exact"], (wrong, got)
  bad = captions.compare("A red the the circle", truth)
  assert not bad["parsed"] and not bad["all"]
  assert not captions.compare("blah", truth)["parsed"]
  two = captions.compare(truth.replace(" on a", " and a small blue square moves from right "
                                       "to left on a"), truth)
  assert not two["count"] and two["color"] and not two["all"]
  image = _scene_caption("train", 5, frames=1)
  assert all(captions.compare(image, image).values())
  short = captions.against_short("A small red circle stays still in the top on a gray "
                                 "background.", "a red circle")
  assert short == {"color": True, "shape": True, "count": True, "all": True, "parsed": True}
  assert not captions.against_short("A small red square.", "a red circle")["shape"]
  agg = captions.aggregate([same, bad])
  assert agg["all"] == 0.5 and agg["unparseable"] == 0.5 and agg["n"] == 2


def _tiny(**kw):
  return cap_lib.get_captioner_config("tiny", token_dim=8, max_len=10, vocab_size=30, **kw)


def _packed(rng, sizes):
  """A packed row of clips with `sizes` tokens each (segment ids 1..k), padded to 16."""
  seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(sizes)] +
                       [np.zeros(16 - sum(sizes), int)])
  pos = np.zeros((16, 3), np.int32)
  start = 0
  for n in sizes:
    pos[start:start + n, 2] = np.arange(n)
    start += n
  return {"tokens": jnp.asarray(rng.normal(size=(1, 16, 8)), jnp.float32),
          "positions": jnp.asarray(pos[None]), "segment_ids": jnp.asarray(seg[None])}


def test_a_clips_caption_does_not_depend_on_its_packed_neighbours_and_seeds_repeat():
  cfg = _tiny()
  params = cap_lib.init_params(cfg, jax.random.key(0))
  row = _packed(np.random.default_rng(0), [5, 6])
  alone = {k: v for k, v in row.items()}
  alone["segment_ids"] = jnp.where(row["segment_ids"] == 1, 1, 0)
  alone["tokens"] = jnp.where((row["segment_ids"] == 1)[..., None], row["tokens"], 7.0)
  for temperature in (0.0, 2.0):
    seeds = jnp.asarray([[3, 4]])
    both = cap_lib.generate(cfg, params, row, seeds, length=10, num_slots=2,
                            temperature=temperature)
    one = cap_lib.generate(cfg, params, alone, seeds, length=10, num_slots=2,
                           temperature=temperature)
    np.testing.assert_array_equal(both[0, 0], one[0, 0])
    assert not np.any(np.asarray(one[0, 1]))  # an empty slot writes nothing
    again = cap_lib.generate(cfg, params, row, seeds, length=10, num_slots=2,
                             temperature=temperature)
    np.testing.assert_array_equal(both, again)
  hot = [cap_lib.generate(cfg, params, row, jnp.asarray([[s, s]]), length=10, num_slots=2,
                          temperature=5.0, num_ids=20) for s in range(4)]
  assert len({np.asarray(h).tobytes() for h in hot}) > 1  # seeds change sampled captions
  ids = np.asarray(hot[0])
  for caption in ids.reshape(-1, 10):  # nothing after the end, and never BOS
    end = np.flatnonzero(caption == 0)
    assert end.size == 0 or not caption[end[0]:].any()
    assert caption.max() < 20  # only the tokenizer's ids: never BOS, never past its end


def test_teacher_forcing_scores_each_word_and_the_end_only():
  ids = jnp.asarray([[[5, 6, 7, 0, 0], [4, 0, 0, 0, 0]]])
  weights = cap_lib.target_weights(ids > 0, jnp.asarray([[True, False]]))
  np.testing.assert_array_equal(weights, [[[1, 1, 1, 1, 0], [0, 0, 0, 0, 0]]])
  np.testing.assert_array_equal(cap_lib.shift_right(ids, 9)[0, 0], [9, 5, 6, 7, 0])


def test_overfit_four_clips_captions_them_exactly():
  """Teacher-forced training on four clips' latents: greedy decoding then writes each
  clip's own caption, word for word (the decoder reads the clip, not a prior)."""
  cfg = cap_lib.get_captioner_config("tiny", token_dim=8, max_len=12, vocab_size=30,
                                     width=64, num_heads=2)
  rng = np.random.default_rng(1)
  row = _packed(rng, [4, 4, 4, 4])
  ids = jnp.asarray(rng.integers(1, 28, (1, 4, 12)) * (np.arange(12) < 8), jnp.int32)
  batch = {**row, "text_ids": ids, "text_mask": ids > 0}
  import optax  # pylint: disable=import-outside-toplevel
  params = cap_lib.init_params(cfg, jax.random.key(0))
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    loss, grads = jax.value_and_grad(lambda p: captioner_task._loss(cfg, p, batch)[0])(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt, loss

  for _ in range(300):
    params, opt, loss = step(params, opt)
  assert float(loss) < 0.05
  got = cap_lib.generate(cfg, params, row, jnp.zeros((1, 4), jnp.int32), length=12,
                         num_slots=4)
  np.testing.assert_array_equal(got, ids)


# ------------------------------------------------------------------------ in the loop
@pytest.fixture(scope="module")
def latents(tmp_path_factory):
  """Precomputed runlocal latents (random tiny VAE) of train and validation, and the data dir."""
  root = tmp_path_factory.mktemp("cap")
  data_dir = str(root / "data")
  cfg = dit_config.get_config(f"runlocal=True,data_dir={data_dir}")
  for split in ("train", "validation"):
    otf = dit_task.DiTTask(cfg).latent_records(split)
    encode_latents.write_latents(otf.source, otf.vae, str(root / "latents" / split))
  return str(root / "latents"), data_dir


def _cap_config(data_dir, extra=""):
  cfg = captioner_config.get_config(f"runlocal=True,data_dir={data_dir}{extra}")
  cfg.train.progress = False
  return cfg


def test_captioner_and_upsampler_train_resume_and_load(latents, tmp_path):
  lat, data_dir = latents
  work = str(tmp_path / "cap")
  cfg = _cap_config(data_dir, f",latents={lat},labelled=6")
  assert loop.train_and_evaluate(cfg, work, stop_at=2) == {"stopped_at": 2}
  final = loop.train_and_evaluate(cfg, work)
  assert final["final/caption_n"] == 8 and 0 <= final["final/caption_all"] <= 1
  assert np.isfinite(final["final/val_loss"])
  run = captioning.CaptionerRun.load(work)
  got = run.caption_records(latents_lib.LatentRecords(os.path.join(lat, "validation")),
                            indices=[1, 3])
  assert sorted(got) == [1, 3] and all(isinstance(t, str) for t in got.values())
  with pytest.raises(ValueError, match="source='text'"):
    run.upsample(["a red circle"])
  # the labelled share: records 0..5 train on their detailed caption (kind 0), the others
  # on their short one (kind 1); with short_rest=False records 0..5 only are read
  task = captioner_task.CaptionerTask(cfg)
  records = task.latent_records("train")
  it = iter(task.make_train_data((0, 1)))
  kinds = set()
  for _ in range(6):
    b = next(it)
    index = captioning.slot_clip_index(b["segment_ids"], b["clip_index"], 4)
    for row, slot in zip(*np.nonzero(index >= 0)):
      i = int(index[row, slot])
      want = records[i]["caption"] if i < 6 else records[i]["short_caption"]
      assert task.tokenizer.decode(b["text_ids"][row, slot][None])[0] == want
      assert b["caption_kind"][row, slot] == (i >= 6)
      kinds.add(i >= 6)
  assert kinds == {False, True}
  only = captioner_task.CaptionerTask(_cap_config(data_dir, f",latents={lat},labelled=6,"
                                                  "short_rest=False"))
  it = iter(only.make_train_data((0, 1)))
  seen = {int(i) for _ in range(6) for i in np.unique(next(it)["clip_index"]) if i >= 0}
  assert seen <= set(range(6)) and len(seen) > 1

  # the accuracy benchmark: rendered clips through the run's own (random) VAE
  bench = scripts.load("captioner", "captioner_bench", folder="benchmarks")
  res = bench.score_captioner(run, ["test"], [(5, 32, 32)], 3, "basic", 2)
  assert res["test"]["n"] == 3 and 0 <= res["test"]["all"] <= 1
  assert res["test/5x32x32"]["examples"][0]["truth"] == generator.make_clip(
      "test", 0, 5, 32, 32, "basic").caption

  up = str(tmp_path / "up")
  loop.train_and_evaluate(_cap_config(data_dir, ",source=text"), up)
  upsampler = captioning.CaptionerRun.load(up)
  res = bench.score_upsampler(upsampler, ["test"], [(5, 32, 32)], 3, "basic", 1.0, 2)
  assert res["test/5x32x32/t1"]["n"] == 6 and 1 <= res["test/5x32x32/t1"][
      "distinct_per_prompt"] <= 2
  a = upsampler.upsample(["a red circle", "a blue square"], seeds=[0, 1], temperature=1.0)
  assert a == upsampler.upsample(["a red circle", "a blue square"], seeds=[0, 1],
                                 temperature=1.0)
  assert len(a) == 2 and all(isinstance(t, str) for t in a)


def _recaption_flags(**kw):
  class F:  # pylint: disable=too-few-public-methods
    labelled, num_shards, process_index, process_count, batch = 0, 1, 0, 1, 4
    temperature, seed, split, mesh = 0.0, 0, "train", ""
  for k, v in kw.items():
    setattr(F, k, v)
  return F


def test_recaption_writes_synthetic_captions_in_shards_and_the_dit_trains_on_them(
    latents, tmp_path):
  lat, data_dir = latents
  work = str(tmp_path / "cap")
  loop.train_and_evaluate(_cap_config(data_dir, f",latents={lat}"), work)
  out = str(tmp_path / "recaptioned")
  for split in ("train", "validation"):
    # two workers, three shards; the first two records are the labelled share
    for index in (1, 0):
      res = recaption.run(_recaption_flags(captioner=work, latents=lat, out_dir=out,
                                           split=split, labelled=2, num_shards=3,
                                           process_index=index, process_count=2))
    assert res["num_records"] == len(latents_lib.LatentRecords(os.path.join(lat, split)))
  orig = latents_lib.LatentRecords(os.path.join(lat, "train"))
  new = latents_lib.LatentRecords(os.path.join(out, "train"))
  assert new.metadata["captioner"].startswith(work) and new.metadata["labelled"] == 2
  assert new.metadata["vae"] == orig.metadata["vae"]
  expected = captioning.CaptionerRun.load(work).caption_records(
      orig, indices=range(2, len(orig)))
  for i in range(len(orig)):
    a, b = orig[i], new[i]
    np.testing.assert_array_equal(a["latents"], b["latents"])
    assert (a["caption"], a["short_caption"]) == (b["caption"], b["short_caption"])
    assert b["synthetic_caption"] == (a["caption"] if i < 2 else expected[i])
  # a second run keeps the whole split
  assert recaption.run(_recaption_flags(captioner=work, latents=lat, out_dir=out))["kept"]
  for caption in ("synthetic", "blend"):
    cfg = dit_config.get_config(f"runlocal=True,data_dir={data_dir},latents={out},"
                                f"caption={caption}")
    cfg.train.steps, cfg.train.progress = 2, False
    final = loop.train_and_evaluate(cfg, str(tmp_path / f"dit_{caption}"))
    assert np.isfinite(final["final/val_loss"])
  cfg = dit_config.get_config(f"runlocal=True,data_dir={data_dir},latents={lat},"
                              "caption=synthetic")
  with pytest.raises(ValueError, match="no synthetic captions"):
    dit_task.DiTTask(cfg).validate()
  cfg = dit_config.get_config(f"runlocal=True,data_dir={data_dir},caption=blend")
  with pytest.raises(ValueError, match="set latents=DIR"):
    dit_task.DiTTask(cfg).validate()


class _Records:
  def __init__(self, n):
    self.shapes = np.tile([[1, 2, 2, 4]], (n, 1))
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"latents": np.zeros((1, 2, 2, 4), np.float32), "caption": f"d{i}",
            "short_caption": f"s{i}", "synthetic_caption": f"y{i}", "index": i}


class _Latents:
  """n latent records [1, 2, 2, C], each its own random values."""

  def __init__(self, n, channels):
    self.shapes = np.tile([[1, 2, 2, channels]], (n, 1))

  def __len__(self):
    return len(self.shapes)

  def __getitem__(self, i):
    latents = np.random.default_rng(i).normal(size=tuple(self.shapes[i]))
    return {"latents": latents.astype(np.float32), "caption": "a red circle",
            "short_caption": "a red circle", "index": i}


class _Tok:
  """Caption 'dN' / 'sN' / 'yN' -> ids [kind, N + 1] (kind 1 = d, 2 = s, 3 = y)."""

  def encode(self, texts, max_len):
    ids = np.zeros((len(texts), max_len), np.int32)
    for r, t in enumerate(texts):
      ids[r, :2] = ["dsy".index(t[0]) + 1, int(t[1:]) + 1]
    return ids, ids > 0, 0


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_blend_draws_synthetic_captions_at_its_share_anew_each_epoch(share):
  ds = latents_lib.make_latent_dataset(
      _Records(50), _Tok(), patch=(1, 1, 1), seq_len=4, max_clips=1, text_len=2,
      batch_size=50, seed=0, train=True, caption="blend", synthetic_share=share, prefetch=0)
  it = iter(ds)
  epochs = [next(it)["text_ids"][:, 0] for _ in range(2)]  # [50, 2] each
  kinds = [dict(zip(e[:, 1], e[:, 0])) for e in epochs]
  rate = np.mean([k == 3 for k in kinds[0].values()])
  assert set(kinds[0].values()) <= {2, 3}
  if share in (0.0, 1.0):
    assert rate == share
  else:
    assert 0.3 < rate < 0.7 and kinds[0] != kinds[1]  # a new draw each epoch


def test_recaption_bad_input_is_one_line_exit_2(latents, tmp_path):
  lat, _ = latents
  for args, match in [
      ([f"--captioner={tmp_path}/none", f"--latents={lat}", f"--out_dir={tmp_path}/o"],
       "no checkpoints"),
      ([f"--captioner={tmp_path}/none", f"--latents={lat}", f"--out_dir={lat}"],
       "not over them"),
      ([f"--captioner={tmp_path}", f"--latents={tmp_path}/missing",
        f"--out_dir={tmp_path}/o"], "No latent records"),
      ([f"--captioner={tmp_path}", f"--latents={lat}", f"--out_dir={tmp_path}/o",
        "--labelled=-1"], "labelled")]:
    proc = subprocess.run([sys.executable, "-m", "sora_jax.data.recaption", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_captioner_configs_fail_before_any_work(tmp_path):
  for extra, match in [(",source=audio", "source"), (",caption=blend", "caption"),
                       (",labelled=-3", "labelled")]:
    cfg = _cap_config(str(tmp_path), extra)
    with pytest.raises(ValueError, match=match):
      captioner_task.CaptionerTask(cfg).validate()



def test_captions_and_upsampling_on_a_mesh_equal_one_devices():
  """Params split by the fsdp preset over a data x fsdp mesh, batches (padded to the mesh's
  split) over its batch axes: the same captions as on one device, greedy and sampled."""
  from sora_jax.sharding import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from sora_jax.text import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  texts = [_scene_caption("train", i) for i in range(40)]
  tok = tok_lib.Tokenizer.train(texts + ["a red circle", "a blue square"], vocab_size=120)
  mesh = mesh_lib.make_mesh({"data": 4, "fsdp": 2})
  config = {"packing": {"seq_len": 16, "max_clips": 4, "text_len": 10, "num_bins": 1},
            "model": {"patch": [1, 1, 1]}}
  for source, kw in (("video", {"token_dim": 8}), ("text", {"source_len": 6})):
    cfg = cap_lib.get_captioner_config("tiny", source=source, max_len=10,
                                       vocab_size=tok.vocab_size + 1, width=32, **kw)
    params = jax.device_get(cap_lib.init_params(cfg, jax.random.key(1)))
    runs = [captioning.CaptionerRun.create("", 0, config, cfg, tok, params, mesh=m)
            for m in (None, mesh)]
    assert runs[1].params["params"]["decoder"]["embed"]["embedding"].sharding.spec[1] == "fsdp"
    for temperature in (0.0, 3.0):
      if source == "text":
        got = [r.upsample(["a red circle", "a blue square", "a red circle"], [0, 1, 2],
                          temperature) for r in runs]
      else:
        got = [r.caption_records(_Latents(5, 8), batch_size=2, temperature=temperature)
               for r in runs]
      assert got[0] == got[1], (source, temperature)


def test_alt_text_records_weigh_the_labelled_share_and_swap_in_short_captions():
  records = _Records(100)
  alt = captioner_task.AltTextRecords(records, 5, True, "caption", labelled_weight=0.5)
  recs = [alt[i] for i in range(len(alt))]
  labelled = [r for r in recs if r["caption_kind"] == 0]
  assert len(alt) == 190 and len(labelled) == 95  # 5 records x 19: half the stream
  assert {r["index"] for r in labelled} == set(range(5))
  assert all(r["caption"] == f"d{r['index']}" for r in labelled)
  assert all(r["caption"] == f"s{r['index']}" for r in recs if r["caption_kind"] == 1)
  assert len(alt.shapes) == 190
  plain = captioner_task.AltTextRecords(records, 5, False, "caption")
  assert len(plain) == 100 and {plain[i]["caption_kind"] for i in range(100)} == {0}
  assert plain[50]["caption"] == "d50"  # read as is (num_clips keeps it out of training)
