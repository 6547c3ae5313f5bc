"""Convolutions over channels-last inputs: ``Conv`` and ``ConvTranspose`` (flax.nnx's).

Inputs are ``(*batch_dims, *spatial_dims, features)``: any number of batch dimensions
(none, one or several) in front of as many spatial dimensions as ``kernel_size`` has.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> conv = nnx.Conv(3, 4, kernel_size=(3, 3), strides=2, rngs=nnx.Rngs(0))
>>> conv(jnp.ones((2, 8, 8, 3))).shape
(2, 4, 4, 4)
"""

from __future__ import annotations

import math
import numbers
import typing as tp
from types import MappingProxyType

import jax.numpy as jnp
from jax import lax

from bridge.module import Module
from bridge.nn import dtypes, initializers
from bridge.nn._checks import SizeError, check_rngs, check_sizes
from bridge.variables import Param

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros_init()

# Padding strings each layer accepts; 'SAME', 'SAME_LOWER' and 'VALID' go to lax unchanged.
_LAX_PADDINGS = ('SAME', 'SAME_LOWER', 'VALID')
_CONV_PADDINGS = (*_LAX_PADDINGS, 'CIRCULAR', 'REFLECT', 'CAUSAL')
_TRANSPOSE_PADDINGS = (*_LAX_PADDINGS, 'CIRCULAR')


def canonicalize_padding(padding, rank: int, *, allowed: tp.Sequence[str] = _CONV_PADDINGS,
                         layer: str = 'Conv'):
  """``padding`` as an upper-case string from ``allowed`` or a list of ``rank``
  ``(low, high)`` pairs: an int pads every side by it, a sequence gives one entry per
  spatial dimension, each an int (both sides) or a ``(low, high)`` pair.

  >>> canonicalize_padding(1, 2)
  [(1, 1), (1, 1)]
  >>> canonicalize_padding([2, (0, 1)], 2)
  [(2, 2), (0, 1)]
  >>> canonicalize_padding('same', 2)
  'SAME'
  """
  if isinstance(padding, str):
    if padding.upper() not in allowed:
      raise ValueError(f'{layer}: unknown padding {padding!r}; expected one of '
                       f'{", ".join(map(repr, allowed))}, an int, or a sequence of {rank} '
                       'ints or (low, high) pairs.')
    padding = padding.upper()
    if padding == 'CAUSAL' and rank != 1:
      raise ValueError(f'{layer}: padding \'CAUSAL\' is only defined for 1-D convolutions, '
                       f'but kernel_size has {rank} dimensions; pad explicitly with '
                       '(low, high) pairs instead.')
    return padding
  if _is_int(padding):
    return [(int(padding), int(padding))] * rank
  if isinstance(padding, tp.Sequence) and len(padding) == rank and all(
      _is_int(p) or _is_pair(p) for p in padding):
    return [(int(p), int(p)) if _is_int(p) else (int(p[0]), int(p[1])) for p in padding]
  raise ValueError(f'{layer}: invalid padding {padding!r}; expected a string, an int, or a '
                   f'sequence of {rank} ints or (low, high) pairs (one per spatial dimension).')


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_pair(x) -> bool:
  return (isinstance(x, tp.Sequence) and not isinstance(x, str) and len(x) == 2
          and all(_is_int(v) for v in x))


def _per_dim(layer: str, name: str, value, rank: int) -> tuple[int, ...]:
  """``value`` (``None`` meaning 1, an int, or ``rank`` ints) as ``rank`` ints."""
  if value is None:
    value = 1
  value = (int(value),) * rank if _is_int(value) else tuple(value)
  if len(value) != rank or not all(_is_int(v) for v in value):
    raise ValueError(f'{layer}: {name} must be an int or a sequence of {rank} ints (one per '
                     f'spatial dimension of kernel_size), got {value!r}.')
  if not all(v > 0 for v in value):
    raise SizeError(f'{layer}: {name} must be positive, got {value!r}.')
  return value


def _kernel_size(layer: str, kernel_size) -> tuple[int, ...]:
  kernel_size = (kernel_size,) if _is_int(kernel_size) else tuple(kernel_size)
  if not kernel_size or not all(_is_int(k) and k > 0 for k in kernel_size):
    raise ValueError(f'{layer}: kernel_size must be a positive int or a non-empty sequence '
                     f'of positive ints, got {kernel_size!r}.')
  return kernel_size


