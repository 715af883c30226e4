"""Shapes World: generator determinism and contract, evaluator accuracy, builder, CLIs."""
import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import features
from data_pipelines import media
from data_pipelines.shapes_world import builder as sw_builder
from data_pipelines.shapes_world import evaluator as ev
from data_pipelines.shapes_world import generator as gen
from data_pipelines.shapes_world import world as W

# The evaluator must score at least this on generator clips (contract: >= 99%).
MIN_RATE = 0.99


def test_clip_is_pure_function_of_arguments():
  a = gen.make_clip("train", 5, 17, 64, 64, "full")
  b = gen.make_clip("train", 5, 17, 64, 64, "full")
  assert a.video.dtype == np.uint8 and a.video.shape == (17, 64, 64, 3)
  assert a.video.tobytes() == b.video.tobytes() and a.caption == b.caption
  # Any argument changes the clip.
  for other in [("validation", 5, 17, 64, 64, "full"), ("train", 6, 17, 64, 64, "full"),
                ("train", 5, 17, 64, 64, "basic")]:
    assert gen.make_clip(*other).video.tobytes() != a.video.tobytes()


def test_golden_bytes():
  """Same bytes on every machine: a fixed digest of a few clips (changing it is a new
  version of the data set)."""
  h = hashlib.sha256()
  for args in [("train", 0, 17, 64, 64, "full"), ("test", 3, 1, 48, 80, "basic"),
               ("compositional", 2, 9, 80, 48, "full")]:
    clip = gen.make_clip(*args)
    h.update(clip.video.tobytes())
    h.update(clip.caption.encode())
  assert h.hexdigest()[:16] == GOLDEN_DIGEST


GOLDEN_DIGEST = "bdaf5a2ccf0610a4"


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_held_out_pairs_never_outside_compositional(split):
  for i in range(300):
    scene = gen.sample_scene(split, i, 17 if i % 2 else 1, 64, 64, "full")
    assert not any((o.color, o.shape) in W.HELD_OUT_PAIRS for o in scene.objects)


def test_compositional_always_holds_a_held_out_pair():
  for i in range(200):
    scene = gen.sample_scene("compositional", i, 17, 64, 64, "full")
    assert any((o.color, o.shape) in W.HELD_OUT_PAIRS for o in scene.objects)


def test_scene_options_follow_the_contract():
  basic = [gen.sample_scene("train", i, 17, 64, 64, "basic") for i in range(200)]
  assert all(len(s.objects) == 1 and s.camera == "still" and not s.pillar for s in basic)
  assert {s.objects[0].motion for s in basic} == set(W.BASIC_MOTIONS)
  full = [gen.sample_scene("train", i, 17, 64, 64, "full") for i in range(1000)]
  one = np.mean([len(s.objects) == 1 for s in full])
  pan = np.mean([s.camera != "still" for s in full])
  assert 0.55 < one < 0.65 and 0.16 < pan < 0.24
  for s in full:
    if s.pillar:
      assert len(s.objects) == 1 and s.objects[0].motion in W.SIDEWAYS and s.camera == "still"
    if s.camera != "still":
      assert all(o.motion in ("static", "down", "up") for o in s.objects)
    if len(s.objects) == 2:
      a, b = s.objects
      assert a.color != b.color and a.shape != b.shape
  assert any(s.pillar for s in full)
  images = [gen.sample_scene("train", i, 1, 64, 64, "full") for i in range(100)]
  assert all(o.motion == "static" for s in images for o in s.objects)


def test_caption_grammar():
  obj = W.ObjectSpec("red", "circle", "small", "right", 0.5, 0.5)
  scene = W.Scene(17, 64, 64, "gray", (obj,), pillar=True, camera="still")
  assert W.detailed_caption(scene) == (
      "A small red circle moves from left to right on a gray background, passing behind "
      "a brown pillar. The camera is still.")
  static = W.ObjectSpec("blue", "square", "large", "static", 0.2, 0.8)
  two = W.Scene(17, 64, 64, "navy", (static, obj), camera="left")
  assert W.detailed_caption(two) == (
      "A large blue square stays still in the bottom left and a small red circle moves "
      "from left to right on a navy background. The camera pans to the left.")
  image = dataclasses.replace(two, frames=1, objects=(static,), camera="still")
  assert W.detailed_caption(image) == (
      "A large blue square in the bottom left on a navy background.")
  assert W.short_caption(two) == "a blue square and a red circle"


