"""``EMA``: an exponential moving average of a model's Variables, kept as Variables.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> model = nnx.Linear(2, 2, use_bias=False, rngs=nnx.Rngs(0))
>>> ema = nnx.EMA(model, decay=0.5)
>>> model.kernel[...] = jnp.zeros((2, 2))
>>> ema.update(model)
>>> bool((ema.params['kernel'][...] == nnx.Linear(2, 2, rngs=nnx.Rngs(0)).kernel[...] / 2).all())
True
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from bridge import graph as graphlib
from bridge.object import Object
from bridge.state import merge_state
from bridge.variables import Variable

A = tp.TypeVar('A')


def _is_variable(x) -> bool:
  return isinstance(x, Variable)


def _copy_variables(tree):
  """New Variables (same types, copied values, same metadata) for the Variables of ``tree``;
  anything else is a TypeError naming its path."""
  def copy(path, x):
    if not isinstance(x, Variable):
      raise TypeError(
        f"EMA only supports Variable leaves, got {type(x).__name__} at path "
        f"'{'/'.join(str(k) for k in path)}'. Use the `only` filter to "
        'select Variable leaves.')
    return type(x)(jnp.copy(x.get_value()), **x.get_metadata())
  return jax.tree.map_with_path(copy, tree, is_leaf=_is_variable)


class EMA(Object):
  """A shadow copy of the Variables of ``params`` matching ``only``; ``update(model)``
  moves each towards the model's value: ``ema = decay * ema + (1 - decay) * new``.
  ``apply_to(model)`` gives a model with the averages in place of the tracked Variables
  (sharing them with the EMA, so later updates show through). Works inside ``bridge.jit``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 2, use_bias=False, rngs=nnx.Rngs(0))
  >>> ema = nnx.EMA(model, decay=0.9)
  >>> ema_model = ema.apply_to(model)
  >>> ema_model.kernel is ema.params['kernel']
  True
  """

  def __init__(self, params: tp.Any, decay: float, *, only=..., graph: bool | None = None):
    self.graph = graph
    self.decay = decay
    self.filter = only
    self.params = _copy_variables(graphlib.state(params, only, graph=graph))

  def update(self, updates: tp.Any) -> None:
    """Blends the Variables of ``updates`` (same structure as the tracked ones) in."""
    new = graphlib.state(updates, self.filter, graph=self.graph)
    old_leaves = jax.tree.leaves(self.params, is_leaf=_is_variable)
    new_leaves = jax.tree.leaves(new, is_leaf=_is_variable)
    if len(old_leaves) != len(new_leaves):
      raise ValueError(
        f'EMA.update: got {len(new_leaves)} Variables matching only={self.filter!r}, the EMA '
        f'tracks {len(old_leaves)}; pass a model of the structure the EMA was built from.')
    for ema, value in zip(old_leaves, new_leaves, strict=True):
      ema[...] = self.decay * ema + (1.0 - self.decay) * value

  def apply_to(self, model: A) -> A:
    """A new ``model`` (same structure) holding the EMA's Variables where they track."""
    graphdef, state = graphlib.split(model, graph=self.graph)
    return graphlib.merge(graphdef, merge_state(state, self.params))
