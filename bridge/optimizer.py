"""``Optimizer``: optax state kept as Variables beside the model.

The parameters go to optax as a ``State`` (of arrays), as in flax.nnx, so labels and
masks given as a State or a function of one (``optax.multi_transform``,
``optax.partition``, ``optax.masked``) match, and statistics that mirror a parameter
(Adam's ``mu``/``nu``, ...) are ``OptVariable``\\ s carrying the parameter's metadata, its
sharding included (a parameter's ``optimizer_sharding`` metadata, if any, becomes their
``out_sharding``).

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

import typing as tp

import jax
import jax.numpy as jnp
import optax

from bridge.graph import state as graph_state
from bridge.object import Object
from bridge.state import State
from bridge.variables import Param, Variable


class OptState(Variable):
  """Optimizer state: the step counter and optax's statistics."""
  __slots__ = ()


class OptArray(OptState):
  """An array of optax's state that mirrors no parameter (e.g. Adam's ``count``)."""
  __slots__ = ()


class OptVariable(OptState):
  """Optax state that mirrors a model Variable (e.g. Adam's ``mu``): it keeps the
  Variable's metadata."""
  __slots__ = ()


def _is_variable(x) -> bool:
  return isinstance(x, Variable)


def to_opt_state(tree):
  """``tree`` with each Variable turned into an ``OptVariable`` (same value and metadata,
  ``optimizer_sharding`` becoming ``out_sharding``) and each other leaf into an
  ``OptArray``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> from bridge.optimizer import to_opt_state
  >>> tree = to_opt_state({'w': nnx.Param(jnp.zeros(2), out_sharding=('a',)), 'n': 0})
  >>> type(tree['w']).__name__, tree['w'].out_sharding, type(tree['n']).__name__
  ('OptVariable', ('a',), 'OptArray')
  """
  def convert(x):
    if not isinstance(x, Variable):
      return OptArray(x)
    metadata = x.get_metadata()
    if 'optimizer_sharding' in metadata:
      metadata['out_sharding'] = metadata.pop('optimizer_sharding')
    return OptVariable(x.get_value(), **metadata)
  return jax.tree.map(convert, tree, is_leaf=_is_variable)


def _pure(tree):
  """``tree`` with every Variable replaced by its value."""
  return jax.tree.map(lambda x: x.get_value() if isinstance(x, Variable) else x, tree,
                      is_leaf=_is_variable)


class Optimizer(Object):
  """Holds ``tx``'s state for the Variables of ``model`` matching ``wrt``.

  ``update(model, grads, **kwargs)`` applies one step: ``tx.update(grads, opt_state,
  params, **kwargs)`` then ``optax.apply_updates``, writing the new values into ``model``
  in place; ``step`` counts the updates. ``kwargs`` go to optax as they are (Variables as
  their values), e.g. ``value``, ``grad`` and ``value_fn`` for ``optax.lbfgs``. Works
  inside and outside ``bridge.jit``.

  >>> import jax.numpy as jnp, optax
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  >>> type(optimizer.opt_state[0].mu['kernel']).__name__
  'OptVariable'
  """

  def __init__(self, model, tx: optax.GradientTransformation, *, wrt, graph=None):
    self.graph = graph
    self.step = OptState(jnp.array(0, dtype=jnp.uint32))
    self.tx = tx
    self.opt_state = to_opt_state(tx.init(graph_state(model, wrt, graph=graph)))
    self.wrt = wrt

  def __getattr__(self, name):
    if name == 'model':
      raise AttributeError(
        f"{type(self).__name__} has no attribute 'model' (as in flax.nnx since 0.11): pass "
        'the model to update(model, grads), or use nnx.ModelAndOptimizer.')
    raise AttributeError(f'{type(self).__name__!r} object has no attribute {name!r}')

  def update(self, model, grads, /, **kwargs):
    """One optimizer step on ``model`` with ``grads`` (a State from ``bridge.grad``, a Module
    of gradients as tree-mode ``grad`` returns, or a nested dict of arrays); returns the
    updates."""
    params = graph_state(model, self.wrt, graph=self.graph)
    param_arrays = _pure(params)
    if isinstance(grads, (State, Object)):
      grad_arrays = _pure(graph_state(grads, self.wrt, graph=self.graph))
    else:
      grad_arrays = State(grads)
    _check_grads(grad_arrays, param_arrays, self.wrt)
    updates, new_opt_state = self.tx.update(grad_arrays, _pure(self.opt_state), param_arrays,
                                            **_pure(kwargs))
    new_params = optax.apply_updates(param_arrays, updates)
    for var, value in zip(jax.tree.leaves(params, is_leaf=_is_variable),
                          jax.tree.leaves(new_params), strict=True):
      var.raw_value = value
    _write_by_path(self.opt_state, new_opt_state)
    self.step[...] += 1
    return updates


def _write_by_path(variables, values) -> None:
  """Stores each leaf of ``values`` into the Variable at the same path in ``variables``.
  A Variable holding a leafless value (optax's ``MaskedNode``) has no new value and keeps
  its own."""
  new = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(values)}
  for path, var in jax.tree_util.tree_leaves_with_path(variables, is_leaf=_is_variable):
    key = jax.tree_util.keystr(path)
    if key in new:
      var.raw_value = new.pop(key)
  if new:
    raise ValueError(f'Optimizer.update: the optax state returned by tx.update has leaves '
                     f'at {sorted(new)} that the state from tx.init does not have.')


def _check_grads(grads: State, params: State, wrt) -> None:
  grad_paths, param_paths = _paths(grads), _paths(params)
  if grad_paths != param_paths:
    raise ValueError(
      'Optimizer.update: the gradients do not match the parameters selected by '
      f'wrt={wrt!r}; gradient paths {grad_paths} vs parameter paths {param_paths}.')
  for path, g, p in zip(grad_paths, jax.tree.leaves(grads), jax.tree.leaves(params),
                        strict=True):
    if jnp.shape(g) != jnp.shape(p):
      raise ValueError(f'Optimizer.update: the gradient at {path!r} has shape '
                       f'{jnp.shape(g)}, the parameter has shape {jnp.shape(p)}.')


def _paths(tree) -> list[str]:
  return ['/'.join(str(getattr(k, 'key', k)) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


class ModelAndOptimizer(Optimizer):
  """An ``Optimizer`` that keeps its model (flax.nnx's pre-0.11 API, deprecated there):
  ``update(grads)`` steps ``self.model``.

  >>> import jax.numpy as jnp, optax
  >>> import bridge as nnx
  >>> state = nnx.ModelAndOptimizer(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1))
  >>> grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(state.model)
  >>> _ = state.update(grads)
  >>> int(state.step.value)
  1
  """

  def __init__(self, model, tx: optax.GradientTransformation, *, wrt=Param):
    super().__init__(model, tx, wrt=wrt)
    self.model = model

  def update(self, grads, /, **kwargs):  # type: ignore[override]
    """One step on ``self.model``; returns the updates."""
    return super().update(self.model, grads, **kwargs)


__all__: tp.Sequence[str] = ('ModelAndOptimizer', 'OptArray', 'OptState', 'OptVariable',
                             'Optimizer', 'to_opt_state')
