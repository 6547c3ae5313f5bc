"""Normalization layers.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
>>> y = bn(jnp.arange(6.0).reshape(2, 3))
>>> y.shape, [round(m, 3) for m in bn.mean.value.tolist()]
((2, 3), [0.015, 0.025, 0.035])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from bridge.module import Module
from bridge.nn import dtypes, initializers
from bridge.variables import BatchStat, Param


def _axes(ndim: int, axes) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(sorted({a % ndim for a in axes}))


def _abs_sq(x):
  return lax.square(x.real) + lax.square(x.imag) if jnp.iscomplexobj(x) else lax.square(x)


def compute_stats(x, axes, dtype=None, axis_name=None, axis_index_groups=None,
                  use_mean=True, use_fast_variance=True, mask=None):
  """Mean and variance of ``x`` over ``axes``, in at least float32; averaged over the mapped
  axis ``axis_name`` when given (one ``pmean`` for both)."""
  dtype = jnp.promote_types(jnp.result_type(x) if dtype is None else dtype, jnp.float32)
  x = jnp.asarray(x, dtype)
  axes = _axes(x.ndim, axes)

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
  broadcast over their axes; the result in ``dtype`` (inferred when ``None``)."""
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


class BatchNorm(Module):
  """Batch normalization (flax.nnx's ``BatchNorm``): ``mean``/``var`` are ``BatchStat``\\ s
  updated with ``momentum`` in training, ``scale``/``bias`` are ``Param``\\ s."""

  def __init__(self, num_features: int, *, use_running_average: bool = False, axis=-1,
               momentum: float = 0.99, epsilon: float = 1e-5, dtype=None,
               param_dtype=jnp.float32, use_bias: bool = True, use_scale: bool = True,
               bias_init=initializers.zeros_init(), scale_init=initializers.ones_init(),
               axis_name=None, axis_index_groups=None, use_fast_variance: bool = True,
               promote_dtype=dtypes.promote_dtype, rngs, bias_metadata=None,
               scale_metadata=None):
    shape = (num_features,)
    self.mean = BatchStat(jnp.zeros(shape, jnp.float32))
    self.var = BatchStat(jnp.ones(shape, jnp.float32))
    self.scale = Param(scale_init(rngs.params(), shape, param_dtype),
                       **(scale_metadata or {})) if use_scale else None
    self.bias = Param(bias_init(rngs.params(), shape, param_dtype),
                      **(bias_metadata or {})) if use_bias else None
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

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    use_running_average = self.use_running_average if use_running_average is None \
      else use_running_average
    feature_axes = _axes(x.ndim, self.axis)
    if any(x.shape[a] != self.num_features for a in feature_axes):
      raise ValueError(f'BatchNorm: expected {self.num_features} features on axis '
                       f'{self.axis}, got input of shape {x.shape}.')
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    scale = self.scale[...] if self.scale is not None else None
    bias = self.bias[...] if self.bias is not None else None
    x, mean, var, scale, bias = self.promote_dtype(
      (x, self.mean[...], self.var[...], scale, bias), dtype=self.dtype)
    if not use_running_average:
      mean, var = compute_stats(x, reduction_axes, self.dtype, self.axis_name,
                                self.axis_index_groups, use_fast_variance=self.use_fast_variance,
                                mask=mask)
      m = self.momentum
      self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
      self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
    return normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype,
                     self.epsilon)
