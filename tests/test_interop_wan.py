"""Wan2.1 end to end from a (tiny, random) diffusers folder: convert -> a run directory ->
sampling equal to diffusers' WanPipeline; the sample CLI on it; fine-tuning with the frozen
UMT5 and Wan's VAE through the shared loop; the frozen T5 smoke path of the demo's config."""
import json
import shutil

import jax
import numpy as np
import pytest
import torch
import diffusers
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from safetensors import torch as safetensors_torch

from configs import dit as dit_config
from configs import wan as wan_config
from sora_jax import checkpoints
from sora_jax.diffusion import solvers
from sora_jax.inference import run as run_lib
from sora_jax.inference import sampler as sampler_lib
from sora_jax import convert
from sora_jax.interop import wan_dit
from sora_jax.train import dit_task
from sora_jax.train import loop

import scripts
import tiny_wan

# fp32 parity: max abs error <= REL * max(1, max abs of the reference). Never loosen.
REL = 1e-4
SHAPE = dict(frames=5, height=32, width=32)  # latents 2 x 4 x 4 x 4 of the tiny VAE
ARGS = "sizes=5x32x32,seq_len=64,max_clips=2,text_len=16,dtype=float32"


def _close(got, want, what):
  err, scale = np.abs(got - want).max(), max(1.0, np.abs(want).max())
  assert err <= REL * scale, f"{what}: max abs error {err:.3g} > {REL} x {scale:.3g}"


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
  """(reference pipeline parts, model folder, converted run directory)."""
  root = tmp_path_factory.mktemp("wan")
  refs = tiny_wan.build(root / "model")
  workdir = root / "run"
  config = wan_config.get_config(f"model_dir={root / 'model'},{ARGS}")
  convert.convert(config, str(workdir))
  return refs, root / "model", workdir


def test_converted_run_samples_as_wan_pipeline(wan):
  """The run directory's sampler (tokenizer, frozen UMT5 with Wan's zero padding, the DiT
  layout, negative-prompt guidance, Euler on the shifted grid) gives WanPipeline's latents,
  and its decoder gives Wan's VAE decode."""
  refs, _, workdir = wan
  run = run_lib.Run.load(str(workdir))
  assert run.step == 0 and run.text_config.max_len == 16
  steps, shift, guidance = 3, 3.0, 5.0
  options = sampler_lib.SamplingOptions(steps=steps, method="euler", guidance=guidance,
                                        shift=shift, negative_prompt="a blue square")
  sampler = sampler_lib.Sampler(run, options, progress=False)
  shape = sampler.latent_shape(**SHAPE)
  prompt, seed = "A large red circle moving to the right.", 3
  ours = sampler.sample_latents([prompt], shape, [seed])[0]

  noise = np.asarray(solvers.init_noise(jax.random.key(seed), shape))
  scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
  grid = np.linspace(1.0, 0.0, steps + 1)[:-1]  # ours, before the shift
  set_timesteps = scheduler.set_timesteps
  scheduler.set_timesteps = lambda n, device=None: set_timesteps(sigmas=grid, device=device)
  pipe = diffusers.WanPipeline(tokenizer=refs["tokenizer"], text_encoder=refs["text_encoder"],
                               vae=refs["vae"], transformer=refs["transformer"],
                               scheduler=scheduler)
  with torch.no_grad():
    want = pipe(prompt=prompt, negative_prompt="a blue square", num_frames=SHAPE["frames"],
                height=SHAPE["height"], width=SHAPE["width"], num_inference_steps=steps,
                guidance_scale=guidance, max_sequence_length=16, output_type="latent",
                latents=torch.from_numpy(noise.transpose(3, 0, 1, 2)[None].copy())).frames
  _close(ours, want[0].numpy().transpose(1, 2, 3, 0), "sampled latents")

  video = sampler.decode(ours)  # uint8, through Wan's VAE and its latent statistics
  vae = refs["vae"]
  mean = torch.tensor(vae.config.latents_mean)[:, None, None, None]
  std = torch.tensor(vae.config.latents_std)[:, None, None, None]
  with torch.no_grad():
    z = torch.from_numpy(ours.transpose(3, 0, 1, 2).copy()) * std + mean
    pixels = vae.decode(z[None]).sample[0].numpy().transpose(1, 2, 3, 0)
  want_u8 = np.round((np.clip(pixels, -1, 1) + 1) * 127.5)
  assert video.shape == want_u8.shape == (5, 32, 32, 3)
  assert np.abs(video.astype(np.float64) - want_u8).max() <= 1  # rounding of ~1e-6 apart


