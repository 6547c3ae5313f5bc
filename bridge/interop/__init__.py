"""The adapters between ``bridge`` and ``flax.linen`` (the only package importing linen)."""
