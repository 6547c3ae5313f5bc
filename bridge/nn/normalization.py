"""Normalization layers: ``BatchNorm``, ``LayerNorm``, ``RMSNorm``, ``GroupNorm`` and
``InstanceNorm``, with flax.nnx's signatures and defaults.

Each layer computes statistics with :func:`compute_stats` (in at least float32, averaged
over a mapped axis when ``axis_name`` is given) and applies them with :func:`normalize`.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
>>> y = bn(jnp.arange(6.0).reshape(2, 3))
>>> y.shape, [round(m, 3) for m in bn.mean.value.tolist()]
((2, 3), [0.015, 0.025, 0.035])
"""

from __future__ import annotations

import math
from types import MappingProxyType

import jax.numpy as jnp
from jax import lax

from bridge.module import Module
from bridge.nn import dtypes, initializers
from bridge.nn.weight_norms import SpectralNorm, WeightNorm  # noqa: F401 (flax's module path)
from bridge.variables import BatchStat, Param

_NO_METADATA = MappingProxyType({})


def _axes(ndim: int, axes) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(f'Axis {a} is out of range for an input with {ndim} dimensions.')
  return tuple(sorted({a % ndim for a in axes}))


def _abs_sq(x):
  return lax.square(x.real) + lax.square(x.imag) if jnp.iscomplexobj(x) else lax.square(x)


def compute_stats(x, axes, dtype=None, axis_name=None, axis_index_groups=None,
                  use_mean=True, use_fast_variance=True, mask=None):
  """Mean and variance of ``x`` over ``axes``, in at least float32; averaged over the mapped
  axis ``axis_name`` when given (one ``pmean`` for both). With ``use_mean=False`` the mean
  is zero and the variance is the mean square; ``mask`` selects the entries that count.

  >>> import jax.numpy as jnp
  >>> from bridge.nn.normalization import compute_stats
  >>> mean, var = compute_stats(jnp.array([[1.0, 3.0], [2.0, 6.0]]), axes=-1)
  >>> mean.tolist(), var.tolist()
  ([2.0, 4.0], [1.0, 4.0])
  """
  dtype = jnp.promote_types(jnp.result_type(x) if dtype is None else dtype, jnp.float32)
  x = jnp.asarray(x, dtype)
  axes = _axes(x.ndim, axes)
  if mask is not None:
    mask = jnp.asarray(mask, bool)

  def mean(*xs):
    mus = tuple(v.mean(axes, where=mask) for v in xs)
    if axis_name is None:
      return mus
    stacked = lax.pmean(jnp.stack(mus), axis_name, axis_index_groups=axis_index_groups)
    return tuple(stacked[i] for i in range(len(xs)))

  if not use_mean:
    (var,) = mean(_abs_sq(x))
    return jnp.zeros_like(var), var
  if use_fast_variance:
    mu, mu2 = mean(x, _abs_sq(x))
    return mu, jnp.maximum(0.0, mu2 - _abs_sq(mu))
  (mu,) = mean(x)
  (var,) = mean(_abs_sq(x - jnp.expand_dims(mu, axes)))
  return mu, var


def normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, dtype, epsilon):
  """``(x - mean) * rsqrt(var + epsilon) * scale + bias`` with stats and features
  broadcast over their axes; the result in ``dtype`` (inferred when ``None``).

  >>> import jax.numpy as jnp
  >>> from bridge.nn.normalization import normalize
  >>> x = jnp.array([[1.0, 3.0]])
  >>> normalize(x, jnp.array([2.0]), jnp.array([1.0]), None, None, -1, -1, None, 0.0).tolist()
  [[-1.0, 1.0]]
  """
  reduction_axes, feature_axes = _axes(x.ndim, reduction_axes), _axes(x.ndim, feature_axes)
  stats_shape = [1 if i in reduction_axes else d for i, d in enumerate(x.shape)]
  feature_shape = [d if i in feature_axes else 1 for i, d in enumerate(x.shape)]
  y = x - mean.reshape(stats_shape)
  mul = lax.rsqrt(var.reshape(stats_shape) + epsilon)
  args = [x]
  if scale is not None:
    scale = scale.reshape(feature_shape)
    mul *= scale
    args.append(scale)
  y *= mul
  if bias is not None:
    bias = bias.reshape(feature_shape)
    y += bias
    args.append(bias)
  return jnp.asarray(y, dtypes.canonicalize_dtype(*args, dtype=dtype))


