"""The end-to-end demo on the embedded Shapes World: README's first command, `make demo`.

  python -m sora_jax.demo --workdir runs/demo [--config configs/demo.py:quick=True]
  python -m sora_jax.demo --workdir runs/quality --config configs/demo.py:quality=True

Expected: `all` ~0.30 on 100 basic test prompts in ~25 min on a 2-core CPU (quality: ~0.45).

Stages (each resumes when run again): check the analytic evaluator on exported Shapes
World clips; train the tiny VAE (full level, 64x64x17); encode the basic-level clips and
images to latents once; train the demo DiT on them; sample every task into `samples/`
(npy + mp4 + gif, `manifest.jsonl`, a contact sheet); score `eval_n` basic-level test
prompts with the analytic evaluator, plus the task checks. Budget: 30 minutes on a 2-core
CPU, set-up included. What each choice of the recipe bought: EXPERIMENTS.md.

Arguments:
  quick       a few-minute smoke run (tiny data, a few steps) instead of the real demo.
  quality     the longer recipe: dct21 latent, 30000 DiT steps, every checkpoint kept.
  data_dir    where the tfds data sets are built.
  vae_preset  the VAE recipe (configs/vae.py PRESETS); '' = dct10 (dct21 with quality).
  dit_steps   DiT training steps (0 = the recipe's).
  dit_batch   DiT rows a step (0 = the recipe's); e.g. 4 with dit_steps=3750: fewer, larger steps.
  eval_n      basic-level test prompts sampled and scored.
With quality, a finished run of the same VAE preset and sizes can be linked in as vae/ and
latents/, with its report.json's first three stages, to skip them; checkpoints every 3000
steps, all kept, let adherence be measured along the run.
"""
import ml_collections

from configs import common
from configs import dit as dit_configs
from configs import vae as vae_configs

# The demo DiT recipe: width 128, 4 blocks, a tiny text encoder, basic-level 64x64x17 clips
# and 64x64 images. Each choice's measured effect is in EXPERIMENTS.md.
# pos_embed=fractional_thw: a caption's region is an absolute place and its motion a
# function of the time in the clip, which RoPE (relative) and cross-attention (no positions)
# cannot express.
# batch=2 rows of seq_len=320 (one clip, or five images): small steps train this DiT better
# than large ones, and a 320-token row costs half the attention of a 640-token one.
# sizes, three clips to one image: every clip weighs the same in the loss, so at 1:1 half
# of it went to still images.
# remat=save_attention: the same gradients, less time a step on a CPU, where storing each
# block's [B, H, N, N] attention weights costs more than recomputing them.
# sample_shift=8 (the training rule gives 1.1 here): fewer solver calls near the data, where
# this DiT's x0 estimate is worse than x_t itself.
# steps=7500: the DiT time of 6000 steps before the modulation was computed per slot (23%
# faster steps); the whole demo stays within its 30-minute budget on slow 2-core instances.
DIT_ARGS = dict(variant="XS", text="tiny", level="basic",
                sizes="17x64x64+17x64x64+17x64x64+1x64x64", seq_len=320, max_clips=5,
                text_len=32, batch=2, steps=7500, lr=1e-3, warmup=100, ema=0.995,
                eval_every=0, num_train=4096, pos_embed="fractional_thw",
                remat="save_attention", sample_shift=8.0)
# The `quality` recipe: the same model and data on the dct21 latent, whose reconstructions
# keep the shapes that dct10's lose, trained 4x longer with a longer EMA.
QUALITY_ARGS = dict(steps=30000, warmup=200, ema=0.999)
QUALITY_CHECKPOINT_EVERY = 3000
# The demo's VAE trains its decoder for 300 steps instead of the preset's 450: time saved
# for the budget, at no cost to the DiT's adherence.
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
  # dct10: a fixed DCT encoder whose smooth latent the small DiT draws on far better than
  # on a learned one; dct21 adds the coefficients the quality target needs.
  vae_preset = arg.vae_preset or ("dct21" if arg.quality else "dct10")
  vae_args = {"preset": vae_preset, "data_dir": arg.data_dir}
  if not arg.quality:
    vae_args["steps"] = DEMO_VAE_STEPS
  if arg.quick:
    vae_args.update(runlocal=True, sizes="9x32x32")
  config.vae = vae_configs.get_config(vae_args)

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
  config.dit = dit_configs.get_config(dit_args)  # the demo fills in the two paths
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
