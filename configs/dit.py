"""Train the text-to-video DiT on VAE latents of Shapes World (rectified flow, packed clips).

  # precomputed latents (`python -m sora_jax.data.encode_latents`, once per split; README):
  python -m sora_jax.main --config configs/dit.py:variant=S,vae_workdir=runs/vae_tiny10,latents=data/latents/sw_tiny10 --workdir runs/dit_S
  # small run, latents encoded on the fly by the trained VAE:
  python -m sora_jax.main --config configs/dit.py:variant=tiny,vae_workdir=runs/vae_tiny10 --workdir runs/dit_tiny
  # seconds, with a RANDOM tiny VAE (tests, laptops):
  python -m sora_jax.main --config configs/dit.py:runlocal=True --workdir /tmp/dit_local

Expected: the demo's recipe of this file (configs/demo.py) scores `all` ~0.30 on a 2-core CPU.

Arguments (after the colon, comma-separated key=value; unknown keys are an error):
  variant      DiT size preset (sora_jax/models/dit.py VARIANTS): tiny, XS, S, B, L, XL.
  width, depth, heads   override the preset's shape (0 = the preset's; width % heads == 0).
  text         text encoder preset (sora_jax/models/text.py VARIANTS): tiny, S, B, L.
  text_pos     its positions: rope+learned (default: the table carries word order), rope, learned.
  text_encoder joint (default: the `text` preset, trained with the DiT) or t5: a frozen T5
               encoder, its weights from --config.text.path (a transformers folder) or, with
               no path, a seeded random small T5 (`T5_SMOKE`; a smoke test of the frozen path).
  steps, batch, lr, warmup   training steps, global batch (packed sequences), peak LR, warm-up.
  optimizer    adamw (default) or muon (Muon on hidden matrices, AdamW on the rest; train/optim.py).
  vae_workdir  a finished VAE run ('' = a randomly initialised tiny VAE, loudly logged).
  latents      'on_the_fly' or a directory of `python -m sora_jax.data.encode_latents` output.
  workers      processes that read and pack precomputed latents (0 = one thread, ~300 rows/s).
  seq_len      tokens per packed sequence; max_clips: most clips per sequence.
  text_len     caption tokens per clip (longer captions are cut).
  patch        latent patch 'PTxPHxPW', e.g. 1x2x2.
  cfg_drop     caption drop rate for classifier-free guidance.
  t_mean, t_std  logit-normal training timestep distribution (before the token shift).
  prediction   x0 (default: clean latents, turned into the velocity) or v; DiTConfig.
  pos_embed    none (RoPE only), fractional (+ place in frame) or fractional_thw (+ time in clip).
  adaln        per_block (default: adaLN-Zero) or single (PixArt-alpha's adaLN-single).
  remat        what a block keeps for the backward pass (dit.py REMAT_POLICIES); none default.
  sample_shift  the run's default sampling shift for sample/evaluate/demo (0 = training rule).
  ema          EMA decay of the params (evaluation uses the EMA).
  ema_debias   bias-correct the EMA as Adam does (default True): it averages only the steps taken.
  caption      the training caption: detailed, short, synthetic (a captioner's, written by
               `python -m sora_jax.data.recaption`) or blend (synthetic with probability
               synthetic_share, else short, drawn anew each epoch: DALL-E 3's blend).
  synthetic_share  blend's share of synthetic captions (default 0.95).
  sizes, level, data_dir, num_train   the Shapes World pixel data (on-the-fly encoding).
  peak_flops   peak FLOP/s a device for MFU (0 = train/throughput.py's table by device kind).
  seed         the run's random seed.
  eval_every   steps between mid-run evaluations (0 = only the final one).
  rules        sharding preset (sharding/rules.py): dp, fsdp, fsdp_tensor or fsdp_context.
  attention    attention backend (models/attention.py), e.g. blocked (long rows on a CPU), ring
               or all_to_all; '' = xla.
  runlocal     shrink everything so a test or a laptop runs it in seconds.
Mesh sizes: --config.mesh.fsdp=8 etc. (data, fsdp, context, tensor; one may be -1); slices:
--config.mesh.dcn.data=2. fsdp_context puts tokens over the context axis: pair with
attention=ring.
"""
import ml_collections

