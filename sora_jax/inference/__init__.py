"""Inference: the one way into a trained run (`run.Run.load`), sampling, every task, adherence.

  from sora_jax.inference import tasks
  from sora_jax.inference.run import Run
  from sora_jax.inference.sampler import Sampler

  sampler = Sampler(Run.load("runs/demo/dit"))
  video = tasks.t2v(sampler, prompt, frames=17, height=64, width=64, seed=0)
"""
