"""Train the causal video VAE (default: Shapes World, 64x64x17, full level).

  python -m sora_jax.main --config configs/vae.py:variant=tiny --workdir runs/vae_tiny
  python -m sora_jax.main --config configs/vae.py:variant=tiny,runlocal=True --workdir /tmp/v

Arguments (after the colon, comma-separated key=value; unknown keys are an error):
  variant      VAE size preset: tiny, S, B, L (sora_jax/models/vae.py VARIANTS).
  ft, s, c     temporal factor (1, 2, 4), spatial factor (4, 8, 16), latent channels.
  steps        training steps; batch: global batch size; lr: peak learning rate.
  sizes        Shapes World clip sizes, TxHxW joined by '+', e.g. 17x64x64+1x64x64.
  level        Shapes World level: basic or full.
  data_dir     where the tfds data set is built / read.
  gan          hinge-GAN weight (0 = off); gan_start: its first step.
  runlocal     shrink everything so a test or a laptop runs it in seconds.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(
      arg, variant="tiny", ft=4, s=8, c=16, steps=2000, batch=8, lr=1e-3,
      sizes="17x64x64", level="full", data_dir="data/tfds", num_train=4096,
      gan=0.0, gan_start=0, edge=0.1, kl=1e-6, seed=0, runlocal=False)
  config = ml_collections.ConfigDict()
  config.task = "vae"
  config.seed = arg.seed
  config.mesh = {"data": -1}

  config.model = {"variant": arg.variant, "temporal_factor": arg.ft,
                  "spatial_factor": arg.s, "latent_channels": arg.c}
  config.loss = {"recon": "l1", "kl_weight": arg.kl, "edge_weight": arg.edge,
                 "gan_weight": arg.gan, "disc_start_step": arg.gan_start,
                 "perceptual_weight": 0.0, "perceptual_path": None}
  config.disc = {"base_channels": 32, "num_layers": 3, "norm_groups": 8}
  config.optim = {"lr": arg.lr, "warmup_steps": 100, "final_lr_frac": 0.1, "b1": 0.9,
                  "b2": 0.99, "weight_decay": 1e-4, "grad_clip": 1.0}

  sizes = common.parse_sizes(arg.sizes, "config sizes", max_side=256)
  config.data = common.shapes_world_data(arg.level, sizes, arg.num_train, 64, arg.data_dir)

  config.train = {"steps": arg.steps, "batch_size": arg.batch, "log_every": 50,
                  "eval_every": 500, "checkpoint_every": 500, "keep_checkpoints": 2,
                  "progress": True}
  config.eval = {"split": "validation", "num_clips": 64, "batch_size": 8, "grid_clips": 4,
                 "latent_stats_clips": 256}

  if arg.runlocal:  # seconds on a laptop or in a test
    config.model.update({"latent_channels": min(arg.c, 8), "base_channels": 8,
                         "channel_mults": (1, 2, 2, 2), "norm_groups": 4})
    config.data.name.num_examples = {"train": 16, "validation": 8, "test": 8,
                                     "compositional": 8}
    config.train.update({"steps": min(arg.steps, 4), "batch_size": 8, "log_every": 1,
                         "eval_every": 2, "checkpoint_every": 2})
    config.eval.update({"num_clips": 4, "batch_size": 4, "grid_clips": 2,
                        "latent_stats_clips": 8})
    config.optim.warmup_steps = 1
  config.lock()  # a typo in an override fails instead of adding a field
  return config
