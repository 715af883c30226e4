"""Meshes (mesh.py), sharding rule presets and state placement (rules.py), and
context-parallel attention (context.py)."""
