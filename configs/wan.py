"""Wan2.1 text-to-video from its released diffusers weights: sample it, fine-tune it.

MODEL_DIR is a diffusers Wan2.1 T2V folder (e.g. Wan2.1-T2V-1.3B-Diffusers: transformer/,
vae/, text_encoder/ (UMT5-XXL), tokenizer/). Its DiT becomes a layout of the project's DiT
(`sora_jax/interop/wan_dit.py`), so packing, any clip size and the sharding presets apply;
the UMT5 encoder is frozen; latents come from Wan's VAE. Nothing is downloaded.

  # a run directory with the converted weights (no torch needed), then sample it:
  python -m sora_jax.convert --config configs/wan.py:model_dir=MODEL_DIR --workdir runs/wan
  python -m sora_jax.sample --workdir runs/wan --prompt "A cat walks on the grass" \
      --frames 81 --height 480 --width 832 --out cat.mp4
  # fine-tune on your own videos (a video folder with captions.jsonl, packed, any sizes):
  python -m sora_jax.main --config configs/wan.py:model_dir=MODEL_DIR,videos=F,sizes=33x480x832 \
      --workdir runs/wan_ft --config.mesh.fsdp=8

Expected: sampling uses Wan's defaults (flow shift 3 for 480p, guidance 5, 50 steps, Wan's
negative prompt); an H100 runs the 1.3B DiT forward at 480p x 81 frames in bf16
(benchmarks/wan_dit.py).

Arguments (key=value, comma-separated):
  model_dir   the diffusers Wan2.1 folder (required).
  dtype       compute dtype of the DiT and the text encoder: bfloat16 (default) or float32.
  videos      a folder of videos + captions.jsonl to fine-tune on ('' = Shapes World, a smoke
              test of the recipe).
  sizes       clip sizes TxHxW joined by '+' (T = 1 + 4k; H, W multiples of 16); default
              81x480x832 for videos, 17x64x64 for Shapes World.
  seq_len     tokens per packed row (default: one 81x480x832 clip, 32760).
  steps, batch, lr, warmup   fine-tuning steps, rows a step, peak LR, warm-up.
  shift       sampling flow shift (3 for 480p, 5 for 720p in Wan's model card).
  rules       sharding preset (fsdp by default; fsdp_context with attention=ring for long clips).
  attention   attention backend (auto: cuDNN flash attention on a GPU in bf16, else xla;
              ring / all_to_all with a context axis).
  remat       what a block keeps for the backward pass (full: recompute; 32760-token rows).
"""
from etils import epath

from configs import common
from configs import dit
from sora_jax.interop import safetensors_io
from sora_jax.interop import wan_dit

# Wan2.1's default negative prompt (wan/configs/shared_config.py of the Wan repository).
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")

_DEFAULTS = dict(model_dir="", dtype="bfloat16", videos="", sizes="",
                 seq_len=32760, steps=1000, batch=8, lr=1e-5, warmup=50, shift=3.0,
                 guidance=5.0, sample_steps=50, rules="fsdp", attention="auto", text_len=512,
                 max_clips=4, remat="full", data_dir="data/tfds", seed=0)


def get_config(arg=None):
  arg = common.parse_arg(arg, **_DEFAULTS)
  if not arg.model_dir:
    raise ValueError("configs/wan.py needs model_dir=DIR, a diffusers Wan2.1 T2V folder "
                     "(transformer/, vae/, text_encoder/, tokenizer/).")
  if arg.dtype not in ("bfloat16", "float32"):
    raise ValueError(f"Config argument dtype={arg.dtype!r}; allowed: bfloat16, float32.")
  root = epath.Path(arg.model_dir)
  folder = root / "transformer"
  dcfg, _ = wan_dit.config_from_diffusers(safetensors_io.read_json(folder / "config.json"))
  sizes = arg.sizes or ("81x480x832" if arg.videos else "17x64x64")
  config = dit.get_config(dict(
      sizes=sizes if not arg.videos else "17x64x64", seq_len=arg.seq_len,
      max_clips=arg.max_clips, text_len=arg.text_len, steps=arg.steps, batch=arg.batch,
      lr=arg.lr, warmup=arg.warmup, patch="x".join(map(str, dcfg.patch)), prediction="v",
      adaln="single", rules=arg.rules, attention=arg.attention, sample_shift=arg.shift,
      text_encoder="t5", data_dir=arg.data_dir, seed=arg.seed, num_train=64, eval_every=0,
      remat=arg.remat))
  if arg.videos:
    sizes = common.parse_sizes(sizes, "config sizes", max_side=2048)
    config.data = common.video_folder_data(arg.videos, sizes[0][0],
                                           [s[1:] for s in sizes], arg.data_dir)
    config.data.latents = "on_the_fly"
    config.data.caption = "detailed"
  sizes_override = wan_dit.size_overrides(dcfg.width, dcfg.depth, dcfg.num_heads,
                                          dcfg.mlp_hidden)
  config.model.variant = sizes_override.pop("variant")
  config.model.pretrained = str(folder)
  with config.unlocked():
    config.model.overrides.update(sizes_override, dtype=arg.dtype)
    config.sample = {"guidance": arg.guidance, "steps": arg.sample_steps,
                     "negative_prompt": NEGATIVE_PROMPT}
  config.text.update({"path": str(root / "text_encoder"), "dtype": arg.dtype})
  config.tokenizer.update({"kind": "t5", "path": str(root / "tokenizer")})
  config.vae.wan = str(root / "vae")
  # Wan2.1 trains t2v only, at a fixed shift; the clip's token count does not shift t here.
  config.tasks = {"t2v": 1.0}
  config.flow.base_tokens = 0
  config.flow.t_mean, config.flow.t_std = 0.0, 1.0
  return config
