"""``Optimizer``: optax state kept as Variables beside the model.

>>> import jax.numpy as jnp, optax
>>> import bridge as nnx
>>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
>>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
>>> grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
>>> before = model.bias.value
>>> _ = optimizer.update(model, grads)
>>> (model.bias.value - before).tolist(), int(optimizer.step.value)
([-0.10000000149011612], 1)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bridge.graph import state as graph_state
from bridge.graph import update as graph_update
from bridge.object import Object
from bridge.state import State
from bridge.variables import Param, Variable


class OptState(Variable):
  """Optimizer state: the step counter and optax's statistics."""
  __slots__ = ()


class OptArray(OptState):
  """An array of optax's state (momentum, second moments, ...)."""
  __slots__ = ()


class OptVariable(OptState):
  """Optax state that mirrors a model Variable."""
  __slots__ = ()


def _is_variable(x) -> bool:
  return isinstance(x, Variable)


class Optimizer(Object):
  """Holds ``tx``'s state for the Variables of ``model`` matching ``wrt`` (default ``Param``).

  ``update(model, grads)`` applies one step: ``tx.update`` then ``optax.apply_updates``,
  writing the new values into ``model`` in place; ``step`` counts the updates. Works inside
  and outside ``bridge.jit``.
  """

  def __init__(self, model, tx: optax.GradientTransformation, *, wrt=Param):
    self.step = OptState(jnp.array(0, dtype=jnp.uint32))
    self.tx = tx
    self.wrt = wrt
    self.opt_state = jax.tree.map(OptArray, tx.init(self._params(model)))

  def _params(self, model) -> dict:
    return graph_state(model, self.wrt).to_pure_dict()

  def update(self, model, grads, /, **kwargs):
    """One optimizer step on ``model`` with ``grads`` (a State from ``bridge.grad``);
    returns the updates."""
    params = self._params(model)
    if isinstance(grads, State):
      grads = grads.filter(self.wrt).to_pure_dict()
    if jax.tree.structure(grads) != jax.tree.structure(params):
      raise ValueError(
        'Optimizer.update: the gradients do not match the parameters selected by '
        f'wrt={self.wrt!r}; gradient paths {_paths(grads)} vs parameter paths '
        f'{_paths(params)}.')
    for path, g, p in zip(_paths(grads), jax.tree.leaves(grads), jax.tree.leaves(params),
                          strict=True):
      if jnp.shape(g) != jnp.shape(p):
        raise ValueError(f'Optimizer.update: the gradient at {path!r} has shape '
                         f'{jnp.shape(g)}, the parameter has shape {jnp.shape(p)}.')
    opt_state = jax.tree.map(lambda v: v.raw_value, self.opt_state, is_leaf=_is_variable)
    updates, new_opt_state = self.tx.update(grads, opt_state, params, **kwargs)
    graph_update(model, optax.apply_updates(params, updates))
    jax.tree.map(lambda v, x: setattr(v, 'raw_value', x), self.opt_state, new_opt_state,
                 is_leaf=_is_variable)
    self.step.raw_value = self.step.raw_value + 1
    return updates


def _paths(tree) -> list[str]:
  return ['/'.join(str(getattr(k, 'key', k)) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
