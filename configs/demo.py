"""The end-to-end demo that README's first command runs (`make demo`).

  python -m sora_jax.demo --workdir runs/demo [--config configs/demo.py:quick=True]
  python -m sora_jax.demo --workdir runs/quality --config configs/demo.py:quality=True

Stages (each resumes when run again): check the analytic evaluator on exported Shapes
World clips; train the tiny VAE (full level, 64x64x17); encode the basic-level clips and
images to latents once; train the demo DiT on them; sample every task into `samples/`
(npy + mp4 + gif, `manifest.jsonl`, a contact sheet); score `eval_n` basic-level test
prompts with the analytic evaluator, plus the task checks. Budget: 30 minutes on a 2-core
CPU, set-up included.

Arguments:
  quick       a few-minute smoke run (tiny data, a few steps) instead of the real demo.
  quality     the longer `quality` recipe: the demo's stages with the DiT trained for 5x the
              demo's steps (QUALITY_ARGS, 93 minutes of DiT here; EMA 0.999, a checkpoint
              every 3000 steps, all kept so adherence can be measured along the run) on the
              dct21 latent (its own VAE, ~6 minutes: dct10 caps `all` at 0.75, below the
              quality target of 0.8). A finished run of the same VAE preset and sizes can be
              linked in as vae/ and latents/, with its report.json's first three stages, to
              skip them.
  data_dir    where the tfds data sets are built.
  vae_preset  the VAE recipe (configs/vae.py PRESETS); '' = dct10 (dct21 with quality).
  dit_steps   DiT training steps (0 = the recipe's).
  dit_batch   DiT rows a step (0 = the recipe's), e.g. dit_batch=4,dit_steps=3000 for the
              demo's tokens in fewer, larger steps.
  eval_n      basic-level test prompts sampled and scored.
"""
import ml_collections

from configs import common
from configs import dit as dit_configs
from configs import vae as vae_configs

# The demo DiT recipe (measured in benchmarks/results/adherence.json): width 128, 4 blocks,
# a tiny text encoder, basic-level 64x64x17 clips and 64x64 images.
# Fractional (absolute) positions besides RoPE, of (t, h, w): a caption's region is an
# absolute place and its motion a function of the time in the clip, which RoPE alone
# (relative) and text cross-attention (no positions) cannot express. With (h, w) only, the
# 5x run never learnt motion (0.09-0.13 from step 1800 to 4500); with t too, the 900-step
# DiT's motion rose from 0.09 to 0.23 and region from 0.25 to 0.50 (adherence.json).
# Small steps: 1 row of 640 tokens a step for 3600 steps instead of 4 rows for 900 (the
# same tokens, 4x the updates) lifted colour from 0.59-0.63 to 0.86 (2026-11-23).
# Word order: the text encoder's absolute position table (configs/dit.py text_pos, default
# rope+learned) took motion from 0.16 to 0.68: with RoPE alone "from left to right" and
# "from right to left" were one bag of words to the DiT (2026-11-24).
# Rows of 320 tokens (one clip, or five images), 2 a step: the same tokens and updates as
# 1 row of 640, but half the self-attention work (a 640-token row attends over both of its
# clips, masked) and cross-attention over 5 caption slots instead of 8: 0.14 s a step
# against 0.22 here. Three clips to one image (sizes): every clip weighs the same in the
# loss, so at 1:1 half of it went to still images. Together, at 5400 steps: motion 0.68 ->
# 0.86, `all` 0.17 -> 0.27, colour 0.90; at 7200 steps (~17 minutes here): colour 0.96,
# motion 0.92, region 0.75, shape 0.37, `all` 0.29 (adherence.json, 2026-11-24).
# remat=save_attention: the same gradients, less time a step (configs/dit.py `remat`).
# sample_shift=8 (the run's default sampling shift; the training rule gives 1.1 here): the
# 16 solver steps make fewer calls near the data, where this DiT's x0 estimate is worse
# than x_t itself (latent MSE 0.015 against 0.005 at t = 0.05). `all` 0.29 -> 0.38 and 0.24
# -> 0.27 on two seeds of the test prompts, 0.24 -> 0.27 on validation prompts (2026-11-24).
# 6000 steps, not 7200: on a slower instance of this machine kind (0.2 s a step) the whole
# demo took 32.2 minutes at 7200, over its 30-minute budget. `all` 0.29 / 0.30 on two seeds
# of the test prompts against 7200's 0.38 / 0.27; with the 300-step VAE below 0.30 / 0.32
# against 0.40 / 0.28 (adherence.json, 2026-11-24).
# In the same DiT time, width 160 (heads 5) for 4700 steps: colour, size and motion up,
# shape down, `all` 0.27 / 0.30; depth 6 for 4150 steps: 0.16 / 0.24 (adherence.json). None
# of these follows the shape word (benchmarks/attribute_probe.py): at this compute shape is
# the circle prompts' share. Nor did three shape-targeted trials lift shape: the objects'
# tokens weighted up in the loss (loss_weight=contrast: `all` 0.28 / 0.26), 90% text-only
# clips in the task mixture (0.38 / 0.29, probe accuracy 0.28), and 1 row a step for 12000
# steps (0.36 / 0.30, shape 0.40 / 0.37, ~3 minutes more DiT time; adherence.json). Muon
# (optimizer=muon) learns everything but shape faster: colour 0.97, motion 0.96, region 0.92,
# validation loss 0.285 against 0.308, but shape 0.36 / 0.31 and `all` 0.31 / 0.29, with steps
# 15-20% slower here (over the budget); on dct21 `all` 0.26 / 0.27 (adherence.json). Nor did
# sampling: a stochastic DDIM-eta sampler (0.27-0.35 at eta 0.5-0.7, seed noise), or
# autoguidance by an early checkpoint (the quality model by its step 6000: 0.41 vs 0.45). Nor
# a 3x3 convolution over the token grid in every MLP (mlp_conv=True): validation loss 0.298
# against 0.308, `all` 0.31 / 0.31, shape 0.35 / 0.40, steps 25% slower (adherence.json). Nor
# a training-t spread of t_std=1.5 (0.26 / 0.23) or 0.7 (mean 0.31 over four seeds against
# the demo's 0.28), nor an unguided last solver call (0.22 / 0.28), nor guidance against a
# negative caption of the shape words alone (0.17), nor a text encoder of no blocks, whose
# shape words reach the DiT as distinct as its colours (0.25 / 0.23, shape 0.31 / 0.30;
# adherence.json).
DIT_ARGS = dict(variant="XS", text="tiny", level="basic",
                sizes="17x64x64+17x64x64+17x64x64+1x64x64", seq_len=320, max_clips=5,
                text_len=32, batch=2, steps=6000, lr=1e-3, warmup=100, ema=0.995,
                eval_every=0, num_train=4096, pos_embed="fractional_thw",
                remat="save_attention", sample_shift=8.0)
