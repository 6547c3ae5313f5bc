"""Activation functions: JAX's own, under the names flax.nnx exports, and ``PReLU``.

>>> import jax.numpy as jnp
>>> from bridge.nn.activations import relu
>>> relu(jnp.array([-1.0, 2.0])).tolist()
[0.0, 2.0]
"""

import typing as tp
from types import MappingProxyType

import jax.numpy as jnp
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
  relu6,
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

from bridge.module import Module
from bridge.nn import dtypes
from bridge.variables import Param


class PReLU(Module):
  """Parametric ReLU: ``x`` where ``x >= 0``, else ``negative_slope * x``, with
  ``negative_slope`` a learned scalar ``Param`` (starting at ``negative_slope_init``).

  Without ``dtype`` the slope is cast to the input's dtype (as Linen's ``PReLU``).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> act = nnx.PReLU(negative_slope_init=0.1)
  >>> act(jnp.array([-2.0, 3.0])).tolist()
  [-0.20000000298023224, 3.0]
  """

  def __init__(self, negative_slope_init: float = 0.01, *, dtype=None,
               param_dtype=jnp.float32, promote_dtype=dtypes.promote_dtype,
               negative_slope_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({})):
    self.negative_slope = Param(jnp.asarray(negative_slope_init, dtype=param_dtype),
                                **negative_slope_metadata)
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.promote_dtype = promote_dtype

  def __call__(self, inputs):
    slope = self.negative_slope[...]
    if self.dtype is not None:
      inputs, slope = self.promote_dtype((inputs, slope), dtype=self.dtype)
    else:
      slope = jnp.asarray(slope, inputs.dtype)
    return jnp.where(inputs >= 0, inputs, slope * inputs)
