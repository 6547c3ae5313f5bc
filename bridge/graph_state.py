"""A State bundled with its GraphDef (``GraphState``, from ``unpack``), the
``(GraphDef, State)`` pair type (``PureState``), and ``as_pure``: Variables to raw values.

>>> import jax, jax.numpy as jnp
>>> import bridge as nnx
>>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> params = nnx.unpack(model)
>>> sorted(params), params._graphdef == nnx.graphdef(model)
(['bias', 'kernel'], True)
>>> jax.tree.map(jnp.shape, nnx.as_pure(nnx.state(model))).to_pure_dict()
{'bias': (3,), 'kernel': (2, 3)}
"""

from __future__ import annotations

import typing as tp
from collections.abc import MutableMapping

import jax

from bridge import state as statelib
from bridge.deprecations import deprecated
from bridge.graph import GraphDef, split
from bridge.state import State
from bridge.variables import Variable

A = tp.TypeVar('A')

PureState = tuple[GraphDef, State]


class GraphState(MutableMapping, tp.Generic[A]):
  """A State that carries the GraphDef of the graph it came from (``_graphdef`` and
  ``_state``, as flax names them): a mapping and a pytree like its State. See the module
  docstring for an example."""

  __slots__ = ('_graphdef', '_state')

  def __init__(self, _graphdef: GraphDef, _state: State):
    if not isinstance(_state, State):
      raise ValueError(f'GraphState: expected a State, got {type(_state).__name__}.')
    object.__setattr__(self, '_graphdef', _graphdef)
    object.__setattr__(self, '_state', _state)

  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return getattr(self._state, name)

  def __setattr__(self, name, value):
    setattr(self._state, name, value)

  def __getitem__(self, key):
    return self._state[key]

  def __setitem__(self, key, value):
    self._state[key] = value

  def __delitem__(self, key):
    del self._state[key]

  def __iter__(self):
    return iter(self._state)

  def __len__(self):
    return len(self._state)

  def __repr__(self):
    return f'GraphState({self._graphdef!r}, {self._state!r})'


def _flatten_with_keys(gs: GraphState):
  children, keys = statelib._flatten_with_keys(gs._state)
  return children, (gs._graphdef, keys)


def _flatten(gs: GraphState):
  children, keys = statelib._flatten(gs._state)
  return children, (gs._graphdef, keys)


def _unflatten(aux, children) -> GraphState:
  graphdef, keys = aux
  return GraphState(graphdef, statelib._unflatten(keys, children))


# The same children and key paths as the State inside, the GraphDef as static data.
jax.tree_util.register_pytree_with_keys(GraphState, _flatten_with_keys, _unflatten, _flatten)


def unpack(node: A, *filters, graph: bool | None = None) -> GraphState[A] | tuple:
  """``split`` with the GraphDef bundled into each State: one :class:`GraphState` for zero
  or one filter, a tuple of them for several. See the module docstring for an example."""
  graphdef, *states = split(node, *filters, graph=graph)
  bundles = tuple(GraphState(graphdef, s) for s in states)
  return bundles[0] if len(bundles) == 1 else bundles


def as_pure(tree: A) -> A:
  """``tree`` with every Variable replaced by its raw value (nested Variables too), e.g. to
  export or serialize without metadata. See the module docstring for an example."""
  def raw(x):
    return as_pure(x.raw_value) if isinstance(x, Variable) else x
  return jax.tree.map(raw, tree, is_leaf=lambda x: isinstance(x, Variable))


pure = deprecated(as_pure)