def test_converted_run_params_and_guards(wan, tmp_path):
  refs, model, workdir = wan
  run = run_lib.Run.load(str(workdir))
  _, _, dit_params = wan_dit.load(model / "transformer")
  for a, b in zip(jax.tree.leaves(run.params["dit"]["params"]), jax.tree.leaves(dit_params)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert type(run.tokenizer).__name__ == "T5Tokenizer"
  assert (workdir / "spiece.model").exists()
  assert run.vae.description.startswith(run_lib.WAN_VAE)
  config = wan_config.get_config(f"model_dir={model},{ARGS}")
  with pytest.raises(ValueError, match="already holds checkpoints"):  # never overwritten
    convert.convert(config, str(workdir))
  ckpt = checkpoints.Checkpointer(str(workdir))
  assert loop.converted_step(ckpt) == 0  # main starts a fresh run from it
  ckpt.close()
  # A fresh run of the config loads the released DiT and UMT5 into params and EMA.
  task = dit_task.DiTTask(config)
  state = task.load_pretrained(jax.jit(task.init_state)(jax.random.key(0)))
  for tree in (state.params, state.ema_params):
    for a, b in zip(jax.tree.leaves(tree["dit"]["params"]), jax.tree.leaves(dit_params)):
      np.testing.assert_array_equal(np.asarray(a), b)
  np.testing.assert_array_equal(
      state.params["text"]["params"]["final_norm"]["scale"],
      refs["text_encoder"].state_dict()["encoder.final_layer_norm.weight"].numpy())
  assert set(state.ema_params) == {"dit"}  # the frozen encoder has no EMA copy


def test_sample_cli_on_converted_run(wan, tmp_path):
  """`python -m sora_jax.sample` on the run: Wan's defaults come from the run's config."""
  _, _, workdir = wan
  out = tmp_path / "clip.mp4"
  result = scripts.run("-m", "sora_jax.sample", "--workdir", str(workdir), "--prompt",
                       "a red circle", "--frames", "5", "--height", "32", "--width", "32",
                       "--steps", "2", "--out", str(out))
  assert result.returncode == 0, result.stderr[-2000:]
  assert out.exists()
  manifest = json.loads(result.stdout.strip().splitlines()[-1])
  assert manifest["task"] == "t2v"


def test_wan_config_bad_input(tmp_path):
  with pytest.raises(ValueError, match="needs model_dir"):
    wan_config.get_config("")
  with pytest.raises(ValueError, match="config.json"):
    wan_config.get_config(f"model_dir={tmp_path}")


def test_finetune_in_the_converted_run_keeps_text_encoder_frozen(wan, tmp_path):
  """main's loop in the convert's run directory starts from its weights: the DiT trains,
  the UMT5 does not move, and the run samples."""
  refs, model, converted = wan
  config = wan_config.get_config(f"model_dir={model},{ARGS},steps=2,batch=8,lr=1e-3")
  with config.unlocked():
    config.data.name.num_examples = {"train": 8, "validation": 2, "test": 2,
                                     "compositional": 2}
    config.data.data_dir = str(tmp_path / "tfds")
  config.train.update({"log_every": 1, "checkpoint_every": 2, "progress": False})
  config.eval.update({"num_clips": 2, "batch_size": 2, "timesteps": (0.5,)})
  workdir = tmp_path / "ft"
  shutil.copytree(converted, workdir)
  loop.train_and_evaluate(config, str(workdir))
  state = checkpoints.restore_state_host(str(workdir), 2)
  text = refs["text_encoder"].state_dict()
  np.testing.assert_array_equal(
      state["params"]["text"]["params"]["final_norm"]["scale"],
      text["encoder.final_layer_norm.weight"].numpy())
  _, _, start = wan_dit.load(model / "transformer")
  moved = [np.abs(a - b).max() for a, b in zip(
      jax.tree.leaves(state["params"]["dit"]["params"]), jax.tree.leaves(start))]
  assert max(moved) > 0
  run = run_lib.Run.load(str(workdir))
  sampler = sampler_lib.Sampler(run, sampler_lib.SamplingOptions(steps=1, guidance=1.0),
                                progress=False)
  assert sampler.sample_latents(["a red circle"], sampler.latent_shape(**SHAPE),
                                [0]).shape == (1, 2, 4, 4, 4)
  # The fine-tuned DiT exported back: diffusers loads it and holds the run's EMA weights.
  out = convert.export(str(workdir), str(tmp_path / "exported"))
  again = diffusers.WanTransformer3DModel.from_config(
      json.loads((out / "config.json").read_text())).eval()
  again.load_state_dict(safetensors_torch.load_file(out / wan_dit.WEIGHTS), strict=True)
  want = wan_dit.export(run.params["dit"]["params"], run.dit_config)
  for name, x in again.state_dict().items():
    np.testing.assert_array_equal(x.numpy(), want[name], err_msg=name)


def test_frozen_t5_smoke_config():
  """configs/dit.py:text_encoder=t5 without weights (the demo's pipeline on a seeded random
  small T5): the state holds the T5 but no EMA or Adam moments of it, and the train step
  traces (shapes only; the fine-tuning test checks the values)."""
  config = dit_config.get_config("runlocal=True,text_encoder=t5")
  dcfg, tcfg = run_lib.dit_configs(config, 8)
  assert tcfg.variant == "t5" and tcfg.width == dit_config.T5_SMOKE["d_model"]
  task = dit_task.DiTTask(config)
  state = jax.eval_shape(task.init_state, jax.random.key(0))
  assert set(state.params) == {"dit", "text"} and set(state.ema_params) == {"dit"}
  dit_leaves = len(jax.tree.leaves(state.params["dit"]))
  assert len(jax.tree.leaves(state.opt_state)) <= 2 * dit_leaves + 4  # mu, nu, counters
  new, _ = jax.eval_shape(task.make_train_step(), state, task.abstract_batch(),
                          jax.random.key(1))
  assert jax.tree.structure(new.params) == jax.tree.structure(state.params)
  with pytest.raises(ValueError, match="text_encoder='bert'"):
    dit_config.get_config("runlocal=True,text_encoder=bert")