def _feature_param(use: bool, init, rngs, num_features: int, param_dtype, metadata):
  """A ``Param`` of shape ``(num_features,)`` made by ``init`` with the next ``params`` key,
  or ``None`` when not ``use``."""
  if not use:
    return None
  return Param(init(rngs.params(), (num_features,), param_dtype), **metadata)


def _value(variable):
  return variable[...] if variable is not None else None


def _check_features(layer, x, feature_axes, *params) -> None:
  """The feature axes of ``x`` must hold ``num_features`` entries when there are
  ``params`` (scale, bias) to apply."""
  if all(p is None for p in params):
    return
  n = math.prod(x.shape[a] for a in feature_axes)
  if n != layer.num_features:
    raise ValueError(
      f'{type(layer).__name__}: expected num_features={layer.num_features} entries on the '
      f'feature axes {feature_axes}, got input of shape {x.shape} ({n} entries).')


def _first_from(value, default, layer, name: str):
  """The call argument if given, else the attribute; a clear error when both are None."""
  value = default if value is None else value
  if value is None:
    raise ValueError(
      f'{type(layer).__name__}: no `{name}` was given. Pass it to the constructor '
      f'({type(layer).__name__}(..., {name}=True/False)), to the call '
      f'(layer(x, {name}=True/False)), or set it with model.train() / model.eval().')
  return value


class BatchNorm(Module):
  """Batch normalization (flax.nnx's ``BatchNorm``): ``mean``/``var`` are ``BatchStat``\\ s
  updated with ``momentum`` in training, ``scale``/``bias`` are ``Param``\\ s.

  ``use_running_average=False`` (training, ``model.train()``) normalizes with the batch's
  statistics and updates the running averages; ``True`` (``model.eval()``) uses the running
  averages. ``axis_name`` averages the batch statistics over a mapped axis (``vmap``,
  ``shard_map``, ``pmap``), so each shard normalizes with the statistics of the full batch.
  ``axis`` may also be a tuple of feature axes (as in Linen); ``num_features`` is then the
  number of entries they hold, and the parameters and statistics are stored flat.

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.BatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0))
  >>> jax.tree.map(jnp.shape, nnx.state(layer, nnx.BatchStat))
  State({
    'mean': BatchStat(
      value=(6,)
    ),
    'var': BatchStat(
      value=(6,)
    )
  })
  >>> x = jax.random.normal(jax.random.key(0), (5, 6))
  >>> layer.train()
  >>> y = layer(x)
  >>> bool(jnp.all(layer.mean.value != 0))
  True
  >>> layer.eval()
  >>> before = layer.mean.value
  >>> y = layer(x)
  >>> bool(jnp.all(layer.mean.value == before))
  True
  """

  def __init__(self, num_features: int, *, use_running_average: bool | None = False,
               axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-5, dtype=None,
               param_dtype=jnp.float32, use_bias: bool = True, use_scale: bool = True,
               bias_init=initializers.zeros_init(), scale_init=initializers.ones_init(),
               axis_name: str | None = None, axis_index_groups=None,
               use_fast_variance: bool = True, promote_dtype=dtypes.promote_dtype, rngs,
               bias_metadata=_NO_METADATA, scale_metadata=_NO_METADATA):
    shape = (num_features,)
    self.mean = BatchStat(jnp.zeros(shape, jnp.float32))
    self.var = BatchStat(jnp.ones(shape, jnp.float32))
    self.scale = _feature_param(use_scale, scale_init, rngs, num_features, param_dtype,
                                scale_metadata)
    self.bias = _feature_param(use_bias, bias_init, rngs, num_features, param_dtype,
                               bias_metadata)
    self.num_features = num_features
    self.use_running_average = use_running_average
    self.axis = axis
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def set_view(self, use_running_average: bool | None = None):
    """Class method used by ``nnx.view``.

    Args:
      use_running_average: if True, the stored batch statistics will be
        used instead of computing the batch statistics on the input.
    """
    if use_running_average is not None:
      self.use_running_average = use_running_average

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    """Normalizes ``x``; the call's ``use_running_average`` overrides the attribute."""
    use_running_average = _first_from(use_running_average, self.use_running_average, self,
                                      'use_running_average')
    feature_axes = _axes(x.ndim, self.axis)
    n = math.prod(x.shape[a] for a in feature_axes)
    if n != self.num_features:
      raise ValueError(f'BatchNorm: expected num_features={self.num_features} entries on '
                       f'axis {self.axis}, got input of shape {x.shape}.')
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    x, mean, var, scale, bias = self.promote_dtype(
      (x, self.mean[...], self.var[...], _value(self.scale), _value(self.bias)),
      dtype=self.dtype)
    if not use_running_average:
      mean, var = compute_stats(x, reduction_axes, self.dtype, self.axis_name,
                                self.axis_index_groups, use_fast_variance=self.use_fast_variance,
                                mask=mask)
      # several feature axes (as Linen allows): the statistics are stored flat
      mean, var = mean.reshape(self.mean.shape), var.reshape(self.var.shape)
      m = self.momentum
      self.mean[...] = lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
      self.var[...] = lax.stop_gradient(m * self.var[...] + (1 - m) * var)
    return normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype,
                     self.epsilon)


