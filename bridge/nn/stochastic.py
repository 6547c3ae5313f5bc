"""``Dropout``: zeroes inputs at random in training, the identity in evaluation.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> layer = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
>>> y = layer(jnp.ones(1000))
>>> sorted(set(y.tolist()))  # kept entries are scaled by 1 / (1 - rate)
[0.0, 2.0]
>>> layer.eval()
>>> layer(jnp.ones(3)).tolist()
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from bridge.module import Module
from bridge.rngs import Rngs, RngStream


class Dropout(Module):
  """Dropout (flax.nnx's ``Dropout``): in training each entry is zeroed with probability
  ``rate`` and the rest are scaled by ``1 / (1 - rate)``; ``deterministic=True`` returns
  the input unchanged.

  ``deterministic`` is set at construction, overridden at the call, and switched by
  ``model.train()`` / ``model.eval()``. Keys come from the ``rng_collection`` stream
  (``'dropout'``; an ``Rngs`` without it falls back to ``'default'``): as in flax.nnx, the
  layer keeps a fork of that stream and draws a fresh key on every call, so the same
  ``Rngs`` seed gives flax.nnx's masks. ``rngs`` passed to the call (an ``Rngs``, a stream
  or a key) is used instead. Entries of ``broadcast_dims`` share one mask value.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> class MLP(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.linear = nnx.Linear(3, 4, rngs=rngs)
  ...     self.dropout = nnx.Dropout(0.5, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.dropout(self.linear(x))
  >>> model = MLP(nnx.Rngs(0))
  >>> x = jnp.ones((1, 3))
  >>> model.train()
  >>> a, b = model(x), model(x)  # a fresh mask each call
  >>> bool(jnp.all(a == b))
  False
  >>> model.eval()
  >>> bool(jnp.all(model(x) == model.linear(x)))
  True
  """

  def __init__(self, rate: float, *, broadcast_dims: Sequence[int] = (),
               deterministic: bool | None = False, rng_collection: str = 'dropout',
               rngs: Rngs | RngStream | None = None):
    if not 0.0 <= rate <= 1.0:
      raise ValueError(f'Dropout: rate={rate} is not a probability in [0, 1] (it is the '
                       'probability of dropping an entry).')
    self.rate = rate
    self.broadcast_dims = broadcast_dims
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    if isinstance(rngs, Rngs):
      self.rngs = _stream(rngs, rng_collection).fork()
    elif isinstance(rngs, RngStream):
      self.rngs = rngs.fork()
    elif rngs is None:
      self.rngs = None
    else:
      raise TypeError(f'Dropout: rngs must be an Rngs, an RngStream or None, got '
                      f'{type(rngs).__name__}.')

  def set_view(self, deterministic: bool | None = None):
    """Class method used by ``nnx.view``.

    Args:
      deterministic: if True, disables dropout masking.
    """
    if deterministic is not None:
      self.deterministic = deterministic

  def __call__(self, inputs, *, deterministic: bool | None = None,
               rngs: Rngs | RngStream | jax.Array | None = None) -> jax.Array:
    """``inputs`` with entries dropped (unless deterministic); the call's
    ``deterministic`` and ``rngs`` take precedence over the layer's."""
    deterministic = self.deterministic if deterministic is None else deterministic
    if deterministic is None:
      raise ValueError(
        'Dropout: no `deterministic` was given. Pass it to the constructor '
        '(Dropout(..., deterministic=True/False)), to the call '
        '(dropout(x, deterministic=True/False)), or set it with model.train() / '
        'model.eval().')
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:  # no division by zero (and no NaN gradients)
      return jnp.zeros_like(inputs)
    key = self._key(self.rngs if rngs is None else rngs)
    keep_prob = 1.0 - self.rate
    shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    mask = jax.random.bernoulli(key, p=keep_prob, shape=shape,
                                out_sharding=jax.typeof(inputs).sharding)
    mask = jnp.broadcast_to(mask, inputs.shape)
    return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))

  def _key(self, rngs) -> jax.Array:
    if rngs is None:
      raise ValueError(
        f'Dropout is not deterministic but has no random keys: it was built without '
        f'`rngs` and none were passed to the call. Build it with rngs that have a '
        f'{self.rng_collection!r} stream (e.g. nnx.Rngs({self.rng_collection}=0)), pass '
        f'`rngs=` to the call, or make it deterministic (model.eval()).')
    if isinstance(rngs, Rngs):
      return _stream(rngs, self.rng_collection)()
    if isinstance(rngs, RngStream):
      return rngs()
    if isinstance(rngs, jax.Array):
      return rngs
    raise TypeError(f'Dropout: rngs must be an Rngs, an RngStream or a key, got '
                    f'{type(rngs).__name__}.')


def _stream(rngs: Rngs, name: str) -> RngStream:
  """The stream ``name`` of ``rngs`` (or its ``default``); a KeyError naming it if neither
  is there."""
  try:
    return rngs[name]
  except KeyError as error:
    raise KeyError(f'Dropout needs random keys from the {name!r} stream: {error.args[0]}') \
      from None
