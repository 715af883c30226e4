"""Shapes World adherence of a trained VAE's reconstructions; prints one JSON object.

  python benchmarks/vae_adherence.py --vae_workdir runs/demo/vae [--level basic] [--n 100]

Encodes (posterior mean) and decodes the first `n` clips of a Shapes World split
(generated on the fly, 17x64x64), scores each reconstruction against its caption with the
analytic evaluator and prints the rate of every attribute and of `all`: what a perfect DiT
sampling this VAE's latents could reach at best (`basic_test_recon_rates` in
benchmarks/results/vae_quality.json). 2026-11-23, 2-core CPU, basic test clips 0-99:
tiny10 all 0.95 (shape 0.98), dct10 0.75 (shape 0.79), dct10 c=3 0.31 (shape 0.46).
"""
import argparse
import json

from absl import flags
import jax.numpy as jnp
import numpy as np

from data_pipelines.shapes_world import evaluator
from data_pipelines.shapes_world import generator
from sora_jax.inference import run as run_lib
from sora_jax.models import vae as vae_lib

LEVELS = ("basic", "full")
SPLITS = ("train", "validation", "test", "compositional")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--vae_workdir", required=True, help="A finished VAE run.")
  parser.add_argument("--level", default="basic", choices=LEVELS)
  parser.add_argument("--split", default="test", choices=SPLITS)
  parser.add_argument("--n", type=int, default=100, help="Clips scored (>= 1).")
  parser.add_argument("--batch", type=int, default=20, help="Clips encoded at once.")
  args = parser.parse_args()
  if args.n < 1 or args.batch < 1:
    parser.error(f"--n={args.n} and --batch={args.batch} must be >= 1.")
  flags.FLAGS.mark_as_parsed()
  try:
    vae = run_lib.load_vae(args.vae_workdir)
  except ValueError as e:  # a missing or unfinished run: one clear error, no traceback
    parser.error(str(e))
  clips = [generator.make_clip(args.split, i, 17, 64, 64, args.level) for i in range(args.n)]
  scores = []
  for a in range(0, args.n, args.batch):
    group = clips[a:a + args.batch]
    x = vae_lib.preprocess(jnp.asarray(np.stack([c.video for c in group])))
    z = vae_lib.encode(vae.params, x, vae.config).mode()
    recon = np.asarray(vae_lib.postprocess(vae_lib.decode(vae.params, z, vae.config)))
    scores += [evaluator.score_clip(v, c.caption) for c, v in zip(group, recon)]
  print(json.dumps({"vae": vae.description, "level": args.level, "split": args.split,
                    "rates": evaluator.aggregate(scores)}))


if __name__ == "__main__":
  main()
