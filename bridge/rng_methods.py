"""The ``jax.random`` functions and initializers as methods of ``Rngs`` and ``RngStream``,
as in flax.nnx: ``rngs.normal((2,))`` calls ``jax.random.normal`` with the next key;
``rngs.lecun_normal()`` returns an initializer without a key argument
(``init(shape, dtype)``) that takes the next key each time it is called.

>>> import jax, jax.numpy as jnp
>>> import bridge as nnx
>>> init = nnx.Rngs(0).lecun_normal()
>>> expected = jax.nn.initializers.lecun_normal()(nnx.Rngs(0)(), (2, 3))
>>> bool((init((2, 3)) == expected).all())
True
"""

from __future__ import annotations

import functools

import jax

# flax.nnx's lists; the initializers whose names clash with jax.random (normal, uniform,
# orthogonal, truncated_normal) are the random functions, and the key-less constant, ones
# and zeros are left out, as in flax.nnx
_RANDOM_FUNCTIONS = (
  'bits', 'uniform', 'randint', 'permutation', 'choice', 'normal', 'multivariate_normal',
  'truncated_normal', 'bernoulli', 'beta', 'cauchy', 'dirichlet', 'exponential', 'gamma',
  'loggamma', 'poisson', 'gumbel', 'categorical', 'laplace', 'logistic', 'pareto', 't',
  'chisquare', 'f', 'rademacher', 'maxwell', 'double_sided_maxwell', 'weibull_min',
  'orthogonal', 'generalized_normal', 'ball', 'rayleigh', 'wald', 'geometric', 'triangular',
  'lognormal', 'binomial', 'multinomial')
_INITIALIZERS = (
  'delta_orthogonal', 'glorot_normal', 'glorot_uniform', 'he_normal', 'he_uniform',
  'kaiming_normal', 'kaiming_uniform', 'lecun_normal', 'lecun_uniform', 'variance_scaling',
  'xavier_normal', 'xavier_uniform')


def _random_method(fn):
  @functools.wraps(fn)
  def method(self, *args, **kwargs):
    return fn(self._next_key(), *args, **kwargs)
  method.__doc__ = f'``jax.random.{fn.__name__}`` with the next key of the stream.'
  return method


def _initializer_method(constructor):
  @functools.wraps(constructor)
  def method(self, *args, **kwargs):
    init = constructor(*args, **kwargs)

    def keyless_initializer(*init_args, **init_kwargs):
      return init(self._next_key(), *init_args, **init_kwargs)
    return keyless_initializer
  method.__doc__ = (f'``jax.nn.initializers.{constructor.__name__}(...)`` without its key '
                    'argument: each call takes the next key of the stream.')
  return method


class RngMethods:
  """A mixin for classes with ``_next_key()``: the methods of the module docstring.

  >>> import bridge as nnx
  >>> stream = nnx.Rngs(params=0).params
  >>> stream.normal((2,)).shape, int(stream.count[...])
  ((2,), 1)
  """
  __slots__ = ()

  def _next_key(self) -> jax.Array:
    raise NotImplementedError(f'{type(self).__name__} must define _next_key()')


for _name in _RANDOM_FUNCTIONS:
  setattr(RngMethods, _name, _random_method(getattr(jax.random, _name)))
for _name in _INITIALIZERS:
  setattr(RngMethods, _name, _initializer_method(getattr(jax.nn.initializers, _name)))
del _name
