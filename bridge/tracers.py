"""Which JAX trace code runs under, for telling whether an object may be used here
(``nnx.tracers`` in flax.nnx).

>>> import jax
>>> from bridge import tracers
>>> outside = tracers.TraceState()
>>> outside.is_valid()
True
>>> bool(jax.jit(lambda: outside.is_valid())())
False
"""

from __future__ import annotations

import jax
import jax.extend


def current_jax_trace():
  """An opaque token for the current JAX trace; equal tokens mean the same trace.

  >>> current_jax_trace() == current_jax_trace()
  True
  """
  return jax.extend.core.get_opaque_trace_state(convention='nnx')


class TraceState:
  """The trace an object was made under; ``is_valid()`` says whether code runs under it
  now. A pytree with no leaves: rebuilt (by a transform) it takes the trace it is rebuilt
  under.

  >>> TraceState().is_valid()
  True
  """

  __slots__ = ('_jax_trace',)

  def __init__(self):
    self._jax_trace = current_jax_trace()

  @property
  def jax_trace(self):
    return self._jax_trace

  def is_valid(self) -> bool:
    return self._jax_trace == current_jax_trace()

  def __eq__(self, other):
    return isinstance(other, TraceState) and self._jax_trace == other._jax_trace

  def __hash__(self):
    return hash(TraceState)

  def __repr__(self):
    return f'TraceState(jax_trace={self._jax_trace!r})'

  def __getstate__(self):  # pickling: the trace is the unpickler's
    return {}

  def __setstate__(self, state):
    self._jax_trace = current_jax_trace()


jax.tree_util.register_pytree_node(TraceState, lambda t: ((), None), lambda _, __: TraceState())
