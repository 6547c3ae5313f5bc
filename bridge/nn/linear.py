"""Linear layers: ``Linear``, ``LinearGeneral`` and ``Einsum`` (and ``Embed``, defined in
``bridge.nn.embed``), with flax.nnx 0.12's signatures, key order and computation.

The module path mirrors ``flax.nnx.nn.linear``: ``Conv`` and ``ConvTranspose`` are found
here too (they live in ``bridge.nn.conv``).

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> layer(jnp.ones((4, 2))).shape
(4, 3)
"""

from __future__ import annotations

import math
import typing as tp
from types import MappingProxyType

import jax.numpy as jnp
from jax import lax

from bridge.module import Module
from bridge.nn import dtypes, initializers
from bridge.nn._checks import check_rngs, check_sizes
from bridge.nn.embed import Embed, default_embed_init  # noqa: F401 (flax's module path)
from bridge.variables import Param, VariableMetadata

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros_init()

_NO_METADATA = MappingProxyType({})


def _as_tuple(x) -> tuple:
  return tuple(x) if isinstance(x, tp.Iterable) else (x,)


def _init_flat(init, shape: tuple, flat_shape: tuple):
  """``init`` called on ``flat_shape`` (so that fan-in and fan-out are those of the 2-D
  matrix the layer computes with), its output reshaped to ``shape``; metadata kept."""
  def wrapped(key, dtype):
    value = init(key, flat_shape, dtype)
    if isinstance(value, VariableMetadata):
      value.raw_value = jnp.reshape(value.raw_value, shape)
      return value
    return jnp.reshape(value, shape)
  return wrapped


def _dot_kwargs(out_sharding, preferred_element_type) -> dict:
  """Optional keywords of a ``dot_general``-like function, passed only when set so that
  custom functions without them keep working."""
  kwargs = {}
  if out_sharding is not None:
    kwargs['out_sharding'] = out_sharding
  if preferred_element_type is not None:
    kwargs['preferred_element_type'] = preferred_element_type
  return kwargs


class Linear(Module):
  """A linear transformation over the last axis: ``y = x @ kernel + bias``.

  ``kernel`` has shape ``(in_features, out_features)`` and ``bias`` ``(out_features,)``
  (``None`` when ``use_bias=False``). ``dtype`` is the dtype of the computation (inferred
  from the input and parameters when ``None``), ``param_dtype`` the parameters'.
  ``kernel_metadata``/``bias_metadata`` become metadata of the ``Param``\\ s. Keys are drawn
  from ``rngs.params()``: the kernel's first, then the bias's, as flax.nnx does.

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.Linear(in_features=3, out_features=4, rngs=nnx.Rngs(0))
  >>> layer.kernel.shape, layer.bias.shape
  ((3, 4), (4,))
  >>> layer(jnp.ones((2, 3))).shape
  (2, 4)
  >>> nnx.Linear(3, 4, use_bias=False, rngs=nnx.Rngs(0)).bias is None
  True
  """

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
               dtype=None, param_dtype=jnp.float32, precision=None,
               kernel_init=default_kernel_init, bias_init=default_bias_init,
               dot_general=lax.dot_general, promote_dtype=dtypes.promote_dtype,
               preferred_element_type=None, rngs,
               kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               bias_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA):
    check_sizes(type(self).__name__, in_features=in_features, out_features=out_features)
    check_rngs(type(self).__name__, rngs)
    self.kernel = Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype),
                        **kernel_metadata)
    self.bias = Param(bias_init(rngs.params(), (out_features,), param_dtype),
                      **bias_metadata) if use_bias else None
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
    """``inputs @ kernel + bias`` over the last axis of ``inputs``."""
    kernel = self.kernel[...]
    # The kernel's own first axis, not in_features: inside shard_map both are local shards.
    if jnp.ndim(inputs) == 0 or jnp.shape(inputs)[-1] != kernel.shape[0]:
      raise ValueError(
        f'{type(self).__name__}: the last axis of the input has size '
        f'{jnp.shape(inputs)[-1] if jnp.ndim(inputs) else "(none: a scalar)"} '
        f'(input shape {jnp.shape(inputs)}), but the kernel has {kernel.shape[0]} input '
        f'features (in_features={self.in_features}); pass inputs of shape '
        f'(..., {kernel.shape[0]}).')
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    y = self.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())),
                         precision=self.precision,
                         **_dot_kwargs(out_sharding, self.preferred_element_type))
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y


