"""sora_jax: Sora-style text-to-video in JAX/Flax."""