def test_palette_and_extent_are_exact():
  obj = W.ObjectSpec("green", "square", "large", "static", 0.5, 0.5)
  video = gen.render(W.Scene(1, 64, 64, "olive", (obj,)))
  assert tuple(video[0, 0, 0]) == W.BACKGROUNDS["olive"]
  mask = (video[0] == W.OBJECT_COLORS["green"]).all(-1)
  side = 0.28 * 64  # 17.92 px: pixel centres within +-8.96 px of 32 -> 18 px
  assert mask.sum() == 18 * 18 and abs(mask.sum() - side ** 2) < 2 * side + 1


@pytest.mark.parametrize("level,frames,height,width", [
    ("basic", 17, 64, 64), ("full", 17, 64, 64), ("basic", 1, 64, 64),
    ("full", 1, 64, 64), ("full", 17, 48, 80), ("full", 17, 80, 48),
])
def test_evaluator_scores_generator_clips(level, frames, height, width):
  scores = [ev.score_clip(c.video, c.caption) for c in (
      gen.make_clip("test", i, frames, height, width, level) for i in range(80))]
  rates = ev.aggregate(scores)
  low = {k: v for k, v in rates.items() if k != "n" and v < MIN_RATE}
  assert not low, rates


def test_evaluator_scores_short_captions_and_compositional():
  for i in range(40):
    clip = gen.make_clip("compositional", i, 17, 64, 64, "full")
    assert ev.score_clip(clip.video, clip.short_caption)["all"]
    assert ev.score_clip(clip.video, clip.caption)["all"]


def test_evaluator_on_mp4_round_trip(tmp_path):
  """mp4 (yuv420p) halves chroma resolution, which costs small shapes a few edge pixels.
  Measured: every attribute 100% except shape 93% on 60 test clips; manifests therefore
  point at lossless .npy. Stated bound here: shape >= 80%, everything else 100%."""
  scores = []
  for i in range(20):
    clip = gen.make_clip("test", i, 17, 64, 64, "full")
    media.write_mp4(tmp_path / "c.mp4", clip.video)
    scores.append(ev.score_clip(media.read_clip(tmp_path / "c.mp4"), clip.caption))
  rates = ev.aggregate(scores)
  assert rates["shape"] >= 0.8, rates
  assert all(v == 1.0 for k, v in rates.items() if k not in ("shape", "all", "n")), rates


def test_evaluator_near_chance_on_noise():
  rng = np.random.default_rng(0)
  scores = []
  for i in range(40):
    clip = gen.make_clip("test", i, 17, 64, 64, "full")
    noise = rng.integers(0, 256, clip.video.shape, dtype=np.uint8)
    scores.append(ev.score_clip(noise, clip.caption))
  rates = ev.aggregate(scores)
  # An object colour is never found in noise, so nothing that needs the object holds.
  assert rates["color"] == 0.0 and rates["all"] == 0.0, rates
  assert rates["background"] < 0.6, rates  # 4 backgrounds: chance is ~0.25


def _scene_with(scene, **obj_changes):
  return dataclasses.replace(
      scene, objects=(dataclasses.replace(scene.objects[0], **obj_changes),))


def test_evaluator_fails_the_right_attribute():
  obj = W.ObjectSpec("red", "square", "large", "right", 0.5, 0.5)
  scene = W.Scene(17, 64, 64, "gray", (obj,))
  caption = W.detailed_caption(scene)
  assert ev.score_clip(gen.render(scene), caption)["all"]
  wrong_colour = ev.score_clip(gen.render(_scene_with(scene, color="blue")), caption)
  assert not wrong_colour["color"] and wrong_colour["background"]
  reversed_motion = ev.score_clip(gen.render(scene)[::-1], caption)
  assert not reversed_motion["motion"] and reversed_motion["color"] and reversed_motion["shape"]
  wrong_shape = ev.score_clip(gen.render(_scene_with(scene, shape="triangle")), caption)
  assert not wrong_shape["shape"] and wrong_shape["color"] and wrong_shape["motion"]
  wrong_size = ev.score_clip(gen.render(_scene_with(scene, size="small")), caption)
  assert not wrong_size["size"] and wrong_size["shape"]
  wrong_bg = ev.score_clip(gen.render(dataclasses.replace(scene, background="navy")), caption)
  assert not wrong_bg["background"] and wrong_bg["color"]


