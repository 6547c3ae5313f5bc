"""Nested mappings <-> flat mappings keyed by paths (``flax.nnx.traversals``).

>>> from bridge import traversals
>>> flat = traversals.flatten_mapping({'foo': 1, 'bar': {'a': 2, 'b': {}}})
>>> flat
{('foo',): 1, ('bar', 'a'): 2}
>>> traversals.unflatten_mapping(flat)
{'foo': 1, 'bar': {'a': 2}}
"""

from __future__ import annotations

import typing as tp
from collections.abc import Iterable, Mapping

IsLeafCallable = tp.Callable[[tuple[tp.Any, ...], Mapping[tp.Any, tp.Any]], bool]


class _EmptyNode:
  """The marker ``flatten_mapping(..., keep_empty_nodes=True)`` puts where a nested mapping
  was empty; ``unflatten_mapping`` turns it back into ``{}``."""

  def __repr__(self):
    return '_EmptyNode()'


empty_node = _EmptyNode()


def _check_mapping(xs, fn: str) -> None:
  if not isinstance(xs, Mapping):
    raise TypeError(f'{fn}: expected a Mapping, got a {type(xs).__qualname__}.')


def flatten_to_sequence(xs: Mapping[tp.Any, tp.Any], /, *,
                        is_leaf: IsLeafCallable | None = None) -> list[tuple[tp.Any, tp.Any]]:
  """The leaves of a nested mapping as ``(path, leaf)`` pairs, in insertion order; empty
  mappings are dropped. ``is_leaf(path, mapping)`` can stop the descent into a mapping.

  >>> from bridge import traversals
  >>> traversals.flatten_to_sequence({'foo': 1, 'bar': {'a': 2, 'b': {}}})
  [(('foo',), 1), (('bar', 'a'), 2)]
  """
  _check_mapping(xs, 'flatten_to_sequence')
  out: list[tuple[tp.Any, tp.Any]] = []

  def walk(x, path):
    if not isinstance(x, Mapping) or (is_leaf is not None and is_leaf(path, x)):
      out.append((path, x))
      return
    for key, value in x.items():
      walk(value, (*path, key))

  walk(xs, ())
  return out


def flatten_mapping(xs: Mapping[tp.Any, tp.Any], /, *, keep_empty_nodes: bool = False,
                    is_leaf: IsLeafCallable | None = None,
                    sep: str | None = None) -> dict[tp.Any, tp.Any]:
  """A flat dict from path tuples (or ``sep``-joined strings) to the leaves of ``xs``.

  Empty nested mappings are dropped, or kept as ``empty_node`` with ``keep_empty_nodes``.

  >>> from bridge import traversals
  >>> traversals.flatten_mapping({'a': {'b': 1, 'c': {}}}, sep='/')
  {'a/b': 1}
  >>> traversals.flatten_mapping({'a': {'b': 1, 'c': {}}}, keep_empty_nodes=True)
  {('a', 'b'): 1, ('a', 'c'): _EmptyNode()}
  """
  _check_mapping(xs, 'flatten_mapping')
  out: dict[tp.Any, tp.Any] = {}

  def key(path):
    return path if sep is None else sep.join(path)

  def walk(x, path):
    if not isinstance(x, Mapping) or (is_leaf is not None and is_leaf(path, x)):
      out[key(path)] = x
      return
    if not x and keep_empty_nodes and path:
      out[key(path)] = empty_node
    for k, value in x.items():
      walk(value, (*path, k))

  walk(xs, ())
  return out


def unflatten_mapping(xs: tp.Any, /, *, sep: str | None = None) -> dict[tp.Any, tp.Any]:
  """The nested dict of a flat mapping (or iterable of ``(path, leaf)`` pairs) whose keys
  are path tuples, or ``sep``-joined strings when ``sep`` is given.

  >>> from bridge import traversals
  >>> traversals.unflatten_mapping({'a/b': 1, 'a/c': 2}, sep='/')
  {'a': {'b': 1, 'c': 2}}
  """
  items = xs.items() if isinstance(xs, Mapping) else xs
  if not isinstance(items, Iterable):
    raise TypeError(f'unflatten_mapping: expected a Mapping or an iterable of (path, value) '
                    f'pairs, got a {type(xs).__qualname__}.')
  out: dict[tp.Any, tp.Any] = {}
  for path, value in items:
    if sep is not None:
      path = path.split(sep)
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = {} if value is empty_node else value
  return out
