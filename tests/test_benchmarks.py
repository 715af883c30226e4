"""The benchmark scripts' command lines: bad input fails before any timing, and the peer
script's help works without the optional `peer` extra (torch, diffusers)."""
import scripts


def test_train_step_unknown_case_is_one_clear_error():
  out = scripts.run("benchmarks/train_step.py", "--cases", "ref128,bogus")
  assert out.returncode == 2, out.stderr
  assert "unknown case(s) ['bogus']; known: ['B', 'L', 'S', 'demo', 'demo320', 'ref128', 'ref256', 'tiny']" in out.stderr
  assert "Traceback" not in out.stderr


def test_vae_benchmark_bad_sizes_is_one_clear_error():
  out = scripts.run("benchmarks/vae.py", "--sizes", "17x64x64,33x720")
  assert out.returncode == 2, out.stderr
  assert "--sizes '17x64x64,33x720': expected TxHxW[,TxHxW...]" in out.stderr
  assert "Traceback" not in out.stderr


def test_vae_adherence_needs_a_finished_vae(tmp_path):
  out = scripts.run("benchmarks/vae_adherence.py", "--vae_workdir", str(tmp_path), "--n", "2")
  assert out.returncode == 2, out.stderr
  assert f"VAE workdir {str(tmp_path)!r} has no checkpoints/ directory" in out.stderr
  assert "Traceback" not in out.stderr


def test_packed_pipeline_benchmark_needs_a_tokenizer(tmp_path):
  out = scripts.run("benchmarks/data_pipeline.py", "--latents", str(tmp_path))
  assert out.returncode == 2, out.stderr
  assert "--latents needs --tokenizer, an existing tokenizer.model; got ''" in out.stderr


def test_peer_script_help_needs_no_torch():
  out = scripts.run("benchmarks/peer_wan.py", "--help")
  assert out.returncode == 0, out.stderr
  assert "WanTransformer3DModel" in out.stdout and "--width" in out.stdout


def test_long_video_memory_bad_lengths_is_one_clear_error():
  out = scripts.run("benchmarks/long_video_memory.py", "--seconds", "10,forever")
  assert out.returncode == 2, out.stderr
  assert "--seconds '10,forever': expected lengths in (0, 3600] s" in out.stderr
  assert "Traceback" not in out.stderr


def test_captioner_benchmark_needs_a_captioner_run(tmp_path):
  out = scripts.run("benchmarks/captioner.py", "--captioner", str(tmp_path))
  assert out.returncode == 2, out.stderr
  assert "has no checkpoints/ directory" in out.stderr and "Traceback" not in out.stderr
