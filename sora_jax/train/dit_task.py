"""The text-to-video DiT as a trainable task: packed latents, rectified flow, EMA.

Plugged into the one loop (`loop.py`). Data: VAE latents of clips (precomputed records or
encoded on the fly, `data_pipelines/latents.py`), captions tokenized by the run's
sentencepiece tokenizer, NaViT-packed into `seq_len` tokens (`data_pipelines/packing.py`).
Model: a jointly trained `TextEncoder` on each packed caption row, laid side by side
(`text.flatten_packed_text`), and the `DiT` (`models/dit.py`). Loss: per-clip rectified
flow (`diffusion/flow.py`) with one logit-normal timestep per clip shifted by its token
count, and captions dropped with probability `flow.cfg_drop` for classifier-free guidance.
An EMA of the params (decay `ema`) is kept in the state and used for evaluation; with
`ema_debias` (default) it is bias-corrected as Adam's moments are (optax.ema(debias=True)),
so it averages only the steps taken: 0.999^900 = 41% of a plain EMA at step 900 would still
be the initial weights.

Metrics per step: loss, loss by timestep bucket (t in quarters of [0, 1]; NaN when a bucket
has no clip that step), grad norm, real (non-pad) tokens and clips, analytic train FLOPs of
those real tokens (`train_flops`), captions that fill all `text_len` tokens (an upper bound
on the truncated ones: packing keeps no per-caption flag). Throughput (tokens/s, MFU
against `train.peak_flops`) is timed on the host between steps and reported at evaluation.

Evaluation: the validation flow loss of the EMA params at fixed timesteps t in
`eval.timesteps` on a fixed set of packed validation clips with fixed noise (and the mean
over those t for the raw params too), so curves are comparable across steps and runs.

The tokenizer: trained from the training captions (`Tokenizer.train`; Shapes World
captions without rendering), deterministic, so a resumed run retrains the same one; it is
written to `WORKDIR/tokenizer.model` when the run starts (`prepare`) and checked against
it on every resume and evaluation. Set `tokenizer.path` to use a
fixed file (trained and written there when missing).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data_pipelines import latents as latents_lib
from data_pipelines import patches
from data_pipelines import pipeline
from sora_jax.data import encode_latents
from sora_jax.diffusion import flow
from sora_jax.inference import run as run_lib
from sora_jax.diffusion import conditioning
from sora_jax.models import dit as dit_lib
from sora_jax.models import text as text_lib
from sora_jax.scaling import flops as flops_lib
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import rules as rules_lib
from sora_jax.text import tokenizer as tok_lib
from sora_jax.train import optim

# Peak FLOP/s assumed on CPU when `train.peak_flops` is 0: a float32 2048^3 matmul measured
# by `benchmarks/train_step.py` (`cpu_matmul_flops`) on the 2-core dev box (shared with
# another job); re-measure on your machine and set train.peak_flops.
CPU_PEAK_FLOPS = 7.5e10
NUM_T_BUCKETS = 4


@flax.struct.dataclass
class DiTState:
  step: jax.Array
  params: Any  # {"dit": variables, "text": variables}
  opt_state: Any
  ema_params: Any  # same structure as params


# ------------------------------------------------------------------------ configs
@functools.lru_cache(maxsize=8)
def _vae(workdir: str, random_model_json: str):
  """The frozen VAE: a trained run's, or a random one when `workdir` is empty."""
  if workdir:
    return run_lib.load_vae(workdir)
  return run_lib.random_vae(json.loads(random_model_json))


def frozen_vae(config) -> run_lib.FrozenVAE:
  return _vae(config.vae.workdir, json.dumps(config.vae.random_model.to_dict(),
                                             sort_keys=True))


def _on_the_fly(config) -> bool:
  return config.data.latents == "on_the_fly"


def latent_records(config, split: str):
  """The latent records of a split: `OnTheFlyLatents` or `LatentRecords`."""
  if _on_the_fly(config):
    return _on_the_fly_records(config, split)
  return _precomputed_records(config.data.latents, split)


@functools.lru_cache(maxsize=4)
def _precomputed_records(root: str, split: str):
  return latents_lib.LatentRecords(os.path.join(root, split))


def _on_the_fly_records(config, split: str):
  key = (json.dumps(config.data.to_dict(), sort_keys=True, default=str), split,
         config.vae.workdir)
  if key not in _RECORDS:
    source = latents_lib.pixel_source(config.data, split)
    _RECORDS[key] = encode_latents.OnTheFlyLatents(source, frozen_vae(config))
  return _RECORDS[key]


