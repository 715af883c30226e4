"""The VAE as a trainable task: state, step, evaluation and latent statistics.

`VAETask(config)` is what the one loop (`loop.py`) trains for `config.task = "vae"`. The step
updates the VAE on reconstruction + KL
(+ edge, + optional perceptual, + optional hinge GAN) and, when the GAN is on, the 3D
patch discriminator in the same step (`sora_jax/models/vae_losses.py`).

Evaluation (host side, on a fixed set of validation clips): PSNR and SSIM (dm-pix) of the
reconstructions, and, on Shapes World, the analytic evaluator's `all` rate on the
reconstructions over its rate on the originals (`eval_all_ratio`): blur that turns a
triangle into a blob reads as the wrong shape, so this measures what the DiT will be able
to express. A reconstruction grid (PNG and mp4) is written to `workdir/recon/`.
"""
from __future__ import annotations

import functools
from typing import Any

import dm_pix
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data_pipelines import media
from data_pipelines import pipeline
from data_pipelines import storage
from data_pipelines.shapes_world import evaluator as sw_eval
from sora_jax.models import discriminator as disc_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models import vae_losses
from sora_jax.scaling import flops as flops_lib
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import rules as rules_lib
from sora_jax.train import optim


@flax.struct.dataclass
class VAEState:
  step: jax.Array
  params: Any  # {"vae": ..., "disc": ... (only with the GAN)}
  opt_state: Any  # same keys


