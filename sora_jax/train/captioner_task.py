"""The captioner (and prompt upsampler) as a trainable task: next-token captions, EMA.

`CaptionerTask(config)` is what the one loop trains for `config.task = "captioner"`
(`configs/captioner.py`). It reads the DiT's data through the DiT task's machinery (latent
records precomputed or encoded on the fly, the run's tokenizer, NaViT packing), so a
captioner trains on exactly the latents a DiT of the same data sees:
  source "video": packed latent patch tokens -> each clip's caption (`data.caption`, the
                  detailed one by default);
  source "text":  the short caption -> the detailed one, one pair a row
                  (`data_pipelines/caption_pairs.py`): the prompt upsampler.
`data.labelled` > 0: the first that many training records are the labelled share (the
recaptioning study's alt-text world); with `data.short_rest` every other record trains the
captioner on its short caption, as a caption of the other kind (`models/captioner.py`: a
BOS per kind), so colour and shape are learnt from every clip; else only the labelled share
trains it. 0 = every record, its `data.caption`. `data.labelled_weight`: the labelled
share's part of the training stream (`AltTextRecords`).

Loss: cross-entropy of teacher-forced next tokens over each caption's words and its end
(`models/captioner.py`). Evaluation (EMA params): the validation loss and token accuracy,
and captions decoded greedily for `eval.num_clips` validation clips (prompts), scored with
the Shapes World caption grammar (`data_pipelines/shapes_world/captions.py`): per-attribute
accuracy against the clip's caption, or, for the upsampler, whether the expansion keeps the
short prompt's colour and shape and parses.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines import caption_pairs
from data_pipelines import latents as latents_lib
from data_pipelines import pipeline
from data_pipelines.shapes_world import captions as caption_scores
from sora_jax.data import encode_latents
from sora_jax.inference import captioning
from sora_jax.models import captioner as cap_lib
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import rules as rules_lib
from sora_jax.train import dit_task
from sora_jax.train import optim

TEXT_KEYS = ("text_ids", "text_mask")


class CaptionerTask(dit_task.DiTTask):
  """A captioner run: the DiT task's data, tokenizer and checkpoint extra, its own model."""
  extra_every_checkpoint = True

  @functools.cached_property
  def model_config(self) -> cap_lib.CaptionerConfig:
    channels = self.latent_shapes[0][3] if self.source == "video" else None
    return captioning.captioner_config(self.config, channels)

  @property
  def source(self) -> str:
    return self.config.model.source

  @property
  def vocab_limit(self) -> tuple[str, int]:
    kinds = cap_lib.CaptionerConfig.num_kinds
    return (f"config.model.vocab_size - {kinds} (the BOS ids)",
            int(self.config.model.vocab_size) - kinds)

  @property
  def device_keys(self) -> tuple[str, ...]:
    kind = ("caption_kind",) if self.source == "video" else ()
    return cap_lib.SOURCE_KEYS[self.source] + TEXT_KEYS + kind

  # ---------------------------------------------------------------------- bad input
  def validate(self) -> None:
    config = self.config
    m, p = config.model, config.packing
    if m.variant not in cap_lib.VARIANTS or m.source not in cap_lib.SOURCES:
      raise ValueError(f"config.model: variant={m.variant!r} (known: {list(cap_lib.VARIANTS)}) "
                       f"and source={m.source!r} (known: {cap_lib.SOURCES}).")
    if min(p.text_len, p.seq_len, p.max_clips, p.source_len) < 1:
      raise ValueError(f"config.packing: text_len={p.text_len}, seq_len={p.seq_len}, "
                       f"max_clips={p.max_clips}, source_len={p.source_len} must be >= 1.")
    if config.data.caption not in latents_lib.RECORD_CAPTIONS:
      raise ValueError(f"config.data.caption={config.data.caption!r}: the caption the "
                       f"captioner learns to write; one of {latents_lib.RECORD_CAPTIONS}.")
    if config.data.labelled and config.data.caption == "short":
      raise ValueError("config.data.caption='short' with labelled > 0: the labelled share "
                       "is the one with detailed captions; use caption=detailed.")
    if not 0 < config.data.labelled_weight < 1:
      raise ValueError(f"config.data.labelled_weight={config.data.labelled_weight}; "
                       "expected a share in (0, 1).")
    if config.data.labelled < 0:
      raise ValueError(f"config.data.labelled={config.data.labelled}; expected >= 0 (0 = "
                       "every training record).")
    optim.check(dict(config.optim))
    if not 0 <= config.ema < 1:
      raise ValueError(f"config.ema={config.ema} must be in [0, 1).")
    self._validate_sources()
    self.model_config  # pylint: disable=pointless-statement  # unknown fields, head dims
    if self.source == "video":
      self.check_clip_tokens(tuple(config.model.patch))

  # ---------------------------------------------------------------------- state
  def init_state(self, rng: jax.Array) -> dit_task.DiTState:
    params = cap_lib.init_params(self.model_config, rng)
    tx = optim.make_optimizer(dict(self.config.optim), self.config.train.steps)
    return dit_task.DiTState(jnp.zeros((), jnp.int32), params, tx.init(params),
                             jax.tree.map(jnp.copy, params))

  def state_shardings(self, mesh, abstract_state):
    return rules_lib.state_shardings(mesh, abstract_state, rules_lib.preset_of(self.config),
                                     captioning.param_specs(self.model_config))

  # ---------------------------------------------------------------------- data
  def _pairs(self, split: str, num: int | None = None) -> list[tuple[str, str]]:
    records = self.latent_records(split)
    if isinstance(records, encode_latents.OnTheFlyLatents):
      records = records.source.records  # the captions only: no clip is encoded
    return caption_pairs.caption_pairs(records, latents_lib.RECORD_KEYS[
        self.config.data.caption], num)

  def make_dataset(self, split: str, train: bool, batch_size: int, num_clips=None,
                   process_shard: tuple[int, int] | None = None, records=None):
    if self.source == "video":
      labelled, short_rest = 0, False
      if split == "train" and train:
        labelled, short_rest = self.config.data.labelled, self.config.data.short_rest
      records = AltTextRecords(self.latent_records(split), labelled, short_rest,
                               latents_lib.RECORD_KEYS[self.config.data.caption],
                               self.config.data.labelled_weight)
      return super().make_dataset(split, train, batch_size, num_clips, process_shard,
                                  records)
    p = self.config.packing
    index, count = process_shard or (None, None)
    return caption_pairs.make_pair_dataset(
        self._pairs(split, num_clips), self.tokenizer, source_len=p.source_len,
        text_len=p.text_len, batch_size=batch_size, seed=self.config.seed, train=train,
        process_index=index, process_count=count)

  def make_train_data(self, process_shard: tuple[int, int] | None = None):
    d = self.config.data
    only_labelled = d.labelled and (self.source == "text" or not d.short_rest)
    return self.make_dataset("train", True, self.config.train.batch_size,
                             num_clips=d.labelled if only_labelled else None,
                             process_shard=process_shard)

  def device_batch(self, batch, mesh) -> dict[str, jax.Array]:
    return pipeline.global_batch_to_device({k: batch[k] for k in self.device_keys}, mesh,
                                           mesh_lib.batch_sharding(mesh).spec)

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    s, b, p = jax.ShapeDtypeStruct, self.config.train.batch_size, self.config.packing
    k = p.max_clips if self.source == "video" else 1
    out = {**cap_lib.dummy_source(self.model_config, b, p.seq_len, 1),
           "text_ids": s((b, k, p.text_len), jnp.int32),
           "text_mask": s((b, k, p.text_len), jnp.bool_)}
    if self.source == "video":
      out["caption_kind"] = s((b, k), jnp.int32)
    return out

  # ---------------------------------------------------------------------- step
  def make_train_step(self):
    config = self.config
    optim_items = tuple(sorted(config.optim.items())) + (("steps", config.train.steps),)
    return _train_step_fn(self.model_config, optim_items, float(config.ema),
                          bool(config.ema_debias))

  # ---------------------------------------------------------------------- evaluation
  @functools.cached_property
  def eval_batches(self) -> list[dict[str, np.ndarray]]:
    e = self.config.eval
    ds = self.make_dataset(e.split, False, e.batch_size, num_clips=e.num_clips,
                           process_shard=(0, 1))
    keys = self.device_keys + (("clip_index",) if self.source == "video" else ())
    return [{k: np.asarray(b[k]) for k in keys} for b in ds]

  def evaluate(self, state, step: int, workdir: str, writer, final: bool
               ) -> dict[str, float]:
    """Validation loss and token accuracy (teacher forcing), and greedy captions scored."""
    del step, writer, final
    self.save_tokenizer(workdir)
    cfg = self.model_config
    params = mesh_lib.for_evaluation(state.ema_params)
    losses, accs = [], []
    for batch in self.eval_batches:
      loss, aux = _eval_loss(cfg, params, {k: batch[k] for k in self.device_keys})
      losses.append(float(loss))
      accs.append(float(aux["token_accuracy"]))
    out = {"val_loss": float(np.mean(losses)), "val_token_accuracy": float(np.mean(accs))}
    scores = self.caption_scores(params)
    out.update({f"caption_{k}": float(v) for k, v in scores.items()})
    return out

  def caption_scores(self, params) -> dict[str, float]:
    """Greedy captions of the evaluation set, scored by the Shapes World grammar."""
    cfg, tok = self.model_config, self.tokenizer
    if self.source == "text":
      pairs = self._pairs(self.config.eval.split, self.config.eval.num_clips)
      shorts = [s for s, _ in pairs]
      run = captioning.CaptionerRun("", 0, {}, cfg, tok, params)
      got = run.upsample(shorts, seeds=0, temperature=0.0)
      return caption_scores.aggregate(
          [_safe(caption_scores.against_short, g, s) for g, s in zip(got, shorts)])
    records = self.latent_records(self.config.eval.split)
    key = latents_lib.RECORD_KEYS[self.config.data.caption]
    scores = []
    for batch in self.eval_batches:
      for index, text in captioning.packed_captions(cfg, params, tok, batch).items():
        scores.append(_safe(caption_scores.compare, text, _truth(records, index, key)))
    return caption_scores.aggregate(scores)

  def checkpoint_extra(self, state) -> dict[str, Any]:
    """The tokenizer; a video captioner's latent space (the VAE, its statistics) too."""
    if self.source == "text":
      return self.tokenizer_extra()
    return {**super().checkpoint_extra(state),
            "latent_channels": int(self.latent_shapes[0][3])}