_RECORDS: dict[Any, Any] = {}


def latent_shapes(config) -> list[tuple[int, int, int, int]]:
  """The distinct latent (T', h, w, C) of the training data, without reading any clip."""
  if _on_the_fly(config):
    vcfg = frozen_vae(config).config
    return sorted({encode_latents.latent_size(vcfg, s) for s in _pixel_sizes(config)})
  shapes = _precomputed_records(config.data.latents, "train").shapes
  return sorted({tuple(int(v) for v in s) for s in shapes})


def _pixel_sizes(config) -> list[tuple[int, int, int]]:
  name = config.data.name
  if isinstance(name, (dict, ml_collections.ConfigDict)) and "sizes" in name:
    return [tuple(int(v) for v in s) for s in name["sizes"]]
  sizes = latents_lib.pixel_source(config.data, "train").sizes  # a named builder config
  return sorted({tuple(int(v) for v in s) for s in sizes})


def dit_config(config) -> dit_lib.DiTConfig:
  return run_lib.dit_configs(config, latent_shapes(config)[0][3])[0]


def text_config(config) -> text_lib.TextEncoderConfig:
  return run_lib.dit_configs(config, latent_shapes(config)[0][3])[1]


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises one clear ValueError for a config the DiT cannot train on (before compiles)."""
  if config.model.variant not in dit_lib.VARIANTS:
    raise ValueError(f"config.model.variant={config.model.variant!r} is not a DiT variant; "
                     f"known: {list(dit_lib.VARIANTS)}.")
  p = config.packing
  if p.text_len < 1 or p.seq_len < 1 or p.max_clips < 1:
    raise ValueError(f"config.packing: text_len={p.text_len}, seq_len={p.seq_len} and "
                     f"max_clips={p.max_clips} must all be >= 1.")
  if config.data.caption not in latents_lib.CAPTION_KEYS:
    raise ValueError(f"config.data.caption={config.data.caption!r}; expected one of "
                     f"{sorted(latents_lib.CAPTION_KEYS)}.")
  if config.optim.get("name", "adamw") not in optim.OPTIMIZERS:
    raise ValueError(f"config.optim.name={config.optim.name!r}; allowed: "
                     f"{', '.join(optim.OPTIMIZERS)}.")
  if not 0 <= config.flow.cfg_drop <= 1 or not 0 <= config.ema < 1:
    raise ValueError(f"config.flow.cfg_drop={config.flow.cfg_drop} must be in [0, 1] and "
                     f"config.ema={config.ema} in [0, 1).")
  conditioning.check_mixture(config.tasks)
  _validate_sources(config)
  dcfg, _ = dit_config(config), text_config(config)  # unknown fields, head dims
  for shape in latent_shapes(config):
    patches.check_patch(shape, dcfg.patch, where=f"latents ({_latent_origin(config)})")
    n = math.prod(shape[:3]) // math.prod(dcfg.patch)
    if n > p.seq_len:
      raise ValueError(f"A clip with latents {shape} has {n} tokens at patch {dcfg.patch}, "
                       f"more than config.packing.seq_len={p.seq_len}.")


def _latent_origin(config) -> str:
  if not _on_the_fly(config):
    return f"precomputed in {config.data.latents}"
  vcfg = frozen_vae(config).config
  return (f"data sizes {_pixel_sizes(config)} with VAE factors "
          f"{vcfg.temporal_factor}x{vcfg.spatial_factor}x{vcfg.spatial_factor}")


def _validate_sources(config) -> None:
  """The VAE workdir and the data (pixels or latents) exist, with a clear error if not."""
  if config.vae.workdir:
    run_lib.read_vae_run(config.vae.workdir)  # raises when missing or unfinished
  if not _on_the_fly(config):
    for split in ("train", config.eval.split):
      _precomputed_records(config.data.latents, split)  # raises when missing
    return
  data_dir = config.data.data_dir
  if not os.path.isdir(data_dir or "") and not config.data.get("prepare", False):
    raise ValueError(f"config.data.data_dir={data_dir!r} does not exist (and prepare is "
                     "off); build the data set first.")
  vcfg = frozen_vae(config).config
  for t, h, w in _pixel_sizes(config):
    if (t - 1) % vcfg.temporal_factor or h % vcfg.spatial_factor or w % vcfg.spatial_factor:
      raise ValueError(f"Data size {t}x{h}x{w} does not fit the VAE factors (temporal "
                       f"{vcfg.temporal_factor}, spatial {vcfg.spatial_factor}).")


# ------------------------------------------------------------------------ tokenizer
def tokenizer(config) -> tok_lib.Tokenizer:
  """The run's tokenizer (see the module docstring); cached per corpus."""
  path = config.tokenizer.path
  key = (path, _corpus_key(config), config.tokenizer.vocab_size)
  if key not in _TOKENIZERS:
    if path and os.path.exists(path):
      tok = tok_lib.Tokenizer.load(path)
    else:
      tok = tok_lib.Tokenizer.train(_training_captions(config), config.tokenizer.vocab_size)
      if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tok.save(path)
    if tok.vocab_size > config.text.vocab_size:
      raise ValueError(f"Tokenizer has {tok.vocab_size} ids but config.text.vocab_size="
                       f"{config.text.vocab_size}; raise it.")
    _TOKENIZERS[key] = tok
  return _TOKENIZERS[key]


