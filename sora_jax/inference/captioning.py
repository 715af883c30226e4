"""Trained captioners and prompt upsamplers, loaded: captions of latent clips, expanded
prompts.

  cap = CaptionerRun.load("runs/captioner")             # a `configs/captioner.py` run
  captions = cap.caption_records(latent_records)         # {record index: caption}
  up = CaptionerRun.load("runs/upsampler")              # source=text
  up.upsample(["a red circle"], seeds=[0], temperature=1.0)
  # -> ['A large red circle moves from left to right on a navy background. The camera ...']

A caption's sampling seed is `seed` + the clip's record index (a prompt's: its own seed),
so a caption does not depend on the batch or the packing it was decoded in.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from data_pipelines import latents as latents_lib
from sora_jax import checkpoints
from sora_jax.inference import run as run_lib
from sora_jax.models import captioner as cap_lib
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import rules as rules_lib
from sora_jax.text import tokenizer as tok_lib

TRAIN_WHAT = "a captioner (python -m sora_jax.main --config configs/captioner.py ...)"


def captioner_config(config: Mapping[str, Any], latent_channels: int | None
                     ) -> cap_lib.CaptionerConfig:
  """The model config of a captioner run config (its ConfigDict or saved JSON)."""
  m, p = config["model"], config["packing"]
  token_dim = math.prod(m["patch"]) * (latent_channels or 1)
  return cap_lib.get_captioner_config(
      m["variant"], source=m["source"], vocab_size=m["vocab_size"], max_len=p["text_len"],
      token_dim=token_dim, source_len=p["source_len"], **dict(m.get("overrides") or {}))


def param_specs(config: cap_lib.CaptionerConfig) -> Any:
  """Logical PartitionSpecs of a captioner's variables (`sharding/rules.py`)."""
  ids = jax.ShapeDtypeStruct((1, 1, config.max_len), jnp.int32)
  return rules_lib.param_specs(cap_lib.Captioner(config), cap_lib.dummy_source(config), ids)


def slot_clip_index(segment_ids: np.ndarray, clip_index: np.ndarray,
                    num_slots: int) -> np.ndarray:
  """int [B, K]: the record index of the clip in each slot of packed rows (-1: empty)."""
  out = np.full(segment_ids.shape[:1] + (num_slots,), -1, np.int64)
  for b in range(segment_ids.shape[0]):
    for k in range(num_slots):
      where = np.flatnonzero(segment_ids[b] == k + 1)
      if where.size:
        out[b, k] = clip_index[b, where[0]]
  return out


def packed_captions(config: cap_lib.CaptionerConfig, params: Any, tokenizer, batch,
                    temperature: float = 0.0, seed: int = 0, put=None) -> dict[int, str]:
  """{record index: caption} of the clips of a packed latent batch (`DEVICE_KEYS` +
  `clip_index`); `put` places the arrays (default: the default device)."""
  k = batch["text_ids"].shape[1]
  index = slot_clip_index(np.asarray(batch["segment_ids"]), np.asarray(batch["clip_index"]),
                          k)
  put = put or (lambda arrays: {key: jnp.asarray(v) for key, v in arrays.items()})
  inputs = put({**{key: np.asarray(batch[key]) for key in cap_lib.SOURCE_KEYS["video"]},
                "seeds": ((seed + np.maximum(index, 0)) % (1 << 31)).astype(np.int32)})
  seeds = inputs.pop("seeds")
  ids = cap_lib.generate(config, params, inputs, seeds, length=config.max_len, num_slots=k,
                         temperature=temperature, num_ids=tokenizer.vocab_size)
  texts = tokenizer.decode(np.asarray(ids).reshape(-1, config.max_len))
  return {int(i): t for i, t in zip(index.reshape(-1), texts) if i >= 0}