class AltTextRecords:
  """Latent records as the captioner trains on them: each with its `caption_kind`.

  The first `labelled` records (all when 0) keep their `key` caption (kind 0); with
  `short_rest` the others give their short caption in its place (kind 1), and the labelled
  records are listed `repeat` times over, so that they are `labelled_weight` of the
  stream (at 5% labelled, one pass in twenty would leave the words only they teach, the
  motions, sizes and regions, undertrained); without it, the others are read as they are
  (the pipeline's `num_clips` keeps them out).
  """

  def __init__(self, records, labelled: int, short_rest: bool, key: str,
               labelled_weight: float = 0.5):
    self.records, self.key = records, key
    n = len(records)
    self.labelled = labelled if labelled and short_rest and labelled < n else 0
    self.repeat = 1
    if self.labelled:
      rest = n - self.labelled
      self.repeat = max(1, round(labelled_weight / (1 - labelled_weight) * rest
                                 / self.labelled))
    head = np.tile(np.arange(self.labelled), self.repeat)
    self._index = np.concatenate([head, np.arange(self.labelled, n)]).astype(np.int64)
    self.shapes = np.asarray(records.shapes)[self._index]

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, i: int) -> dict[str, Any]:
    j = int(self._index[int(i)])
    rec = dict(self.records[j])
    short = bool(self.labelled) and j >= self.labelled
    if short:
      rec[self.key] = rec["short_caption"]
    rec["caption_kind"] = int(short)
    return rec


