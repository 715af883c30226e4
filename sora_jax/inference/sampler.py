"""Sampling a trained DiT run: the jitted flow-ODE loop over latent tokens.

  run = run_lib.Run.load("runs/demo/dit")
  sampler = Sampler(run, SamplingOptions(steps=16))
  z = sampler.sample_latents(prompts, sampler.latent_shape(17, 64, 64), seeds)  # [B, T', h, w, C]
  videos = [sampler.decode(zi) for zi in z]                                      # uint8

Every Sora task (`tasks.py`) is a plain function over a `Sampler`: it encodes the known
frames, marks which latent frames are *given* (`diffusion/conditioning.py`), and calls
`sample_latents`. Sampling: classifier-free guidance with a negative prompt (empty by
default), a rectified-flow ODE solver from `diffusion/solvers.py`, the timestep grid shifted
by the clip's token count as in training. Everything is deterministic given the seed.

On a run loaded onto a mesh (`Run.load(workdir, mesh=...)`), the loop runs under the run's
sharding rules: the batch (doubled by guidance) is split over data x fsdp and, with
context, each clip's tokens over context. The same seed gives the same video as on one
device (tests/test_generation.py). The VAE decodes on one device.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from data_pipelines import patches
from sora_jax.diffusion import conditioning
from sora_jax.diffusion import flow
from sora_jax.diffusion import solvers
from sora_jax.inference import run as run_lib
from sora_jax.models import dit as dit_lib
from sora_jax.models import text as text_lib
from sora_jax.models import vae as vae_lib
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import rules as rules_lib


def device_memory_bytes(device: jax.Device | None = None) -> int:
  """The memory one device may use: the accelerator's limit, or the host's RAM on CPU."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() or {}  # None on CPU
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def latent_shape(dcfg: dit_lib.DiTConfig, vcfg: vae_lib.VAEConfig, frames: int, height: int,
                 width: int) -> tuple[int, int, int, int]:
  """Pixel (T, H, W) -> latent (T', h, w, C), with one clear error for a bad size."""
  ft, s, patch = vcfg.temporal_factor, vcfg.spatial_factor, dcfg.patch
  if frames < 1 or (frames - 1) % ft or height % (s * patch[1]) or width % (s * patch[2]):
    raise ValueError(f"Size {frames}x{height}x{width} (TxHxW): T must be 1 + a multiple "
                     f"of {ft} and H, W multiples of {s * patch[1]}x{s * patch[2]} (VAE "
                     f"factor {s} x DiT patch).")
  shape = vae_lib.latent_shape(vcfg, (1, frames, height, width, 3))[1:]
  patches.check_patch(shape, patch, where=f"latents of a {frames}x{height}x{width} clip")
  return shape


def window_bytes(dcfg: dit_lib.DiTConfig, vcfg: vae_lib.VAEConfig, frames: int,
                 height: int, width: int, rows: int, devices: int = 1) -> int:
  """A lower bound on one device's memory for sampling `rows` windows of this size.

  Dense attention holds a layer's fp32 logits, probabilities and mask ([rows, H, N, N]);
  cuDNN's flash kernel and the blocked backend hold no N x N. The params and the
  activations linear in N are small next to it at the sizes this guards against.
  """
  tokens = math.prod(latent_shape(dcfg, vcfg, frames, height, width)[:3])
  tokens //= math.prod(dcfg.patch)
  flash = (jax.default_backend() == "gpu" and dcfg.dtype in ("bfloat16", "float16")
           and dcfg.attention_backend in ("auto", "cudnn"))
  dense = not (flash or dcfg.attention_backend == "blocked")
  per_token = 64 * dcfg.width  # activations, latents and the decoded pixels' share
  return rows * (tokens * per_token + (9 * dcfg.num_heads * tokens ** 2 if dense else 0)
                 ) // devices


def check_window(dcfg: dit_lib.DiTConfig, vcfg: vae_lib.VAEConfig, frames: int, height: int,
                 width: int, batch: int, guidance: float, devices: int = 1) -> None:
  """One clear error, before any load or compile, for a window that is a bad size or
  cannot fit one device's memory (rows: the batch, doubled by guidance)."""
  rows = batch * (1 if guidance == 1 else 2)
  need = window_bytes(dcfg, vcfg, frames, height, width, rows, devices)
  have = device_memory_bytes()
  if need > have:
    raise ValueError(
        f"--frames={frames} at {height}x{width} (batch {batch}) needs at least "
        f"{need / 2**30:,.0f} GiB on one device, which has {have / 2**30:,.0f} GiB: give "
        "fewer --frames or a smaller --height/--width, or sample a long video window by "
        "window with --seconds.")


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


