"""Initializers: JAX's own (``jax.nn.initializers``) under flax's names.

>>> import jax, jax.numpy as jnp
>>> from bridge.nn import initializers
>>> initializers.zeros_init()(jax.random.key(0), (2,), jnp.float32).tolist()
[0.0, 0.0]
"""

from jax.nn.initializers import (  # noqa: F401 (re-exported)
  Initializer,
  constant,
  delta_orthogonal,
  glorot_normal,
  glorot_uniform,
  he_normal,
  he_uniform,
  kaiming_normal,
  kaiming_uniform,
  lecun_normal,
  lecun_uniform,
  normal,
  ones,
  orthogonal,
  truncated_normal,
  uniform,
  variance_scaling,
  xavier_normal,
  xavier_uniform,
  zeros,
)


def zeros_init() -> Initializer:
  """An initializer of zeros (flax's name for ``jax.nn.initializers.zeros``)."""
  return zeros


def ones_init() -> Initializer:
  """An initializer of ones (flax's name for ``jax.nn.initializers.ones``)."""
  return ones