def _check_mask(layer: str, mask, kernel_shape: tuple[int, ...]) -> None:
  if mask is not None and tuple(mask.shape) != kernel_shape:
    raise ValueError(f'{layer}: mask must have the kernel\'s shape {kernel_shape}, got '
                     f'{tuple(mask.shape)}.')


def _flatten_batch(layer: str, inputs, kernel_size, in_features: int):
  """Checks ``inputs`` against the layer; returns them with their batch dimensions merged
  into one leading axis, and the original batch shape."""
  rank = len(kernel_size)
  if inputs.ndim < rank + 1:
    raise ValueError(f'{layer}: a {rank}-D convolution takes inputs of shape (*batch_dims, '
                     f'{rank} spatial dims, features), got shape {inputs.shape}.')
  if inputs.shape[-1] != in_features:
    raise ValueError(f'{layer}: expected inputs with last dimension in_features='
                     f'{in_features}, got {inputs.shape[-1]} (inputs shape {inputs.shape}).')
  batch_shape = inputs.shape[:inputs.ndim - rank - 1]
  flat = jnp.reshape(inputs, (math.prod(batch_shape), *inputs.shape[len(batch_shape):]))
  return flat, batch_shape


def _channels_last(ndim: int) -> lax.ConvDimensionNumbers:
  """Dimension numbers for (N, *spatial, C) inputs/outputs and (*spatial, I, O) kernels."""
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers((0, ndim - 1, *spatial), (ndim - 1, ndim - 2, *range(ndim - 2)),
                                  (0, ndim - 1, *spatial))


def _add_bias(y, bias):
  return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