from configs import common

_DEFAULTS = dict(
    variant="S", width=0, depth=0, heads=0, text="S", text_pos="rope+learned", steps=20000,
    batch=32, lr=3e-4,
    warmup=500, vae_workdir="", latents="on_the_fly", seq_len=1024, max_clips=16, text_len=48,
    patch="1x2x2", cfg_drop=0.1, ema=0.999, ema_debias=True, caption="detailed", optimizer="adamw",
    synthetic_share=0.95,
    sizes="17x64x64+1x64x64", level="full", data_dir="data/tfds", num_train=4096,
    peak_flops=0.0, seed=0, eval_every=2000, rules="fsdp", attention="", prediction="x0",
    pos_embed="none", adaln="per_block", t_mean=1.0, t_std=1.0, sample_shift=0.0, workers=0,
    remat="none", text_encoder="joint", runlocal=False)
# The frozen T5 of text_encoder=t5 without weights: a small random UMT5-like encoder.
T5_SMOKE = {"vocab_size": 512, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2,
            "num_heads": 4, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
            "per_layer_position_bias": True}


def parse_patch(text: str) -> tuple[int, int, int]:
  try:
    patch = tuple(int(v) for v in text.lower().split("x"))
  except ValueError:
    patch = ()
  if len(patch) != 3 or min(patch) < 1:
    raise ValueError(f"Config argument patch={text!r} is not PTxPHxPW (e.g. 1x2x2).")
  return patch


def add_latent_data(config: ml_collections.ConfigDict, arg) -> None:
  """The `tokenizer`, `vae` and `data` sections of a config that reads VAE latents of
  Shapes World (the DiT's, and the captioner's: the same arguments read the same latents)."""
  # '' = trained from the training captions, written to WORKDIR/tokenizer.model; kind "t5":
  # a pretrained encoder's sentencepiece model (its spiece.model or folder) at path.
  config.tokenizer = {"path": "", "vocab_size": 512, "num_clips": 2000,
                      "kind": "sentencepiece"}
  # The tiny VAE used only when vae_workdir is empty (random init; tests and runlocal);
  # `wan`: a diffusers Wan2.1 VAE folder instead (configs/wan.py).
  config.vae = {"workdir": arg.vae_workdir, "wan": "",
                "random_model": {"variant": "tiny", "base_channels": 8, "norm_groups": 4,
                                 "latent_channels": 8}}
  sizes = common.parse_sizes(arg.sizes, "config sizes", max_side=256)
  config.data = common.shapes_world_data(arg.level, sizes, arg.num_train, 64, arg.data_dir)
  config.data.latents = arg.latents
  config.data.caption = arg.caption