class VAETask:
  """The VAE of one run (its evaluation clips are read once and belong to this object).

  Attributes:
    config: the run's config (configs/vae.py).
    extra_every_checkpoint: False: the latent statistics are measured on the final state,
      so only the last checkpoint carries them.
  """
  extra_every_checkpoint = False

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  # ---------------------------------------------------------------------- configs
  @functools.cached_property
  def vae_config(self) -> vae_lib.VAEConfig:
    model = dict(self.config.model)
    return vae_lib.get_vae_config(model.pop("variant"), **model)

  @functools.cached_property
  def loss_config(self) -> vae_losses.LossConfig:
    return vae_losses.LossConfig(**dict(self.config.loss))

  @functools.cached_property
  def disc_config(self) -> disc_lib.DiscriminatorConfig | None:
    if not self.config.loss.gan_weight:
      return None
    return disc_lib.DiscriminatorConfig(**dict(self.config.disc))

  @property
  def data_sizes(self) -> list[tuple[int, int, int]]:
    """The (T, H, W) clip sizes the config names ([] when only the data set knows them)."""
    data = self.config.data
    crop = data.get("crop")
    if crop:
      return [tuple(crop)]
    name = data.get("name")
    if isinstance(name, (dict, ml_collections.ConfigDict)) and "sizes" in name:
      if "frames" in name:  # a video folder: one T, (H, W) targets (images are T = 1)
        return [(name["frames"], h, w) for h, w in name["sizes"]]
      return [tuple(s) for s in name["sizes"]]
    return []

  def validate(self) -> None:
    """Raises one clear ValueError for a config the VAE cannot train on."""
    optim.check(self.config.optim)
    vcfg = self.vae_config  # unknown variant / field / factor
    lcfg = self.loss_config
    self.disc_config  # pylint: disable=pointless-statement
    for t, h, w in self.data_sizes:
      where = "config.data sizes"
      if (t - 1) % vcfg.temporal_factor:
        raise ValueError(f"{where}: T={t} frames do not fit the VAE's temporal factor "
                         f"{vcfg.temporal_factor} (T - 1 must be a multiple of it).")
      if h % vcfg.spatial_factor or w % vcfg.spatial_factor:
        raise ValueError(f"{where}: {h}x{w} is not divisible by the VAE's spatial factor "
                         f"{vcfg.spatial_factor}.")
      pooled = 2 * vcfg.spatial_factor
      if lcfg.scale_eq_weight and (h % pooled or w % pooled):
        raise ValueError(f"{where}: {h}x{w} gives latents of odd height or width, which the "
                         f"scale-equivariance term (scale_eq={lcfg.scale_eq_weight}) pools "
                         f"2x; use sizes divisible by {pooled} or scale_eq=0.")

  def prepare(self, workdir: str) -> None:
    del workdir  # the VAE writes no run files before training

  # ---------------------------------------------------------------------- state
  def init_state(self, rng: jax.Array) -> VAEState:
    vrng, drng = jax.random.split(rng)
    params = {"vae": vae_lib.init_params(self.vae_config, vrng)}
    if self.disc_config is not None:
      params["disc"] = disc_lib.init_discriminator(self.disc_config, drng)
    tx = optim.make_optimizer(dict(self.config.optim), self.config.train.steps)
    return VAEState(jnp.zeros((), jnp.int32), params,
                    {k: tx.init(v) for k, v in params.items()})

  def state_shardings(self, mesh, abstract_state):
    """Placement by `config.sharding.rules` (`sharding/rules.py`): the VAE's conv kernels
    carry logical names (the discriminator's do not: replicated); moments mirror params."""
    s = self.vae_config.spatial_factor
    video = jax.ShapeDtypeStruct((1, 1, s, s, 3), jnp.float32)
    specs = {"vae": rules_lib.param_specs(vae_lib.VideoVAE(self.vae_config), video)["params"]}
    return rules_lib.state_shardings(mesh, abstract_state, rules_lib.preset_of(self.config),
                                     specs)

  # ---------------------------------------------------------------------- data
  def make_train_data(self, process_shard: tuple[int, int] | None = None):
    index, count = process_shard or (None, None)
    return pipeline.make_pixel_dataset(self.config.data, split="train",
                                       batch_size=self.config.train.batch_size,
                                       seed=self.config.seed, train=True,
                                       process_index=index, process_count=count)

  def device_batch(self, batch, mesh) -> dict[str, jax.Array]:
    return pipeline.global_batch_to_device({"video": batch["video"]}, mesh,
                                           mesh_lib.batch_sharding(mesh).spec)

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    """One global batch as `device_batch` gives it, as ShapeDtypeStructs (AOT compiles)."""
    if not self.data_sizes:
      raise ValueError("config.data gives no clip size (set data.crop or data.name.sizes).")
    t, h, w = self.data_sizes[0]
    return {"video": jax.ShapeDtypeStruct((self.config.train.batch_size, t, h, w, 3),
                                          jnp.float32)}

  # ---------------------------------------------------------------------- step
  def make_train_step(self):
    """The step function (state, batch, rng) -> (state, metrics)."""
    optim_items = (tuple(sorted(self.config.optim.items()))
                   + (("steps", self.config.train.steps),))
    return _train_step_fn(self.vae_config, self.loss_config, self.disc_config, optim_items)

  # ---------------------------------------------------------------------- evaluation
  @functools.cached_property
  def eval_clips(self) -> list[dict[str, Any]]:
    """The fixed evaluation set: the first `eval.num_clips` validation clips (the same on
    every process)."""
    e = self.config.eval
    ds = pipeline.make_pixel_dataset(self.config.data, split=e.split,
                                     batch_size=e.batch_size, seed=0, train=False,
                                     process_index=0, process_count=1)
    clips = []
    for batch in ds:
      for i in np.nonzero(batch["mask"])[0]:
        clips.append({"video": batch["video"][i], "caption": batch["caption"][i]})
      if len(clips) >= e.num_clips:
        break
    return clips[:e.num_clips]

  def evaluate(self, state: VAEState, step: int, workdir: str, writer,
               final: bool) -> dict[str, float]:
    """PSNR, SSIM and (Shapes World) evaluator adherence of reconstructions.

    The params stay where training put them (split over hosts under FSDP); every process
    reconstructs the same clips and gathers the results."""
    config, vcfg = self.config, self.vae_config
    params = mesh_lib.for_evaluation(state.params["vae"])
    clips = self.eval_clips
    psnrs, ssims, orig_ok, recon_ok, grid = [], [], [], [], []
    shapes_world = config.data.source == "shapes_world"
    for clip in clips:
      video = clip["video"][None]
      recon = mesh_lib.to_host(_reconstruct(vcfg, params, video))
      psnr, ssim = reconstruction_quality(video[0], recon[0])
      psnrs.append(psnr)
      ssims.append(ssim)
      orig_u8 = np.asarray(vae_lib.postprocess(video[0]))
      recon_u8 = np.asarray(vae_lib.postprocess(recon[0]))
      if shapes_world:
        caption = clip["caption"].decode()
        orig_ok.append(sw_eval.score_clip(orig_u8, caption)["all"])
        recon_ok.append(sw_eval.score_clip(recon_u8, caption)["all"])
      same_size = orig_u8.shape == clips[0]["video"].shape[:-1] + (3,)
      if len(grid) < config.eval.grid_clips and same_size:
        grid.append(np.concatenate([orig_u8, recon_u8], axis=2))  # side by side
    out = {"psnr_db": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)),
           "num_clips": len(clips)}
    if shapes_world:
      out["eval_all_original"] = float(np.mean(orig_ok))
      out["eval_all_recon"] = float(np.mean(recon_ok))
      out["eval_all_ratio"] = out["eval_all_recon"] / max(out["eval_all_original"], 1e-9)
    if grid and jax.process_index() == 0:
      _write_grid(workdir, step, np.concatenate(grid, axis=1), writer)
    return out

  def checkpoint_extra(self, state: VAEState) -> dict[str, Any]:
    """Mean and std of the latents on training clips, per channel (the DiT normalises by
    them).

    With `eval.latent_norm == "global"` every channel gets the same std, the root mean
    square of the channels' stds: the normalised latents keep their relative channel scales.
    """
    config, vcfg = self.config, self.vae_config
    params = mesh_lib.for_evaluation(state.params["vae"])  # see `evaluate`
    ds = pipeline.make_pixel_dataset(config.data, split="train",
                                     batch_size=config.eval.batch_size, seed=config.seed + 1,
                                     train=False, process_index=0, process_count=1)
    total, total_sq, count, clips = 0.0, 0.0, 0, 0
    for batch in ds:
      video = batch["video"][batch["mask"]]
      z = mesh_lib.to_host(_encode_mode(vcfg, params, video)).astype(np.float64)
      flat = z.reshape(-1, z.shape[-1])
      total = total + flat.sum(0)
      total_sq = total_sq + (flat ** 2).sum(0)
      count += flat.shape[0]
      clips += video.shape[0]
      if clips >= config.eval.latent_stats_clips:
        break
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
    if config.eval.latent_norm == "global":
      std = np.full_like(std, np.sqrt(np.mean(std ** 2)))
    return {"latent_mean": mean.tolist(), "latent_std": std.tolist(), "num_clips": clips,
            "latent_norm": config.eval.latent_norm}


