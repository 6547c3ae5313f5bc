"""``StateSharding``: per-filter shardings for a Module argument of ``shard_map`` (specs) or
``jit``'s ``in_shardings`` (shardings); the first filter a leaf matches gives its entry.

>>> import jax.numpy as jnp
>>> from jax.sharding import PartitionSpec as P
>>> import bridge as nnx
>>> spec = nnx.StateSharding({nnx.PathContains('kernel'): P(None, 'model'), ...: P()})
>>> spec.sharding_for(('linear', 'kernel'), None), spec.sharding_for(('bias',), None)
(P(None, 'model'), P())
"""

from __future__ import annotations

import typing as tp
from collections.abc import Mapping

from bridge import filters as filterlib
from bridge.state import State


class StateSharding:
  """Shardings by filter: ``StateSharding({filter: spec, ...})``, an iterable of
  ``(filter, spec)`` pairs, or a ``State`` of specs (each path its own filter).

  >>> from jax.sharding import PartitionSpec as P
  >>> import bridge as nnx
  >>> spec = nnx.StateSharding(nnx.State({'kernel': P(None, 'model'), 'bias': P()}))
  >>> spec.sharding_for(('kernel',), None)
  P(None, 'model')
  """

  def __init__(self, filter_sharding: State | Mapping | tp.Iterable, /):
    if isinstance(filter_sharding, State):
      filter_sharding = [(filterlib.PathIn(path), spec)
                         for path, spec in filter_sharding.flat_state()]
    pairs = tuple(filter_sharding.items() if isinstance(filter_sharding, Mapping)
                  else filter_sharding)
    self.filters = tuple(f for f, _ in pairs)
    self.shardings = tuple(s for _, s in pairs)
    self._predicates = tuple(filterlib.to_predicate(f) for f in self.filters)

  def sharding_for(self, path, value):
    """The spec of the first filter ``(path, value)`` matches; an error naming the path if
    none does."""
    for predicate, sharding in zip(self._predicates, self.shardings, strict=True):
      if predicate(path, value):
        return sharding
    raise ValueError(f'StateSharding: the {type(value).__name__} at '
                     f'{"/".join(map(str, path))!r} matches none of the filters '
                     f'{list(self.filters)}; add `...: spec` to cover the rest.')

  def __eq__(self, other):
    return isinstance(other, StateSharding) and (self.filters, self.shardings) == (
      other.filters, other.shardings)

  def __hash__(self):
    return hash((self.filters, self.shardings))

  def __repr__(self):
    return f'StateSharding({dict(zip(self.filters, self.shardings, strict=True))})'