class LinearGeneral(Module):
  """A linear transformation contracting any axes of the input.

  ``in_features`` are the sizes of the input axes ``axis`` (listed in increasing axis
  order, as flax.nnx pairs them), ``out_features`` the output feature shape; the kernel has
  shape ``(*batch_sizes, *in_features, *out_features)`` and the output is the input's
  remaining axes followed by ``out_features``. ``batch_axis`` maps leading input axes
  (``0, 1, ...``) to their sizes: those axes get a kernel each instead of sharing one.
  The kernel is initialized as the 2-D ``(prod(batch + in), prod(out))`` matrix and reshaped,
  so fan-in and fan-out are those of the flattened transformation.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.LinearGeneral(3, (4, 5), rngs=nnx.Rngs(0))   # output features (4, 5)
  >>> layer.kernel.shape, layer.bias.shape
  ((3, 4, 5), (4, 5))
  >>> layer(jnp.ones((1, 3))).shape
  (1, 4, 5)
  >>> # the second and last axes: inputs (1, 3, 6, 7)
  >>> layer = nnx.LinearGeneral((3, 7), (4, 5), axis=(1, -1), rngs=nnx.Rngs(0))
  >>> layer.kernel.shape, layer.bias.shape
  ((3, 7, 4, 5), (4, 5))
  >>> layer(jnp.ones((1, 3, 6, 7))).shape
  (1, 6, 4, 5)
  """

  def __init__(self, in_features: int | tp.Sequence[int], out_features: int | tp.Sequence[int],
               *, axis: int | tp.Sequence[int] = -1,
               batch_axis: tp.Mapping[int, int] = _NO_METADATA, use_bias: bool = True,
               dtype=None, param_dtype=jnp.float32, kernel_init=default_kernel_init,
               bias_init=default_bias_init, precision=None,
               promote_dtype=dtypes.promote_dtype, dot_general=None, dot_general_cls=None,
               preferred_element_type=None, rngs,
               kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               bias_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA):
    check_sizes(type(self).__name__, in_features=in_features, out_features=out_features)
    check_rngs(type(self).__name__, rngs)
    self.in_features = _as_tuple(in_features)
    self.out_features = _as_tuple(out_features)
    self.axis = _as_tuple(axis)
    self.batch_axis = dict(batch_axis)
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.dot_general = dot_general
    self.dot_general_cls = dot_general_cls
    self.promote_dtype = promote_dtype
    self.preferred_element_type = preferred_element_type

    if len(self.in_features) != len(self.axis):
      raise ValueError(
        f'{type(self).__name__}: in_features and axis must have the same length (one size '
        f'per contracted axis), got in_features={self.in_features} and axis={self.axis}.')
    if self.batch_axis and set(self.batch_axis) != set(range(max(self.batch_axis) + 1)):
      raise ValueError(
        f'{type(self).__name__}: batch_axis keys {tuple(self.batch_axis)} must be the '
        'consecutive leading axes 0, 1, ...')

    batch_shape = tuple(self.batch_axis.values())
    kernel_shape = (*batch_shape, *self.in_features, *self.out_features)
    flat_kernel = (math.prod(batch_shape) * math.prod(self.in_features),
                   math.prod(self.out_features))
    self.kernel = Param(_init_flat(kernel_init, kernel_shape, flat_kernel)(
      rngs.params(), param_dtype), **kernel_metadata)
    if use_bias:
      bias_shape = (*batch_shape, *self.out_features)
      self.bias = Param(_init_flat(bias_init, bias_shape, (math.prod(bias_shape),))(
        rngs.params(), param_dtype), **bias_metadata)
    else:
      self.bias = None

  def _axes(self, shape: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The contracted and batch axes of an input of ``shape``, normalized and sorted;
    raises a clear error where they don't fit it."""
    ndim, name = len(shape), type(self).__name__
    for ax in (*self.axis, *self.batch_axis):
      if not -ndim <= ax < ndim:
        raise ValueError(f'{name}: axis {ax} is out of range for an input of shape {shape}.')
    axis = tuple(sorted(ax % ndim for ax in self.axis))
    batch_axis = tuple(sorted(ax % ndim for ax in self.batch_axis))
    if len(set(axis)) != len(axis) or set(axis) & set(batch_axis):
      raise ValueError(f'{name}: the contracted axes {self.axis} and batch axes '
                       f'{tuple(self.batch_axis)} must all be distinct axes of the input.')
    got_batch = tuple(shape[ax] for ax in batch_axis)
    want_batch = tuple(self.batch_axis.values())
    if got_batch != want_batch:
      raise ValueError(f'{name}: the input has batch axes {batch_axis} of sizes {got_batch} '
                       f'(shape {shape}), but the layer has batch sizes {want_batch}.')
    got = tuple(shape[ax] for ax in axis)
    if got != self.in_features:
      raise ValueError(f'{name}: the input has sizes {got} on the contracted axes {axis} '
                       f'(shape {shape}), but the layer has in_features={self.in_features}.')
    return axis, batch_axis

  def __call__(self, inputs, out_sharding=None):
    """Contracts ``inputs`` over ``axis`` with the kernel and adds the bias."""
    shape = jnp.shape(inputs)
    axis, batch_axis = self._axes(shape)
    n_batch = len(batch_axis)
    # the input's batch and free axes, with 1 for the free ones: the bias broadcasts there
    bias_lead = tuple(shape[ax] if ax in batch_axis else 1
                      for ax in range(len(shape)) if ax not in axis)
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    if self.dot_general_cls is not None:
      dot_general = self.dot_general_cls()
    else:
      dot_general = self.dot_general or lax.dot_general
    contract = tuple(range(n_batch, n_batch + len(axis)))
    out = dot_general(inputs, kernel, ((axis, contract), (batch_axis, tuple(range(n_batch)))),
                      precision=self.precision,
                      **_dot_kwargs(out_sharding, self.preferred_element_type))
    if bias is not None:
      out += jnp.reshape(bias, (*bias_lead, *self.out_features))
    return out


def _check_einsum_str(einsum_str: str, name: str) -> str:
  einsum_str = einsum_str.replace(' ', '')
  if '->' not in einsum_str:
    raise ValueError(f'{name}: the equation {einsum_str!r} must be explicit and include "->".')
  if einsum_str.count(',') != 1:
    raise ValueError(
      f'{name}: the equation {einsum_str!r} must have exactly two operands (the input and '
      f'the kernel), so exactly one comma; it has {einsum_str.count(",")}.')
  return einsum_str


def _labels(spec: str, n_ellipsis: int, n_out: int) -> list[str]:
  """The labels of ``spec`` with ``...`` replaced by the output's ellipsis labels ``0``,
  ``1``, ... right-aligned (``n_ellipsis`` of the ``n_out`` of them), as einsum broadcasts."""
  if '...' not in spec:
    return list(spec)
  head, tail = spec.split('...')
  return [*head, *(str(i) for i in range(n_out - n_ellipsis, n_out)), *tail]


def _bias_broadcast_shape(einsum_str: str, lhs_ndim: int, kernel_shape: tuple,
                          name: str) -> list[int]:
  """The shape the bias is reshaped to before being added to the einsum's output: the
  kernel's size on output axes the kernel has, 1 on the others."""
  operands, out = einsum_str.split('->')
  lhs, rhs = operands.split(',')
  n_rhs_labels = len(rhs.replace('...', ''))
  if n_rhs_labels > len(kernel_shape) or ('...' not in rhs and n_rhs_labels != len(kernel_shape)):
    raise ValueError(f'{name}: the kernel operand {rhs!r} of {einsum_str!r} does not fit the '
                     f'kernel of shape {tuple(kernel_shape)}.')
  n_lhs = lhs_ndim - len(lhs.replace('...', '')) if '...' in lhs else 0
  n_rhs = len(kernel_shape) - n_rhs_labels if '...' in rhs else 0
  n_out = max(n_lhs, n_rhs)
  rhs_index = {c: i for i, c in enumerate(_labels(rhs, n_rhs, n_out))}
  return [kernel_shape[rhs_index[c]] if c in rhs_index else 1
          for c in _labels(out, n_out, n_out)]


class Einsum(Module):
  """An einsum of the input with a learned kernel, plus an optional learned bias.

  ``einsum_str`` has two operands, the input and the kernel, and an explicit output
  (``'nta,hab->nthb'``). Give it either here or at call time (``layer(x, einsum_str)``):
  exactly one of the two. ``kernel_shape`` is the kernel's shape; ``bias_shape`` the
  bias's (``None``: no bias), which is added on the output axes that come from the kernel.
  ``einsum_op`` replaces ``jnp.einsum``. Keys: kernel's first, then the bias's.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.Einsum('nta,hab->nthb', (8, 2, 4), (8, 4), rngs=nnx.Rngs(0))
  >>> layer.kernel.shape, layer.bias.shape
  ((8, 2, 4), (8, 4))
  >>> layer(jnp.ones((16, 11, 2))).shape
  (16, 11, 8, 4)
  >>> late = nnx.Einsum(None, (5, 6), rngs=nnx.Rngs(0))   # equation given at call time
  >>> late(jnp.ones((3, 5)), 'ab,bc->ac').shape
  (3, 6)
  """

  def __init__(self, einsum_str: str | None, kernel_shape: tp.Sequence[int],
               bias_shape: tp.Sequence[int] | None = None, *, dtype=None,
               param_dtype=jnp.float32, precision=None, kernel_init=default_kernel_init,
               bias_init=default_bias_init, promote_dtype=dtypes.promote_dtype,
               einsum_op=jnp.einsum, preferred_element_type=None, rngs,
               kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               bias_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA):
    if einsum_str is not None:
      einsum_str = _check_einsum_str(einsum_str, type(self).__name__)
    check_sizes(type(self).__name__, kernel_shape=kernel_shape,
                **({} if bias_shape is None else {'bias_shape': bias_shape}))
    check_rngs(type(self).__name__, rngs)
    self.kernel = Param(kernel_init(rngs.params(), kernel_shape, param_dtype),
                        **kernel_metadata)
    self.bias = Param(bias_init(rngs.params(), bias_shape, param_dtype),
                      **bias_metadata) if bias_shape is not None else None
    self.einsum_str = einsum_str
    self.kernel_shape = kernel_shape
    self.bias_shape = bias_shape
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.promote_dtype = promote_dtype
    self.einsum_op = einsum_op
    self.preferred_element_type = preferred_element_type

  def __call__(self, inputs, einsum_str: str | None = None, out_sharding=None):
    """``einsum(einsum_str, inputs, kernel) + bias``."""
    name = type(self).__name__
    if (einsum_str is None) == (self.einsum_str is None):
      given = 'both' if einsum_str is not None else 'neither'
      raise ValueError(
        f'{name}: give einsum_str exactly once, either to the constructor or to the call; '
        f'{given} was given (constructor: {self.einsum_str!r}, call: {einsum_str!r}).')
    einsum_str = _check_einsum_str(einsum_str or self.einsum_str, name)
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    if bias is not None:
      bias_shape = _bias_broadcast_shape(einsum_str, jnp.ndim(inputs), tuple(kernel.shape), name)
      if math.prod(bias_shape) != bias.size:
        raise ValueError(
          f'{name}: the bias has shape {bias.shape}, but {einsum_str!r} keeps kernel axes of '
          f'sizes {tuple(s for s in bias_shape if s != 1)} in the output (broadcast shape '
          f'{bias_shape}).')
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    y = self.einsum_op(einsum_str, inputs, kernel, precision=self.precision,
                       **_dot_kwargs(out_sharding, self.preferred_element_type))
    if bias is not None:
      y += jnp.reshape(bias, bias_shape)
    return y


_FROM_CONV = ('Conv', 'ConvTranspose', 'canonicalize_padding')


def __getattr__(name):
  # flax.nnx.nn.linear also holds the convolutions; ours live in bridge.nn.conv, imported on
  # first use so that conv may import from this module.
  if name in _FROM_CONV:
    from bridge.nn import conv
    return getattr(conv, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