_TOKENIZERS: dict[Any, tok_lib.Tokenizer] = {}


def _corpus_key(config) -> str:
  return json.dumps([config.data.to_dict(), config.tokenizer.num_clips], sort_keys=True,
                    default=str)


def _training_captions(config) -> list[str]:
  """Detailed and short captions of the training clips (Shapes World: no rendering)."""
  if _on_the_fly(config) and config.data.source == "shapes_world":
    t, h, w = _pixel_sizes(config)[0]
    return list(tok_lib.shapes_world_captions(
        "train", config.tokenizer.num_clips, config.data.name["level"], t, h, w))
  records = latent_records(config, "train")
  n = min(len(records), config.tokenizer.num_clips)
  return [records[i][k] for i in range(n) for k in ("caption", "short_caption")]


def prepare(config, workdir: str) -> None:
  """Run files written at start: the tokenizer, so sampling finds it from step 0."""
  save_tokenizer(config, workdir)


def save_tokenizer(config, workdir: str) -> str:
  """Writes the run's tokenizer to `workdir/tokenizer.model` (checks it if present)."""
  tok, path = tokenizer(config), os.path.join(workdir, "tokenizer.model")
  proto = tok.__getstate__()["proto"]
  if os.path.exists(path):
    if tok_lib.Tokenizer.load(path).__getstate__()["proto"] != proto:
      raise ValueError(f"{path} differs from the tokenizer this config trains; the run's "
                       "captions changed. Set config.tokenizer.path to the saved file.")
  elif jax.process_index() == 0:
    tok.save(path)
  return path


# ------------------------------------------------------------------------ FLOPs
def train_flops(dcfg: dit_lib.DiTConfig, tcfg: text_lib.TextEncoderConfig, segment_ids,
                text_mask, text_dim: int | None = None):
  """Analytic FLOPs of one training step of real tokens: `flops.dit_train_flops`."""
  return flops_lib.dit_train_flops(dcfg, tcfg, segment_ids, text_mask, text_dim)


def flow_segment_sizes(segment_ids, xp=np):
  """Tokens of each token's segment, [B, N] float32: `flops.segment_sizes`."""
  return flops_lib.segment_sizes(segment_ids, xp)


# ------------------------------------------------------------------------ state
def init_params(dcfg, tcfg, rng: jax.Array) -> dict[str, Any]:
  """{"dit": variables, "text": variables}, unboxed (no partitioning metadata)."""
  drng, trng = jax.random.split(rng)
  ids = jnp.zeros((1, 1, tcfg.max_len), jnp.int32)
  text = text_lib.TextEncoder(tcfg).init(trng, ids, ids > 0)
  inputs = dit_lib.dummy_inputs(dcfg, text_dim=tcfg.width)
  inputs = {k: jnp.zeros(v.shape, v.dtype) for k, v in inputs.items()}
  return nn.meta.unbox({"dit": dit_lib.DiT(dcfg).init(drng, **inputs), "text": text})


def init_state(config: ml_collections.ConfigDict, rng: jax.Array) -> DiTState:
  params = init_params(dit_config(config), text_config(config), rng)
  tx = optim.make_optimizer(dict(config.optim), config.train.steps)
  return DiTState(jnp.zeros((), jnp.int32), params, tx.init(params),
                  jax.tree.map(jnp.copy, params))


