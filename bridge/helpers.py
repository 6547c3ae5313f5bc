"""``TrainState`` (a functional train state over a GraphDef and its params) and the
container Modules ``Dict``, ``List`` and ``Sequential`` (flax.nnx's ``helpers`` module).

>>> import jax.numpy as jnp, optax
>>> import bridge as nnx
>>> graphdef, params = nnx.split(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
>>> state = nnx.TrainState.create(graphdef, params=params, tx=optax.sgd(0.1))
>>> y, _ = state.apply('params')(jnp.ones((1, 2)))
>>> y.shape, int(state.step)
((1, 1), 0)
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
import jax.numpy as jnp
import optax

from bridge.graph import GraphDef, merge, split
from bridge.module import Dict, List, Sequential
from bridge.state import State

TS = tp.TypeVar('TS', bound='TrainState')
# fields that are part of the pytree structure rather than leaves
_STATIC_FIELDS = ('graphdef', 'tx')


def _register(cls):
  """Makes ``cls`` a frozen dataclass and a pytree (``graphdef`` and ``tx`` static)."""
  cls = dataclasses.dataclass(frozen=True)(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  return jax.tree_util.register_dataclass(
    cls, data_fields=[n for n in names if n not in _STATIC_FIELDS],
    meta_fields=[n for n in names if n in _STATIC_FIELDS])


class _Apply:
  """``train_state.apply(...)``: attribute and item access pick the method to call, the call
  merges the states, runs it and returns ``(output, (graphdef, state))``."""

  def __init__(self, graphdef: GraphDef, states: tuple, path: tuple = ()):
    self._graphdef, self._states, self._path = graphdef, states, path

  def __getattr__(self, name: str) -> _Apply:
    if name.startswith('__'):
      raise AttributeError(name)
    return _Apply(self._graphdef, self._states, (*self._path, ('attr', name)))

  def __getitem__(self, key) -> _Apply:
    return _Apply(self._graphdef, self._states, (*self._path, ('item', key)))

  def __call__(self, *args, **kwargs):
    module = merge(self._graphdef, *self._states)
    fn = module
    for kind, key in self._path:
      fn = getattr(fn, key) if kind == 'attr' else fn[key]
    out = fn(*args, **kwargs)
    return out, split(module)


@_register
class TrainState:
  """A pytree train state: ``graphdef``, ``params`` (a State), optax's ``opt_state``, the
  ``step`` and ``tx`` (static). Subclasses add fields (e.g. ``batch_stats: State``) and
  stay dataclass pytrees. ``create`` initialises the optimizer, ``apply_gradients`` returns
  the next state, ``apply(*states)`` calls the model (states by name or as States).

  >>> import jax, jax.numpy as jnp, optax
  >>> import bridge as nnx
  >>> graphdef, params = nnx.split(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
  >>> state = nnx.TrainState.create(graphdef, params=params, tx=optax.sgd(0.5))
  >>> def loss(params):
  ...   y, _ = state.apply(params)(jnp.ones((1, 2)))
  ...   return y.sum()
  >>> state = state.apply_gradients(jax.grad(loss)(state.params))
  >>> int(state.step), state.params['bias'][...].tolist()
  (1, [-0.5])
  """

  graphdef: GraphDef
  params: State
  opt_state: optax.OptState
  step: jax.Array
  tx: optax.GradientTransformation

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    _register(cls)

  @classmethod
  def create(cls, graphdef: GraphDef, *, params: State, tx: optax.GradientTransformation,
             step: int = 0, **kwargs):
    """A first state: ``tx.init(params)``, ``step`` as an array, extra fields from
    ``kwargs``."""
    return cls(graphdef=graphdef, params=params, opt_state=tx.init(params),
               step=jnp.asarray(step), tx=tx, **kwargs)

  def apply(self, state: State | str, *states: State | str) -> _Apply:
    """Calls the model (or ``.method``/``[key]`` of it) with these states merged in;
    a string names a field of this train state that holds a State."""
    resolved = []
    for s in (state, *states):
      if isinstance(s, str):
        name, s = s, getattr(self, s)
        if not isinstance(s, State):
          raise TypeError(f'Expected {type(self).__name__}.{name} to be a State, got '
                          f'{type(s)}')
      resolved.append(s)
    return _Apply(self.graphdef, tuple(resolved))

  def apply_gradients(self: TS, grads: State, **kwargs) -> TS:
    """The next state: one ``tx`` step on ``params`` with ``grads``, ``step + 1``, and
    any fields given in ``kwargs`` replaced."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(params=params, opt_state=opt_state, step=self.step + 1, **kwargs)

  def replace(self: TS, **changes) -> TS:
    """A copy with ``changes`` to its fields."""
    return dataclasses.replace(self, **changes)



__all__ = ('Dict', 'List', 'Sequential', 'TrainState')
