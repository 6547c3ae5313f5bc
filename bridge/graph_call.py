"""``call``: run a method of the graph a ``(GraphDef, State)`` pair describes, purely.

``call((graphdef, state)).method(*args)`` merges the graph, runs ``method`` and returns the
output with the graph's new ``(GraphDef, State)``: merge > method > split in one step, handy
inside plain ``jax.jit``-ed functions.

>>> import jax, jax.numpy as jnp
>>> import bridge as nnx
>>> class Counter(nnx.Module):
...   def __init__(self):
...     self.count = nnx.BatchStat(jnp.array(0))
...   def add(self, k):
...     self.count.value += k
...     return self.count.value
>>> pure = nnx.split(Counter())
>>> out, pure = jax.jit(lambda p: nnx.call(p).add(2))(pure)
>>> out, pure = nnx.call(pure).add(3)
>>> int(out), int(nnx.merge(*pure).count.value)
(5, 5)
"""

from __future__ import annotations

import typing as tp

from bridge.graph import GraphDef, merge, split
from bridge.proxy_caller import ApplyCaller, CallableProxy, DelayedAccessor
from bridge.state import State

A = tp.TypeVar('A')


def call(graphdef_state: tuple[GraphDef, State], /) -> ApplyCaller[tuple[GraphDef, State]]:
  """Merges ``graphdef_state`` (a GraphDef and one or more States) when called, runs the
  method reached by the attribute/item accesses made on the result (the graph itself when
  none), and returns ``(output, (graphdef, state))`` of the updated graph. See the module
  docstring for an example."""
  if not isinstance(graphdef_state, tuple) or len(graphdef_state) < 2 \
      or not isinstance(graphdef_state[0], GraphDef):
    raise TypeError('call expects a (GraphDef, State, ...) tuple as split returns it, got '
                    f'{type(graphdef_state).__name__}.')
  return apply(*graphdef_state)


def apply(graphdef: GraphDef, state: State, *states: State, graph: bool | None = None
          ) -> ApplyCaller[tuple[GraphDef, State]]:
  """``GraphDef.apply``: ``call((graphdef, state, *states))``, the updated graph split in
  ``graph`` mode (None: the global mode).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> graphdef, state = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  >>> y, (graphdef, state) = graphdef.apply(state)(jnp.ones((1, 2)))
  >>> y.shape
  (1, 3)
  """
  def run(accessor: DelayedAccessor, *args, **kwargs):
    node = merge(graphdef, state, *states)
    out = accessor(node)(*args, **kwargs)
    return out, split(node, graph=graph)

  return CallableProxy(run)
