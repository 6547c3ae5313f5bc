"""The filter language: which Variables (or nodes) a call applies to.

A filter is one of: a type (``Param``: instances of it), a string (a Variable whose ``tag``
is that name, such as an RNG stream's, or whose path contains it), ``...`` or ``True``
(everything), ``None`` or ``False`` (nothing), ``Not``/``All``/``Any`` of filters,
``PathContains``, ``OfType``, ``WithTag``, a tuple or list (any of), or a callable
``(path, value) -> bool``. ``to_predicate`` turns any of them into the callable.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> is_param = nnx.filters.to_predicate(nnx.Param)
>>> is_param(('kernel',), nnx.Param(jnp.ones(1))), is_param(('mean',), nnx.BatchStat(1.0))
(True, False)
>>> nnx.filters.to_predicate(nnx.Not('bias'))(('linear', 'bias'), nnx.Param(1.0))
False
"""

from __future__ import annotations

import dataclasses
import typing as tp

from bridge.variables import Variable

Key = tp.Hashable
PathParts = tuple[Key, ...]
Predicate = tp.Callable[[PathParts, tp.Any], bool]
Filter = tp.Any


def to_predicate(filter: Filter) -> Predicate:
  """The predicate ``(path, value) -> bool`` a filter stands for; a clear error otherwise."""
  if isinstance(filter, str):
    return Named(filter)
  if isinstance(filter, type):
    return OfType(filter)
  if filter is True or filter is Ellipsis:
    return Everything()
  if filter is False or filter is None:
    return Nothing()
  if isinstance(filter, (list, tuple)):
    return Any(*filter)
  if callable(filter):
    return filter
  raise TypeError(
    f'Invalid filter {filter!r} ({type(filter).__name__}): expected a Variable type, a string, '
    '..., True, False, None, a tuple of filters, Not/All/Any/PathContains/OfType, or a '
    'callable (path, value) -> bool.')


def filters_to_predicates(filters: tp.Sequence[Filter]) -> tuple[Predicate, ...]:
  """Predicates for ``split``-style filter lists; ``...``/``True`` may only come last
  (or be followed only by more of themselves, as flax allows)."""
  catch_all = lambda f: f is Ellipsis or f is True
  for i, f in enumerate(filters):
    if catch_all(f) and not all(map(catch_all, filters[i + 1:])):
      raise ValueError(
        f'`...` or `True` matches everything, so it can only be the last filter; got it at '
        f'position {i} of {len(filters)}: {filters!r}')
  return tuple(map(to_predicate, filters))


@dataclasses.dataclass(frozen=True)
class WithTag:
  """Values whose ``tag`` is ``tag`` (RNG stream Variables carry their stream name)."""
  tag: str

  def __call__(self, path, x):
    if isinstance(x, Variable):
      return x._metadata.get('tag') == self.tag
    return getattr(x, 'tag', None) == self.tag


@dataclasses.dataclass(frozen=True)
class PathContains:
  """Values whose path has ``key`` as a part (``exact``) or in a part's text."""
  key: Key
  exact: bool = True

  def __call__(self, path, x):
    if self.exact:
      return self.key in path
    return any(str(self.key) in str(part) for part in path)


@dataclasses.dataclass(frozen=True)
class Named:
  """The string filter: a tag equal to ``name`` or a path containing ``name``."""
  name: str

  def __call__(self, path, x):
    return self.name in path or WithTag(self.name)(path, x)


@dataclasses.dataclass(frozen=True)
class OfType:
  """Instances of ``type``."""
  type: type

  def __call__(self, path, x):
    return isinstance(x, self.type)


class PathIn:
  """Values at exactly one of the given paths."""

  def __init__(self, *paths: PathParts):
    self.paths = frozenset(tuple(p) for p in paths)

  def __call__(self, path, x):
    return tuple(path) in self.paths

  def __eq__(self, other):
    return isinstance(other, PathIn) and self.paths == other.paths

  def __hash__(self):
    return hash(self.paths)

  def __repr__(self):
    return f'PathIn({", ".join(map(repr, sorted(self.paths, key=repr)))})'


class _Combine:
  def __init__(self, *filters: Filter):
    self.predicates = tuple(map(to_predicate, filters))

  def __eq__(self, other):
    return type(other) is type(self) and self.predicates == other.predicates

  def __hash__(self):
    return hash((type(self), self.predicates))

  def __repr__(self):
    return f'{type(self).__name__}({", ".join(map(repr, self.predicates))})'


class Any(_Combine):
  """Values matching at least one of the filters."""

  def __call__(self, path, x):
    return any(p(path, x) for p in self.predicates)


class All(_Combine):
  """Values matching every filter."""

  def __call__(self, path, x):
    return all(p(path, x) for p in self.predicates)


class Not(_Combine):
  """Values not matching the filter."""

  def __init__(self, filter: Filter, /):
    super().__init__(filter)

  def __call__(self, path, x):
    return not self.predicates[0](path, x)


class Everything(_Combine):
  """Every value."""

  def __call__(self, path, x):
    return True


class Nothing(_Combine):
  """No value."""

  def __call__(self, path, x):
    return False