# The `quality` recipe: the same model and data on the dct21 latent (dct10 caps `all` at
# 0.75), 5x the demo's steps: 93 minutes of DiT here (5.4 steps a second), `all` 0.45 / 0.42
# on two seeds of test prompts, 0.49 compositional, shape 0.51 (adherence.json, 2026-11-24);
# the first CPU DiT to follow the shape word (benchmarks/attribute_probe.py). On a GPU,
# configs/scaling.py's base gpu_demo (this recipe at 32x the batch) on dct21 scored `all`
# 0.74 / 0.79 (test / compositional) at its 64x rung.
QUALITY_ARGS = dict(steps=5 * DIT_ARGS["steps"], warmup=200, ema=0.999)
QUALITY_CHECKPOINT_EVERY = 3000
# The demo's VAE trains its decoder for 300 steps instead of the preset's 450 (~1 minute less
# on a slow instance): 27.4 dB against 27.6, and the demo DiT's samples decoded by it scored
# `all` 0.40 / 0.28 on two seeds of the test prompts against 0.38 / 0.27 (adherence.json).
DEMO_VAE_STEPS = 300


def get_config(arg=None):
  arg = common.parse_arg(arg, quick=False, quality=False, data_dir="data/tfds",
                         vae_preset="", dit_steps=0, dit_batch=0, eval_n=100)
  if arg.quick and arg.quality:
    raise ValueError("Config arguments quick=True and quality=True exclude each other; "
                     "pick one.")
  config = ml_collections.ConfigDict()
  config.data_dir = arg.data_dir
  config.check_clips = 8 if arg.quick else 64  # evaluator check on exported clips
  # dct10: ~5 minutes here, 27.6 dB, a fixed DCT encoder whose smooth latent the DiT
  # draws colours on far better than tiny10's learned one (0.62 vs 0.27; adherence.json).
  vae_preset = arg.vae_preset or ("dct21" if arg.quality else "dct10")
  vae_arg = f"preset={vae_preset},data_dir={arg.data_dir}"
  if not arg.quality:
    vae_arg += f",steps={DEMO_VAE_STEPS}"
  if arg.quick:
    vae_arg += ",runlocal=True,sizes=9x32x32"
  config.vae = vae_configs.get_config(vae_arg)

  dit_args = dict(DIT_ARGS, data_dir=arg.data_dir, latents="DEMO_LATENTS",
                  vae_workdir="DEMO_VAE")
  if arg.quality:
    dit_args.update(QUALITY_ARGS)
  if arg.dit_steps:
    dit_args["steps"] = arg.dit_steps
  if arg.dit_batch:
    dit_args["batch"] = arg.dit_batch
  if arg.quick:
    dit_args.update(runlocal=True, level="basic")
  dit_arg = ",".join(f"{k}={v}" for k, v in dit_args.items())
  config.dit = dit_configs.get_config(dit_arg)  # the demo fills in the two paths
  config.dit.unlock()
  config.dit.train.progress = True
  config.dit.train.checkpoint_every = 600  # an interrupted demo loses <= ~2 minutes
  if arg.quality:  # keep every checkpoint: adherence along the run
    config.dit.train.checkpoint_every = QUALITY_CHECKPOINT_EVERY
    config.dit.train.keep_checkpoints = -(-config.dit.train.steps // QUALITY_CHECKPOINT_EVERY)
  config.dit.lock()

  # Sampling and evaluation of the trained DiT.
  config.sample = {"steps": 8 if arg.quick else 16, "method": "dpmpp_2m", "guidance": 4.0,
                   "frames": 9 if arg.quick else 17, "size": 32 if arg.quick else 64,
                   "long_seconds": 4.0 if arg.quick else 10.0, "batch": 16}
  # t2i_n: as many prompts again sampled as images (T = 1), scored into report.json's
  # adherence_t2i (~15 s here; 0 = none).
  config.eval = {"n": 4 if arg.quick else arg.eval_n, "split": "test", "level": "basic",
                 "task_clips": 1 if arg.quick else 4,
                 "t2i_n": 4 if arg.quick else arg.eval_n}
  config.lock()  # a typo in an override fails instead of adding a field
  return config