def get_config(arg=None):
  arg = common.parse_arg(arg, **_DEFAULTS)
  for key in ("width", "depth", "heads"):
    if arg[key] < 0:
      raise ValueError(f"Config argument {key}={arg[key]} must be >= 0 (0 = the preset's).")
  config = ml_collections.ConfigDict()
  config.task = "dit"
  config.seed = arg.seed
  common.add_mesh(config, arg.rules)

  # x0-prediction: see `prediction` in sora_jax/models/dit.py (DiTConfig).
  # pretrained: a diffusers Wan2.1 transformer folder the DiT starts from (configs/wan.py).
  config.model = {"variant": arg.variant, "patch": parse_patch(arg.patch), "pretrained": "",
                  "overrides": {"prediction": arg.prediction, "pos_embed": arg.pos_embed,
                                "adaln": arg.adaln, "remat": arg.remat}}
  shape = {"width": arg.width, "depth": arg.depth, "num_heads": arg.heads}
  config.model.overrides.update({k: v for k, v in shape.items() if v})
  # encoder "t5": frozen pretrained (path: a transformers folder; '' = random `t5` config).
  if arg.text_encoder not in ("joint", "t5"):
    raise ValueError(f"Config argument text_encoder={arg.text_encoder!r}; allowed: joint, t5.")
  config.text = {"variant": arg.text, "vocab_size": 512,
                 "overrides": {"position": arg.text_pos}, "encoder": arg.text_encoder,
                 "path": "", "t5": T5_SMOKE, "dtype": "float32", "zero_padding": True}
  add_latent_data(config, arg)
  config.data.synthetic_share = arg.synthetic_share
  if arg.workers and arg.latents == "on_the_fly":
    raise ValueError(f"Config argument workers={arg.workers} needs precomputed latents "
                     "(latents=DIR); on-the-fly encoding runs the VAE in this process.")
  config.data.num_workers = arg.workers
  config.packing = {"seq_len": arg.seq_len, "max_clips": arg.max_clips,
                    "text_len": arg.text_len, "num_bins": 4}
  # SD3's logit-normal(t_mean, t_std) t, shifted by sqrt(clip tokens / base_tokens) (0 = no
  # shift). The mean is moved to the noisy side (JiT does the same for x0-prediction, whose
  # loss weights small t heavily): sampling decides colour, place and motion at t > 0.8,
  # which logit-normal(0, 1) almost never trains (P(t > 0.9) = 1.4%; 11% at mean 1).
  config.flow = {"cfg_drop": arg.cfg_drop, "t_mean": arg.t_mean, "t_std": arg.t_std,
                 "base_tokens": 256, "sample_shift": arg.sample_shift}
  # Training task mixture (sora_jax/diffusion/conditioning.py): which latent frames of a
  # clip are given clean. One model then samples t2v/t2i, i2v, extension, interpolation and loops.
  config.tasks = {"t2v": 0.6, "i2v": 0.1, "extend_forward": 0.1, "extend_backward": 0.1,
                  "interpolate": 0.1}
  config.ema = arg.ema
  config.ema_debias = arg.ema_debias
  config.optim = {"name": arg.optimizer, "lr": arg.lr, "warmup_steps": arg.warmup,
                  "final_lr_frac": 0.1, "b1": 0.9, "b2": 0.99, "weight_decay": 0.0,
                  "grad_clip": 1.0}

  config.train = {"steps": arg.steps, "batch_size": arg.batch, "log_every": 50,
                  "eval_every": arg.eval_every, "checkpoint_every": 1000,
                  "keep_checkpoints": 2, "progress": True, "peak_flops": arg.peak_flops,
                  "accept_data_change": False, **common.OBSERVE}
  config.eval = {"split": "validation", "num_clips": 64, "batch_size": 8, "seed": 0,
                 "timesteps": (0.1, 0.3, 0.5, 0.7, 0.9)}

  if arg.runlocal:  # seconds on a laptop or in a test
    # runlocal's sizes, except the ones given explicitly (width=48 stays 48).
    config.model.overrides.update({k: v for k, v in
                                   {"width": 32, "depth": 2, "num_heads": 2}.items()
                                   if not shape.get(k)})
    config.text.update({"variant": "tiny", "vocab_size": 256})
    config.text.overrides.update({"width": 32, "depth": 1, "num_heads": 2})
    config.tokenizer.update({"vocab_size": 256, "num_clips": 64})
    config.data.name.sizes = [[5, 32, 32], [1, 32, 32]]
    config.data.name.num_examples = {"train": 16, "validation": 8, "test": 8,
                                     "compositional": 8}
    config.packing.update({"seq_len": min(arg.seq_len, 64), "max_clips": min(arg.max_clips, 4),
                           "text_len": min(arg.text_len, 32), "num_bins": 1})
    config.flow.base_tokens = 32
    config.train.update({"steps": min(arg.steps, 4), "batch_size": 8, "log_every": 1,
                         "eval_every": 2, "checkpoint_every": 2})
    config.eval.update({"num_clips": 8, "batch_size": 4, "timesteps": (0.1, 0.5, 0.9)})
    config.optim.warmup_steps = 1
  if arg.attention:  # after runlocal, which sets the overrides' sizes
    config.model.overrides.attention_backend = arg.attention
  config.lock()  # a typo in an override fails instead of adding a field
  return config
