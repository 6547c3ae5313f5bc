"""The Linen <-> bridge wrappers (``ToNNX``, ``ToLinen``, ...) and ``functional``: a plain
Module class used the Linen way, ``init`` giving its State and ``apply`` calling it.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> layer = nnx.bridge.functional(nnx.Linear)(2, 3)
>>> state = layer.init(rngs=nnx.Rngs(0))
>>> y, (graphdef, new_state) = layer.apply(state)(jnp.ones((1, 2)))
>>> y.shape
(1, 3)
"""

from __future__ import annotations

import dataclasses
import typing as tp

from bridge.graph import GraphDef, split
from bridge.graph_call import call
from bridge.interop.to_linen import ToLinen, to_linen
from bridge.interop.to_nnx import ToNNX, lazy_init
from bridge.module import Module
from bridge.rngs import Rngs
from bridge.state import State

M = tp.TypeVar('M', bound=Module)


@dataclasses.dataclass
class Functional(tp.Generic[M]):
  """A Module class with its constructor arguments: ``init(rngs=...)`` constructs it and
  returns its State (keeping the GraphDef), ``apply(*states)`` is ``call`` on the GraphDef
  and the States. See the module docstring for an example."""
  module_type: type[M]
  graphdef: GraphDef | None
  args: tuple[tp.Any, ...]
  kwargs: dict[str, tp.Any]

  def init(self, *, rngs: Rngs | None = None) -> State:
    kwargs = {} if rngs is None else {'rngs': rngs}
    self.graphdef, state = split(self.module_type(*self.args, **self.kwargs, **kwargs))
    return state

  def apply(self, *states: tp.Any):
    if self.graphdef is None:
      raise AssertionError(f"Functional({self.module_type.__name__}).apply: call init() first, "
                         'it records the GraphDef the States belong to.')
    return call((self.graphdef, *states))


def functional(cls: type[M]) -> tp.Callable[..., Functional[M]]:
  """A constructor of :class:`Functional` for ``cls``: ``functional(cls)(*args, **kwargs)``.
  See the module docstring for an example."""
  def functional_constructor(*args: tp.Any, **kwargs: tp.Any) -> Functional[M]:
    return Functional(cls, None, args, kwargs)
  return functional_constructor


__all__ = ['Functional', 'functional', 'ToNNX', 'lazy_init', 'ToLinen', 'to_linen']