class Sampler:
  """Samples latents and pixels from a loaded `Run` (see the module docstring).

  Attributes:
    run: the loaded run.
    options: the default `SamplingOptions`.
    progress: show a progress bar over the solver's model calls.
    peak_window_bytes: the largest latent window buffer this sampler has sampled (bytes of
      the float32 tokens); bounded by the window for long videos.
  """

  def __init__(self, run: run_lib.Run, options: SamplingOptions = SamplingOptions(),
               progress: bool = False):
    self.run, self.options, self.progress = run, options, progress
    self.peak_window_bytes = 0
    self._sample_fn = _sample_tokens
    if run.mesh is not None:
      # A fresh jit: jax's trace cache does not see flax's rules (see sharding/rules.py).
      self._sample_fn = jax.jit(rules_lib.with_rules(_sample_tokens_impl, run.rules),
                                static_argnums=(0, 1, 2, 3, 4))

  def _check_mesh_sizes(self, rows: int, tokens: int) -> None:
    """One clear error when a batch or a clip's tokens do not split over the mesh."""
    shape = dict(self.run.mesh.shape)
    split = math.prod(shape.get(a, 1) for a in mesh_lib.BATCH_AXES)
    context = shape.get("context", 1) if "context" in dict(rules_lib.get(self.run.rules)).get(
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
    return self.run.vae.config.temporal_factor, self.run.vae.config.spatial_factor

  def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel (T, H, W) -> latent (T', h, w, C), with one clear error for a bad size."""
    return latent_shape(self.run.dit_config, self.run.vae.config, frames, height, width)

  def overlap_frames(self, given_latent_frames: int) -> tuple[int, int]:
    """Pixel frames covered by k given latent frames (at a clip's start, at its end)."""
    ft, _ = self.factors
    return 1 + ft * (given_latent_frames - 1), ft * given_latent_frames

  def encode(self, video: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> normalised latents [T', h, w, C] (chunked over time)."""
    vae = self.run.vae
    x = vae_lib.preprocess(jnp.asarray(video)[None])
    z = run_lib.vae_functions(vae.config).encode_chunked(vae.params, x, vae.config).mode()[0]
    return (np.asarray(z) - vae.mean) / vae.std

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """Normalised latents [T', h, w, C] -> uint8 [T, H, W, 3] (chunked over time)."""
    vae = self.run.vae
    z = jnp.asarray(latents * vae.std + vae.mean)[None]
    video = run_lib.vae_functions(vae.config).decode_chunked(vae.params, z, vae.config)
    return np.asarray(vae_lib.postprocess(video)[0])

  # ------------------------------------------------------------------ the core sampler
  def encode_prompts(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids, mask, _ = self.run.tokenizer.encode(list(prompts), self.run.text_len)
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
      options: overrides the sampler's options.
    """
    opts = options or self.options
    b = len(prompts)
    if len(seeds) != b:
      raise ValueError(f"{len(seeds)} seeds for {b} prompts; give one seed per prompt.")
    patch = self.run.dit_config.patch
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
    shift = opts.shift or self.run.sample_shift
    if shift is None:
      shift = float(flow.token_count_shift(n, self.run.base_tokens))
    ts = solvers.timesteps(opts.steps, shift, t_start)
    ids, mask = self.encode_prompts(prompts)
    neg_ids, neg_mask = self.encode_prompts([opts.negative_prompt] * b)
    calls = 2 * opts.steps - 1 if opts.method == "heun" else opts.steps
    _BAR[0] = tqdm(total=calls, desc="sampling steps", unit="call", leave=False,
                   disable=not self.progress)
    args = (self.run.dit_config, self.run.text_config, opts.method, float(opts.guidance),
            tuple(opts.guidance_interval), self.run.params, jnp.asarray(x_init),
            jnp.asarray(np.broadcast_to(positions, (b, n, 3))),
            jnp.asarray(given_tok), jnp.asarray(cond_tok), jnp.asarray(ids),
            jnp.asarray(mask), jnp.asarray(neg_ids), jnp.asarray(neg_mask), ts)
    if self.run.mesh is None:
      out = np.asarray(self._sample_fn(*args))
    else:
      self._check_mesh_sizes(b * (2 if opts.guidance != 1.0 else 1), n)
      with rules_lib.mesh_and_rules(self.run.mesh, self.run.rules):
        out = np.asarray(self._sample_fn(*args))
    _BAR[0].close()
    _BAR[0] = None
    return np.stack([patches.unpatchify(o, latent_shape, patch) for o in out])


_BAR: list[Any] = [None]  # the active progress bar of `sample_latents`, if any


def _tick() -> None:
  if _BAR[0] is not None:
    _BAR[0].update(1)


def _sample_tokens_impl(dcfg, tcfg, method, guidance, interval, params, x_init, positions,
                        given, cond, ids, mask, neg_ids, neg_mask, ts):
  """The jitted sampling loop over a batch of same-size clips: tokens [B, N, Din]."""
  b = x_init.shape[0]
  # Every token is clip 1, read from an input: a constant here would let XLA fold the
  # [rows, N, N] attention mask at compile time (seconds per size, a slow-operation alarm).
  segment_ids = (positions[..., 0] >= 0).astype(jnp.int32)
  text_c, mask = text_lib.encode_text(tcfg, params["text"], ids, mask)
  use_cfg = guidance != 1.0
  if use_cfg:
    text_u, neg_mask = text_lib.encode_text(tcfg, params["text"], neg_ids, neg_mask)
    text = jnp.concatenate([text_c, text_u])
    tmask = jnp.concatenate([mask, neg_mask])
  else:
    text, tmask = text_c, mask
  model = dit_lib.DiT(dcfg)
  reps = 2 if use_cfg else 1

  def velocity(x, t):
    jax.debug.callback(_tick)  # the progress bar over model calls (a no-op without one)
    tt = jnp.where(given, 0.0, t).astype(jnp.float32)
    rep = lambda a: jnp.concatenate([a] * reps) if reps > 1 else a
    v = model.apply(params["dit"], rep(x), rep(positions), rep(segment_ids), rep(tt), text,
                    tmask)
    if use_cfg:
      v = solvers.cfg_combine(v[:b], v[b:], solvers.interval_scale(guidance, t, interval))
    return v

  return solvers.sample(velocity, x_init, ts, method=method, cond=cond,
                        cond_mask=given[..., None])


_sample_tokens = jax.jit(_sample_tokens_impl, static_argnums=(0, 1, 2, 3, 4))
