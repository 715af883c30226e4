"""Train the causal video VAE (default: Shapes World, 64x64x17, full level).

  python -m sora_jax.main --config configs/vae.py:preset=dct10 --workdir runs/vae_dct10
  python -m sora_jax.main --config configs/vae.py:preset=tiny10 --workdir runs/vae_tiny10
  python -m sora_jax.main --config configs/vae.py:preset=long60 --workdir runs/vae_long60
  python -m sora_jax.main --config configs/vae.py:variant=tiny,runlocal=True --workdir /tmp/v

Expected: preset=dct10 (the demo's) 27.6 dB, `eval_all_ratio` 0.73, ~6 min on a 2-core CPU.

Arguments (after the colon, comma-separated key=value; unknown keys are an error):
  preset       a named recipe (PRESETS below) giving new defaults; explicit keys still win.
  variant      VAE size preset: tiny, tiny_s8, S, B, L (sora_jax/models/vae.py VARIANTS).
  ft, s, c     temporal, spatial factors, latent channels (0 = the variant's; tiny: 4x4x4, C=32).
  encoder      learned, or dct: fixed, the c lowest DCT coefficients of each 4x4x4 patch.
  latent_norm  how latents are normalised for the DiT: channel (unit std each) or global.
  steps        training steps; batch: global batch size; lr: peak learning rate.
  warmup       linear warm-up steps; final_lr: cosine decay's end, as a fraction of lr.
  sizes        Shapes World clip sizes, TxHxW joined by '+', e.g. 17x64x64+1x64x64.
  level        Shapes World level: basic or full.
  num_train    Shapes World training clips.
  video_folder train on a folder of videos + captions.jsonl; `sizes` gives T and (H, W).
  data_dir     where the tfds data set is built / read.
  edge, kl     edge (spatial-gradient L1) and KL loss weights.
  scale_eq     scale-equivariance weight: 2x-pooled latents decode to the 2x-pooled clip.
  smooth       latent smoothness weight (vae_losses.latent_roughness): blobs, not spikes.
  gan          hinge-GAN weight (0 = off); gan_start: its first step.
  seed         the run's random seed.
  eval_every   steps between mid-run evaluations (0 = only the final one).
  rules        sharding preset (sora_jax/sharding/rules.py): dp, vae_spatial (split by height) or
               vae_fsdp (kernels split over fsdp).
  runlocal     shrink everything so a test or a laptop runs it in seconds.
Mesh sizes: --config.mesh.fsdp=8 etc. (data, fsdp, context, tensor; one may be -1); slices:
--config.mesh.dcn.data=2.
"""
from collections.abc import Mapping

import ml_collections

from configs import common

# Named recipes (tiny10, long60: budgets of 10 and 60 minutes on a 2-core CPU). Their
# measured results are in benchmarks/results/vae_quality.json (and EXPERIMENTS.md).
PRESETS = {
    # Few steps, so batch 4 (more updates per second), a short warm-up and a strong edge
    # term (Shapes World's hard outlines are what L1 blurs first).
    "tiny10": dict(variant="tiny", steps=450, batch=4, lr=1e-3, warmup=30, final_lr=0.02,
                   edge=0.5, eval_every=0),
    # The same model, 3.5x the steps at twice the batch (the tiny VAE at C = 32 is near its
    # capacity: more training barely helps).
    "long60": dict(variant="tiny", steps=1600, batch=8, lr=1e-3, warmup=50, final_lr=0.02,
                   edge=0.5, eval_every=400),
    # tiny10 with C = 64 latent channels (4x4x4 patches of 192 values -> 64: 3x fewer values
    # than pixels), for fast, large, high-contrast objects that C = 32 blurs between frames.
    "tiny10_c64": dict(variant="tiny", c=64, steps=450, batch=4, lr=1e-3, warmup=30,
                       final_lr=0.02, edge=0.5, eval_every=0),
    # tiny10's decoder on a fixed latent: encoder=dct, each 4x4x4 patch's 12 lowest-frequency
    # DCT coefficients (mean colour, then its first-order changes in x, y and t), KL off
    # (nothing to regularise). Worse reconstructions than tiny10's learned code, but a
    # smoother latent that a small DiT draws on far better: the demo's latent.
    "dct10": dict(variant="tiny", c=12, encoder="dct", kl=0.0, steps=450, batch=4, lr=1e-3,
                  warmup=30, final_lr=0.02, edge=0.5, eval_every=0),
}
# dct10 plus the 9 second-order spatial DCT coefficients (xx, yy, xy per colour), C = 21:
# the latent of the `quality` recipe, whose target (`all` >= 0.8) dct10's reconstructions
# cannot reach.
PRESETS["dct21"] = dict(PRESETS["dct10"], c=21)

