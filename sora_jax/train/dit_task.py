"""The text-to-video DiT as a trainable task: packed latents, rectified flow, EMA.

`DiTTask(config)` is what the one loop (`loop.py`) trains for `config.task = "dit"`. Data:
VAE latents of clips (precomputed records, `data_pipelines/latents.py`, or encoded on the
fly, `sora_jax/data/encode_latents.py`), captions tokenized by the run's sentencepiece
tokenizer, NaViT-packed into `seq_len` tokens (`data_pipelines/packing.py`). Model: a
jointly trained `TextEncoder` on each packed caption row, laid side by side
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
on the truncated ones: packing keeps no per-caption flag). The loop turns `flops` and
`tokens` into throughput and MFU (`train/throughput.py`).

Evaluation: the validation flow loss of the EMA params at fixed timesteps t in
`eval.timesteps` on a fixed set of packed validation clips with fixed noise (and the mean
over those t for the raw params too), so curves are comparable across steps and runs.

The tokenizer: trained from the training captions (`Tokenizer.train`; Shapes World
captions without rendering), deterministic, so a resumed run retrains the same one; it is
written to `WORKDIR/tokenizer.model` when the run starts (`prepare`) and checked against
it on every resume and evaluation. Set `tokenizer.path` to use a fixed file (trained and
written there when missing).

Pretrained parts (`sora_jax/interop/pretrained.py`, configs/wan.py): `text.encoder = "t5"`
replaces the jointly trained encoder by a frozen T5 / UMT5 (no update, no Adam moments, no
EMA copy; its own tokenizer with `tokenizer.kind = "t5"`, copied to WORKDIR/spiece.model),
`model.pretrained` starts the DiT from a diffusers Wan2.1 transformer and `vae.wan` encodes
with Wan's VAE; `load_pretrained` puts the weights into a fresh state.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
from typing import Any

from etils import epath
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
from data_pipelines import storage
from sora_jax import checkpoints
from sora_jax.data import encode_latents
from sora_jax.diffusion import conditioning
from sora_jax.diffusion import flow
from sora_jax.inference import run as run_lib
from sora_jax.interop import pretrained
from sora_jax.models import dit as dit_lib
from sora_jax.models import text as text_lib
from sora_jax.scaling import flops as flops_lib
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import rules as rules_lib
from sora_jax.text import t5_tokenizer
from sora_jax.text import tokenizer as tok_lib
from sora_jax.train import optim

NUM_T_BUCKETS = 4
DEVICE_KEYS = ("tokens", "positions", "segment_ids", "text_ids", "text_mask")


@flax.struct.dataclass
class DiTState:
  step: jax.Array
  params: Any  # {"dit": variables, "text": variables}
  opt_state: Any
  ema_params: Any  # params' structure, less a frozen text encoder (`ema_of`)


class DiTTask:
  """The DiT of one run: its frozen VAE, latent records, tokenizer and evaluation set are
  built once, when first needed, and belong to this object (nothing is cached per module).

  Attributes:
    config: the run's config (configs/dit.py).
    extra_every_checkpoint: the checkpoint extra does not depend on the state, so every
      checkpoint carries it and any saved step can sample (`Run.load(workdir, step)`).
  """
  extra_every_checkpoint = True

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self._records: dict[str, Any] = {}

  # ---------------------------------------------------------------------- what the run is
  @property
  def on_the_fly(self) -> bool:
    return self.config.data.latents == "on_the_fly"

  @functools.cached_property
  def vae(self) -> run_lib.FrozenVAE:
    """The frozen VAE: the trained run's, Wan2.1's (vae.wan), or a random one when
    vae.workdir is empty."""
    if self.config.vae.get("wan", ""):
      return run_lib.load_wan_vae(self.config.vae.wan)
    if self.config.vae.workdir:
      return run_lib.load_vae(self.config.vae.workdir)
    return run_lib.random_vae(self.config.vae.random_model.to_dict())

  def latent_records(self, split: str):
    """The latent records of a split: `OnTheFlyLatents` or `LatentRecords`."""
    if split not in self._records:
      if self.on_the_fly:
        source = latents_lib.pixel_source(self.config.data, split)
        self._records[split] = encode_latents.OnTheFlyLatents(source, self.vae)
      else:
        self._records[split] = latents_lib.LatentRecords(
            storage.join(self.config.data.latents, split))
    return self._records[split]

  @functools.cached_property
  def pixel_sizes(self) -> list[tuple[int, int, int]]:
    name = self.config.data.name
    if isinstance(name, (dict, ml_collections.ConfigDict)) and "sizes" in name:
      return [tuple(int(v) for v in s) for s in name["sizes"]]
    sizes = latents_lib.pixel_source(self.config.data, "train").sizes  # a named builder
    return sorted({tuple(int(v) for v in s) for s in sizes})

  @functools.cached_property
  def latent_shapes(self) -> list[tuple[int, int, int, int]]:
    """The distinct latent (T', h, w, C) of the training data, without reading any clip."""
    if self.on_the_fly:
      return sorted({encode_latents.latent_size(self.vae.config, s)
                     for s in self.pixel_sizes})
    shapes = self.latent_records("train").shapes
    return sorted({tuple(int(v) for v in s) for s in shapes})

  @functools.cached_property
  def model_configs(self) -> tuple[dit_lib.DiTConfig, Any]:
    return run_lib.dit_configs(self.config, self.latent_shapes[0][3])

  @property
  def dit_config(self) -> dit_lib.DiTConfig:
    return self.model_configs[0]

  @property
  def text_config(self):
    """`TextEncoderConfig`, or `PretrainedTextConfig` for a frozen T5 (text.encoder)."""
    return self.model_configs[1]

  # ---------------------------------------------------------------------- bad input
  def validate(self) -> None:
    """Raises one clear ValueError for a config the DiT cannot train on (before compiles)."""
    config = self.config
    if config.model.variant not in dit_lib.VARIANTS:
      raise ValueError(f"config.model.variant={config.model.variant!r} is not a DiT "
                       f"variant; known: {list(dit_lib.VARIANTS)}.")
    p = config.packing
    if p.text_len < 1 or p.seq_len < 1 or p.max_clips < 1:
      raise ValueError(f"config.packing: text_len={p.text_len}, seq_len={p.seq_len} and "
                       f"max_clips={p.max_clips} must all be >= 1.")
    if config.data.caption not in latents_lib.CAPTIONS:
      raise ValueError(f"config.data.caption={config.data.caption!r}; expected one of "
                       f"{latents_lib.CAPTIONS}.")
    if not 0 <= config.data.get("synthetic_share", 0.95) <= 1:
      raise ValueError(f"config.data.synthetic_share={config.data.synthetic_share}; "
                       "expected a value in [0, 1].")
    pretrained.check_sources(config)  # named pretrained folders exist
    optim.check(config.optim)
    if config.optim.get("name", "adamw") not in optim.OPTIMIZERS:
      raise ValueError(f"config.optim.name={config.optim.name!r}; allowed: "
                       f"{', '.join(optim.OPTIMIZERS)}.")
    if not 0 <= config.flow.cfg_drop <= 1 or not 0 <= config.ema < 1:
      raise ValueError(f"config.flow.cfg_drop={config.flow.cfg_drop} must be in [0, 1] and "
                       f"config.ema={config.ema} in [0, 1).")
    conditioning.check_mixture(config.tasks)
    self._validate_sources()
    self.check_clip_tokens(self.dit_config.patch)  # also: unknown fields, head dims
    if config.data.caption in ("synthetic", "blend") and self.on_the_fly:
      raise ValueError(f"config.data.caption={config.data.caption!r} reads the synthetic "
                       "captions of recaptioned latents: set latents=DIR (python -m "
                       "sora_jax.data.recaption writes them).")
    if config.data.caption in ("synthetic", "blend"):
      for split in ("train", config.eval.split):
        if "synthetic_caption" not in self.latent_records(split)[0]:
          raise ValueError(f"config.data.caption={config.data.caption!r}, but the {split} "
                           f"latents in {config.data.latents} have no synthetic captions; "
                           "write them with python -m sora_jax.data.recaption.")

  def check_clip_tokens(self, patch: tuple[int, int, int]) -> None:
    """Every training clip's latents cut into `patch` and fit one packed row."""
    seq_len = self.config.packing.seq_len
    for shape in self.latent_shapes:
      patches.check_patch(shape, patch, where=f"latents ({self._latent_origin()})")
      n = math.prod(shape[:3]) // math.prod(patch)
      if n > seq_len:
        raise ValueError(f"A clip with latents {shape} has {n} tokens at patch {patch}, "
                         f"more than config.packing.seq_len={seq_len}.")

  def _latent_origin(self) -> str:
    if not self.on_the_fly:
      return f"precomputed in {self.config.data.latents}"
    vcfg = self.vae.config
    return (f"data sizes {self.pixel_sizes} with VAE factors "
            f"{vcfg.temporal_factor}x{vcfg.spatial_factor}x{vcfg.spatial_factor}")

  def _validate_sources(self) -> None:
    """The VAE workdir and the data (pixels or latents) exist, with a clear error if not."""
    config = self.config
    if config.vae.workdir and not config.vae.get("wan", ""):
      run_lib.read_vae_run(config.vae.workdir)  # raises when missing or unfinished
    if not self.on_the_fly:
      for split in ("train", config.eval.split):
        self.latent_records(split)  # raises when missing
      return
    data_dir = config.data.data_dir
    if not (data_dir and epath.Path(data_dir).is_dir()) and not config.data.get("prepare",
                                                                               False):
      raise ValueError(f"config.data.data_dir={data_dir!r} does not exist (and prepare is "
                       "off); build the data set first.")
    vcfg = self.vae.config
    for t, h, w in self.pixel_sizes:
      if ((t - 1) % vcfg.temporal_factor or h % vcfg.spatial_factor
          or w % vcfg.spatial_factor):
        raise ValueError(f"Data size {t}x{h}x{w} does not fit the VAE factors (temporal "
                         f"{vcfg.temporal_factor}, spatial {vcfg.spatial_factor}).")

  # ---------------------------------------------------------------------- tokenizer
  @functools.cached_property
  def tokenizer(self) -> tok_lib.Tokenizer:
    """The run's tokenizer (see the module docstring)."""
    config = self.config
    path = config.tokenizer.path
    if self.tokenizer_kind == "t5":  # a pretrained encoder's own
      tok = t5_tokenizer.T5Tokenizer.load(path)
    elif path and epath.Path(path).exists():
      tok = tok_lib.Tokenizer.load(path)
    else:
      tok = tok_lib.Tokenizer.train(self._training_captions(), config.tokenizer.vocab_size)
      if path:
        epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
        tok.save(path)
    key, limit = self.vocab_limit
    if tok.vocab_size > limit:
      raise ValueError(f"Tokenizer has {tok.vocab_size} ids but {key} allows {limit}; "
                       "raise it.")
    return tok

  @property
  def tokenizer_kind(self) -> str:
    """"sentencepiece" (the project's `Tokenizer`) or "t5" (`T5Tokenizer` of tokenizer.path)."""
    return self.config.tokenizer.get("kind", "sentencepiece")

  @property
  def vocab_limit(self) -> tuple[str, int]:
    """(config key, most tokenizer ids the model's embedding table takes)."""
    if text_lib.is_frozen(self.text_config):
      return "the T5 encoder's vocab_size", self.text_config.t5.vocab_size
    return "config.text.vocab_size", int(self.config.text.vocab_size)

  def _training_captions(self) -> list[str]:
    """Detailed and short captions of the training clips (Shapes World: no rendering)."""
    config = self.config
    if self.on_the_fly and config.data.source == "shapes_world":
      t, h, w = self.pixel_sizes[0]
      return list(tok_lib.shapes_world_captions(
          "train", config.tokenizer.num_clips, config.data.name["level"], t, h, w))
    records = self.latent_records("train")
    n = min(len(records), config.tokenizer.num_clips)
    return [records[i][k] for i in range(n) for k in ("caption", "short_caption")]

  def prepare(self, workdir: str) -> None:
    """Run files written at start: the tokenizer, so sampling finds it from step 0."""
    self.save_tokenizer(workdir)

  @property
  def tokenizer_file(self) -> str:
    """The tokenizer's file name in the run directory."""
    return "spiece.model" if self.tokenizer_kind == "t5" else "tokenizer.model"

  def save_tokenizer(self, workdir: str) -> str:
    """Writes the run's tokenizer to `workdir/tokenizer.model` (`spiece.model` for a T5
    tokenizer; checks it if present)."""
    tok, path = self.tokenizer, storage.join(workdir, self.tokenizer_file)
    proto = tok.__getstate__()["proto"]
    if epath.Path(path).exists():
      if type(tok).load(path).__getstate__()["proto"] != proto:
        raise ValueError(f"{path} differs from the tokenizer this config trains; the run's "
                         "captions changed. Set config.tokenizer.path to the saved file.")
    elif jax.process_index() == 0:
      epath.Path(path).write_bytes(proto)
    return path

  # ---------------------------------------------------------------------- state
  def init_state(self, rng: jax.Array) -> DiTState:
    params = init_params(self.dit_config, self.text_config, rng)
    tx = make_optimizer(dict(self.config.optim), self.config.train.steps,
                        text_lib.is_frozen(self.text_config))
    return DiTState(jnp.zeros((), jnp.int32), params, tx.init(params),
                    ema_of(params, self.text_config))

  def load_pretrained(self, state: DiTState, converted: tuple[str, int] | None = None
                      ) -> DiTState:
    """A fresh state with the pretrained weights the config names (model.pretrained, a
    frozen text.path; `sora_jax/interop/pretrained.py`) in params and EMA, placed where
    `state`'s arrays are; unchanged when it names none.

    Args:
      state: the freshly initialised state.
      converted: (workdir, step) of a converted checkpoint (`python -m sora_jax.convert`)
        whose DiT params replace the config's (fine-tuning in the convert's run directory).
    """
    config = self.config
    text = config.get("text") or {}
    if not (converted or config.model.get("pretrained")
            or (text.get("encoder") == "t5" and text.get("path"))):
      return state
    host = pretrained.load_params(config, self.dit_config, self.text_config,
                                  parts=("text",) if converted else ("dit", "text"))
    if converted:
      host["dit"] = checkpoints.restore_state_host(*converted)["params"]["dit"]
    params = dict(state.params)
    for key, value in host.items():
      params[key] = jax.tree.map(
          lambda x, like: jax.device_put(np.asarray(x, like.dtype), like.sharding),
          value, state.params[key])
      logging.info("DiT: %s params from %s", key, "pretrained weights")
    return state.replace(params=params, ema_params=ema_of(params, self.text_config))

  def state_shardings(self, mesh, abstract_state):
    """Placement by `config.sharding.rules` (`sharding/rules.py`); params, EMA and Adam
    moments share the models' logical axes, counters are replicated."""
    specs = run_lib.dit_param_specs(self.dit_config, self.text_config)
    return rules_lib.state_shardings(mesh, abstract_state, rules_lib.preset_of(self.config),
                                     specs)

  # ---------------------------------------------------------------------- data
  def make_dataset(self, split: str, train: bool, batch_size: int, num_clips=None,
                   process_shard: tuple[int, int] | None = None, records=None):
    """Packed batches of `split` (or of `records` in its place); `process_shard` = (index,
    count) of this process's rows."""
    config, p = self.config, self.config.packing
    index, count = process_shard or (None, None)
    return latents_lib.make_latent_dataset(
        self.latent_records(split) if records is None else records, self.tokenizer, patch=tuple(config.model.patch),
        seq_len=p.seq_len, max_clips=p.max_clips, text_len=p.text_len,
        batch_size=batch_size, seed=config.seed, train=train, caption=config.data.caption,
        num_bins=p.num_bins, num_clips=num_clips, process_index=index,
        process_count=count, synthetic_share=float(config.data.get("synthetic_share", 0.95)),
        num_workers=int(config.data.get("num_workers", 0)) if train else 0)

  def make_train_data(self, process_shard: tuple[int, int] | None = None):
    return self.make_dataset("train", True, self.config.train.batch_size,
                             process_shard=process_shard)

  def device_batch(self, batch, mesh) -> dict[str, jax.Array]:
    return pipeline.global_batch_to_device({k: batch[k] for k in DEVICE_KEYS}, mesh,
                                           mesh_lib.batch_sharding(mesh).spec)

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    """One global batch as `device_batch` gives it, as ShapeDtypeStructs (AOT compiles)."""
    s, b, p = jax.ShapeDtypeStruct, self.config.train.batch_size, self.config.packing
    return {"tokens": s((b, p.seq_len, self.dit_config.token_dim), jnp.float32),
            "positions": s((b, p.seq_len, 3), jnp.int32),
            "segment_ids": s((b, p.seq_len), jnp.int32),
            "text_ids": s((b, p.max_clips, p.text_len), jnp.int32),
            "text_mask": s((b, p.max_clips, p.text_len), jnp.bool_)}

  # ---------------------------------------------------------------------- step
  def make_train_step(self):
    """The step function (state, batch, rng) -> (state, metrics) (see the module docstring
    for the metrics)."""
    config = self.config
    optim_items = tuple(sorted(config.optim.items())) + (("steps", config.train.steps),)
    mixture = tuple(sorted((k, float(v)) for k, v in config.tasks.items()))
    return _train_step_fn(self.dit_config, self.text_config, tuple(sorted(config.flow.items())),
                          optim_items, float(config.ema), mixture, bool(config.ema_debias))

  # ---------------------------------------------------------------------- evaluation
  @functools.cached_property
  def eval_batches(self) -> list[dict[str, np.ndarray]]:
    """The fixed evaluation set: the first `eval.num_clips` validation clips, packed; the
    same on every process (the evaluation runs on the global mesh)."""
    e = self.config.eval
    ds = self.make_dataset(e.split, False, e.batch_size, num_clips=e.num_clips,
                           process_shard=(0, 1))
    return [{k: np.asarray(b[k]) for k in DEVICE_KEYS} for b in ds]

  def evaluate(self, state: DiTState, step: int, workdir: str, writer,
               final: bool) -> dict[str, float]:
    """Validation flow loss at fixed t (EMA params; the raw params' mean too).

    The params stay where training put them (split over hosts under FSDP): every process
    feeds the same batches and reads the replicated losses."""
    del step, writer, final
    self.save_tokenizer(workdir)
    e, dcfg, tcfg = self.config.eval, self.dit_config, self.text_config
    ema, raw = mesh_lib.for_evaluation((state.ema_params, state.params))
    ema = {**raw, **ema}  # a frozen text encoder has no EMA of its own
    out, raw_losses = {}, []
    for t in e.timesteps:
      losses, raws = [], []
      for i, batch in enumerate(self.eval_batches):
        rng = jax.random.fold_in(jax.random.key(e.seed), i)
        losses.append(float(_eval_loss(dcfg, tcfg, ema, batch, t, rng)))
        raws.append(float(_eval_loss(dcfg, tcfg, raw, batch, t, rng)))
      out[f"val_loss_t{t:g}"] = float(np.mean(losses))
      raw_losses.append(float(np.mean(raws)))
    out["val_loss"] = float(np.mean([out[f"val_loss_t{t:g}"] for t in e.timesteps]))
    out["val_loss_raw"] = float(np.mean(raw_losses))
    out["num_batches"] = len(self.eval_batches)
    return out

  def tokenizer_extra(self) -> dict[str, Any]:
    """The checkpoint's note of the run's tokenizer (a path relative to the workdir)."""
    tok = self.tokenizer
    path = self.config.tokenizer.path if self.tokenizer_kind != "t5" else ""
    return {"tokenizer": path or self.tokenizer_file, "tokenizer_kind": self.tokenizer_kind,
            "tokenizer_sha1": hashlib.sha1(tok.__getstate__()["proto"]).hexdigest(),
            "tokenizer_vocab_size": tok.vocab_size}

  def checkpoint_extra(self, state: DiTState) -> dict[str, Any]:
    """What sampling needs besides the params: the tokenizer and the latent normalisation."""
    del state
    config = self.config
    extra = {**self.tokenizer_extra(), "latents": config.data.latents}
    if self.on_the_fly:
      extra.update(vae=self.vae.description, latent_mean=self.vae.mean.tolist(),
                   latent_std=self.vae.std.tolist())
    else:
      meta = self.latent_records("train").metadata
      extra.update(vae=meta["vae"], latent_mean=meta["latent_mean"],
                   latent_std=meta["latent_std"])
    logging.info("DiT checkpoint extra: %s", {k: v for k, v in extra.items()
                                              if not k.startswith("latent_")})
    return extra


# ------------------------------------------------------------------------ pure pieces
def train_flops(dcfg: dit_lib.DiTConfig, tcfg: text_lib.TextEncoderConfig, segment_ids,
                text_mask, text_dim: int | None = None):
  """Analytic FLOPs of one training step of real tokens: `flops.dit_train_flops`."""
  return flops_lib.dit_train_flops(dcfg, tcfg, segment_ids, text_mask, text_dim)


def ema_of(params: dict[str, Any], tcfg) -> dict[str, Any]:
  """The EMA's initial value: a copy of the params, less a frozen text encoder's (it never
  changes, and a UMT5-XXL copy would cost 11 GB in bf16)."""
  return {k: jax.tree.map(jnp.copy, v) for k, v in params.items()
          if not (k == "text" and text_lib.is_frozen(tcfg))}


def make_optimizer(o, steps: int, frozen_text: bool) -> optax.GradientTransformation:
  """`optim.make_optimizer` for the DiT (and a jointly trained text encoder); a frozen
  pretrained text encoder gets no update and no optimizer state."""
  tx = optim.make_optimizer(o, steps)
  if not frozen_text:
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               {"dit": "train", "text": "frozen"})