def state_shardings(config, mesh, abstract_state):
  """Placement by `config.sharding.rules` (`sharding/rules.py`); params, EMA and Adam
  moments share the models' logical axes, counters are replicated."""
  specs = run_lib.dit_param_specs(dit_config(config), text_config(config))
  return rules_lib.state_shardings(mesh, abstract_state, rules_lib.preset_of(config), specs)


# ------------------------------------------------------------------------ data
def make_dataset(config, split: str, train: bool, batch_size: int, num_clips=None,
                 process_shard: tuple[int, int] | None = None):
  """Packed batches of `split`; `process_shard` = (index, count) of this process's rows."""
  p = config.packing
  index, count = process_shard or (None, None)
  return latents_lib.make_latent_dataset(
      latent_records(config, split), tokenizer(config), patch=tuple(config.model.patch),
      seq_len=p.seq_len, max_clips=p.max_clips, text_len=p.text_len, batch_size=batch_size,
      seed=config.seed, train=train, caption=config.data.caption, num_bins=p.num_bins,
      num_clips=num_clips, process_index=index, process_count=count,
      num_workers=int(config.data.get("num_workers", 0)) if train else 0)


def make_train_data(config: ml_collections.ConfigDict,
                    process_shard: tuple[int, int] | None = None):
  _THROUGHPUT.reset()
  return make_dataset(config, "train", True, config.train.batch_size,
                      process_shard=process_shard)


_DEVICE_KEYS = ("tokens", "positions", "segment_ids", "text_ids", "text_mask")


def device_batch(config, batch, mesh) -> dict[str, jax.Array]:
  _THROUGHPUT.tick(float(train_flops(dit_config(config), text_config(config),
                                     batch["segment_ids"], batch["text_mask"])),
                   int(np.sum(batch["segment_ids"] > 0))
                   * pipeline.process_row_shards(mesh_lib.batch_sharding(mesh)))
  return pipeline.global_batch_to_device({k: batch[k] for k in _DEVICE_KEYS}, mesh,
                                         mesh_lib.batch_sharding(mesh).spec)


class _Throughput:
  """Host timer: wall time between consecutive steps, charged to the earlier batch.

  The loop reads the loss every step (a sync), so the time from one `device_batch` call to
  the next is one whole step. The first step after a (re)start holds the compile and an
  interval that spans an evaluation holds the evaluation: both are dropped.
  """

  def __init__(self):
    self.reset()

  def reset(self):
    self.last, self.pending, self.compiled = None, None, False
    self.seconds, self.flops, self.tokens = 0.0, 0.0, 0

  def tick(self, flops: float, tokens: int):
    now = time.perf_counter()
    if self.last is not None and self.compiled:
      self.seconds += now - self.last
      self.flops += self.pending[0]
      self.tokens += self.pending[1]
    self.compiled = self.last is not None or self.pending is not None
    self.pending, self.last = (flops, tokens), now

  def report(self, peak: float) -> dict[str, float]:
    """Throughput since the last report; the next interval (spanning this eval) is dropped."""
    out = {}
    if self.seconds > 0:
      out = {"tokens_per_s": self.tokens / self.seconds,
             "flops_per_s": self.flops / self.seconds}
      if peak > 0:
        out["mfu"] = out["flops_per_s"] / peak
    self.seconds, self.flops, self.tokens, self.last = 0.0, 0.0, 0, None
    return out


_THROUGHPUT = _Throughput()


def peak_flops(config) -> float:
  peak = float(config.train.peak_flops)
  if peak <= 0 and jax.default_backend() == "cpu":
    peak = CPU_PEAK_FLOPS
  return peak


# ------------------------------------------------------------------------ step
def make_train_step(config: ml_collections.ConfigDict):
  """The step function; one object per distinct config, so jax's caches hit on resume."""
  optim_items = tuple(sorted(config.optim.items())) + (("steps", config.train.steps),)
  fl = tuple(sorted(config.flow.items()))
  mixture = tuple(sorted((k, float(v)) for k, v in config.tasks.items()))
  return _train_step_fn(dit_config(config), text_config(config), fl, optim_items,
                        float(config.ema), mixture, bool(config.ema_debias))


def _predict(dcfg, tcfg, params, tokens, positions, segment_ids, t, text_ids, text_mask):
  """Velocity [B, N, Din] of a packed batch (captions [B, K, L] encoded per row)."""
  emb = text_lib.TextEncoder(tcfg).apply(params["text"], text_ids, text_mask)
  text, tmask, tseg = text_lib.flatten_packed_text(emb, text_mask)
  return dit_lib.DiT(dcfg).apply(params["dit"], tokens, positions, segment_ids, t, text,
                                 tmask, tseg)


