"""Train the causal video VAE (default: Shapes World, 64x64x17, full level).

  python -m sora_jax.main --config configs/vae.py:preset=tiny10 --workdir runs/vae_tiny10
  python -m sora_jax.main --config configs/vae.py:preset=long60 --workdir runs/vae_long60
  python -m sora_jax.main --config configs/vae.py:variant=tiny,runlocal=True --workdir /tmp/v

Arguments (after the colon, comma-separated key=value; unknown keys are an error):
  preset       a named recipe (PRESETS below) that sets new defaults for the other keys;
               keys given explicitly still win. '' = none.
  variant      VAE size preset: tiny, tiny_s8, S, B, L (sora_jax/models/vae.py VARIANTS).
  ft, s, c     temporal factor (1, 2, 4), spatial factor (4, 8, 16), latent channels;
               0 = the variant's default (tiny: 4x4x4, C=16; others 4x8x8, C=16).
  encoder      learned, or dct: no encoder network, the latents are the c lowest-frequency
               DCT coefficients of each 4x4x4 patch (c=3: the mean-pooled thumbnail) and only
               the decoder trains (tiny variant; see VAEConfig.encoder).
  latent_norm  how the saved latent statistics normalise the DiT's latents: channel (each
               channel to unit std) or global (one std for all channels, so their relative
               scales survive: with encoder=dct, fine DCT coefficients stay small, as in
               pixels, and the DiT draws coarse before fine).
  steps        training steps; batch: global batch size; lr: peak learning rate.
  warmup       linear warm-up steps; final_lr: cosine decay's end, as a fraction of lr.
  sizes        Shapes World clip sizes, TxHxW joined by '+', e.g. 17x64x64+1x64x64.
  level        Shapes World level: basic or full.
  video_folder train on a folder of your videos + captions.jsonl instead of Shapes World
               (data_pipelines/video_folder); `sizes` then gives T and the (H, W) targets.
  data_dir     where the tfds data set is built / read.
  edge, kl     edge (spatial-gradient L1) and KL loss weights.
  scale_eq     scale-equivariance weight: 2x-pooled latents must decode to the 2x-pooled
               clip (for a smoother, more diffusable latent; sora_jax/models/vae_losses.py).
  smooth       latent smoothness weight: penalises each latent channel's share of spatial
               variance above a 3x3 blur's pass band (vae_losses.latent_roughness), so an
               object is written as a smooth blob, not as spikes the DiT fragments.
  gan          hinge-GAN weight (0 = off); gan_start: its first step.
  eval_every   steps between mid-run evaluations (0 = only the final one).
  rules        sharding rule preset (sora_jax/sharding/rules.py): dp, or vae_spatial
               (frames split by height over fsdp x context).
               Mesh sizes: --config.mesh.fsdp=8 etc. (sizes of data, fsdp, context,
               tensor; one may be -1); slices: --config.mesh.dcn.data=2.
  runlocal     shrink everything so a test or a laptop runs it in seconds.
"""
import ml_collections

from configs import common

# Named recipes, each recorded in benchmarks/results/vae_quality.json. Budgets are wall
# time on a 2-core CPU shared with another job (tiny: ~1.8 s/step at batch 8 there).
PRESETS = {
    # ~10 minutes (measured 6.0): few steps, so batch 4 (more updates per second), a short
    # warm-up and a strong edge term (Shapes World's hard outlines are what L1 blurs first).
    "tiny10": dict(variant="tiny", steps=450, batch=4, lr=1e-3, warmup=30, final_lr=0.02,
                   edge=0.5, eval_every=0),
    # <= 60 minutes (measured 40.5): the same model, 3.5x the steps at twice the batch.
    # 29.8 dB: the tiny VAE at C = 32 is at its capacity (10x its clips on a GPU: 29.78).
    "long60": dict(variant="tiny", steps=1600, batch=8, lr=1e-3, warmup=50, final_lr=0.02,
                   edge=0.5, eval_every=400),
    # tiny10 with C = 64 latent channels (4x4x4 patches of 192 values -> 64: 3x fewer values
    # than pixels): 32.8 dB and every shape kept in 4.5 minutes. At C = 32 the errors sit in
    # the frames inside each 4-frame group of fast, large, high-contrast objects.
    "tiny10_c64": dict(variant="tiny", c=64, steps=450, batch=4, lr=1e-3, warmup=30,
                       final_lr=0.02, edge=0.5, eval_every=0),
    # tiny10's decoder on a fixed latent: encoder=dct, each 4x4x4 patch's 12 lowest-frequency
    # DCT coefficients (mean colour, then its first-order changes in x, y and t), KL off
    # (nothing to regularise). 27.6 dB, `all` ratio 0.73 (0.75 on basic clips) in 5.6
    # minutes; smoother than tiny10's learned code (roughness 0.22 vs 0.39). c=3 (the
    # mean-pooled thumbnail alone) is smoother still but keeps only 0.28 (4x4 pooling blurs
    # the shapes).
    "dct10": dict(variant="tiny", c=12, encoder="dct", kl=0.0, steps=450, batch=4, lr=1e-3,
                  warmup=30, final_lr=0.02, edge=0.5, eval_every=0),
}
# dct10 plus the 9 second-order spatial DCT coefficients (xx, yy, xy per colour), C = 21:
# 28.2 dB, and reconstructions of basic test clips keep `all` in 94% (dct10: 75%) in 6.4
# minutes. The latent of the `quality` recipe, whose target (`all` >= 0.8) dct10 caps.
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
                  "keep_checkpoints": 2, "progress": True}
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