LATENT_NORMS = ("channel", "global")
_DEFAULTS = dict(
    preset="", variant="tiny", ft=0, s=0, c=0, encoder="learned", latent_norm="channel",
    steps=2000, batch=8, lr=1e-3, warmup=100, final_lr=0.1, sizes="17x64x64", level="full",
    data_dir="data/tfds", num_train=4096,
    gan=0.0, gan_start=0, edge=0.1, kl=1e-6, scale_eq=0.0, smooth=0.0, seed=0, eval_every=500,
    video_folder="", rules="dp", runlocal=False)


def _preset_defaults(arg):
  """Defaults with the named preset's values applied (explicit keys are parsed after)."""
  if isinstance(arg, Mapping):
    preset = str(arg.get("preset", ""))
  else:
    preset = common.parse_arg(
        ",".join(i for i in (arg or "").split(",") if i.strip().startswith("preset=")),
        preset="").preset
  if preset and preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}.")
  return {**_DEFAULTS, **PRESETS.get(preset, {})}


def get_config(arg=None):
  arg = common.parse_arg(arg, **_preset_defaults(arg))
  config = ml_collections.ConfigDict()
  config.task = "vae"
  config.seed = arg.seed
  common.add_mesh(config, arg.rules)

  if arg.latent_norm not in LATENT_NORMS:
    raise ValueError(f"Config argument latent_norm={arg.latent_norm!r}; allowed: "
                     f"{', '.join(LATENT_NORMS)}.")
  config.model = {"variant": arg.variant, "encoder": arg.encoder}
  for key, field in (("ft", "temporal_factor"), ("s", "spatial_factor"),
                     ("c", "latent_channels")):
    if arg[key]:
      config.model[field] = arg[key]
  config.loss = {"recon": "l1", "kl_weight": arg.kl, "edge_weight": arg.edge,
                 "scale_eq_weight": arg.scale_eq, "smooth_weight": arg.smooth,
                 "gan_weight": arg.gan, "disc_start_step": arg.gan_start,
                 "perceptual_weight": 0.0, "perceptual_path": None}
  config.disc = {"base_channels": 32, "num_layers": 3, "norm_groups": 8}
  config.optim = {"lr": arg.lr, "warmup_steps": arg.warmup, "final_lr_frac": arg.final_lr,
                  "b1": 0.9, "b2": 0.99, "weight_decay": 1e-4, "grad_clip": 1.0}

  sizes = common.parse_sizes(arg.sizes, "config sizes", max_side=256)
  if arg.video_folder:
    frames = {t for t, _, _ in sizes}
    if len(frames) != 1:
      raise ValueError(f"sizes={arg.sizes!r}: a video folder is cut into clips of one T; "
                       f"got T in {sorted(frames)}.")
    config.data = common.video_folder_data(arg.video_folder, frames.pop(),
                                           [(h, w) for _, h, w in sizes], arg.data_dir)
  else:
    config.data = common.shapes_world_data(arg.level, sizes, arg.num_train, 64,
                                           arg.data_dir)

  config.train = {"steps": arg.steps, "batch_size": arg.batch, "log_every": 50,
                  "eval_every": arg.eval_every, "checkpoint_every": 500,
                  "keep_checkpoints": 2, "progress": True, "accept_data_change": False,
                  **common.OBSERVE}
  config.eval = {"split": "validation", "num_clips": 64, "batch_size": 8, "grid_clips": 4,
                 "latent_stats_clips": 256, "latent_norm": arg.latent_norm}

  if arg.runlocal:  # seconds on a laptop or in a test
    config.model.update({"latent_channels": min(arg.c or 8, 8), "base_channels": 8,
                         "channel_mults": (1, 2, 2, 2), "norm_groups": 4})
    if not arg.video_folder:
      config.data.name.num_examples = {"train": 16, "validation": 8, "test": 8,
                                       "compositional": 8}
    config.train.update({"steps": min(arg.steps, 4), "batch_size": 8, "log_every": 1,
                         "eval_every": 2, "checkpoint_every": 2})
    config.eval.update({"num_clips": 4, "batch_size": 4, "grid_clips": 2,
                        "latent_stats_clips": 8})
    config.optim.warmup_steps = 1
  config.lock()  # a typo in an override fails instead of adding a field
  return config
