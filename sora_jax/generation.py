"""Every Sora task from one trained DiT run: the library behind `sample` and `evaluate`.

`Generator(workdir)` loads what a DiT run saved (EMA params, text encoder, tokenizer, the
frozen VAE and its latent normalisation) and samples pixel videos:

  gen = Generator("runs/demo/dit")
  video = gen.t2v("A large red circle moving to the right on a black background. ...",
                  frames=17, height=64, width=64, seed=0)           # uint8 [T, H, W, 3]
  image = gen.t2i(prompt, height=64, width=64)                      # [1, H, W, 3]
  video = gen.i2v(prompt, image, frames=17)
  longer = gen.extend(prompt, video, direction="forward")          # video + new frames
  bridge = gen.interpolate(prompt, video_a, video_b)               # a + middle + b
  looped = gen.loop(prompt, frames=17)                             # clip + bridge to its start
  edited = gen.edit(new_prompt, video, strength=0.6)               # SDEdit
  for chunk in gen.long_video(prompt, frames=480): ...             # streamed, bounded memory

How each task conditions the model (`diffusion/conditioning.py`): a pixel clip of the window's
size is assembled from the known frames (the end of a video to extend, the start of the
one to reach, an image) and filler (copies of the nearest known frame), encoded by the
causal VAE, and the latent frames that cover known frames are *given*: held exactly by
the sampler and seen by the DiT at t = 0. For forward extension and i2v this is exact (a
causal encoder's first latent frames depend only on the first pixel frames); for a
backward extension or an interpolation's end the given latents were encoded after filler
frames, an approximation whose error is limited to the VAE's short temporal receptive
field.

Sampling: classifier-free guidance with a negative prompt (empty by default), a rectified
flow ODE solver from `diffusion/solvers.py`, the timestep grid shifted by the clip's token
count as in training. Everything is deterministic given the seed.

On a mesh (large videos, many devices): `Generator(workdir, mesh=mesh_lib.make_mesh(
{"fsdp": 2, "context": 4}))` places the params by a sharding preset (default "fsdp", or
"fsdp_context" with the "ring" attention backend when the mesh has a context axis) and
runs the sampling loop under its rules: the batch (doubled by guidance) is split over
data x fsdp and, with context, each clip's tokens over context. The same seed gives the
same video as on one device (tests/test_generation.py). The VAE decodes on one device.

Any saved step samples: `Generator(workdir, step=900)` (CLIs: `--step`), e.g. to measure
adherence along a run; the default is the latest.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from data_pipelines import latents as latents_lib
from data_pipelines import patches
from sora_jax.diffusion import flow
from sora_jax.diffusion import solvers
from sora_jax.diffusion import conditioning
from sora_jax.models import attention as attn_lib
from sora_jax.models import dit as dit_lib
from sora_jax.models import text as text_lib
from sora_jax.models import vae as vae_lib
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import rules as rules_lib
from sora_jax.text import tokenizer as tok_lib
from sora_jax.train import checkpointing


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """How to integrate the flow ODE.

  Attributes:
    steps: solver steps.
    method: a `samplers` method ("euler", "heun", "dpmpp_2m").
    guidance: classifier-free guidance scale (1 = no guidance, one model call per step).
    shift: timestep shift; None = the run's `flow.sample_shift` if set (configs/dit.py),
      else the training rule sqrt(tokens / base_tokens).
    negative_prompt: the unconditional branch's caption ('' = the empty caption).
    guidance_interval: (lo, hi): guidance only at steps with lo < t <= hi, the
      conditional prediction alone elsewhere (`solvers.interval_scale`); (0, 1) = always.
  """
  steps: int = 32
  method: str = "dpmpp_2m"
  guidance: float = 4.0
  shift: float | None = None
  negative_prompt: str = ""
  guidance_interval: tuple[float, float] = (0.0, 1.0)

  def __post_init__(self):
    object.__setattr__(self, "guidance_interval",
                       solvers.check_guidance_interval(self.guidance_interval))


def parse_guidance_interval(text: str) -> tuple[float, float]:
  """'lo,hi' (a CLI flag) -> (lo, hi); one clear error naming the text otherwise."""
  try:
    return solvers.check_guidance_interval(text.split(","))
  except ValueError as e:
    raise ValueError(f"--guidance_interval={text!r}: {e}") from None


def run_files(workdir: str, step: int | None = None
              ) -> tuple[int, dict[str, Any], dict[str, Any]]:
  """(step, config JSON, extra JSON) of a DiT run; one clear error if it cannot sample.

  `step` None is the latest. A step saved without sampling metadata (runs older than
  every-checkpoint extras kept it with the last step only) borrows the latest step's: a DiT
  run's tokenizer and latent statistics do not change while it trains.
  """
  train_what = "a DiT run (python -m sora_jax.main --config configs/dit.py ...)"
  step, config, extra = checkpointing.read_run(workdir, train_what, step=step)
  if config.get("task") != "dit":
    raise ValueError(f"{workdir!r} step {step} is not a DiT run (config task="
                     f"{config.get('task')!r}); sampling needs a DiT workdir.")
  if not extra or "latent_mean" not in extra:
    extra = checkpointing.read_run(workdir, train_what)[2]
  if not extra or "latent_mean" not in extra:
    raise ValueError(f"{workdir!r} step {step}: the checkpoint has no sampling metadata "
                     "(older runs saved it with the last step only); let the run finish "
                     "first.")
  return step, config, extra


def check_workdir(workdir: str, step: int | None = None) -> int:
  """The step (default: latest) of a DiT run that can sample; one clear ValueError if not."""
  return run_files(workdir, step)[0]


def start_cli(workdir: str | None, verbosity_set: bool, step: int | None = None) -> int:
  """What the sampling CLIs do first: quiet logs, then check the DiT workdir (and step)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not verbosity_set:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  if not workdir:
    raise app.UsageError("--workdir is required.")
  return check_workdir(workdir, step)


