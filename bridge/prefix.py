"""``prefix``: a tree of transform axes shaped like a graph node.

``nnx.prefix(node, filter_map)`` puts a prefix value (an axis, ``None``...) in place of
every leaf of ``node`` (each Variable, each raw array), chosen by a function of
``(path, leaf)`` or by the first matching filter of a ``{filter: value}`` mapping. The
result has the node's structure (Modules stay Modules, see ``bridge.pytreelib``), so it is
a valid ``in_axes`` entry for ``nnx.vmap`` in both modes and for ``jax.vmap``.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> d = {'a': nnx.Param(jnp.array(2)), 'b': nnx.BatchStat(jnp.arange(5))}
>>> axes = nnx.prefix(d, {nnx.Param: None, nnx.BatchStat: 0})
>>> axes
{'a': None, 'b': 0}
>>> nnx.vmap(lambda d: d['a'] * d['b'], in_axes=(axes,))(d)
Array([0, 2, 4, 6, 8], dtype=int32)
"""

from __future__ import annotations

import typing as tp
from collections.abc import Mapping

import jax

from bridge import filters as filterlib
from bridge.variables import Variable


def _key(entry) -> tp.Hashable:
  for name in ('key', 'name', 'idx'):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
    if hasattr(entry, name):
      return getattr(entry, name)
  return entry


def _from_filters(filter_map: Mapping) -> tp.Callable[[tuple, tp.Any], tp.Any]:
  rules = [(filterlib.to_predicate(f), value) for f, value in filter_map.items()]

  def prefix_fn(path, leaf):
    for predicate, value in rules:
      if predicate(path, leaf):
        return value
    raise ValueError(f'No filter matched leaf at path {path} with value {leaf!r}. '
                     f'Filters: {list(filter_map)}')
  return prefix_fn


def prefix(node, filter_map: Mapping[filterlib.Filter, tp.Any] | tp.Callable[..., tp.Any], /,
           *, graph: bool | None = None):
  """Replaces every leaf of ``node`` (Variables and raw arrays) with a prefix value:
  ``filter_map(path, leaf)``, or the value of the first filter of the mapping
  ``filter_map`` that matches ``(path, leaf)`` (a ValueError naming the path if none does).

  The result keeps ``node``'s structure (Modules, lists, dicts) and can be passed as an
  ``in_axes`` entry to ``nnx.vmap`` (tree or graph mode) or ``jax.vmap``. ``graph`` is
  accepted for flax.nnx compatibility: bridge's graph-mode transforms read the same
  Module-shaped prefixes (the first prefix given for a node passed twice wins), so both
  modes build the same tree.

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> axes = nnx.prefix(model, lambda path, x: 0 if path == ('bias',) else None)
  >>> type(axes).__name__, axes.kernel, axes.bias
  ('Linear', None, 0)
  >>> biases = jnp.zeros((4, 3))
  >>> def forward(m, x):
  ...   return m(x)
  >>> stacked = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> stacked.bias = nnx.Param(biases)
  >>> nnx.vmap(forward, in_axes=(axes, None))(stacked, jnp.ones(2)).shape
  (4, 3)
  """
  del graph  # same prefix tree in both modes (see above)
  if isinstance(filter_map, Mapping):
    fn = _from_filters(filter_map)
  elif callable(filter_map):
    fn = filter_map
  else:
    raise TypeError(f'prefix: filter_map must be a callable (path, leaf) -> prefix or a '
                    f'mapping {{filter: prefix}}, got {type(filter_map).__name__}.')
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: fn(tuple(_key(e) for e in path), leaf), node,
    is_leaf=lambda x: isinstance(x, Variable))


__all__ = ['prefix']