class Conv(Module):
  """A convolution wrapping ``lax.conv_general_dilated`` (flax.nnx's ``Conv``).

  The kernel has shape ``(*kernel_size, in_features // feature_group_count, out_features)``.
  ``padding`` is ``'SAME'``, ``'VALID'``, ``'CIRCULAR'`` (periodic), ``'REFLECT'``,
  ``'CAUSAL'`` (1-D only: left-pads so the output has the input's length), an int (every
  side), or one entry per spatial dimension, each an int or a ``(low, high)`` pair.
  ``mask``, if given, multiplies the kernel elementwise and must have its shape.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> x = jnp.ones((1, 8, 3))
  >>> layer = nnx.Conv(3, 4, kernel_size=3, padding='VALID', rngs=nnx.Rngs(0))
  >>> layer.kernel.shape, layer.bias.shape, layer(x).shape
  ((3, 3, 4), (4,), (1, 6, 4))
  >>> causal = nnx.Conv(3, 4, kernel_size=3, padding='CAUSAL', rngs=nnx.Rngs(0))
  >>> causal(x).shape
  (1, 8, 4)
  >>> masked = nnx.Conv(3, 4, kernel_size=3, mask=jnp.tril(jnp.ones((3, 3, 4))),
  ...                   rngs=nnx.Rngs(0))
  >>> masked(jnp.ones((8, 3))).shape  # unbatched
  (8, 4)
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int | tp.Sequence[int],
               strides: None | int | tp.Sequence[int] = 1, *, padding='SAME',
               input_dilation: None | int | tp.Sequence[int] = 1,
               kernel_dilation: None | int | tp.Sequence[int] = 1,
               feature_group_count: int = 1, use_bias: bool = True, mask=None, dtype=None,
               param_dtype=jnp.float32, precision=None, kernel_init=default_kernel_init,
               bias_init=default_bias_init, conv_general_dilated=lax.conv_general_dilated,
               promote_dtype=dtypes.promote_dtype, preferred_element_type=None, rngs,
               kernel_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
               bias_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({})):
    name = type(self).__name__
    check_sizes(name, in_features=in_features, out_features=out_features)
    check_rngs(name, rngs)
    kernel_size = _kernel_size(name, kernel_size)
    rank = len(kernel_size)
    if not (_is_int(feature_group_count) and feature_group_count > 0
            and in_features % feature_group_count == 0
            and out_features % feature_group_count == 0):
      raise ValueError(f'{name}: feature_group_count={feature_group_count!r} must be a '
                       f'positive int dividing both in_features={in_features} and '
                       f'out_features={out_features}.')
    for arg, value in (('strides', strides), ('input_dilation', input_dilation),
                       ('kernel_dilation', kernel_dilation)):
      _per_dim(name, arg, value, rank)
    canonicalize_padding(padding, rank, layer=name)
    kernel_shape = (*kernel_size, in_features // feature_group_count, out_features)
    _check_mask(name, mask, kernel_shape)

    self.kernel_shape = kernel_shape
    self.kernel = Param(kernel_init(rngs.params(), kernel_shape, param_dtype), **kernel_metadata)
    self.bias = Param(bias_init(rngs.params(), (out_features,), param_dtype),
                      **bias_metadata) if use_bias else None
    self.in_features = in_features
    self.out_features = out_features
    self.kernel_size = kernel_size
    self.strides = strides
    self.padding = padding
    self.input_dilation = input_dilation
    self.kernel_dilation = kernel_dilation
    self.feature_group_count = feature_group_count
    self.use_bias = use_bias
    self.mask = mask
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.conv_general_dilated = conv_general_dilated
    self.promote_dtype = promote_dtype
    self.preferred_element_type = preferred_element_type

  def __call__(self, inputs, out_sharding=None):
    """Convolves ``inputs`` of shape ``(*batch_dims, *spatial_dims, in_features)``."""
    name = type(self).__name__
    kernel_size = self.kernel_size
    rank = len(kernel_size)
    x, batch_shape = _flatten_batch(name, inputs, kernel_size, self.in_features)
    strides = _per_dim(name, 'strides', self.strides, rank)
    input_dilation = _per_dim(name, 'input_dilation', self.input_dilation, rank)
    kernel_dilation = _per_dim(name, 'kernel_dilation', self.kernel_dilation, rank)
    padding = canonicalize_padding(self.padding, rank, layer=name)

    if padding in ('CIRCULAR', 'REFLECT'):
      # Pad by half the dilated kernel on each side (the extra one on the right), then VALID.
      extents = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation, strict=True)]
      pads = [(0, 0), *(((e - 1) // 2, e // 2) for e in extents), (0, 0)]
      x = jnp.pad(x, pads, mode='wrap' if padding == 'CIRCULAR' else 'reflect')
      padding = 'VALID'
    elif padding == 'CAUSAL':
      x = jnp.pad(x, [(0, 0), (kernel_dilation[0] * (kernel_size[0] - 1), 0), (0, 0)])
      padding = 'VALID'

    _check_mask(name, self.mask, self.kernel_shape)
    kernel = self.kernel[...]
    if self.mask is not None:
      kernel = kernel * self.mask
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)

    kwargs = {}
    if out_sharding is not None:
      kwargs['out_sharding'] = out_sharding
    if self.preferred_element_type is not None:
      kwargs['preferred_element_type'] = self.preferred_element_type
    y = self.conv_general_dilated(
      x, kernel, strides, padding, lhs_dilation=input_dilation, rhs_dilation=kernel_dilation,
      dimension_numbers=_channels_last(x.ndim), feature_group_count=self.feature_group_count,
      precision=self.precision, **kwargs)
    y = _add_bias(y, bias)
    return jnp.reshape(y, batch_shape + y.shape[1:])


class ConvTranspose(Module):
  """A transposed convolution wrapping ``lax.conv_transpose`` (flax.nnx's ``ConvTranspose``).

  The kernel has shape ``(*kernel_size, in_features, out_features)``, or
  ``(*kernel_size, out_features, in_features)`` with ``transpose_kernel=True`` (which also
  flips the spatial axes, making this the gradient of a ``Conv`` with the same kernel).
  ``padding`` is ``'SAME'`` (output is input size times stride), ``'VALID'`` (pads by
  ``dilation * (kernel_size - 1)``), ``'CIRCULAR'`` (periodic), an int, or one entry per
  spatial dimension, each an int or a ``(low, high)`` pair applied to the stride-dilated
  input. Unlike PyTorch, explicit padding is not subtracted from a full padding.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.ConvTranspose(3, 4, kernel_size=3, padding='VALID', rngs=nnx.Rngs(0))
  >>> layer.kernel.shape, layer(jnp.ones((1, 8, 3))).shape
  ((3, 3, 4), (1, 10, 4))
  >>> up = nnx.ConvTranspose(3, 4, kernel_size=(6, 6), strides=(2, 2), padding='CIRCULAR',
  ...                        transpose_kernel=True, rngs=nnx.Rngs(0))
  >>> up.kernel.shape, up(jnp.ones((1, 15, 15, 3))).shape
  ((6, 6, 4, 3), (1, 30, 30, 4))
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int | tp.Sequence[int],
               strides: int | tp.Sequence[int] | None = None, *, padding='SAME',
               kernel_dilation: int | tp.Sequence[int] | None = None, use_bias: bool = True,
               mask=None, dtype=None, param_dtype=jnp.float32, precision=None,
               kernel_init=default_kernel_init, bias_init=default_bias_init,
               transpose_kernel: bool = False, promote_dtype=dtypes.promote_dtype,
               preferred_element_type=None, rngs,
               kernel_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
               bias_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({})):
    name = type(self).__name__
    check_sizes(name, in_features=in_features, out_features=out_features)
    check_rngs(name, rngs)
    kernel_size = _kernel_size(name, kernel_size)
    rank = len(kernel_size)
    for arg, value in (('strides', strides), ('kernel_dilation', kernel_dilation)):
      _per_dim(name, arg, value, rank)
    canonicalize_padding(padding, rank, allowed=_TRANSPOSE_PADDINGS, layer=name)
    channels = (out_features, in_features) if transpose_kernel else (in_features, out_features)
    kernel_shape = (*kernel_size, *channels)
    _check_mask(name, mask, kernel_shape)

    self.kernel_size = kernel_size
    self.in_features = in_features
    self.out_features = out_features
    self.strides = strides
    self.padding = padding
    self.kernel_dilation = kernel_dilation
    self.use_bias = use_bias
    self.mask = mask
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.transpose_kernel = transpose_kernel
    self.promote_dtype = promote_dtype
    self.preferred_element_type = preferred_element_type
    self.kernel_shape = kernel_shape
    self.kernel = Param(kernel_init(rngs.params(), kernel_shape, param_dtype), **kernel_metadata)
    self.bias = Param(bias_init(rngs.params(), (out_features,), param_dtype),
                      **bias_metadata) if use_bias else None

  def __call__(self, inputs):
    """Applies the transposed convolution to ``(*batch_dims, *spatial_dims, in_features)``."""
    name = type(self).__name__
    kernel_size = self.kernel_size
    rank = len(kernel_size)
    x, batch_shape = _flatten_batch(name, inputs, kernel_size, self.in_features)
    strides = _per_dim(name, 'strides', self.strides, rank)
    kernel_dilation = _per_dim(name, 'kernel_dilation', self.kernel_dilation, rank)
    padding = canonicalize_padding(self.padding, rank, allowed=_TRANSPOSE_PADDINGS, layer=name)

    _check_mask(name, self.mask, self.kernel_shape)
    kernel = self.kernel[...]
    if self.mask is not None:
      kernel = kernel * self.mask
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)

    y = lax.conv_transpose(
      x, kernel, strides, 'VALID' if padding == 'CIRCULAR' else padding,
      rhs_dilation=kernel_dilation, transpose_kernel=self.transpose_kernel,
      precision=self.precision, preferred_element_type=self.preferred_element_type)
    if padding == 'CIRCULAR':
      periods = [n * s for n, s in zip(x.shape[1:-1], strides, strict=True)]
      y = _wrap_periodically(y, periods, right_heavy=self.transpose_kernel)
    y = _add_bias(y, bias)
    return jnp.reshape(y, batch_shape + y.shape[1:])


def _wrap_periodically(y, periods: list[int], *, right_heavy: bool):
  """Folds each spatial axis of the full ``VALID`` output onto one period, summing what
  overlaps, so that the result is the transposed convolution on a periodic domain.

  Each axis is zero-padded to an odd number of periods, centred (the odd element goes left,
  or right when ``right_heavy``) so that the input's origin falls on a period boundary, and
  its period-sized chunks are summed, one axis after the other.
  """
  pads = [(0, 0)]
  for size, period in zip(y.shape[1:-1], periods, strict=True):
    extra = -(size - period) % (2 * period)
    pads.append((extra // 2, extra - extra // 2) if right_heavy
                else (extra - extra // 2, extra // 2))
  y = jnp.pad(y, [*pads, (0, 0)])
  for axis, period in enumerate(periods, start=1):
    y = jnp.reshape(y, (*y.shape[:axis], -1, period, *y.shape[axis + 1:])).sum(axis=axis)
  return y