def _per_clip_mse(v, target, segment_ids, keep):
  """Token MSE weighted so each clip's kept tokens sum to 1: (weights [B, N], mse [B, N])."""
  mse = jnp.mean(jnp.square(v - target), -1)
  keep = keep & (segment_ids > 0)
  weight = jnp.where(keep, 1.0 / jnp.maximum(flow.segment_sizes(segment_ids, keep), 1), 0.0)
  return weight, mse


def condition_tokens(rng, batch, mixture, t, xt):
  """Draws the training task of every packed clip (`diffusion/conditioning.py`) and applies it.

  Given (conditioning) tokens get their clean latents and timestep 0; they are excluded
  from the loss. Returns (given bool [B, N], t [B, N], xt [B, N, Din]).
  """
  seg = batch["segment_ids"]
  if all(k == "t2v" or w == 0 for k, w in mixture):  # plain text-to-video: nothing given
    return jnp.zeros(seg.shape, bool), t, xt
  given = conditioning.random_condition_mask(rng, batch["positions"][..., 0], seg,
                                          dict(mixture))
  t = jnp.where(given, 0.0, t)
  xt = jnp.where(given[..., None], batch["tokens"], xt)
  return given, t, xt


def ema_decay_at(decay: float, step: jax.Array, debias: bool) -> jax.Array:
  """The EMA's decay for update number `step` + 1.

  Debiased: 1 - (1 - decay) / (1 - decay^n) after n updates, which is Adam's bias
  correction written as a decay, so the average is over the steps taken only (1 update:
  the params themselves) and tends to `decay` as n grows.
  """
  if not debias:
    return jnp.asarray(decay, jnp.float32)
  n = step.astype(jnp.float32) + 1
  # 1 - d^n as -expm1(n log d): float32 1 - d^n loses ~1e-5 of itself at d = 0.999.
  one_minus_dn = -jnp.expm1(n * jnp.log1p(jnp.float32(decay - 1)))
  return jnp.where(n == 1, 0.0, 1 - jnp.float32(1 - decay) / one_minus_dn)


@functools.lru_cache(maxsize=8)
def _train_step_fn(dcfg, tcfg, fl, optim_items, ema_decay, mixture, ema_debias):
  o, f = dict(optim_items), dict(fl)
  tx = optim.make_optimizer(o, o.pop("steps"))

  def loss_fn(params, batch, xt, target, t, ids, mask, given):
    v = _predict(dcfg, tcfg, params, xt, batch["positions"], batch["segment_ids"], t, ids,
                 mask)
    return flow.flow_loss(v, target, batch["segment_ids"], ~given), v

  def step_fn(state: DiTState, batch: dict[str, jax.Array], rng: jax.Array):
    t_rng, eps_rng, drop_rng, task_rng = jax.random.split(rng, 4)
    seg, x0 = batch["segment_ids"], batch["tokens"]
    ids, mask = flow.drop_text(drop_rng, batch["text_ids"], batch["text_mask"],
                               f["cfg_drop"])
    t = flow.sample_clip_timesteps(t_rng, seg, mean=f["t_mean"], std=f["t_std"],
                                   base_tokens=f["base_tokens"] or None)
    xt, target = flow.add_noise(x0, jax.random.normal(eps_rng, x0.shape, x0.dtype), t)
    given, t, xt = condition_tokens(task_rng, batch, mixture, t, xt)
    (loss, v), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, xt, target, t, ids, mask, given)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(ema_decay, state.step, ema_debias)
    ema = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
               **_bucket_losses(v, target, seg, t, ~given),
               "given_fraction": jnp.sum(given) / jnp.maximum(jnp.sum(seg > 0), 1),
               "tokens": jnp.sum(seg > 0), "clips": jnp.sum(batch["text_mask"].any(-1)),
               "flops": train_flops(dcfg, tcfg, seg, batch["text_mask"]),
               "captions_full": jnp.sum(batch["text_mask"][..., -1])}
    return DiTState(state.step + 1, params, opt_state, ema), metrics

  return step_fn


