"""Graph functions that rebuild a graph: ``recursive_map``, ``map`` and ``set_metadata``.

``recursive_map`` calls a function on every node and leaf of a structural copy of the graph
(children before parents) and puts back what it returns; ``map`` maps the State of a graph
and merges it back; ``set_metadata`` writes Variable metadata in place.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> zeros = nnx.map(lambda path, v: v.replace(jnp.zeros_like(v)), model)
>>> float(zeros.kernel.sum()), zeros.kernel is model.kernel
(0.0, False)
"""

from __future__ import annotations

import typing as tp
from collections.abc import MutableMapping, MutableSequence

from bridge import filters as filterlib
from bridge.graph import PathParts, flatten, unflatten
from bridge.graph import state as _state
from bridge.object import Object
from bridge.variables import Variable

A = tp.TypeVar('A')


def _fmt(path: PathParts) -> str:
  return repr('/'.join(map(str, path))) if path else 'the root'


def _items(node) -> tp.Iterable[tuple[tp.Hashable, tp.Any]] | None:
  """The children of a graph node as ``(key, value)`` pairs (None for a leaf)."""
  if isinstance(node, Object):
    return sorted(node._graph_children().items(), key=lambda kv: str(kv[0]))
  if isinstance(node, (list, tuple)):
    return enumerate(node)
  if isinstance(node, dict):
    return list(node.items())
  return None


def _replace_child(node, key, value, path: PathParts) -> None:
  if isinstance(node, (list, dict, MutableMapping, MutableSequence)):
    node[key] = value
  elif isinstance(node, Object):
    setattr(node, key, value)
  else:
    raise ValueError(f'recursive_map: cannot replace {key!r} in the {type(node).__name__} at '
                     f'{_fmt(path)}: a {type(node).__name__} does not support mutation.')


def recursive_map(f: tp.Callable[[PathParts, tp.Any], tp.Any], node: tp.Any, /, *,
                  graph: bool | None = None):
  """Calls ``f(path, x)`` on every node and leaf of a copy of ``node``'s structure
  (children before parents, each shared node once) and puts back what ``f`` returns.

  The copy has new Modules and containers but the same Variables and arrays as ``node``.
  In tree mode (``graph=False`` or ``set_graph_mode(False)``) shared references are an error.

  >>> import bridge as nnx
  >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
  >>> def show(path, x):
  ...   if isinstance(x, nnx.Module):
  ...     print(path, type(x).__name__)
  ...   return x
  >>> new = nnx.recursive_map(show, model)
  ('layers', 0) Linear
  () Sequential
  >>> new is model, new.layers[0].kernel is model.layers[0].kernel
  (False, True)
  """
  graphdef, leaves = flatten(node, graph=graph)
  copy = unflatten(graphdef, [leaf for _, leaf in leaves])
  results: dict[int, tp.Any] = {}
  in_progress: set[int] = set()

  def visit(x, path):
    key = id(x)
    if key in results:
      return results[key]
    if key in in_progress:
      raise ValueError(f'recursive_map: found a cycle at {_fmt(path)}: the '
                       f'{type(x).__name__} there is one of its own ancestors.')
    items = _items(x)
    if items is not None:
      in_progress.add(key)
      for k, child in list(items):
        new = visit(child, (*path, k))
        if new is not child:
          _replace_child(x, k, new, path)
      in_progress.discard(key)
    out = f(path, x)
    if items is not None or isinstance(x, Variable):
      results[key] = out
    return out

  return visit(copy, ())


def map(f: tp.Callable[[tuple, tp.Any], tp.Any], node: A, /, *, graph: bool | None = None,
        recreate_variables: bool = True) -> A:
  """A new graph with ``f(path, leaf)`` in place of every leaf (Variable or array) of
  ``node``'s State. A plain value returned for a Variable is wrapped in a Variable of the
  same type and metadata, unless ``recreate_variables=False``.

  In tree mode (``graph=False`` or ``set_graph_mode(False)``) shared references are an error.

  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> doubled = nnx.map(lambda path, v: v[...] * 2, model)
  >>> type(doubled.kernel).__name__, bool((doubled.kernel == 2 * model.kernel).all())
  ('Param', True)
  """
  graphdef, leaves = flatten(node, graph=graph)
  new_leaves = [f(path, leaf) for path, leaf in leaves]
  out = unflatten(graphdef, new_leaves)
  if not recreate_variables:
    for (path, leaf), new in zip(leaves, new_leaves, strict=True):
      if isinstance(leaf, Variable) and not isinstance(new, Variable):
        parent = out
        for k in path[:-1]:
          parent = parent._graph_children()[k] if isinstance(parent, Object) else parent[k]
        _replace_child(parent, path[-1], new, path[:-1])
  return out


def set_metadata(node: tp.Any, /, *, only: filterlib.Filter = Variable, **metadata: tp.Any) -> None:
  """Sets ``metadata`` on every Variable of ``node`` that matches ``only``, in place.

  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> nnx.set_metadata(model, only=nnx.Param, differentiable=False)
  >>> model.kernel.get_metadata('differentiable')
  False
  """
  for _, variable in _state(node, only).flat_state():
    if isinstance(variable, Variable):
      variable.set_metadata(**metadata)
