"""What the sampling CLIs (`python -m sora_jax.sample`, `python -m sora_jax.evaluate`) share:
the run and solver flags, and the checks they make before any model loads."""
from __future__ import annotations

import math

from absl import app
from absl import flags
from absl import logging

from sora_jax.diffusion import solvers
from sora_jax.inference import policy as policy_lib
from sora_jax.inference import run as run_lib
from sora_jax.inference import sampler as sampler_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """--workdir, --step and the solver's flags."""
  flags.DEFINE_string("workdir", None, "A DiT run directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_integer("steps", 32, "Solver steps.")
  flags.DEFINE_enum("sampler", "dpmpp_2m", solvers.METHODS, "ODE solver.")
  flags.DEFINE_float("guidance", 4.0, "Classifier-free guidance scale (1 = none).")
  flags.DEFINE_float("shift", 0.0, "Timestep shift (0 = the run's sample_shift, else the "
                     "training rule by token count).")
  flags.DEFINE_string("guidance_interval", "0,1", "lo,hi: guidance only at steps with "
                      "lo < t <= hi (t = 1 is noise); the conditional prediction elsewhere.")
  flags.DEFINE_string("negative_prompt", "", "Caption to guide away from ('' = empty).")
  flags.DEFINE_string("policy", policy_lib.DEFAULT, "Prompt policy (inference/policy.py): "
                      "'default' (a word list), a word-list file, module:function or 'none'.")


def check_prompts(prompts) -> None:
  """The prompts pass --policy (ValueError naming the first refused one), before any load."""
  policy_lib.check(list(prompts), policy_lib.load(FLAGS.policy))


def check_run() -> int:
  """Quiet logs, then the step of --workdir's run (and --step) that can sample.

  Raises app.UsageError for a missing --workdir or a bad --shift, ValueError for a run
  that cannot sample; both before anything is loaded.
  """
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  if FLAGS.shift < 0:
    raise app.UsageError(f"--shift={FLAGS.shift}; expected > 0 (or 0 = the run's default).")
  if FLAGS.steps < 1:
    raise app.UsageError(f"--steps={FLAGS.steps}; expected >= 1 solver steps.")
  if not math.isfinite(FLAGS.guidance):
    raise app.UsageError(f"--guidance={FLAGS.guidance}; expected a finite scale (1 = none).")
  for name in ("frames", "height", "width"):
    if FLAGS[name].value < 1:
      raise app.UsageError(f"--{name}={FLAGS[name].value}; expected >= 1.")
  return run_lib.read_dit_run(FLAGS.workdir, FLAGS.step)[0]


def sampling_options() -> sampler_lib.SamplingOptions:
  """The solver flags as `SamplingOptions`; a bad --guidance_interval is a UsageError.

  A run whose config has a `sample` section (configs/wan.py: Wan2.1's guidance, steps and
  negative prompt) supplies those for the flags not given on the command line."""
  try:
    interval = sampler_lib.parse_guidance_interval(FLAGS.guidance_interval)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  defaults = run_lib.read_dit_run(FLAGS.workdir, FLAGS.step)[1].get("sample") or {}
  pick = lambda name: defaults[name] if name in defaults and not FLAGS[name].present else (
      FLAGS[name].value)
  return sampler_lib.SamplingOptions(
      steps=int(pick("steps")), method=FLAGS.sampler, guidance=float(pick("guidance")),
      shift=FLAGS.shift or None, negative_prompt=pick("negative_prompt"),
      guidance_interval=interval)


def check_window(batch: int, devices: int = 1) -> None:
  """--frames/--height/--width fit the run (sizes) and one device's memory, from the run's
  JSON files alone (before the model loads)."""
  dcfg, vcfg = run_lib.read_dit_configs(FLAGS.workdir, FLAGS.step)
  sampler_lib.check_window(dcfg, vcfg, FLAGS.frames, FLAGS.height, FLAGS.width, batch,
                           FLAGS.guidance, devices)
