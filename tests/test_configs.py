"""Config files: typed arguments, unknown keys, locking, runlocal, bad sizes; the mesh."""
import jax
import pytest

from configs import common
from configs import demo as demo_config
from configs import dit as dit_config
from configs import vae as vae_config
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.train import registry
from sora_jax.train import vae_task


def test_parse_arg_types_and_unknown_keys():
  cfg = common.parse_arg("steps=10,lr=0.5,runlocal,name=x", steps=1, lr=1.0,
                         runlocal=False, name="a")
  assert (cfg.steps, cfg.lr, cfg.runlocal, cfg.name) == (10, 0.5, True, "x")
  with pytest.raises(ValueError, match="Unknown config argument 'stpes'.*known: .*steps"):
    common.parse_arg("stpes=3", steps=1)
  with pytest.raises(ValueError, match="steps='ten' is not a valid int"):
    common.parse_arg("steps=ten", steps=1)
  with pytest.raises(AttributeError):
    cfg.new_field = 1  # locked


def test_vae_config_and_runlocal():
  cfg = vae_config.get_config("variant=tiny,runlocal=True")
  assert cfg.task == "vae" and cfg.train.steps <= 4
  vae_task.VAETask(cfg).validate()
  with pytest.raises(ValueError, match="known"):
    vae_config.get_config("varaint=tiny")
  with pytest.raises(ValueError, match="4k\\+1"):
    vae_config.get_config("sizes=16x64x64")
  with pytest.raises(ValueError, match="multiple of 16"):
    vae_config.get_config("sizes=17x60x64")
  with pytest.raises(AttributeError):
    cfg.train.stepz = 3


def test_vae_config_errors_before_compile():
  with pytest.raises(ValueError, match="Unknown VAE variant 'XXL'"):
    vae_task.VAETask(vae_config.get_config("variant=XXL")).validate()
  cfg = vae_config.get_config("s=16")
  cfg.data.crop = (17, 56, 56)  # 56 is not divisible by 16
  with pytest.raises(ValueError, match="spatial factor 16"):
    vae_task.VAETask(cfg).validate()
  cfg = vae_config.get_config("ft=4,sizes=17x64x64")
  cfg.data.crop = (7, 64, 64)  # T - 1 = 6 is not a multiple of the temporal factor 4
  with pytest.raises(ValueError, match="temporal factor 4"):
    vae_task.VAETask(cfg).validate()
  with pytest.raises(ValueError, match="encoder='pca'; expected one of"):
    vae_task.VAETask(vae_config.get_config("encoder=pca")).validate()
  with pytest.raises(ValueError, match="latent_norm='pixel'; allowed: channel, global"):
    vae_config.get_config("latent_norm=pixel")


@pytest.mark.parametrize("preset", sorted(vae_config.PRESETS))
def test_vae_presets_validate(preset):
  """Each preset's values reach the config, its VAE builds, and it validates."""
  cfg = vae_config.get_config(f"preset={preset}")
  args = {**vae_config._DEFAULTS, **vae_config.PRESETS[preset]}  # pylint: disable=protected-access
  assert (cfg.model.variant, cfg.model.encoder) == (args["variant"], args["encoder"])
  assert (cfg.train.steps, cfg.train.batch_size) == (args["steps"], args["batch"])
  assert (cfg.optim.lr, cfg.loss.kl_weight) == (args["lr"], args["kl"])
  task = vae_task.VAETask(cfg)
  if args["c"]:
    assert task.vae_config.latent_channels == args["c"]
  task.validate()
  # An explicit argument beats the preset's.
  assert vae_config.get_config(f"preset={preset},steps=7").train.steps == 7


def test_dit_workers_need_precomputed_latents():
  assert dit_config.get_config("latents=/d,workers=4").data.num_workers == 4
  with pytest.raises(ValueError, match="workers=2 needs precomputed latents"):
    dit_config.get_config("workers=2")


def test_dit_shape_overrides():
  from sora_jax.train import dit_task  # pylint: disable=g-import-not-at-top
  cfg = dit_config.get_config("variant=XS,width=96,heads=3,runlocal=False")
  dcfg = dit_task.DiTTask(cfg).dit_config
  assert (dcfg.variant, dcfg.width, dcfg.depth, dcfg.num_heads) == ("XS", 96, 4, 3)
  assert "width" not in dit_config.get_config("variant=XS").model.overrides  # 0 = preset's
  with pytest.raises(ValueError, match="width=100 is not divisible by num_heads=3"):
    dit_task.DiTTask(dit_config.get_config("variant=XS,width=100,heads=3")).validate()
  with pytest.raises(ValueError, match="depth=-1 must be >= 0"):
    dit_config.get_config("depth=-1")


