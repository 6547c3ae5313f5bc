"""Dtype inference for layers: which dtype a computation runs in.

>>> import jax.numpy as jnp
>>> from bridge.nn.dtypes import promote_dtype
>>> x, w = promote_dtype((jnp.ones(1, jnp.int32), jnp.ones(1, jnp.bfloat16)))
>>> x.dtype, w.dtype
(dtype(bfloat16), dtype(bfloat16))
"""

import jax.numpy as jnp


def canonicalize_dtype(*args, dtype=None, inexact: bool = True):
  """``dtype`` if given, else the result type of ``args`` (``None`` ignored), made inexact
  (floating) when ``inexact``."""
  if dtype is None:
    dtype = jnp.result_type(*(jnp.asarray(x) for x in args if x is not None))
    if inexact and not jnp.issubdtype(dtype, jnp.inexact):
      dtype = jnp.promote_types(jnp.float32, dtype)
  if inexact and not jnp.issubdtype(dtype, jnp.inexact):
    raise ValueError(f'Dtype must be inexact (floating or complex), got {dtype}')
  return dtype


def promote_dtype(args: tuple, /, *, dtype=None, inexact: bool = True) -> tuple:
  """``args`` cast to one dtype (see ``canonicalize_dtype``); ``None`` entries kept."""
  dtype = canonicalize_dtype(*args, dtype=dtype, inexact=inexact)
  return tuple(jnp.asarray(x, dtype) if x is not None else None for x in args)