def test_evaluator_camera_and_permanence():
  obj = W.ObjectSpec("white", "circle", "large", "static", 0.5, 0.5)
  pan = W.Scene(17, 64, 64, "black", (obj,), camera="right")
  caption = W.detailed_caption(pan)
  assert ev.score_clip(gen.render(pan), caption)["all"]
  flipped = ev.score_clip(gen.render(pan)[::-1], caption)
  assert not flipped["camera"]
  still = ev.score_clip(gen.render(dataclasses.replace(pan, camera="still")), caption)
  assert not still["camera"]
  mover = W.ObjectSpec("orange", "triangle", "small", "left", 0.5, 0.5)
  pillar = W.Scene(17, 64, 64, "gray", (mover,), pillar=True)
  video = gen.render(pillar)
  caption = W.detailed_caption(pillar)
  assert ev.score_clip(video, caption)["permanence"]
  vanished = video.copy()
  vanished[12:] = gen.render(dataclasses.replace(pillar, objects=()))[12:]
  assert not ev.score_clip(vanished, caption)["permanence"]


def test_parse_prompt_and_errors():
  p = ev.parse_prompt("A small red circle stays still in the top right and a large blue "
                      "square bounces across the floor on a olive background. The camera "
                      "pans to the left.")
  assert [o.region for o in p.objects] == ["top right", None]
  assert [o.motion for o in p.objects] == ["static", "bounce"]
  assert p.background == "olive" and p.camera == "left" and not p.pillar
  with pytest.raises(ValueError, match="names no Shapes World object"):
    ev.parse_prompt("a purple dodecahedron")
  with pytest.raises(ValueError, match="uint8"):
    ev.score_clip(np.zeros((2, 8, 8, 3), np.float32), "a red circle")


@pytest.mark.parametrize("args,match", [
    (("train", 0, 16, 64, 64, "full"), "4k\\+1"),
    (("train", 0, 17, 60, 64, "full"), "multiple of 16"),
    (("train", 0, 17, 64, 512, "full"), "multiple of 16 in \\[32, 256\\]"),
    (("nope", 0, 17, 64, 64, "full"), "allowed"),
    (("train", 0, 17, 64, 64, "hard"), "allowed"),
])
def test_bad_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    gen.make_clip(*args)


def test_builder_records_match_generator(tmp_path):
  cfg = sw_builder.make_config("full", sw_builder.MIX_SIZES, {"train": 9, "compositional": 3})
  b = sw_builder.build(cfg, str(tmp_path))
  src = b.as_data_source("train")
  sizes = features.split_sizes(b.info, "train")
  assert len(src) == 9 and sizes.shape == (9, 3)
  for i in range(9):
    rec = src[i]
    clip = gen.make_clip("train", i, *sw_builder.MIX_SIZES[i % 4], "full")
    assert tuple(rec["video"].shape[:3]) == tuple(sizes[i])
    np.testing.assert_array_equal(rec["video"], clip.video)
    assert rec["caption"].decode() == clip.caption
    assert rec["short_caption"].decode() == clip.short_caption
  assert len(b.as_data_source("compositional")) == 3
  with pytest.raises(ValueError, match="allowed"):
    sw_builder.make_config("full", num_examples={"dev": 3})


def _run(*args):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                        timeout=300)


def test_export_and_evaluate_cli(tmp_path):
  out = tmp_path / "clips"
  r = _run("data_pipelines.shapes_world.export", "--split", "test", "--level", "full",
           "--num", "6", "--frames", "9", "--height", "48", "--width", "80",
           "--out", str(out), "--mp4")
  assert r.returncode == 0, r.stderr
  rows = [json.loads(line) for line in open(out / "manifest.jsonl")]
  assert len(rows) == 6
  assert {"file", "prompt", "short_prompt", "split", "index"} <= set(rows[0])
  video = np.load(out / rows[0]["file"])
  assert video.dtype == np.uint8 and video.shape == (9, 48, 80, 3)
  assert os.path.exists(out / rows[0]["file"].replace(".npy", ".mp4"))
  assert os.path.exists(out / rows[0]["file"].replace(".npy", ".gif"))
  r = _run("data_pipelines.shapes_world.score", str(out))
  assert r.returncode == 0, r.stderr
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result["n"] == 6 and result["all"] == 1.0 and result["color"] == 1.0
  bad = _run("data_pipelines.shapes_world.export", "--frames", "16", "--out",
             str(tmp_path / "bad"))
  assert bad.returncode != 0 and "4k+1" in bad.stderr
  assert not os.path.exists(tmp_path / "bad")  # rejected before anything was written
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "manifest.jsonl").write_text('{"file": "x.npy"}\n')
  bad = _run("data_pipelines.shapes_world.score", str(tmp_path / "broken"))
  assert bad.returncode != 0 and "manifest.jsonl:1" in bad.stderr
