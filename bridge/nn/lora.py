"""Low-rank adaptation: ``LoRA`` (``x @ lora_a @ lora_b``, optionally added to a wrapped
module's output), ``LoRALinear`` (a ``Linear`` with a ``LoRA`` beside it) and ``LoRAParam``,
the Variable type of the low-rank factors, so that ``nnx.state(model, nnx.LoRAParam)``
picks out only them.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> layer = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
>>> layer(jnp.ones((1, 3))).shape
(1, 4)
>>> list(nnx.state(layer, nnx.LoRAParam)['lora'].keys())
['lora_a', 'lora_b']
"""

from __future__ import annotations

import typing as tp
from types import MappingProxyType

import jax.numpy as jnp

from bridge.module import Module
from bridge.nn import dtypes, initializers
from bridge.nn.linear import Linear
from bridge.variables import Param, Variable

default_a_initializer = initializers.he_uniform()
default_b_initializer = initializers.zeros

_NO_METADATA = MappingProxyType({})


class LoRAParam(Param):
  """The Variable type of LoRA's low-rank factors: a ``Param``, told apart by type.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> isinstance(nnx.LoRAParam(jnp.ones(2)), nnx.Param)
  True
  """


class LoRA(Module):
  """A low-rank linear map ``x @ lora_a @ lora_b``, plus ``base_module(x)`` when given.

  ``lora_a`` has shape ``(in_features, lora_rank)`` (``a_initializer``, He-uniform by
  default) and ``lora_b`` ``(lora_rank, out_features)`` (zeros by default, so a fresh LoRA
  adds nothing). Both are ``lora_param_type`` Variables; keys come from ``rngs.params()``,
  ``lora_a``'s first. Keyword arguments of a call go to ``base_module``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> linear = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  >>> wrapper = nnx.LoRA(3, 2, 4, base_module=linear, rngs=nnx.Rngs(1))
  >>> wrapper.lora_a.shape, wrapper.lora_b.shape
  ((3, 2), (2, 4))
  >>> x = jnp.ones((5, 3))
  >>> bool((wrapper(x) == linear(x)).all())   # lora_b starts at zero
  True
  """

  def __init__(self, in_features: int, lora_rank: int, out_features: int, *,
               base_module: Module | None = None, dtype=None, param_dtype=jnp.float32,
               a_initializer=default_a_initializer, b_initializer=default_b_initializer,
               lora_param_type: type[Variable] = LoRAParam,
               promote_dtype=dtypes.promote_dtype, rngs,
               a_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               b_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA):
    self.in_features = in_features
    self.out_features = out_features
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.lora_param_type = lora_param_type
    self.base_module = base_module
    self.promote_dtype = promote_dtype
    self.lora_a = lora_param_type(
      a_initializer(rngs.params(), (in_features, lora_rank), param_dtype), **a_metadata)
    self.lora_b = lora_param_type(
      b_initializer(rngs.params(), (lora_rank, out_features), param_dtype), **b_metadata)

  def __call__(self, x, **kwargs):
    """``x @ lora_a @ lora_b`` (+ ``base_module(x, **kwargs)``)."""
    x, lora_a, lora_b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]),
                                           dtype=self.dtype)
    out = x @ lora_a @ lora_b
    if self.base_module is not None:
      if not callable(self.base_module):
        raise ValueError(f'LoRA: base_module must be callable, got a '
                         f'{type(self.base_module).__name__} (`self.base_module`).')
      out += self.base_module(x, **kwargs)
    return out


class LoRALinear(Linear):
  """A ``Linear`` whose output gets a ``LoRA`` added: its state is a ``Linear``'s
  (``kernel``, ``bias``) plus ``lora`` (``lora_a``, ``lora_b``), so ``Linear`` weights load
  into it unchanged. ``**kwargs`` go to ``Linear``; the ``lora_*`` arguments to the
  ``LoRA``. Keys: the kernel's, the bias's, then ``lora_a``'s and ``lora_b``'s.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> linear = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  >>> lora_linear = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
  >>> bool((linear.kernel[...] == lora_linear.kernel[...]).all())
  True
  >>> lora_linear.lora.lora_a.shape
  (3, 2)
  """

  def __init__(self, in_features: int, out_features: int, *, lora_rank: int,
               lora_dtype=None, lora_param_dtype=jnp.float32,
               a_initializer=default_a_initializer, b_initializer=default_b_initializer,
               lora_param_type: type[Variable] = LoRAParam,
               lora_promote_dtype=dtypes.promote_dtype, rngs,
               a_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               b_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA, **kwargs):
    super().__init__(in_features, out_features, rngs=rngs, **kwargs)
    self.lora = LoRA(in_features, lora_rank, out_features, dtype=lora_dtype,
                     param_dtype=lora_param_dtype, a_initializer=a_initializer,
                     b_initializer=b_initializer, lora_param_type=lora_param_type,
                     promote_dtype=lora_promote_dtype, rngs=rngs, a_metadata=a_metadata,
                     b_metadata=b_metadata)

  def __call__(self, x, out_sharding=None):
    """``Linear``'s output plus ``lora(x)``."""
    return super().__call__(x, out_sharding=out_sharding) + self.lora(x)
