"""Layers on the ``bridge`` core, with flax.nnx's signatures."""