class LayerNorm(Module):
  """Layer normalization (flax.nnx's ``LayerNorm``): each example is normalized over
  ``reduction_axes``; ``scale``/``bias`` have ``num_features`` entries on ``feature_axes``.

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.LayerNorm(6, rngs=nnx.Rngs(0))
  >>> y = layer(jax.random.normal(jax.random.key(0), (3, 6)))
  >>> bool(jnp.allclose(y.mean(-1), 0.0, atol=1e-6)), bool(jnp.allclose(y.std(-1), 1.0, atol=1e-3))
  (True, True)
  """

  def __init__(self, num_features: int, *, epsilon: float = 1e-6, dtype=None,
               param_dtype=jnp.float32, use_bias: bool = True, use_scale: bool = True,
               bias_init=initializers.zeros_init(), scale_init=initializers.ones_init(),
               reduction_axes=-1, feature_axes=-1, axis_name: str | None = None,
               axis_index_groups=None, use_fast_variance: bool = True,
               promote_dtype=dtypes.promote_dtype, rngs, bias_metadata=_NO_METADATA,
               scale_metadata=_NO_METADATA):
    self.scale = _feature_param(use_scale, scale_init, rngs, num_features, param_dtype,
                                scale_metadata)
    self.bias = _feature_param(use_bias, bias_init, rngs, num_features, param_dtype,
                               bias_metadata)
    self.num_features = num_features
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.reduction_axes = reduction_axes
    self.feature_axes = feature_axes
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def __call__(self, x, *, mask=None):
    """Normalizes ``x`` over ``reduction_axes``."""
    _check_features(self, x, _axes(x.ndim, self.feature_axes), self.scale, self.bias)
    x, scale, bias = self.promote_dtype((x, _value(self.scale), _value(self.bias)),
                                        dtype=self.dtype)
    mean, var = compute_stats(x, self.reduction_axes, self.dtype, self.axis_name,
                              self.axis_index_groups, use_fast_variance=self.use_fast_variance,
                              mask=mask)
    return normalize(x, mean, var, scale, bias, self.reduction_axes, self.feature_axes,
                     self.dtype, self.epsilon)


