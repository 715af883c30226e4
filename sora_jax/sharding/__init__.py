"""Meshes and placement of arrays on them."""
