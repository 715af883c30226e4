"""Causal video VAE throughput and memory; prints one JSON object.

  python benchmarks/vae.py [--variant tiny] [--quick]
  python benchmarks/vae.py --sizes 17x64x64,33x256x256,33x720x1280   # a GPU machine
  python benchmarks/vae.py --conv-forms     # the micro-benchmark behind tiny's design

Measures, for batch-1 clips of 64x64x17 and 256x256x33 (`--quick`: 64x64x17 only):
encode and decode clips/s (median of 2 timed runs after a compile run; 1 with --quick) and
memory (XLA's compiled temp + argument + output bytes, and the process's max RSS), plus
chunked decode at T = 17 vs T = 129 (64x64, 4 latent frames per step) against one-pass
decode. Each measurement runs in its own child process so max RSS belongs to it alone.

`--conv-forms` times one 3x3x3 conv layer (forward + backward, median of 3) as a 3D conv
and as the (2+1)D pair `vae_blocks.CausalConv3d(factorized=True)` uses, at the tiny
variant's inner resolution (batch 8 x 5 x 16 x 16) and at full resolution. On the 2-core
CPU (shared with another job, so +-30%), 2026-11-22, ms: 16x16 C32: 3D 412, (2+1)D 68;
16x16 C64: 3D 655, (2+1)D 186; 32x32 C32: 3D 1199, (2+1)D 664; 17x64x64 C16: 3D 6982,
(2+1)D 1730. Hence tiny: patchify to 16x16 first, then (2+1)D convs only.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models import vae


def _compiled_bytes(jitted, *args, **kwargs) -> int:
  """temp + argument + output bytes of the compiled executable."""
  stats = jitted.lower(*args, **kwargs).compile().memory_analysis()
  return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes
             + stats.output_size_in_bytes)


def _shape(shape) -> str:
  return 'x'.join(map(str, shape))


def _max_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _median_seconds(fn, runs: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _setup(variant: str, t: int, h: int, w: int):
  config = vae.get_vae_config(variant)
  params = vae.init_params(config, jax.random.key(0))
  video = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, t, h, w, 3)), jnp.float32)
  return config, params, video


def measure_clip(variant: str, t: int, h: int, w: int, runs: int) -> dict:
  """Encode/decode clips/s and compiled memory for one [1, t, h, w, 3] clip."""
  config, params, video = _setup(variant, t, h, w)
  z = vae.encode(params, video, config).mean
  enc_s = _median_seconds(lambda: vae.encode(params, video, config).mean, runs)
  dec_s = _median_seconds(lambda: vae.decode(params, z, config), runs)
  return {
      'clip': _shape((1, t, h, w, 3)), 'latents': _shape(z.shape),
      'encode_clips_per_s': 1 / enc_s, 'decode_clips_per_s': 1 / dec_s,
      'encode_compiled_mb': _compiled_bytes(vae._encode_moments, params, video, config) / 2**20,
      'decode_compiled_mb': _compiled_bytes(vae._decode, params, z, config) / 2**20,
      'max_rss_mb': _max_rss_mb(),
  }


def measure_chunked_decode(variant: str, t: int, h: int, w: int, chunk: int) -> dict:
  """Chunked decode of a t-frame clip: seconds, per-step compiled memory, vs one pass."""
  config, params, video = _setup(variant, t, h, w)
  z = vae.encode_chunked(params, video, config, chunk).mean
  step = lambda cache, c: vae.decode_step(params, cache, c, config)
  _, cache = jax.eval_shape(step, None, z[:, :1])
  steady = jax.ShapeDtypeStruct((1, chunk) + z.shape[2:], z.dtype)
  step_mb = max(_compiled_bytes(vae.decode_step, params, None, z[:, :1], config),
                _compiled_bytes(vae.decode_step, params, cache, steady, config)) / 2**20
  seconds = _median_seconds(lambda: vae.decode_chunked(params, z, config, chunk), 1)
  return {
      'clip': _shape((1, t, h, w, 3)), 'chunk_latent_frames': chunk, 'chunked_decode_s': seconds,
      'chunked_step_compiled_mb': step_mb,
      'output_mb': t * h * w * 3 * 4 / 2**20,
      'one_pass_decode_compiled_mb': _compiled_bytes(vae._decode, params, z, config) / 2**20,
      'max_rss_mb': _max_rss_mb(),
  }


def measure_conv_forms() -> list[dict]:
  """ms per conv layer (fwd + bwd) as a 3D conv and as (2+1)D, at a few activation shapes."""
  rng = np.random.default_rng(0)
  rows = []
  for b, t, hw, c in [(8, 5, 16, 32), (8, 5, 16, 64), (8, 5, 32, 32), (8, 17, 64, 16)]:
    x = jnp.asarray(rng.normal(size=(b, t + 2, hw + 2, hw + 2, c)), jnp.float32)
    w3 = jnp.asarray(rng.normal(size=(3, 3, 3, c, c)) * 0.05, jnp.float32)
    w21 = (jnp.asarray(rng.normal(size=(3, 3, c, c)) * 0.05, jnp.float32),
           jnp.asarray(rng.normal(size=(3 * c, c)) * 0.05, jnp.float32))

    def conv3d(w, x):
      return jax.lax.conv_general_dilated(x, w, (1, 1, 1), 'VALID',
                                          dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'))

    def conv21(w, x):
      ws, wt = w
      y = jax.lax.conv_general_dilated(x.reshape((-1,) + x.shape[2:]), ws, (1, 1), 'VALID',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      y = y.reshape(x.shape[:2] + y.shape[1:])
      return jnp.concatenate([y[:, i:i + t] for i in range(3)], axis=-1) @ wt

    row = {'activation': _shape((b, t, hw, hw, c))}
    for name, fn, w in (('conv3d_ms', conv3d, w3), ('conv2plus1d_ms', conv21, w21)):
      grad = jax.jit(jax.grad(lambda w, x, fn=fn: jnp.sum(jnp.square(fn(w, x))),
                              argnums=(0, 1)))
      row[name] = 1e3 * _median_seconds(lambda: grad(w, x), 3)
    rows.append(row)
  return rows


def _child(kind: str, kwargs: dict) -> dict:
  """Runs one measurement in a fresh interpreter; returns its JSON result."""
  cmd = [sys.executable, __file__, '--child', json.dumps({'kind': kind, **kwargs})]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='tiny', choices=sorted(vae.VARIANTS))
  parser.add_argument('--quick', action='store_true',
                      help='the first of --sizes only, one timed run')
  parser.add_argument('--conv-forms', action='store_true',
                      help='only the 3D vs (2+1)D conv micro-benchmark')
  parser.add_argument('--sizes', default='17x64x64,33x256x256',
                      help='clip sizes TxHxW, comma-separated (T = 4k+1; H, W multiples of '
                           "the variant's spatial factor)")
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  try:
    sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes.split(',')]
    if any(len(s) != 3 or min(s) < 1 for s in sizes):
      raise ValueError
  except ValueError:
    parser.error(f'--sizes {args.sizes!r}: expected TxHxW[,TxHxW...], e.g. 17x64x64')
  if args.conv_forms:
    print(json.dumps({'benchmark': 'vae_conv_forms', 'date': datetime.date.today().isoformat(),
                      'machine': f'{platform.machine()} {os.cpu_count()} cpus',
                      'jax': jax.__version__, 'rows': measure_conv_forms()}, indent=1))
    return
  if args.child:
    spec = json.loads(args.child)
    fn = {'clip': measure_clip, 'chunked': measure_chunked_decode}[spec.pop('kind')]
    print(json.dumps(fn(**spec)))
    return
  runs = 1 if args.quick else 2
  sizes = sizes[:1] if args.quick else sizes
  clips = [_child('clip', dict(variant=args.variant, t=t, h=h, w=w, runs=runs))
           for t, h, w in sizes]
  chunked = [_child('chunked', dict(variant=args.variant, t=t, h=64, w=64, chunk=4))
             for t in (17, 129)]
  config = vae.get_vae_config(args.variant)
  print(json.dumps({
      'benchmark': 'vae', 'variant': args.variant, 'quick': args.quick,
      'compression': [config.temporal_factor, config.spatial_factor, config.latent_channels],
      'params': int(sum(np.prod(x.shape) for x in jax.tree.leaves(vae.param_shapes(config)))),
      'date': datetime.date.today().isoformat(), 'backend': jax.default_backend(),
      'machine': f'{platform.machine()} {os.cpu_count()} cpus, {jax.devices()[0].device_kind}', 'jax': jax.__version__,
      'clips': clips, 'chunked_decode': chunked,
  }, indent=1))


if __name__ == '__main__':
  main()