class RMSNorm(Module):
  """RMS layer normalization (flax.nnx's ``RMSNorm``): divides by the root mean square over
  ``reduction_axes`` without re-centring; only a ``scale`` parameter.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.RMSNorm(2, epsilon=0.0, rngs=nnx.Rngs(0))
  >>> y = layer(jnp.array([[3.0, 4.0]]))  # divided by sqrt((9 + 16) / 2)
  >>> [round(v, 4) for v in y[0].tolist()]
  [0.8485, 1.1314]
  """

  def __init__(self, num_features: int, *, epsilon: float = 1e-6, dtype=None,
               param_dtype=jnp.float32, use_scale: bool = True,
               scale_init=initializers.ones, reduction_axes=-1, feature_axes=-1,
               axis_name: str | None = None, axis_index_groups=None,
               use_fast_variance: bool = True, promote_dtype=dtypes.promote_dtype, rngs,
               scale_metadata=_NO_METADATA):
    self.scale = _feature_param(use_scale, scale_init, rngs, num_features, param_dtype,
                                scale_metadata)
    self.num_features = num_features
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_scale = use_scale
    self.reduction_axes = reduction_axes
    self.feature_axes = feature_axes
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def __call__(self, x, mask=None):
    """Divides ``x`` by its root mean square over ``reduction_axes``."""
    _check_features(self, x, _axes(x.ndim, self.feature_axes), self.scale)
    x, scale = self.promote_dtype((x, _value(self.scale)), dtype=self.dtype)
    mean, var = compute_stats(x, self.reduction_axes, self.dtype, self.axis_name,
                              self.axis_index_groups, use_mean=False,
                              use_fast_variance=self.use_fast_variance, mask=mask)
    return normalize(x, mean, var, scale, None, self.reduction_axes, self.feature_axes,
                     self.dtype, self.epsilon)


class GroupNorm(Module):
  """Group normalization (flax.nnx's ``GroupNorm``): the last axis holds ``num_features``
  channels in ``num_groups`` groups (or groups of ``group_size``; pass ``num_groups=None``
  then); statistics are per example and group, over ``reduction_axes`` (default: every axis
  but the leading batch axis; the last axis must be among them).

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> x = jax.random.normal(jax.random.key(0), (2, 5, 6))
  >>> y = nnx.GroupNorm(6, num_groups=3, rngs=nnx.Rngs(0))(x)
  >>> groups = y.reshape(2, 5, 3, 2)
  >>> bool(jnp.allclose(groups.mean((1, 3)), 0.0, atol=1e-6))
  True
  >>> y1 = nnx.GroupNorm(6, num_groups=1, rngs=nnx.Rngs(0))(x)
  >>> y2 = nnx.LayerNorm(6, reduction_axes=(1, 2), rngs=nnx.Rngs(0))(x)
  >>> bool(jnp.allclose(y1, y2, atol=1e-6))
  True
  """

  def __init__(self, num_features: int, num_groups: int | None = 32,
               group_size: int | None = None, *, epsilon: float = 1e-6, dtype=None,
               param_dtype=jnp.float32, use_bias: bool = True, use_scale: bool = True,
               bias_init=initializers.zeros_init(), scale_init=initializers.ones_init(),
               reduction_axes=None, axis_name: str | None = None, axis_index_groups=None,
               use_fast_variance: bool = True, promote_dtype=dtypes.promote_dtype, rngs,
               bias_metadata=_NO_METADATA, scale_metadata=_NO_METADATA):
    if (num_groups is None) == (group_size is None):
      raise ValueError(
        'GroupNorm: give exactly one of `num_groups` and `group_size`; to give '
        '`group_size`, also pass `num_groups=None` (its default is 32).')
    if group_size is not None:
      if not isinstance(group_size, int) or group_size <= 0 or num_features % group_size:
        raise ValueError(f'GroupNorm: num_features={num_features} is not a multiple of '
                         f'group_size={group_size}.')
      num_groups = num_features // group_size
    elif not isinstance(num_groups, int) or num_groups <= 0 or num_features % num_groups:
      raise ValueError(f'GroupNorm: num_groups={num_groups} does not divide '
                       f'num_features={num_features}.')
    self.scale = _feature_param(use_scale, scale_init, rngs, num_features, param_dtype,
                                scale_metadata)
    self.bias = _feature_param(use_bias, bias_init, rngs, num_features, param_dtype,
                               bias_metadata)
    self.num_features = num_features
    self.num_groups = num_groups
    self.group_size = num_features // num_groups
    self.feature_axis = -1
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.reduction_axes = reduction_axes
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def __call__(self, x, *, mask=None):
    """Normalizes each group of channels of ``x`` over ``reduction_axes``."""
    if x.ndim == 0 or x.shape[-1] != self.num_features:
      raise ValueError(f'GroupNorm: expected num_features={self.num_features} channels on '
                       f'the last axis, got input of shape {x.shape}.')
    reduction_axes = self.reduction_axes
    if reduction_axes is None:
      reduction_axes = (*range(1, x.ndim - 1), -1)
    reduction_axes = _axes(x.ndim, reduction_axes)
    if reduction_axes[-1] != x.ndim - 1:
      raise ValueError(f'GroupNorm: reduction_axes={self.reduction_axes} must include the '
                       'last (channel) axis.')
    group_shape = (*x.shape[:-1], self.num_groups, self.group_size)
    if mask is not None:
      mask = jnp.reshape(mask, (*mask.shape[:-1], self.num_groups, self.group_size))
    x, scale, bias = self.promote_dtype((x, _value(self.scale), _value(self.bias)),
                                        dtype=self.dtype)
    mean, var = compute_stats(x.reshape(group_shape), (*reduction_axes[:-1], -1), self.dtype,
                              self.axis_name, self.axis_index_groups,
                              use_fast_variance=self.use_fast_variance, mask=mask)
    # the group axis is last in the statistics; each group's value covers its channels
    mean = jnp.repeat(mean, self.group_size, axis=-1)
    var = jnp.repeat(var, self.group_size, axis=-1)
    return normalize(x, mean, var, scale, bias, reduction_axes[:-1], (self.feature_axis,),
                     self.dtype, self.epsilon)


