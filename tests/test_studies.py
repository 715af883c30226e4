"""The studies (`studies/`): the adherence ledger's rows, the denoiser and attribute probes'
bookkeeping on known inputs, and their bad-input errors; the GPU-session driver
(`launch/gpu_session.py`) end to end at runlocal size."""
import json

import numpy as np
import pytest

import scripts
from data_pipelines.shapes_world import evaluator
from data_pipelines.shapes_world import generator


def test_adherence_row_from_a_demo_report():
  adherence = scripts.load("record_adherence", folder="studies")
  rates = {"color": 0.9, "shape": 0.4, "all": 0.3, "n": 100}
  images = {"color": 0.8, "shape": 0.5, "all": 0.25, "n": 100}
  stages = {"dit": {"seconds": 600.0, "result": {}}, "vae": {"seconds": 60.0},
            "evaluate": {"seconds": 90.0, "result": {"adherence": rates, "level": "basic",
                                                     "adherence_t2i": images}}}
  row = adherence.row_from_report({"stages": stages}, "demo", "cpu")
  assert row["rates"] == {"color": 0.9, "shape": 0.4} and (row["all"], row["n"]) == (0.3, 100)
  assert row["t2i"] == images and row["train_minutes"] == 10.0 and row["demo_minutes"] == 12.5
  del stages["evaluate"]["result"]["adherence_t2i"]  # a report from before the image scores
  assert adherence.row_from_report({"stages": stages}, "demo", "cpu")["t2i"] is None
  with pytest.raises(ValueError, match=r"no \['evaluate'\] stage"):
    adherence.row_from_report({"stages": {"dit": stages["dit"]}}, "demo", "cpu")


def test_denoiser_bad_input_is_one_clear_error(tmp_path):
  out = scripts.run("studies/denoiser.py", "--workdir", str(tmp_path), "--t", "0.5,2")
  assert out.returncode == 2 and "--t='0.5,2': expected comma-separated noise levels in (0, 1]" \
      in out.stderr, out.stderr
  out = scripts.run("studies/denoiser.py", "--workdir", str(tmp_path / "none"))
  assert out.returncode == 2 and "has no checkpoints/ directory" in out.stderr, out.stderr
  assert "Traceback" not in out.stderr


def test_denoiser_attribute_swaps_change_exactly_one_attribute():
  """studies/denoiser.py's caption_response edits: each changes the named attribute only."""
  denoiser = scripts.load("denoiser", folder="studies")

  def attributes(caption):
    p = evaluator.parse_prompt(caption)
    o = p.objects[0]
    return {"color": o.color, "shape": o.shape, "size": o.size, "background": p.background,
            "motion": o.motion, "region": o.region if o.motion == "static" else None}

  seen = set()
  for i in range(40):
    caption = generator.make_clip("test", i, 5, 32, 32, "basic").caption
    base = attributes(caption)
    swaps = denoiser.attribute_swaps(caption)
    assert {"color", "shape", "size", "background", "motion"} <= set(swaps), caption
    assert ("region" in swaps) == (base["motion"] == "static"), caption
    for attr, changed in swaps.items():
      new = attributes(changed)
      diff = {k for k in base if base[k] != new[k]}
      # A static object's new motion also drops its region; every other edit is one key.
      expected = {"motion", "region"} if attr == "motion" and base["region"] else {attr}
      assert diff == expected, (attr, caption, changed)
      seen.add(attr)
  assert seen == {"color", "shape", "size", "background", "motion", "region"}


def test_attribute_probe_confusion_of_a_model_that_ignores_the_word():
  """studies/attribute_probe.py: ground-truth renders, the same for every swapped word,
  score exactly the `independent` accuracy, and each satisfies its own caption's shape."""
  attribute_probe = scripts.load("attribute_probe", folder="studies")

  clips = [generator.make_clip("test", i, 5, 32, 32, "basic") for i in range(40)]
  clips = [c for c in clips if len(evaluator.parse_prompt(c.caption).objects) == 1][:6]
  prompts = [c.caption for c in clips]
  assert prompts == attribute_probe.probe_prompts("shape", "test", len(prompts), "basic",
                                                  5, 32, 32)
  out = attribute_probe.confusion({v: [c.video for c in clips] for v in ("circle", "square",
                                                                          "triangle")},
                                  prompts, "shape")
  assert out["n"] == len(prompts) and out["accuracy"] == pytest.approx(out["independent"])
  own = [evaluator.parse_prompt(p).objects[0].shape for p in prompts]
  for asked in out["matrix"]:  # every row is the same samples: each satisfies its own shape
    for shape in out["matrix"][asked]:
      assert out["matrix"][asked][shape] >= own.count(shape)
  assert attribute_probe.swap(prompts[0], "shape", "square").count("square") == 1
  with pytest.raises(ValueError, match="attribute='size'; allowed: shape, color"):
    attribute_probe.probe_prompts("size", "test", 1, "basic", 5, 32, 32)


