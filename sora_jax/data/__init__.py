"""Model-dependent data work: encoding clips to VAE latents."""