# ------------------------------------------------------------------------ pure pieces
# Memoised on its hashable arguments, so jax.jit's cache (by function object) hits on resume.
@functools.lru_cache(maxsize=8)
def _train_step_fn(vcfg, lcfg, dcfg, optim_items):
  o = dict(optim_items)
  tx = optim.make_optimizer(o, o.pop("steps"))

  def step_fn(state: VAEState, batch: dict[str, jax.Array], rng: jax.Array):
    video = batch["video"]
    grad_fn = jax.value_and_grad(vae_losses.generator_loss, has_aux=True)
    (_, aux), grads = grad_fn(state.params["vae"], state.params.get("disc"), video, rng,
                              state.step, vae_config=vcfg, loss_config=lcfg, disc_config=dcfg)
    metrics = dict(aux["metrics"])
    updates, vae_opt = tx.update(grads, state.opt_state["vae"], state.params["vae"])
    params = {"vae": optax.apply_updates(state.params["vae"], updates)}
    opt_state = {"vae": vae_opt}
    metrics["grad_norm"] = optax.global_norm(grads)
    if dcfg is not None:
      (_, dmetrics), dgrads = jax.value_and_grad(vae_losses.discriminator_loss, has_aux=True)(
          state.params["disc"], video, aux["recon"], state.step, disc_config=dcfg,
          loss_config=lcfg)
      dupdates, disc_opt = tx.update(dgrads, state.opt_state["disc"], state.params["disc"])
      params["disc"] = optax.apply_updates(state.params["disc"], dupdates)
      opt_state["disc"] = disc_opt
      metrics.update(dmetrics)
    metrics["psnr"] = jnp.mean(_psnr(video, aux["recon"]))
    metrics["flops"] = flops_lib.vae_train_flops(vcfg, video.shape, dcfg)  # analytic
    return VAEState(state.step + 1, params, opt_state), metrics

  return step_fn


def reconstruction_quality(video, recon) -> tuple[float, float]:
  """(PSNR in dB, mean SSIM over frames) of a reconstruction, both [T, H, W, 3] in [-1, 1]
  (measured on [0, 1], the reconstruction clipped first)."""
  x01 = (jnp.asarray(video) + 1) / 2
  y01 = (jnp.clip(jnp.asarray(recon), -1, 1) + 1) / 2
  psnr = float(_psnr(jnp.asarray(video)[None], jnp.asarray(recon)[None])[0])
  return psnr, float(jnp.mean(dm_pix.ssim(x01, y01)))


def _psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-clip PSNR (dB) of videos in [-1, 1], measured on [0, 1]."""
  a, b = (a + 1) / 2, (jnp.clip(b, -1, 1) + 1) / 2
  mse = jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(vcfg, params, video):
  return vae_lib.reconstruct(params, video, vcfg)[0]


def _write_grid(workdir: str, step: int, grid: np.ndarray, writer) -> None:
  """grid: uint8 [T, rows * H, 2W, 3] (original | reconstruction per row)."""
  stem = storage.join(workdir, "recon", f"step_{step:07d}")
  frames = grid[:: max(1, grid.shape[0] // 4)][:4]  # up to 4 frames side by side
  sheet = np.concatenate(list(frames), axis=1)
  media.write_image(stem + ".png", sheet)
  if grid.shape[0] > 1 and grid.shape[1] % 2 == 0 and grid.shape[2] % 2 == 0:
    media.write_mp4(stem + ".mp4", grid)
  writer.write_image(step, "recon", sheet)


@functools.partial(jax.jit, static_argnums=0)
def _encode_mode(vcfg, params, video):
  return vae_lib.encode(params, video, vcfg).mode()
