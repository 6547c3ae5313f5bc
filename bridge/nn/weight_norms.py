"""Layer wrappers that renormalize a layer's weights in place before every call:
``SpectralNorm`` (divide each weight matrix by its largest singular value, estimated by
power iteration with ``u``/``sigma`` kept as ``BatchStat``\\ s) and ``WeightNorm`` (scale each
selected weight to unit L2 norm over its non-feature axes, times a learned ``scale``).

As in flax.nnx, the wrapped layer's ``Param``\\ s are overwritten with the normalized values,
so ``wrapper.layer_instance.kernel`` is the normalized kernel after a call.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> layer = nnx.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
>>> layer(jnp.ones((2, 4))).shape
(2, 3)
>>> jnp.linalg.norm(layer.layer_instance.kernel[...], axis=0).round(4).tolist()
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import typing as tp

import jax.numpy as jnp
from jax import lax

from bridge import filters
from bridge.graph import state
from bridge.module import Module
from bridge.nn import dtypes, initializers
from bridge.rngs import Rngs
from bridge.state import to_flat_state
from bridge.variables import BatchStat, Param


def _l2_normalize(x, axis=None, eps: float = 1e-12):
  """``x / sqrt(sum(x**2, axis) + eps)``."""
  return x * lax.rsqrt((x * x).sum(axis=axis, keepdims=True) + eps)


def _as_matrix(path, value, error_on_non_matrix: bool):
  """A weight as the 2-D matrix whose spectral norm is taken (leading axes flattened)."""
  if value.ndim > 2:
    if error_on_non_matrix:
      raise ValueError(f'SpectralNorm: the parameter at {"/".join(map(str, path))!r} is '
                       f'{value.ndim}D but error_on_non_matrix is True')
    value = jnp.reshape(value, (-1, value.shape[-1]))
  return value


class SpectralNorm(Module):
  """Wraps ``layer_instance`` so that each of its weight matrices (``Param``\\ s of 2 or
  more dimensions, leading axes flattened) is divided by its spectral norm before the call.

  For a weight at ``path`` the ``batch_stats`` dict holds ``BatchStat``\\ s at ``path +
  ('u',)`` (the power-iteration vector, ``(1, out)``, drawn from ``rngs.params()``) and
  ``path + ('sigma',)`` (the last estimate). ``n_steps`` power-iteration steps run per call;
  with ``update_stats`` (the default, or ``.train()``) ``u`` and ``sigma`` are stored,
  ``update_stats=False`` (``.eval()``) keeps them. ``error_on_non_matrix=True`` refuses
  weights of more than 2 dimensions instead of flattening them.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.SpectralNorm(nnx.Linear(4, 5, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0))
  >>> sorted(layer.batch_stats)
  [('kernel', 'sigma'), ('kernel', 'u')]
  >>> y = layer(jnp.ones((3, 4)), update_stats=True)
  >>> y.shape
  (3, 5)
  """

  def __init__(self, layer_instance: Module, *, n_steps: int = 1, epsilon: float = 1e-12,
               dtype=None, param_dtype=jnp.float32, error_on_non_matrix: bool = False,
               update_stats: bool = True, rngs: Rngs):
    self.layer_instance = layer_instance
    self.n_steps = n_steps
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.error_on_non_matrix = error_on_non_matrix
    # the flag ``.train()``/``.eval()`` switch; update_stats is its negation
    self.use_running_average = not update_stats
    batch_stats = {}
    for path, param in to_flat_state(state(layer_instance, Param)):
      if param.ndim <= 1 or n_steps < 1:
        continue
      matrix = _as_matrix(path, param[...], error_on_non_matrix)
      key = rngs.params()
      batch_stats[(*path, 'u')] = BatchStat(
        initializers.normal()(key, (1, matrix.shape[-1]), param_dtype))
      batch_stats[(*path, 'sigma')] = BatchStat(initializers.ones(key, (), param_dtype))
    self.batch_stats = batch_stats

  def __call__(self, x, update_stats: bool | None = None):
    """Normalizes the wrapped layer's weights in place, then calls it on ``x``."""
    if update_stats is None:
      update_stats = not self.use_running_average
    for path, param in to_flat_state(state(self.layer_instance, Param)):
      self._normalize(path, param, update_stats)
    return self.layer_instance(x)

  def _normalize(self, path, param, update_stats: bool) -> None:
    value = param[...]
    if value.ndim <= 1 or self.n_steps < 1:
      return
    matrix = _as_matrix(path, value, self.error_on_non_matrix)
    path_u, path_sigma = (*path, 'u'), (*path, 'sigma')
    for p in (path_u, path_sigma):
      if p not in self.batch_stats:
        raise RuntimeError(
          f'SpectralNorm: no batch stat {p} for the parameter {path} of layer_instance; '
          'the parameters of layer_instance should not change after SpectralNorm is built.')
    u = self.batch_stats[path_u][...]
    for _ in range(self.n_steps):
      v = _l2_normalize(jnp.matmul(u, matrix.T), eps=self.epsilon)
      u = _l2_normalize(jnp.matmul(v, matrix), eps=self.epsilon)
    u, v = lax.stop_gradient(u), lax.stop_gradient(v)
    sigma = jnp.matmul(jnp.matmul(v, matrix), u.T)[0, 0]
    normalized = jnp.reshape(matrix / jnp.where(sigma != 0, sigma, 1), value.shape)
    if update_stats:
      self.batch_stats[path_u][...] = u
      self.batch_stats[path_sigma][...] = sigma
    dtype = dtypes.canonicalize_dtype(normalized, u, v, sigma, dtype=self.dtype)
    param[...] = jnp.asarray(normalized, dtype)


