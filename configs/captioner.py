"""Train a video captioner (or a prompt upsampler) on the DiT's latents of Shapes World.

  # a captioner of the demo's latents (after `make demo`): clip latents -> detailed caption
  python -m sora_jax.main --config configs/captioner.py:vae_workdir=runs/demo/vae,latents=runs/demo/latents --workdir runs/captioner
  # a prompt upsampler: short caption -> detailed caption (no clip is read)
  python -m sora_jax.main --config configs/captioner.py:source=text,vae_workdir=runs/demo/vae,latents=runs/demo/latents --workdir runs/upsampler
  # seconds, with a RANDOM tiny VAE (tests, laptops):
  python -m sora_jax.main --config configs/captioner.py:runlocal=True --workdir /tmp/cap_local

Expected: on the demo's latents, the captioner (S, 3000 steps, every training clip) writes
test captions whose attributes are right >= 95% of the time (`final/caption_all` is the
share of captions right in every attribute); see README "Recaptioning".

Arguments (after the colon, comma-separated key=value; unknown keys are an error):
  source       video (clip latents -> caption) or text (short caption -> detailed).
  variant      size preset (sora_jax/models/captioner.py VARIANTS): tiny, S, B, L.
  labelled     the first N training records are the labelled share (0 = all): they train
               the captioner on their detailed captions, and, with short_rest, every other
               record on its short one (a caption of another kind; the alt-text world).
  short_rest   with labelled > 0: the other records train on their short captions (True),
               or not at all (False).
  labelled_weight  with short_rest: the labelled records' share of the training stream
               (they are repeated to it; default 0.5).
  caption      the caption it learns to write: detailed (default), short or synthetic.
  steps, batch, lr, warmup, ema   training steps, global batch (packed rows), peak LR,
               warm-up, EMA decay (evaluation and loading use the EMA).
  vae_workdir, latents, sizes, level, data_dir, num_train, patch, seq_len, max_clips,
  text_len     the data, as in configs/dit.py (the same values read the same latents).
  source_len   tokens of a short prompt (source=text).
  seed, eval_every, rules, runlocal   as in configs/dit.py.
"""
import ml_collections

from configs import common
from configs import dit as dit_configs

_DEFAULTS = dict(
    source="video", variant="S", labelled=0, short_rest=True, labelled_weight=0.5,
    caption="detailed", steps=3000, batch=8,
    lr=1e-3, warmup=100, ema=0.99, vae_workdir="", latents="on_the_fly",
    sizes="17x64x64+17x64x64+17x64x64+1x64x64", level="basic", data_dir="data/tfds",
    num_train=4096, patch="1x4x4", seq_len=320, max_clips=8, text_len=32, source_len=12,
    seed=0, eval_every=1000, rules="fsdp", runlocal=False)


def get_config(arg=None):
  arg = common.parse_arg(arg, **_DEFAULTS)
  config = ml_collections.ConfigDict()
  config.task = "captioner"
  config.seed = arg.seed
  common.add_mesh(config, arg.rules)
  config.model = {"variant": arg.variant, "source": arg.source, "vocab_size": 514,
                  "patch": dit_configs.parse_patch(arg.patch), "overrides": {}}
  dit_configs.add_latent_data(config, arg)
  config.data.labelled = arg.labelled
  config.data.short_rest = arg.short_rest
  config.data.labelled_weight = arg.labelled_weight
  config.packing = {"seq_len": arg.seq_len, "max_clips": arg.max_clips,
                    "text_len": arg.text_len, "source_len": arg.source_len, "num_bins": 4}
  config.ema = arg.ema
  config.ema_debias = True
  config.optim = {"name": "adamw", "lr": arg.lr, "warmup_steps": arg.warmup,
                  "final_lr_frac": 0.1, "b1": 0.9, "b2": 0.99, "weight_decay": 0.0,
                  "grad_clip": 1.0}
  config.train = {"steps": arg.steps, "batch_size": arg.batch, "log_every": 50,
                  "eval_every": arg.eval_every, "checkpoint_every": 1000,
                  "keep_checkpoints": 2, "progress": True, "peak_flops": 0.0,
                  "accept_data_change": False, **common.OBSERVE}
  config.eval = {"split": "validation", "num_clips": 64, "batch_size": 8}

  if arg.runlocal:  # seconds on a laptop or in a test
    config.model.variant = "tiny"
    config.model.vocab_size = 258
    config.tokenizer.update({"vocab_size": 256, "num_clips": 64})
    config.data.name.sizes = [[5, 32, 32], [1, 32, 32]]
    config.data.name.num_examples = {"train": 16, "validation": 8, "test": 8,
                                     "compositional": 8}
    config.packing.update({"seq_len": min(arg.seq_len, 64), "max_clips": min(arg.max_clips, 4),
                           "num_bins": 1})
    config.train.update({"steps": min(arg.steps, 4), "batch_size": 8, "log_every": 1,
                         "eval_every": 2, "checkpoint_every": 2})
    config.eval.update({"num_clips": 8, "batch_size": 4})
    config.optim.warmup_steps = 1
  config.lock()  # a typo in an override fails instead of adding a field
  return config