def _vae_workdir(extra: dict[str, Any], config: dict[str, Any], workdir: str) -> str:
  desc = str(extra.get("vae", ""))
  if desc.startswith("random:"):
    return ""
  path = desc.rsplit("@", 1)[0] if "@" in desc else config["vae"]["workdir"]
  if not os.path.isdir(path):
    raise ValueError(f"The DiT run {workdir!r} was trained on latents of the VAE in "
                     f"{path!r}, which does not exist here.")
  return path


class Generator:
  """A trained DiT run, ready to sample every task (see the module docstring).

  Attributes:
    step: the checkpoint step loaded (the `step` argument, default the latest).
    dit_config, text_config: the model configs.
    vae: `latents.FrozenVAE` (config, params, latent mean/std).
    tokenizer: the run's tokenizer.
    text_len: caption tokens per prompt.
    base_tokens: the training timestep-shift reference (None = no shift).
    peak_window_bytes: the largest latent window buffer this generator has sampled
      (bytes of the float32 tokens); bounded by the window for long videos.
    progress: show a progress bar over the solver's model calls.
  """

  def __init__(self, workdir: str, *, step: int | None = None, use_ema: bool = True,
               options: SamplingOptions = SamplingOptions(), progress: bool = False,
               mesh: jax.sharding.Mesh | None = None, rules: str = "",
               attention: str = ""):
    """Loads the run at checkpoint `step` (None = the latest). `mesh` (optional): sample
    sharded over it under the sharding preset `rules` ('' = "fsdp_context" if the mesh has
    a context axis > 1, else "fsdp") with the DiT attention backend `attention` ('' =
    "ring" with context, else the run's)."""
    self.workdir, self.options, self.progress = workdir, options, progress
    self.step, config, extra = run_files(workdir, step)
    vae_dir = _vae_workdir(extra, config, workdir)
    if vae_dir:
      self.vae = latents_lib.load_vae(vae_dir)
    else:
      self.vae = latents_lib.random_vae(config["vae"]["random_model"])
    mean = np.asarray(extra["latent_mean"], np.float32)
    std = np.asarray(extra["latent_std"], np.float32)
    self.vae = dataclasses.replace(self.vae, mean=mean, std=std)
    m, packing = config["model"], config["packing"]
    self.dit_config = dit_lib.get_dit_config(
        m["variant"], patch=tuple(m["patch"]), latent_channels=self.vae.config.latent_channels,
        **m.get("overrides", {}))
    t = config["text"]
    self.text_config = text_lib.get_text_config(
        t["variant"], vocab_size=t["vocab_size"], max_len=packing["text_len"],
        **t.get("overrides", {}))
    self.text_len = int(packing["text_len"])
    self.base_tokens = config["flow"].get("base_tokens") or None
    self.sample_shift = config["flow"].get("sample_shift") or None  # the run's default
    tok_path = extra.get("tokenizer", "tokenizer.model")
    tok_path = tok_path if os.path.isabs(tok_path) else os.path.join(workdir, tok_path)
    self.tokenizer = tok_lib.Tokenizer.load(tok_path)
    path = os.path.join(os.path.abspath(workdir), "checkpoints", str(self.step), "state")
    state = checkpointing.restore_host(path)
    params = state["ema_params" if use_ema else "params"]
    self.peak_window_bytes = 0
    self.mesh, self.rules = mesh, None
    self._sample_fn = _sample_tokens
    if mesh is None:
      self.params = jax.device_put(params)
      return
    context = dict(mesh.shape).get("context", 1)
    self.rules = rules or ("fsdp_context" if context > 1 else "fsdp")
    rules_lib.get(self.rules)  # an unknown preset is one clear error, before any compile
    attention = attention or ("ring" if context > 1 else self.dit_config.attention_backend)
    if context > 1 and attention not in attn_lib.CONTEXT_BACKENDS:
      raise ValueError(f"A mesh with context={context} needs a context-parallel attention "
                       f"backend {attn_lib.CONTEXT_BACKENDS}; got attention={attention!r}.")
    self.dit_config = dataclasses.replace(self.dit_config, attention_backend=attention)
    ids = jax.ShapeDtypeStruct((1, self.text_len), jnp.int32)
    specs = {"dit": rules_lib.param_specs(
                 dit_lib.DiT(self.dit_config),
                 **dit_lib.dummy_inputs(self.dit_config, text_dim=self.text_config.width)),
             "text": rules_lib.param_specs(text_lib.TextEncoder(self.text_config), ids,
                                           jax.ShapeDtypeStruct(ids.shape, jnp.bool_))}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    self.params = jax.device_put(
        params, rules_lib.state_shardings(mesh, abstract, self.rules, specs))
    # A fresh jit: jax's trace cache does not see flax's rules (see sharding/rules.py).
    self._sample_fn = jax.jit(rules_lib.with_rules(_sample_tokens_impl, self.rules),
                              static_argnums=(0, 1, 2, 3, 4))

  def _check_mesh_sizes(self, rows: int, tokens: int) -> None:
    """One clear error when a batch or a clip's tokens do not split over the mesh."""
    shape = dict(self.mesh.shape)
    split = math.prod(shape.get(a, 1) for a in mesh_lib.BATCH_AXES)
    context = shape.get("context", 1) if "context" in dict(rules_lib.get(self.rules)).get(
        "tokens", ()) else 1
    if rows % split:
      raise ValueError(f"Sampling {rows} rows (prompts x 2 with guidance) on a mesh whose "
                       f"batch axes {mesh_lib.BATCH_AXES} hold {split} devices: give a "
                       f"multiple of {split} rows.")
    if tokens % context:
      raise ValueError(f"A clip of {tokens} tokens does not split over context={context}; "
                       "pick a size whose token count it divides.")

  # ------------------------------------------------------------------ sizes and latents
  @property
  def factors(self) -> tuple[int, int]:
    """(temporal, spatial) VAE compression."""
    return self.vae.config.temporal_factor, self.vae.config.spatial_factor

  def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel (T, H, W) -> latent (T', h, w, C), with one clear error for a bad size."""
    ft, s = self.factors
    patch = self.dit_config.patch
    if (frames < 1 or (frames - 1) % ft or height % (s * patch[1])
        or width % (s * patch[2])):
      raise ValueError(f"Size {frames}x{height}x{width} (TxHxW): T must be 1 + a multiple "
                       f"of {ft} and H, W multiples of {s * patch[1]}x{s * patch[2]} (VAE "
                       f"factor {s} x DiT patch).")
    shape = latents_lib.latent_size(self.vae.config, (frames, height, width))
    patches.check_patch(shape, patch, where=f"latents of a {frames}x{height}x{width} clip")
    return shape

  def encode(self, video: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> normalised latents [T', h, w, C] (chunked over time)."""
    vcfg = self.vae.config
    x = vae_lib.preprocess(jnp.asarray(video)[None])
    z = vae_lib.encode_chunked(self.vae.params, x, vcfg).mode()[0]
    return (np.asarray(z) - self.vae.mean) / self.vae.std

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """Normalised latents [T', h, w, C] -> uint8 [T, H, W, 3] (chunked over time)."""
    z = jnp.asarray(latents * self.vae.std + self.vae.mean)[None]
    video = vae_lib.decode_chunked(self.vae.params, z, self.vae.config)
    return np.asarray(vae_lib.postprocess(video)[0])

  # ------------------------------------------------------------------ the core sampler
  def encode_prompts(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids, mask, _ = self.tokenizer.encode(list(prompts), self.text_len)
    return ids, mask

  def sample_latents(self, prompts: Sequence[str], latent_shape: tuple[int, int, int, int],
                     seeds: Sequence[int], *, given: np.ndarray | None = None,
                     cond_latents: np.ndarray | None = None, t_start: float = 1.0,
                     init_latents: np.ndarray | None = None,
                     options: SamplingOptions | None = None) -> np.ndarray:
    """Samples B clips of one latent shape: normalised latents [B, T', h, w, C].

    Args:
      prompts: B captions.
      latent_shape: (T', h, w, C).
      seeds: B ints; clip b's noise is `init_noise(key(seeds[b]))`, so a clip does not
        depend on what else is in its batch.
      given: bool [T'] or [B, T'] latent frames held at `cond_latents` (None: none).
      cond_latents: [B, T', h, w, C] clean latents where `given`.
      t_start: < 1 starts from `init_latents` noised to t_start (SDEdit).
      init_latents: [B, T', h, w, C] clean latents to noise (edit).
      options: overrides the generator's sampling options.
    """
    opts = options or self.options
    b = len(prompts)
    if len(seeds) != b:
      raise ValueError(f"{len(seeds)} seeds for {b} prompts; give one seed per prompt.")
    patch = self.dit_config.patch
    noise = np.stack([np.asarray(solvers.init_noise(jax.random.key(int(s)), latent_shape))
                      for s in seeds])
    tokens = np.stack([np.asarray(patches.patchify(n, patch)[0]) for n in noise])
    _, positions = patches.patchify(noise[0], patch)
    n = tokens.shape[1]
    self.peak_window_bytes = max(self.peak_window_bytes, tokens.nbytes)
    if given is None:
      given_tok = np.zeros((b, n), bool)
      cond_tok = np.zeros_like(tokens)
    else:
      given = np.broadcast_to(np.asarray(given, bool), (b, latent_shape[0]))
      given_tok = np.stack([conditioning.token_mask(g, positions[:, 0]) for g in given])
      cond_tok = np.stack([np.asarray(patches.patchify(c, patch)[0]) for c in cond_latents])
    x_init = tokens
    if t_start < 1.0:
      clean = np.stack([np.asarray(patches.patchify(c, patch)[0]) for c in init_latents])
      x_init = np.asarray(solvers.edit_start(clean, tokens, t_start))
    shift = opts.shift or self.sample_shift
    if shift is None:
      shift = float(flow.token_count_shift(n, self.base_tokens))
    ts = solvers.timesteps(opts.steps, shift, t_start)
    ids, mask = self.encode_prompts(prompts)
    neg_ids, neg_mask = self.encode_prompts([opts.negative_prompt] * b)
    calls = 2 * opts.steps - 1 if opts.method == "heun" else opts.steps
    _BAR[0] = tqdm(total=calls, desc="sampling steps", unit="call", leave=False,
                   disable=not self.progress)
    args = (self.dit_config, self.text_config, opts.method, float(opts.guidance),
            tuple(opts.guidance_interval), self.params, jnp.asarray(x_init),
            jnp.asarray(np.broadcast_to(positions, (b, n, 3))),
            jnp.asarray(given_tok), jnp.asarray(cond_tok), jnp.asarray(ids),
            jnp.asarray(mask), jnp.asarray(neg_ids), jnp.asarray(neg_mask), ts)
    if self.mesh is None:
      out = np.asarray(self._sample_fn(*args))
    else:
      self._check_mesh_sizes(b * (2 if opts.guidance != 1.0 else 1), n)
      with rules_lib.mesh_and_rules(self.mesh, self.rules):
        out = np.asarray(self._sample_fn(*args))
    _BAR[0].close()
    _BAR[0] = None
    return np.stack([patches.unpatchify(o, latent_shape, patch) for o in out])

  # ------------------------------------------------------------------ tasks
  def t2v(self, prompt: str, frames: int = 17, height: int = 64, width: int = 64,
          seed: int = 0) -> np.ndarray:
    """Text to video: uint8 [frames, height, width, 3]."""
    return self.t2v_batch([prompt], frames, height, width, [seed])[0]

  def t2v_batch(self, prompts: Sequence[str], frames: int, height: int, width: int,
                seeds: Sequence[int]) -> list[np.ndarray]:
    """Text to video for B prompts in one batch (batch CLI and evaluation)."""
    shape = self.latent_shape(frames, height, width)
    z = self.sample_latents(prompts, shape, seeds)
    return [self.decode(zi) for zi in z]

  def t2i(self, prompt: str, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """Text to image: uint8 [1, height, width, 3] (a one-frame video)."""
    return self.t2v(prompt, 1, height, width, seed)

  def _conditioned(self, prompt: str, clip: np.ndarray, seed: int,
                   frames_given: np.ndarray) -> np.ndarray:
    """Samples a window whose latent frames `frames_given` come from encoding `clip`."""
    shape = self.latent_shape(*clip.shape[:3])
    cond = self.encode(clip)
    z = self.sample_latents([prompt], shape, [seed], given=frames_given,
                            cond_latents=cond[None])
    return self.decode(z[0])

  def _check_video(self, video: np.ndarray, where: str, height=None, width=None) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim == 3:
      video = video[None]
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
      raise ValueError(f"{where}: expected uint8 [T, H, W, 3] (or an [H, W, 3] image); got "
                       f"{video.dtype} {video.shape}.")
    if height is not None and video.shape[1:3] != (height, width):
      raise ValueError(f"{where}: frames are {video.shape[1]}x{video.shape[2]} (HxW) but "
                       f"{height}x{width} was asked; resize it or pass --height/--width "
                       "to match.")
    return video

  def i2v(self, prompt: str, image: np.ndarray, frames: int = 17, seed: int = 0) -> np.ndarray:
    """Animates an image (uint8 [H, W, 3] or [1, H, W, 3]): uint8 [frames, H, W, 3]."""
    image = self._check_video(image, "i2v image")[:1]
    h, w = image.shape[1:3]
    clip = np.repeat(image, frames, axis=0)
    mask = conditioning.condition_frames("i2v", self.latent_shape(frames, h, w)[0])
    return self._conditioned(prompt, clip, seed, mask)

  def overlap_frames(self, given_latent_frames: int) -> tuple[int, int]:
    """Pixel frames covered by k given latent frames (at a clip's start, at its end)."""
    ft, _ = self.factors
    return 1 + ft * (given_latent_frames - 1), ft * given_latent_frames

  def extend_window(self, prompt: str, video: np.ndarray, direction: str = "forward",
                    frames: int = 17, given: int = 2, seed: int = 0) -> np.ndarray:
    """One window of extension: the NEW frames only, uint8 [n, H, W, 3].

    Forward: the window starts with `video`'s last `1 + ft (given - 1)` frames (exact
    latents); backward: it ends with `video`'s first `ft * given` frames.
    """
    video = self._check_video(video, f"extend {direction} video")
    h, w = video.shape[1:3]
    t_lat = self.latent_shape(frames, h, w)[0]
    mask = conditioning.condition_frames("extend", t_lat, given=given, direction=direction)
    start, end = self.overlap_frames(given)
    if direction == "forward":
      if video.shape[0] < start:
        raise ValueError(f"extend forward: the video has {video.shape[0]} frames; "
                         f"{start} are needed to give {given} latent frames.")
      known = video[-start:]
      clip = np.concatenate([known, np.repeat(known[-1:], frames - start, 0)])
      return self._conditioned(prompt, clip, seed, mask)[start:]
    if video.shape[0] < end:
      raise ValueError(f"extend backward: the video has {video.shape[0]} frames; {end} "
                       f"are needed to give {given} latent frames.")
    known = video[:end]
    clip = np.concatenate([np.repeat(known[:1], frames - end, 0), known])
    return self._conditioned(prompt, clip, seed, mask)[:frames - end]

  def extend(self, prompt: str, video: np.ndarray, direction: str = "forward",
             frames: int = 17, given: int = 2, seed: int = 0) -> np.ndarray:
    """The video extended by one window, forward (after) or backward (before)."""
    new = self.extend_window(prompt, video, direction, frames, given, seed)
    return np.concatenate([video, new] if direction == "forward" else [new, video])

  def interpolate(self, prompt: str, video_a: np.ndarray, video_b: np.ndarray,
                  frames: int = 17, given: int = 1, given_end: int = 1,
                  seed: int = 0) -> np.ndarray:
    """Connects the end of `video_a` to the start of `video_b`: a + middle + b."""
    a = self._check_video(video_a, "interpolate video (start)")
    b = self._check_video(video_b, "interpolate video_end", *a.shape[1:3])
    return np.concatenate([a, self.bridge(prompt, a, b, frames, given, given_end, seed), b])

  def bridge(self, prompt: str, video_a: np.ndarray, video_b: np.ndarray, frames: int = 17,
             given: int = 1, given_end: int = 1, seed: int = 0) -> np.ndarray:
    """The generated middle frames between `video_a`'s end and `video_b`'s start."""
    h, w = video_a.shape[1:3]
    t_lat = self.latent_shape(frames, h, w)[0]
    mask = conditioning.condition_frames("interpolate", t_lat, given=given, given_end=given_end)
    start, _ = self.overlap_frames(given)
    _, end = self.overlap_frames(given_end)
    if video_a.shape[0] < start or video_b.shape[0] < end:
      raise ValueError(f"interpolate: need >= {start} frames of the first video and >= "
                       f"{end} of the second; got {video_a.shape[0]} and {video_b.shape[0]}.")
    middle = frames - start - end
    clip = np.concatenate([video_a[-start:], np.repeat(video_a[-1:], middle, 0),
                           video_b[:end]])
    return self._conditioned(prompt, clip, seed, mask)[start:frames - end]

  def loop(self, prompt: str, frames: int = 17, height: int = 64, width: int = 64,
           seed: int = 0) -> np.ndarray:
    """A seamless loop: a clip, then a bridge from its end back to its start.

    Played on repeat, the last frame flows into the first.
    """
    clip = self.t2v(prompt, frames, height, width, seed)
    return np.concatenate([clip, self.bridge(prompt, clip, clip, frames, seed=seed + 1)])

  def edit(self, prompt: str, video: np.ndarray, strength: float = 0.6,
           seed: int = 0) -> np.ndarray:
    """SDEdit: noise `video`'s latents to t = strength and denoise under `prompt`."""
    if not 0.0 <= float(strength) <= 1.0:
      raise ValueError(f"strength={strength}; expected a value in [0, 1].")
    video = self._check_video(video, "edit video")
    if strength == 0:
      return video
    z = self.encode(video)
    out = self.sample_latents([prompt], z.shape, [seed], t_start=float(strength),
                              init_latents=z[None])
    return self.decode(out[0])

  def long_video(self, prompt: str, total_frames: int, height: int = 64, width: int = 64,
                 frames: int = 17, given: int = 2, seed: int = 0) -> Iterator[np.ndarray]:
    """Yields the frames of a video of `total_frames`, window by window (bounded memory).

    The first window is text-to-video; each next one extends the last `1 + ft (given - 1)`
    frames forward. Only the current window is held; callers stream chunks to disk.
    """
    if total_frames < 1:
      raise ValueError(f"total frames={total_frames}; expected >= 1.")
    window = self.t2v(prompt, frames, height, width, seed)
    done = min(total_frames, window.shape[0])
    yield window[:done]
    i = 1
    while done < total_frames:
      new = self.extend_window(prompt, window, "forward", frames, given, seed + i)
      new = new[:total_frames - done]
      done += new.shape[0]
      start, _ = self.overlap_frames(given)
      window = np.concatenate([window[-start:], new])  # what the next window needs
      i += 1
      yield new


_BAR: list[Any] = [None]  # the active progress bar of `sample_latents`, if any


def _tick() -> None:
  if _BAR[0] is not None:
    _BAR[0].update(1)


def _sample_tokens_impl(dcfg, tcfg, method, guidance, interval, params, x_init, positions,
                        given, cond, ids, mask, neg_ids, neg_mask, ts):
  """The jitted sampling loop over a batch of same-size clips: tokens [B, N, Din]."""
  b, n, _ = x_init.shape
  segment_ids = jnp.ones((b, n), jnp.int32)
  encoder = text_lib.TextEncoder(tcfg)
  text_c = encoder.apply(params["text"], ids, mask)
  use_cfg = guidance != 1.0
  if use_cfg:
    text_u = encoder.apply(params["text"], neg_ids, neg_mask)
    text = jnp.concatenate([text_c, text_u])
    tmask = jnp.concatenate([mask, neg_mask])
  else:
    text, tmask = text_c, mask
  model = dit_lib.DiT(dcfg)
  reps = 2 if use_cfg else 1

  def velocity(x, t, x0_prev=None):
    jax.debug.callback(_tick)  # the progress bar over model calls (a no-op without one)
    tt = jnp.where(given, 0.0, t).astype(jnp.float32)
    rep = lambda a: jnp.concatenate([a] * reps) if reps > 1 else a
    extra = {} if x0_prev is None else {"x0_prev": rep(x0_prev)}
    v = model.apply(params["dit"], rep(x), rep(positions), rep(segment_ids), rep(tt), text,
                    tmask, **extra)
    if use_cfg:
      v = solvers.cfg_combine(v[:b], v[b:], solvers.interval_scale(guidance, t, interval))
    if x0_prev is None:
      return v
    # Self-conditioning: the next call reads this call's (guided) estimate of x0.
    return v, dit_lib.x0_from_velocity(x, v, tt, dcfg.prediction)

  state = jnp.zeros(x_init.shape, jnp.float32) if dcfg.self_condition else None
  return solvers.sample(velocity, x_init, ts, method=method, cond=cond,
                         cond_mask=given[..., None], state=state)


_sample_tokens = jax.jit(_sample_tokens_impl, static_argnums=(0, 1, 2, 3, 4))


PSNR_CAP_DB = 60.0  # identical frames (a static object) would be +inf


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB between two uint8 arrays of one shape, capped at PSNR_CAP_DB."""
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
  if mse == 0:
    return PSNR_CAP_DB
  return float(min(PSNR_CAP_DB, 10 * math.log10(255.0 ** 2 / mse)))
