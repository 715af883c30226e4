"""Data sources and grain pipelines for sora_jax."""
