"""Activation functions: JAX's own, under the names flax.nnx exports.

>>> import jax.numpy as jnp
>>> from bridge.nn.activations import relu
>>> relu(jnp.array([-1.0, 2.0])).tolist()
[0.0, 2.0]
"""

from jax.nn import (  # noqa: F401 (re-exported)
  celu,
  elu,
  gelu,
  glu,
  hard_sigmoid,
  hard_silu,
  hard_swish,
  hard_tanh,
  identity,
  leaky_relu,
  log_sigmoid,
  log_softmax,
  logsumexp,
  one_hot,
  relu,
  selu,
  sigmoid,
  silu,
  soft_sign,
  softmax,
  softplus,
  standardize,
  swish,
)
from jax.numpy import tanh  # noqa: F401 (re-exported)