def test_demo_config():
  cfg = demo_config.get_config("quick=True")
  assert cfg.vae.task == "vae"
  with pytest.raises(ValueError, match="known"):
    demo_config.get_config("fast=True")
  demo, quality = demo_config.get_config(), demo_config.get_config("quality=True")
  tokens = lambda c: c.dit.train.steps * c.dit.train.batch_size * c.dit.packing.seq_len
  # The quality recipe as measured (EXPERIMENTS.md): 30000 steps of the demo's batch.
  assert quality.dit.train.steps == 30000 > 3 * demo.dit.train.steps
  assert quality.dit.train.batch_size == demo.dit.train.batch_size
  wider = demo_config.get_config("dit_batch=4,dit_steps=3750")
  assert tokens(wider) == tokens(demo) and wider.dit.train.batch_size == 4
  assert quality.dit.ema == 0.999 and quality.dit.model == demo.dit.model
  # dct10 (C = 12) caps `all` below the quality target; quality trains on dct21 (C = 21)
  assert demo.vae.model.latent_channels == 12 and quality.vae.model.latent_channels == 21
  assert demo_config.get_config("quality=True,vae_preset=dct10").vae.model.latent_channels == 12
  # the demo's VAE trains fewer steps than the preset (its budget); quality keeps the preset's
  assert demo.vae.train.steps == demo_config.DEMO_VAE_STEPS < quality.vae.train.steps
  # every checkpoint kept: adherence along the run
  assert quality.dit.train.keep_checkpoints * quality.dit.train.checkpoint_every >= (
      quality.dit.train.steps)
  with pytest.raises(ValueError, match="quick=True and quality=True exclude each other"):
    demo_config.get_config("quick=True,quality=True")


def test_unknown_task():
  with pytest.raises(ValueError, match="known tasks"):
    registry.get("gan")


@pytest.mark.parametrize("sizes,shape", [
    ({"data": -1}, (8, 1, 1, 1)), ({"data": 2, "fsdp": 4}, (2, 4, 1, 1)),
    ({"data": 4, "tensor": 2}, (4, 1, 1, 2)), ({"fsdp": -1, "context": 2}, (1, 4, 2, 1)),
])
def test_mesh_shapes(sizes, shape):
  mesh = mesh_lib.make_mesh(sizes)
  assert tuple(mesh.shape.values()) == shape and len(jax.devices()) == 8


@pytest.mark.parametrize("sizes,match", [
    ({"data": 3}, "multiply to 3 but there are 8"), ({"data": -1, "fsdp": -1}, "at most one"),
    ({"dp": 8}, "Unknown mesh axes"), ({"data": 3, "fsdp": -1}, "does not divide"),
])
def test_bad_mesh(sizes, match):
  with pytest.raises(ValueError, match=match):
    mesh_lib.make_mesh(sizes)


def test_batch_divisibility():
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4})
  with pytest.raises(ValueError, match="train.batch_size=4 must be divisible by .* 8"):
    mesh_lib.check_batch_size(4, mesh, "train.batch_size")


def test_recipes_pass_arguments_as_a_mapping():
  """A recipe composes another config file's arguments in Python: the same keys, types and
  errors as the command-line string, with no string joined and parsed back."""
  assert (dit_config.get_config({"variant": "XS", "steps": 30, "lr": 1, "runlocal": True})
          == dit_config.get_config("variant=XS,steps=30,lr=1,runlocal=True"))
  assert vae_config.get_config({"preset": "dct10", "steps": 7}).train.steps == 7
  with pytest.raises(ValueError, match="Unknown config argument 'step'"):
    dit_config.get_config({"step": 3})
  with pytest.raises(ValueError, match=r"steps=2.5 is not a valid int"):
    dit_config.get_config({"steps": 2.5})
  with pytest.raises(ValueError, match=r"runlocal=1 is not a valid bool"):
    dit_config.get_config({"runlocal": 1})


def test_runlocal_keeps_the_sizes_given_explicitly():
  """runlocal shrinks the DiT to width 32, depth 2, 2 heads, except what the user gave."""
  small = dit_config.get_config("runlocal=True").model.overrides
  assert (small.width, small.depth, small.num_heads) == (32, 2, 2)
  given = dit_config.get_config("runlocal=True,width=48,heads=4").model.overrides
  assert (given.width, given.depth, given.num_heads) == (48, 2, 4)
