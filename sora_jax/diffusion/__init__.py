"""Diffusion: rectified flow training objective and samplers."""
