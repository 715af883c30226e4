"""Deliberate bugs the suite must catch: each is applied alone, its tests run, the file restored.

  .venv/bin/python tests/mutants.py [NAME_SUBSTRING ...]   # prints one JSON line a mutant

A line with "caught": false is a test that passes whatever that code does. Needs a clean
checkout of the mutated files (it refuses otherwise); ~10 minutes for all on 2 cores.
"""
import json
import subprocess
import sys
import time

ROOT = __file__.rsplit("/tests/", 1)[0]

# (bug, file, text, its replacement, the pytest arguments of the tests that must catch it)
MUTANTS = [
    ("ring attention skips the last K/V block", "sora_jax/sharding/context.py",
     "length=axis_size - 1)", "length=axis_size - 2)",
     ["tests/test_sharding.py", "-k", "train_step_equals and ring"]),
    ("all-to-all attends across packed clips (segment ids dropped)",
     "sora_jax/sharding/context.py",
     "  out = local(to_heads(q), to_heads(k), to_heads(v), gather(q_seg), gather(kv_seg),",
     "  out = local(to_heads(q), to_heads(k), to_heads(v), gather(q_seg) * 0 + 1,\n"
     "              gather(kv_seg) * 0 + 1,",
     ["tests/test_sharding.py", "-k", "train_step_equals and all_to_all"]),
    ("i2v ignores its image", "sora_jax/inference/tasks.py",
     "  clip = np.repeat(image, frames, axis=0)\n",
     "  clip = np.repeat(np.zeros_like(image), frames, axis=0)\n",
     ["tests/test_generation.py::test_every_task_gives_the_sampler_its_encoded_inputs"]),
    ("extend forward conditions on the first frames, not the last", "sora_jax/inference/tasks.py",
     "    known = video[-start:]\n", "    known = video[:start]\n",
     ["tests/test_generation.py::test_every_task_gives_the_sampler_its_encoded_inputs"]),
    ("edit starts from noise, not the video's latents", "sora_jax/inference/tasks.py",
     "init_latents=z[None])", "init_latents=np.zeros_like(z[None]))",
     ["tests/test_generation.py::test_every_task_gives_the_sampler_its_encoded_inputs"]),
    ("the i2v figure reads the last frame", "sora_jax/inference/adherence.py",
     "i2v.append(psnr(v[0], c.video[0]))", "i2v.append(psnr(v[-1], c.video[0]))",
     ["tests/test_generation.py::test_batch_mode_manifest_and_evaluate"]),
    ("a long video keeps every window (memory grows)", "sora_jax/inference/tasks.py",
     "window = np.concatenate([window, new])[-start:]", "window = np.concatenate([window, new])",
     ["tests/test_generation.py::test_long_video_memory_does_not_grow_with_length"]),
    ("a batch draws every clip's noise from the first seed", "sora_jax/inference/sampler.py",
     "latent_shape))\n                      for s in seeds])",
     "latent_shape))\n                      for s in [seeds[0]] * b])",
     ["tests/test_generation.py::test_same_seed_same_sample_and_batch_independent"]),
    ("--shift is ignored", "sora_jax/inference/sampler.py",
     "shift = opts.shift or self.run.sample_shift", "shift = self.run.sample_shift",
     ["tests/test_generation.py::test_the_runs_sample_shift_is_the_default"]),
    ("VAE presets are ignored", "configs/vae.py",
     "return {**_DEFAULTS, **PRESETS.get(preset, {})}", "return dict(_DEFAULTS)",
     ["tests/test_configs.py::test_vae_presets_validate"]),
    ("3D convs forget the past between streamed chunks", "sora_jax/models/vae_blocks.py",
     "    if not self.factorized:\n      x = self._with_past(x)",
     "    if not self.factorized:\n"
     "      x = jnp.concatenate([jnp.repeat(x[:, :1], self.kernel[0] - 1, axis=1), x], 1)",
     ["tests/test_vae.py::test_chunked_matches_full"]),
    ("the video folder decodes frames as BGR", "data_pipelines/video_folder/builder.py",
     "      yield np.asarray(frame)[..., :3]", "      yield np.asarray(frame)[..., 2::-1]",
     ["tests/test_train.py::test_vae_trains_on_a_video_folder"]),
    ("reconstruction PSNR measured on [-1, 1]", "sora_jax/train/vae_task.py",
     "  a, b = (a + 1) / 2, (jnp.clip(b, -1, 1) + 1) / 2\n", "  b = jnp.clip(b, -1, 1)\n",
     ["tests/test_train.py::test_reconstruction_psnr_and_ssim_on_known_inputs"]),
    ("the demo's backward extension runs forward", "sora_jax/demo.py",
     'a.video, "backward", t, given, k)', 'a.video, "forward", t, given, k)',
     ["tests/test_demo.py::test_quick_demo_runs_every_stage_and_resumes"]),
    ("the train step's EMA uses decay where 1 - decay belongs", "sora_jax/train/dit_task.py",
     "lambda e, p: e + (1 - decay) * (p - e)", "lambda e, p: e + decay * (p - e)",
     ["tests/test_dit_train.py", "-k", "train_steps_ema"]),
    ("given tokens keep their noisy timestep", "sora_jax/train/dit_task.py",
     "  t = jnp.where(given, 0.0, t)\n", "",
     ["tests/test_dit_train.py::test_condition_tokens_gives_the_drawn_frames_clean_at_t0"]),
    ("processes that share batch rows load different ones", "sora_jax/sharding/mesh.py",
     "return distinct.index(tuple(sorted(blocks[process_index]))), len(distinct)",
     "return process_index, len(blocks)",
     ["tests/test_multiprocess.py", "-k", "ring"]),
    ("a damaged checkpoint step stops the run instead of falling back", "sora_jax/checkpoints.py",
     "      self.move_aside(step, reason)\n", "      raise RuntimeError(reason)\n",
     ["tests/test_checkpoints.py", "-k", "moved_aside"]),
    ("readers take the latest step, damaged or not", "sora_jax/checkpoints.py",
     "  return reason is not None\n", "  return False\n",
     ["tests/test_checkpoints.py", "-k", "readers"]),
    ("training resumes without its guards", "sora_jax/train/loop.py",
     "  check_resume(config, ckpt, abstract)", "  ckpt.all_steps()",
     ["tests/test_checkpoints.py", "-k", "guards"]),
    ("the sampler checks its output path after sampling", "sora_jax/sample.py",
     '  usage.check_directory(f"--out={out!r}: its directory", os.path.dirname(os.path.abspath(out)))\n', "",
     ["tests/test_bad_inputs.py"]),
    ("a resumed run restarts its data iterator", "sora_jax/checkpoints.py",
     "    restore_data = data_iter is not None and saved == jax.process_count()\n",
     "    restore_data = False\n",
     ["tests/test_fault_injection.py", "-k", "SIGKILL"]),
    ("the loop checkpoints the data position past batches prefetched but unused",
     "sora_jax/train/stepping.py",
     "    state = self._queue[0][0] if self._queue else self._iterator.get_state()\n",
     "    state = self._iterator.get_state()\n",
     ["tests/test_dit_train.py", "-k", "resume"]),
    ("a non-finite update reaches the state", "sora_jax/train/stepping.py",
     "    kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)\n",
     "    kept = new\n", ["tests/test_train.py", "-k", "guarded"]),
    ("per-slot modulation puts given tokens in their clip's generated slot",
     "sora_jax/models/dit.py", "2 * segment_ids + (t == 0)", "2 * segment_ids",
     ["tests/test_dit.py", "-k", "per_slot"]),
    ("blocked attention's backward drops the softmax's correction term",
     "sora_jax/models/attention.py", "    ds = p * (dp - delta[..., None])\n",
     "    ds = p * dp\n", ["tests/test_dit.py", "-k", "blocked"]),
    ("a restored packing iterator repeats the bins it gave out", "data_pipelines/packing.py",
     '    if state["given"]:\n', "    if False:\n",
     ["tests/test_packing.py", "-k", "resumes"]),
    ("clip PSNR with a peak of 1 on uint8", "sora_jax/inference/adherence.py",
     "10 * math.log10(255.0 ** 2 / mse)", "10 * math.log10(1.0 / mse)",
     ["tests/test_generation.py::test_psnr_of_uint8_clips_on_known_inputs"]),
    ("the VAE's latent statistics fetch FSDP params to the host", "sora_jax/train/vae_task.py",
     '    params = mesh_lib.for_evaluation(state.params["vae"])  # see `evaluate`\n',
     '    params = jax.device_get(state.params["vae"])\n',
     ["tests/test_multiprocess.py", "-k", "vae"]),
    ("final metrics written with open() (a gs:// workdir is not a local folder)",
     "sora_jax/train/loop.py",
     '    storage.write_json(storage.join(workdir, "final_metrics.json"), {"step": total, **final},\n'
     "                       indent=2)\n",
     '    with open(storage.join(workdir, "final_metrics.json"), "w") as f:\n'
     '      json.dump({"step": total, **final}, f, indent=2)\n',
     ["tests/test_storage.py", "-k", "gs_workdir"]),
    ("shards of a latent split read in the wrong order", "data_pipelines/latents.py",
     "  for s in range(num_shards):\n    if not shard_done(",
     "  for s in reversed(range(num_shards)):\n    if not shard_done(",
     ["tests/test_dit_train.py", "-k", "several_workers"]),
]


def main(only: list[str]) -> None:
  for name, path, old, new, tests in MUTANTS:
    if only and not any(o in name for o in only):
      continue
    dirty = subprocess.run(["git", "status", "--porcelain", path], cwd=ROOT, text=True,
                           capture_output=True, check=True).stdout
    if dirty:
      sys.exit(f"{path} has uncommitted changes; commit or stash them first.")
    src = open(f"{ROOT}/{path}").read()
    if src.count(old) != 1:
      sys.exit(f"mutant {name!r}: its text occurs {src.count(old)} times in {path}; "
               "update MUTANTS to the code.")
    start = time.time()
    open(f"{ROOT}/{path}", "w").write(src.replace(old, new))
    try:
      run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "",
                            "-p", "no:cacheprovider", *tests], cwd=ROOT, text=True,
                           capture_output=True, timeout=1500)
    finally:
      open(f"{ROOT}/{path}", "w").write(src)
    lines = (run.stdout + run.stderr).splitlines()
    print(json.dumps({"mutant": name, "file": path, "tests": tests,
                      "caught": run.returncode == 1,  # 1: a test failed; 2+: broken run
                      "error": next((l for l in lines if l.startswith("E ")), None),
                      "seconds": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