class InstanceNorm(Module):
  """Instance normalization (flax.nnx's ``InstanceNorm``): each example and channel is
  normalized over every axis but the leading batch axis and ``feature_axes``.

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5))  # (batch, h, w, channel)
  >>> y = nnx.InstanceNorm(5, rngs=nnx.Rngs(0))(x)
  >>> y2 = nnx.LayerNorm(5, reduction_axes=(1, 2), rngs=nnx.Rngs(0))(x)
  >>> bool(jnp.allclose(y, y2, atol=1e-6))
  True
  """

  def __init__(self, num_features: int, *, epsilon: float = 1e-6, dtype=None,
               param_dtype=jnp.float32, use_bias: bool = True, use_scale: bool = True,
               bias_init=initializers.zeros, scale_init=initializers.ones, feature_axes=-1,
               axis_name: str | None = None, axis_index_groups=None,
               use_fast_variance: bool = True, promote_dtype=dtypes.promote_dtype, rngs,
               bias_metadata=_NO_METADATA, scale_metadata=_NO_METADATA):
    self.scale = _feature_param(use_scale, scale_init, rngs, num_features, param_dtype,
                                scale_metadata)
    self.bias = _feature_param(use_bias, bias_init, rngs, num_features, param_dtype,
                               bias_metadata)
    self.num_features = num_features
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.feature_axes = feature_axes
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def __call__(self, x, *, mask=None):
    """Normalizes ``x`` per example and channel."""
    feature_axes = _axes(x.ndim, self.feature_axes)
    if 0 in feature_axes:
      raise ValueError(f'InstanceNorm: feature_axes={self.feature_axes} include the leading '
                       'axis, which is the batch axis.')
    _check_features(self, x, feature_axes, self.scale, self.bias)
    reduction_axes = tuple(i for i in range(1, x.ndim) if i not in feature_axes)
    x, scale, bias = self.promote_dtype((x, _value(self.scale), _value(self.bias)),
                                        dtype=self.dtype)
    mean, var = compute_stats(x, reduction_axes, self.dtype, self.axis_name,
                              self.axis_index_groups, use_fast_variance=self.use_fast_variance,
                              mask=mask)
    return normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype,
                     self.epsilon)