def _feature_axes(ndim: int, axes) -> tuple[int, ...]:
  """``axes`` (an int or a sequence, negative allowed) as sorted non-negative axes."""
  axes = axes if isinstance(axes, tp.Iterable) else (axes,)
  return tuple(sorted({a + ndim if a < 0 else a for a in axes}))


class WeightNorm(Module):
  """Wraps ``layer_instance`` so that each Variable matching ``variable_filter`` (the
  kernels, by default) is L2-normalized over its non-``feature_axes`` axes, times a scale,
  before the call: ``w = scale * v / ||v||``.

  With ``use_scale`` the ``scales`` dict maps each such Param's path to its scale (the
  shape of its feature axes, from ``scale_init``: ones by default, which draw no key as in
  flax.nnx; another initializer gets a key from ``rngs.params()``). ``feature_axes=None``
  normalizes over all axes (a scalar scale).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.WeightNorm(nnx.Linear(8, 4, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0))
  >>> list(layer.scales)
  [('kernel',)]
  >>> layer(jnp.ones((5, 8))).shape
  (5, 4)
  """

  def __init__(self, layer_instance: Module, *, feature_axes: int | tp.Sequence[int] | None = -1,
               use_scale: bool = True, scale_init=initializers.ones, epsilon: float = 1e-12,
               dtype=None, param_dtype=jnp.float32,
               variable_filter=filters.PathContains('kernel'),
               promote_dtype=dtypes.promote_dtype, rngs: Rngs):
    self.layer_instance = layer_instance
    self.feature_axes = () if feature_axes is None else feature_axes
    self.use_scale = use_scale
    self.scale_init = scale_init
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.variable_filter = filters.to_predicate(variable_filter)
    self.promote_dtype = promote_dtype
    self.scales = None
    if use_scale:
      self.scales = {}
      for path, param in to_flat_state(state(layer_instance, Param)):
        if self.variable_filter(path, param):
          axes = _feature_axes(param.ndim, self.feature_axes)
          key = None if scale_init is initializers.ones else rngs.params()
          self.scales[path] = scale_init(key, tuple(param.shape[a] for a in axes),
                                         param_dtype)

  def __call__(self, x, *args, **kwargs):
    """Normalizes the selected weights in place, then calls the wrapped layer with
    ``x, *args, **kwargs``."""
    for path, variable in to_flat_state(state(self.layer_instance)):
      if self.variable_filter(path, variable):
        self._normalize(path, variable)
    return self.layer_instance(x, *args, **kwargs)

  def _normalize(self, path, variable) -> None:
    value = variable[...]
    axes = _feature_axes(value.ndim, self.feature_axes)
    reduction = tuple(i for i in range(value.ndim) if i not in axes)
    normalized = _l2_normalize(value, axis=reduction, eps=self.epsilon)
    cast_args = [value]
    if self.use_scale:
      if path not in self.scales:
        raise RuntimeError(
          f'WeightNorm: no scale for the parameter {path} of layer_instance; the parameters '
          'of layer_instance should not change after WeightNorm is built.')
      scale = self.scales[path]
      if len(axes) < value.ndim:
        scale = jnp.reshape(scale, [value.shape[a] if a in axes else 1
                                    for a in range(value.ndim)])
      normalized = normalized * scale
      cast_args.append(scale)
    variable.set_value(jnp.asarray(normalized,
                                   dtypes.canonicalize_dtype(*cast_args, dtype=self.dtype)))
