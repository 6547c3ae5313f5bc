"""Hashable views of static data (GraphDef attributes, Variable metadata).

JAX compares static data (pytree aux data, ``static_argnums``) by hash and equality. Module
attributes and metadata are often unhashable (lists, dicts, arrays, dataclass configs);
``hashable`` wraps them so that they hash and compare by value, frozen when first needed.

The rule for what counts as the value: lists, tuples, dicts and sets by their elements; a
hashable object by its own ``__hash__``/``__eq__`` (hashable means unchanging, as the hash
contract asks: a frozen dataclass, a Linen module); an unhashable dataclass instance by its
type and field values, a NumPy array by dtype, shape and bytes; any other unhashable object
by identity (an in-place change of such an object is not seen: make it a dataclass, give it
``__eq__`` and ``__hash__``, or assign a new object).
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np

# Values that never change in place (functions: by identity, as jax.jit compares them).
IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None), type, np.dtype,
                        types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                        type(Ellipsis)})


def freeze(value, _open: set | None = None):
  """A hashable stand-in for ``value``, equal for equal values (see the module docstring).
  A value met again inside itself (``a = []; a.append(a)``) stands for its position in the
  cycle, so self-referential data freezes too.

  >>> import dataclasses
  >>> @dataclasses.dataclass
  ... class Cfg:
  ...   sizes: list
  >>> freeze(Cfg([1, 2])) == freeze(Cfg([1, 2])), freeze(Cfg([1])) == freeze(Cfg([2]))
  (True, False)
  >>> freeze({'a': 1, 'b': 2}) == freeze({'b': 2, 'a': 1})
  True
  >>> a, b = [1], [1]
  >>> a.append(a); b.append(b)
  >>> freeze(a) == freeze(b)
  True
  """
  if type(value) in IMMUTABLE:
    return value
  if _open is None:
    _open = set()
  if id(value) in _open:
    return ('cycle', len(_open))
  _open.add(id(value))
  try:
    return _freeze_inside(value, _open)
  finally:
    _open.discard(id(value))


def _freeze_inside(value, _open: set):
  if isinstance(value, (list, tuple)):
    return (type(value).__name__, tuple(freeze(v, _open) for v in value))
  if isinstance(value, dict):
    return ('dict', frozenset((k, freeze(v, _open)) for k, v in value.items()))
  if isinstance(value, (set, frozenset)):
    return (type(value).__name__, frozenset(freeze(v, _open) for v in value))
  if isinstance(value, np.ndarray):
    return ('ndarray', value.dtype.str, value.shape, value.tobytes())
  try:
    hash(value)
  except TypeError:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
      return (type(value), tuple(freeze(getattr(value, f.name), _open)
                                 for f in dataclasses.fields(value)))
    return ('id', id(value))
  return value


def is_mutable(value) -> bool:
  """Whether ``freeze(value)`` can change while ``value`` stays the same object: what a
  cache keyed on the frozen form must re-check (containers, dataclasses, arrays).

  >>> import dataclasses
  >>> @dataclasses.dataclass
  ... class Cfg:
  ...   sizes: list
  >>> is_mutable((1, 'a')), is_mutable(([1],)), is_mutable(len), is_mutable(Cfg([1]))
  (False, True, False, True)
  """
  if type(value) in IMMUTABLE:
    return False
  if isinstance(value, (tuple, frozenset)):
    return any(map(is_mutable, value))
  if isinstance(value, (list, dict, set, np.ndarray)):
    return True
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    try:
      hash(value)
    except TypeError:
      return True
  return False


class hashable:  # noqa: N801 (reads as a function at call sites)
  """Wraps a value so that it hashes and compares through :func:`freeze`.

  The frozen form is taken at the first hash or comparison (or given as ``frozen``), so a
  value changed in place afterwards compares unequal to a fresh ``hashable`` of it.

  >>> hashable({'a': [1, 2]}) == hashable({'a': [1, 2]})
  True
  >>> hash(hashable({'a': [1, 2]})) == hash(hashable({'a': [1, 2]}))
  True
  >>> hashable({'a': 1, 'b': 2}) == hashable({'b': 2, 'a': 1})
  True
  >>> config = {'sizes': [1]}
  >>> before = hashable(config)
  >>> _ = hash(before)
  >>> config['sizes'].append(2)
  >>> before == hashable(config)
  False
  """

  __slots__ = ('value', '_frozen')

  def __init__(self, value, frozen=None):
    self.value = value
    self._frozen = frozen

  def frozen(self):
    if self._frozen is None:
      self._frozen = freeze(self.value)
    return self._frozen

  def __hash__(self):
    return hash(self.frozen())

  def __eq__(self, other):
    if self is other:
      return True
    return isinstance(other, hashable) and self.frozen() == other.frozen()

  def __repr__(self):
    return f'hashable({self.value!r})'