def _truth(records, index: int, key: str) -> str:
  if isinstance(records, encode_latents.OnTheFlyLatents):
    records = records.source.records
  value = records[index][key]
  return value.decode() if isinstance(value, bytes) else str(value)


def _safe(fn, generated: str, truth: str) -> dict[str, bool]:
  """Scores of a caption; a truth outside the Shapes World grammar (a video folder's
  captions) scores only whether the caption is the same string."""
  try:
    return fn(generated, truth)
  except ValueError:
    return {"exact": generated.strip() == truth.strip()}


# ------------------------------------------------------------------------ pure pieces
def _loss(cfg: cap_lib.CaptionerConfig, params, batch):
  source = {k: batch[k] for k in cap_lib.SOURCE_KEYS[cfg.source]}
  ids, mask = batch["text_ids"], batch["text_mask"]
  present = cap_lib.slots_present(cfg, source, ids.shape[1])
  bos = cfg.bos_id(batch.get("caption_kind", 0))
  logits = cap_lib.Captioner(cfg).apply(params, source, cap_lib.shift_right(ids, bos))
  return cap_lib.caption_loss(logits, ids, mask, present)


_eval_loss = jax.jit(_loss, static_argnums=0)


@functools.lru_cache(maxsize=8)
def _train_step_fn(cfg, optim_items, ema_decay, ema_debias):
  o = dict(optim_items)
  tx = optim.make_optimizer(o, o.pop("steps"))

  def step_fn(state: dit_task.DiTState, batch: dict[str, jax.Array], rng: jax.Array):
    del rng
    (loss, aux), grads = jax.value_and_grad(functools.partial(_loss, cfg), has_aux=True)(
        state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = dit_task.ema_decay_at(ema_decay, state.step, ema_debias)
    ema = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux,
               "tokens": aux["target_tokens"]}
    return dit_task.DiTState(state.step + 1, params, opt_state, ema), metrics

  return step_fn

