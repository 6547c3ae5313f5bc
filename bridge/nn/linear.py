"""Linear layers.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> layer(jnp.ones((4, 2))).shape
(4, 3)
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from bridge.module import Module
from bridge.nn import dtypes, initializers
from bridge.variables import Param

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros_init()


class Linear(Module):
  """``y = x @ kernel + bias`` over the last axis of ``x`` (flax.nnx's ``Linear``)."""

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
               dtype=None, param_dtype=jnp.float32, precision=None,
               kernel_init=default_kernel_init, bias_init=default_bias_init,
               dot_general=lax.dot_general, promote_dtype=dtypes.promote_dtype,
               preferred_element_type=None, rngs, kernel_metadata=None, bias_metadata=None):
    self.kernel = Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype),
                        **(kernel_metadata or {}))
    self.bias = Param(bias_init(rngs.params(), (out_features,), param_dtype),
                      **(bias_metadata or {})) if use_bias else None
    self.in_features = in_features
    self.out_features = out_features
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.dot_general = dot_general
    self.promote_dtype = promote_dtype
    self.preferred_element_type = preferred_element_type

  def __call__(self, inputs, out_sharding=None):
    if inputs.shape[-1] != self.in_features:
      raise ValueError(f'{type(self).__name__}: expected inputs with last dimension '
                       f'in_features={self.in_features}, got shape {inputs.shape}.')
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    kwargs = {'out_sharding': out_sharding} if out_sharding is not None else {}
    if self.preferred_element_type is not None:
      kwargs['preferred_element_type'] = self.preferred_element_type
    y = self.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())),
                         precision=self.precision, **kwargs)
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y
