"""The end-to-end demo that README's first command runs (`make demo`).

  python -m sora_jax.demo --workdir runs/demo [--config configs/demo.py:quick=True]

Stages (each resumes when run again): build Shapes World, check the analytic evaluator on
exported generator clips, train the tiny VAE. The DiT, sampling of every task and the
report of adherence join as those issues land.

Arguments:
  quick      a minute-long smoke run (tiny data, a few steps) instead of the real demo.
  data_dir   where the tfds data sets are built.
  vae_preset the VAE recipe (configs/vae.py PRESETS), default tiny10.
"""
import ml_collections

from configs import common
from configs import vae as vae_configs


def get_config(arg=None):
  arg = common.parse_arg(arg, quick=False, data_dir="data/tfds", vae_preset="tiny10")
  config = ml_collections.ConfigDict()
  config.data_dir = arg.data_dir
  config.check_clips = 8 if arg.quick else 64  # evaluator check on exported clips
  # tiny10: ~6 minutes here, 29.7 dB (benchmarks/results/vae_quality.json).
  vae_arg = f"preset={arg.vae_preset},data_dir={arg.data_dir}"
  if arg.quick:
    vae_arg += ",runlocal=True,sizes=9x32x32"
  config.vae = vae_configs.get_config(vae_arg)
  config.lock()  # a typo in an override fails instead of adding a field
  return config