def init_params(dcfg, tcfg, rng: jax.Array) -> dict[str, Any]:
  """{"dit": variables, "text": variables}, unboxed (no partitioning metadata)."""
  drng, trng = jax.random.split(rng)
  ids = jnp.zeros((1, tcfg.max_len), jnp.int32)
  text = text_lib.text_module(tcfg).init(trng, ids, ids > 0)
  inputs = dit_lib.dummy_inputs(dcfg, text_dim=tcfg.width)
  inputs = {k: jnp.zeros(v.shape, v.dtype) for k, v in inputs.items()}
  return nn.meta.unbox({"dit": dit_lib.DiT(dcfg).init(drng, **inputs), "text": text})


def _predict(dcfg, tcfg, params, tokens, positions, segment_ids, t, text_ids, text_mask):
  """Velocity [B, N, Din] of a packed batch (captions [B, K, L] encoded per row)."""
  emb, text_mask = text_lib.encode_text(tcfg, params["text"], text_ids, text_mask)
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


# Memoised on its hashable arguments: jax.jit caches compiles by function object, so a run
# that resumes (or a second run of one config in a process) reuses the compiled step.
@functools.lru_cache(maxsize=8)
def _train_step_fn(dcfg, tcfg, fl, optim_items, ema_decay, mixture, ema_debias):
  o, f = dict(optim_items), dict(fl)
  tx = make_optimizer(o, o.pop("steps"), text_lib.is_frozen(tcfg))

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
    ema = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), state.ema_params,
                       {k: params[k] for k in state.ema_params})
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


@functools.partial(jax.jit, static_argnums=(0, 1))
def _eval_loss(dcfg, tcfg, params, batch, t, rng):
  """Flow loss of a packed batch with every clip at timestep `t` (scalar) and noise `rng`."""
  x0 = batch["tokens"]
  tt = jnp.full(batch["segment_ids"].shape, t, jnp.float32)
  xt, target = flow.add_noise(x0, jax.random.normal(rng, x0.shape, x0.dtype), tt)
  v = _predict(dcfg, tcfg, params, xt, batch["positions"], batch["segment_ids"], tt,
               batch["text_ids"], batch["text_mask"])
  return flow.flow_loss(v, target, batch["segment_ids"])