def test_attribute_probe_keep_rates_per_value(tmp_path):
  """--keep's scoring: the real clips keep every shape past the skipped frame; blanking the
  squares after it loses exactly the squares."""
  attribute_probe = scripts.load("attribute_probe", folder="studies")

  scenes = attribute_probe.probe_scenes("shape", "test", 9, "basic", 5, 48, 48)
  clips = [generator.make_clip("test", i, 5, 48, 48, "basic") for i, _ in scenes]
  prompts = [p for _, p in scenes]
  assert prompts == [c.caption for c in clips]
  values = [attribute_probe.value_of(p, "shape") for p in prompts]
  assert {"circle", "square", "triangle"} <= set(values), values
  real = attribute_probe.keep_rates([c.video for c in clips], prompts, "shape", skip=1)
  assert real == {"rate": 1.0, "n": 9, "per_value": {"circle": 1.0, "square": 1.0,
                                                     "triangle": 1.0}}
  blank = [np.concatenate([c.video[:1], np.zeros_like(c.video[1:])]) if v == "square"
           else c.video for c, v in zip(clips, values)]
  out = attribute_probe.keep_rates(blank, prompts, "shape", skip=1)
  assert out["per_value"] == {"circle": 1.0, "square": 0.0, "triangle": 1.0}
  assert out["rate"] == pytest.approx(1 - values.count("square") / 9)
  out = scripts.run("studies/attribute_probe.py", "--workdir", str(tmp_path), "--keep",
             "--skip", "17")
  assert out.returncode == 2 and "--skip=17; expected 0 <= skip < --frames=17" in out.stderr


def test_attribute_probe_denoise_rates_per_noise_level(tmp_path):
  """--denoise's bookkeeping, with the clips themselves as latents: an oracle denoiser keeps
  every shape at MSE 0; one that returns x_t has x_t's MSE, t^2 E[(noise - x0)^2]; one that
  blanks the squares loses exactly them."""
  attribute_probe = scripts.load("attribute_probe", folder="studies")

  scenes = attribute_probe.probe_scenes("shape", "test", 9, "basic", 5, 48, 48)
  prompts = [p for _, p in scenes]
  x0 = np.stack([generator.make_clip("test", i, 5, 48, 48, "basic").video
                 for i, _ in scenes]).astype(np.float32)
  noise = np.random.default_rng(0).normal(size=x0.shape).astype(np.float32)
  decode = lambda x: np.clip(x, 0, 255).astype(np.uint8)
  ts = [0.25, 0.5]
  oracle = attribute_probe.denoise_rates(lambda t: x0, decode, x0, noise, prompts, "shape", ts)
  assert [r["t"] for r in oracle] == ts
  for r in oracle:
    assert r["latent_mse"] == 0.0 and r["rate"] == 1.0 and r["n"] == 9
    assert r["noisy_mse"] == pytest.approx(r["t"] ** 2 * np.mean((noise - x0) ** 2), rel=1e-4)
  same = attribute_probe.denoise_rates(lambda t: (1 - t) * x0 + t * noise, decode, x0, noise,
                                       prompts, "shape", ts)
  assert all(r["latent_mse"] == pytest.approx(r["noisy_mse"]) for r in same)
  squares = np.array([attribute_probe.value_of(p, "shape") == "square" for p in prompts])
  assert squares.any()
  blank = attribute_probe.denoise_rates(lambda t: x0 * ~squares[:, None, None, None, None],
                                        decode, x0, noise, prompts, "shape", [0.5])
  assert blank[0]["per_value"] == {"circle": 1.0, "square": 0.0, "triangle": 1.0}
  with pytest.raises(ValueError, match=r"--denoise='0.5,2'; expected comma-separated noise"):
    attribute_probe.parse_ts("0.5,2")
  out = scripts.run("studies/attribute_probe.py", "--workdir", str(tmp_path), "--denoise", "x")
  assert out.returncode == 2 and "--denoise='x'; expected comma-separated" in out.stderr



@pytest.mark.slow  # ~2 minutes: every stage of the GPU session's pipeline at runlocal size
def test_gpu_session_pipeline_smoke_on_cpu(tmp_path):
  out = scripts.run("launch/gpu_session.py", "pipeline", "--out_dir", str(tmp_path), "--smoke",
             "--budget_s", "280", "--vae_s", "60")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["vae"]["rc"] == 0 and summary["ladder"]["computes"][:1] == [1]
  assert summary["report_rc"] == 0 and (tmp_path / "scaling_gpu.json").exists()
