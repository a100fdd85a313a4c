"""Isolated execution of untrusted code (Docker backend, offline images, warm pools)."""
