"""Pooling: ``pool``, ``avg_pool``, ``max_pool`` and ``min_pool`` over the window axes of
``(batch..., window axes..., features)`` inputs, with flax's signatures and semantics.

One ``lax.reduce_window`` per call. Inputs without a batch axis (``(window axes...,
features)``) are pooled as a batch of one. ``padding`` is ``'SAME'``, ``'VALID'`` or one
``(low, high)`` pair per window axis.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> x = jnp.arange(16.).reshape(1, 4, 4, 1)
>>> nnx.max_pool(x, (2, 2), strides=(2, 2))[0, :, :, 0].tolist()
[[5.0, 7.0], [13.0, 15.0]]
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax


class PoolingArgumentError(ValueError, AssertionError):
  """Window, strides or padding that do not fit the input. A ``ValueError``, and an
  ``AssertionError`` as flax.linen's pooling raises, so code catching either still works.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> try:
  ...   nnx.max_pool(jnp.ones((1, 4, 4, 1)), (2, 2), strides=(1,))
  ... except AssertionError as e:
  ...   print(e)
  pool: strides (1,) must have one entry per window axis (window_shape (2, 2) has 2).
  """


def _window_dims(inputs, window_shape: tuple, strides, padding):
  """The full-rank window, strides and padding of ``reduce_window`` for ``inputs`` (with a
  batch axis), checking that they fit."""
  n = len(window_shape)
  strides = (1,) * n if strides is None else tuple(strides)
  if len(strides) != n:
    raise PoolingArgumentError(
      f'pool: strides {strides} must have one entry per window axis (window_shape '
      f'{window_shape} has {n}).')
  num_batch_dims = inputs.ndim - n - 1
  if num_batch_dims < 1:
    raise PoolingArgumentError(
      f'pool: an input of shape {inputs.shape} is too small for window_shape {window_shape}: '
      f'expected (batch..., {n} window axes, features) or ({n} window axes, features).')
  dims = (1,) * num_batch_dims + window_shape + (1,)
  strides = (1,) * num_batch_dims + strides + (1,)
  if not isinstance(padding, str):
    padding = tuple(tuple(p) for p in padding)
    if len(padding) != n or any(len(p) != 2 for p in padding):
      raise PoolingArgumentError(
        f'pool: padding {padding} must be one (low, high) pair per window axis (window_shape '
        f'{window_shape} has {n}), or "SAME" or "VALID".')
    padding = ((0, 0),) * num_batch_dims + padding + ((0, 0),)
  return dims, strides, padding


def pool(inputs, init, reduce_fn, window_shape, strides, padding):
  """Reduces every window of ``inputs`` with ``reduce_fn`` (``(T, T) -> T``) from ``init``.

  ``inputs`` are ``(batch..., window axes..., features)`` or ``(window axes...,
  features)``; ``strides`` defaults to ones (``None``); ``padding`` is ``'SAME'``,
  ``'VALID'`` or ``(low, high)`` pairs per window axis.

  >>> import jax.numpy as jnp
  >>> from jax import lax
  >>> import bridge as nnx
  >>> x = jnp.arange(4.).reshape(4, 1)   # no batch axis: one window axis, one feature
  >>> nnx.pool(x, 0., lax.add, (2,), None, 'VALID')[:, 0].tolist()
  [1.0, 3.0, 5.0]
  """
  window_shape = tuple(window_shape)
  batchless = inputs.ndim == len(window_shape) + 1
  if batchless:
    inputs = inputs[None]
  dims, strides, padding = _window_dims(inputs, window_shape, strides, padding)
  y = lax.reduce_window(inputs, init, reduce_fn, dims, strides, padding)
  return y[0] if batchless else y


def avg_pool(inputs, window_shape, strides=None, padding='VALID', count_include_pad=True):
  """The mean of every window. With ``count_include_pad=False`` padded positions are left
  out of the count, so border windows average only real inputs.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> x = jnp.ones((1, 3, 1))
  >>> nnx.avg_pool(x, (2,), padding='SAME')[0, :, 0].tolist()
  [1.0, 1.0, 0.5]
  >>> nnx.avg_pool(x, (2,), padding='SAME', count_include_pad=False)[0, :, 0].tolist()
  [1.0, 1.0, 1.0]
  """
  y = pool(inputs, 0., lax.add, window_shape, strides, padding)
  if count_include_pad:
    return y / math.prod(window_shape)
  # the count of real inputs per window: pool ones of the input's spatial shape
  spatial = jnp.shape(inputs)[-len(tuple(window_shape)) - 1:-1]
  ones_shape = spatial + (1,) if y.ndim == len(spatial) + 1 else (1,) + spatial + (1,)
  return y / pool(jnp.ones(ones_shape), 0., lax.add, window_shape, strides, padding)


def max_pool(inputs, window_shape, strides=None, padding='VALID'):
  """The maximum of every window.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> nnx.max_pool(jnp.array([[[1.], [3.], [2.]]]), (2,))[0, :, 0].tolist()
  [3.0, 3.0]
  """
  return pool(inputs, -jnp.inf, lax.max, window_shape, strides, padding)


def min_pool(inputs, window_shape, strides=None, padding='VALID'):
  """The minimum of every window.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> nnx.min_pool(jnp.array([[[1.], [3.], [2.]]]), (2,))[0, :, 0].tolist()
  [1.0, 2.0]
  """
  return pool(inputs, jnp.inf, lax.min, window_shape, strides, padding)