def _bucket_losses(v, target, seg, t, keep) -> dict[str, jax.Array]:
  """Per-clip flow loss (generated tokens) within t buckets [b/4, (b+1)/4) (NaN if empty)."""
  weight, mse = _per_clip_mse(v, target, seg, keep)
  bucket = jnp.minimum((t * NUM_T_BUCKETS).astype(jnp.int32), NUM_T_BUCKETS - 1)
  out = {}
  for b in range(NUM_T_BUCKETS):
    w = jnp.where(bucket == b, weight, 0.0)
    out[f"loss_t{b}"] = jnp.sum(w * mse) / jnp.where(jnp.sum(w) > 0, jnp.sum(w), jnp.nan)
  return out


# ------------------------------------------------------------------------ evaluation
def _eval_batches(config) -> list[dict[str, np.ndarray]]:
  """The fixed evaluation set: the first `eval.num_clips` validation clips, packed."""
  key = _corpus_key(config) + json.dumps(config.eval.to_dict(), sort_keys=True) + str(
      config.packing.to_dict())
  if key not in _EVAL_CACHE:
    ds = make_dataset(config, config.eval.split, False, config.eval.batch_size,
                      num_clips=config.eval.num_clips)
    _EVAL_CACHE[key] = [{k: np.asarray(b[k]) for k in _DEVICE_KEYS} for b in ds]
  return _EVAL_CACHE[key]


_EVAL_CACHE: dict[str, list] = {}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _eval_loss(dcfg, tcfg, params, batch, t, rng):
  """Flow loss of a packed batch with every clip at timestep `t` (scalar) and noise `rng`."""
  x0 = batch["tokens"]
  tt = jnp.full(batch["segment_ids"].shape, t, jnp.float32)
  xt, target = flow.add_noise(x0, jax.random.normal(rng, x0.shape, x0.dtype), tt)
  v = _predict(dcfg, tcfg, params, xt, batch["positions"], batch["segment_ids"], tt,
               batch["text_ids"], batch["text_mask"])
  return flow.flow_loss(v, target, batch["segment_ids"])


def evaluate(config, state: DiTState, step: int, workdir: str, writer,
             final: bool) -> dict[str, float]:
  """Validation flow loss at fixed t (EMA params; raw params' mean too), throughput."""
  del writer, final
  save_tokenizer(config, workdir)
  dcfg, tcfg = dit_config(config), text_config(config)
  ema, raw = jax.device_get(state.ema_params), jax.device_get(state.params)
  out, raw_losses = {}, []
  batches = _eval_batches(config)
  for t in config.eval.timesteps:
    losses, raws = [], []
    for i, batch in enumerate(batches):
      rng = jax.random.fold_in(jax.random.key(config.eval.seed), i)
      losses.append(float(_eval_loss(dcfg, tcfg, ema, batch, t, rng)))
      raws.append(float(_eval_loss(dcfg, tcfg, raw, batch, t, rng)))
    out[f"val_loss_t{t:g}"] = float(np.mean(losses))
    raw_losses.append(float(np.mean(raws)))
  out["val_loss"] = float(np.mean([out[f"val_loss_t{t:g}"] for t in config.eval.timesteps]))
  out["val_loss_raw"] = float(np.mean(raw_losses))
  out["num_batches"] = len(batches)
  out.update(_THROUGHPUT.report(peak_flops(config)))
  del step
  return out


# The extra below does not depend on the state: every checkpoint carries it, so any saved
# step can be sampled and evaluated (`Generator(workdir, step=...)`, `--step`).
EXTRA_EVERY_CHECKPOINT = True


def checkpoint_extra(config, state: DiTState) -> dict[str, Any]:
  """What sampling needs besides the params: the tokenizer and the latent normalisation."""
  del state
  tok = tokenizer(config)
  proto = tok.__getstate__()["proto"]
  extra = {"tokenizer": config.tokenizer.path or "tokenizer.model",  # relative: the workdir
           "tokenizer_sha1": hashlib.sha1(proto).hexdigest(),
           "tokenizer_vocab_size": tok.vocab_size, "latents": config.data.latents}
  if _on_the_fly(config):
    vae = frozen_vae(config)
    extra.update(vae=vae.description, latent_mean=vae.mean.tolist(),
                 latent_std=vae.std.tolist())
  else:
    meta = _precomputed_records(config.data.latents, "train").metadata
    extra.update(vae=meta["vae"], latent_mean=meta["latent_mean"],
                 latent_std=meta["latent_std"])
  logging.info("DiT checkpoint extra: %s", {k: v for k, v in extra.items()
                                            if not k.startswith("latent_")})
  return extra
