"""Hashable views of static data (GraphDef attributes, Variable metadata).

JAX compares static data (pytree aux data, ``static_argnums``) by hash and equality. Module
attributes and metadata are often unhashable (lists, dicts, arrays); ``hashable`` wraps them
so that equal plain data hashes equal and anything else is compared by identity.
"""

from __future__ import annotations


def freeze(value):
  """A hashable stand-in for ``value``: lists, tuples and dicts recursively (dicts
  regardless of insertion order, as ``==`` compares them), sets as frozensets; unhashable
  objects by identity."""
  if isinstance(value, (list, tuple)):
    return (type(value).__name__, tuple(freeze(v) for v in value))
  if isinstance(value, dict):
    return ('dict', frozenset((k, freeze(v)) for k, v in value.items()))
  if isinstance(value, set):
    return frozenset(freeze(v) for v in value)
  try:
    hash(value)
  except TypeError:
    return ('id', id(value))
  return value


class hashable:  # noqa: N801 (reads as a function at call sites)
  """Wraps a value so that it hashes and compares through :func:`freeze`.

  >>> hashable({'a': [1, 2]}) == hashable({'a': [1, 2]})
  True
  >>> hash(hashable({'a': [1, 2]})) == hash(hashable({'a': [1, 2]}))
  True
  >>> hashable({'a': 1, 'b': 2}) == hashable({'b': 2, 'a': 1})
  True
  """

  __slots__ = ('value', '_frozen')

  def __init__(self, value):
    self.value = value
    self._frozen = None

  def frozen(self):
    if self._frozen is None:
      self._frozen = freeze(self.value)
    return self._frozen

  def __hash__(self):
    return hash(self.frozen())

  def __eq__(self, other):
    if self is other or (isinstance(other, hashable) and self.value is other.value):
      return True
    return isinstance(other, hashable) and self.frozen() == other.frozen()

  def __repr__(self):
    return f'hashable({self.value!r})'