def read_captioner_run(workdir: str, step: int | None = None
                       ) -> tuple[int, dict[str, Any], dict[str, Any]]:
  """(step, config JSON, extra JSON) of a captioner run; one clear error if it is not one."""
  step, config, extra = checkpoints.read_run(workdir, TRAIN_WHAT, step=step)
  if config.get("task") != "captioner":
    raise ValueError(f"{workdir!r} step {step} is not a captioner run (config task="
                     f"{config.get('task')!r}); train one with configs/captioner.py.")
  return step, config, extra or {}


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionerRun:
  """A trained captioner (source video) or prompt upsampler (source text), loaded.

  Attributes:
    workdir, step, config: the run, the step loaded and its config JSON.
    model_config: the `CaptionerConfig`.
    tokenizer: the run's tokenizer.
    params: the EMA params, on the default device or placed on `mesh`.
    mesh: None, or the mesh that params and batches are split over.
  """
  workdir: str
  step: int
  config: dict[str, Any]
  model_config: cap_lib.CaptionerConfig
  tokenizer: tok_lib.Tokenizer
  params: Any
  mesh: jax.sharding.Mesh | None = None

  @property
  def source(self) -> str:
    return self.model_config.source

  @classmethod
  def load(cls, workdir: str, step: int | None = None,
           mesh: jax.sharding.Mesh | None = None, rules: str = "fsdp") -> CaptionerRun:
    """Loads the run's EMA params at `step` (None = the latest): on the default device, or
    placed on `mesh` by the sharding preset `rules`, with every batch split over the
    mesh's data and fsdp axes."""
    step, config, extra = read_captioner_run(workdir, step)
    tokenizer = run_lib.run_tokenizer(workdir, extra)
    state = checkpoints.restore_state_host(workdir, step)
    mcfg = captioner_config(config, extra.get("latent_channels"))
    return cls.create(workdir, step, config, mcfg, tokenizer, state["ema_params"], mesh, rules)

  @classmethod
  def create(cls, workdir: str, step: int, config: dict[str, Any],
             model_config: cap_lib.CaptionerConfig, tokenizer: tok_lib.Tokenizer, params: Any,
             mesh: jax.sharding.Mesh | None = None, rules: str = "fsdp") -> CaptionerRun:
    """A run from params in memory, placed as `load` places them."""
    if mesh is None:
      return cls(workdir, step, config, model_config, tokenizer, jax.device_put(params))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shardings = rules_lib.state_shardings(mesh, abstract, rules, param_specs(model_config))
    return cls(workdir, step, config, model_config, tokenizer,
               jax.device_put(params, shardings), mesh)

  def _put(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Batch arrays on the default device, or split over the mesh's batch axes."""
    if self.mesh is None:
      return {k: jnp.asarray(v) for k, v in arrays.items()}
    return jax.device_put(arrays, mesh_lib.batch_sharding(self.mesh))

  def _need(self, source: str, what: str) -> None:
    if self.source != source:
      raise ValueError(f"{self.workdir!r} is a captioner of source={self.source!r}; {what} "
                       f"needs one of source={source!r}.")

  def caption_records(self, records, *, indices: Sequence[int] | None = None,
                      batch_size: int = 8, temperature: float = 0.0, seed: int = 0,
                      progress: bool = False) -> dict[int, str]:
    """{record index: caption} of latent records (`LatentRecords` or on the fly).

    Args:
      records: latent records of the latent space the captioner trained on.
      indices: which records (default all), read in packed rows of `batch_size`.
      temperature, seed: 0 = greedy; see the module docstring for seeds.
    """
    self._need("video", "captioning clips")
    p = self.config["packing"]
    view = _Subset(records, range(len(records)) if indices is None else indices)
    ds = latents_lib.make_latent_dataset(
        view, self.tokenizer, patch=tuple(self.config["model"]["patch"]), seq_len=p["seq_len"],
        max_clips=p["max_clips"], text_len=p["text_len"], batch_size=batch_size,
        seed=0, train=False, num_bins=p["num_bins"], process_index=0, process_count=1)
    out: dict[int, str] = {}
    bar = tqdm(total=len(view), desc="captions", unit="clip", disable=not progress)
    for batch in ds:
      got = packed_captions(self.model_config, self.params, self.tokenizer,
                            self._padded(batch), temperature, seed, self._put)
      out.update(got)
      bar.update(len(got))
    bar.close()
    return out

  def upsample(self, prompts: Sequence[str], seeds: Sequence[int] | int = 0,
               temperature: float = 1.0) -> list[str]:
    """Detailed captions of short prompts, one per prompt (seeded; see module docstring)."""
    self._need("text", "prompt upsampling")
    if isinstance(seeds, int):
      seeds = [seeds] * len(prompts)
    if len(seeds) != len(prompts):
      raise ValueError(f"upsample: {len(prompts)} prompts but {len(seeds)} seeds.")
    cfg = self.model_config
    ids, mask, _ = self.tokenizer.encode(list(prompts), cfg.source_len)
    inputs = self._padded({"source_ids": ids[:, None], "source_mask": mask[:, None],
                           "seeds": (np.asarray(seeds, np.int64)[:, None] % (1 << 31)
                                     ).astype(np.int32)})
    inputs = self._put(inputs)
    seeds = inputs.pop("seeds")
    out = cap_lib.generate(cfg, self.params, inputs, seeds, length=cfg.max_len,
                           num_slots=1, temperature=temperature,
                           num_ids=self.tokenizer.vocab_size)
    return self.tokenizer.decode(np.asarray(out)[:len(prompts), 0])

  def _padded(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows padded (with empty ones: no clip, no prompt) to a multiple of the mesh's batch
    split, so any batch size runs on any mesh."""
    if self.mesh is None:
      return arrays
    split = math.prod(dict(self.mesh.shape)[a] for a in mesh_lib.BATCH_AXES)
    n = len(next(iter(arrays.values())))
    pad = -n % split
    if not pad:
      return arrays
    return {k: np.concatenate([np.asarray(v), np.zeros((pad,) + np.shape(v)[1:],
                                                       np.asarray(v).dtype)])
            for k, v in arrays.items()}


def upsample_rows(upsampler: CaptionerRun, rows: list[dict], seed: int,
                  temperature: float) -> list[dict]:
  """Batch-sampling rows (`tasks.sample_batch`'s) with `prompt` expanded, seeded by the
  row's seed (default seed + its place, as its sample's), the given prompt kept as
  `user_prompt`."""
  seeds = [int(row.get("seed", seed + i)) for i, row in enumerate(rows)]
  expanded = upsampler.upsample([row["prompt"] for row in rows], seeds, temperature)
  return [{**row, "seed": s, "prompt": e, "user_prompt": row["prompt"]}
          for row, s, e in zip(rows, seeds, expanded)]


class _Subset:
  """Records `indices` of `records` as records 0..n-1, each keeping its own index."""

  def __init__(self, records, indices: Sequence[int]):
    self.records, self.indices = records, [int(i) for i in indices]
    self.shapes = np.asarray(records.shapes)[self.indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {**self.records[self.indices[int(i)]], "index": self.indices[int(i)]}
