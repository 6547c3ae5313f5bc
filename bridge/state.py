"""``State``: a nested mapping of Variables, and its flat view.

A State is what ``split`` and ``state`` return: keys are attribute names (or list indices),
values are sub-States or Variables. It is a pytree whose leaves are the Variables' arrays, so
``jax.tree.map`` and ``jax.jit`` take it as it is.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> s = nnx.State({'linear': {'kernel': nnx.Param(jnp.ones((2, 3)))}})
>>> s.linear.kernel.shape, s['linear']['kernel'].shape
((2, 3), (2, 3))
>>> s.to_pure_dict()['linear']['kernel'].shape
(2, 3)
"""

from __future__ import annotations

import typing as tp
from collections.abc import Mapping, MutableMapping, Sequence

import jax

from bridge import filters as filterlib
from bridge.variables import Variable

PathParts = tuple[tp.Hashable, ...]


def _sort_key(key):
  return (0, key, '') if isinstance(key, int) else (1, 0, str(key))


class FlatState(Sequence):
  """A State as a sequence of ``(path, leaf)`` pairs sorted by path.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> flat = nnx.State({'a': {'b': nnx.Param(jnp.zeros(1))}}).flat_state()
  >>> flat.paths
  (('a', 'b'),)
  """

  __slots__ = ('_items',)

  def __init__(self, items: tp.Iterable[tuple[PathParts, tp.Any]], *, sort: bool = True):
    items = list(items)
    if sort:
      items.sort(key=lambda item: tuple(map(_sort_key, item[0])))
    self._items = items

  def __getitem__(self, i):
    return self._items[i]

  def __len__(self):
    return len(self._items)

  @property
  def paths(self) -> tuple[PathParts, ...]:
    return tuple(p for p, _ in self._items)

  @property
  def leaves(self) -> tuple:
    return tuple(v for _, v in self._items)

  def filter(self, *filters):
    """The pairs matching the filter (a tuple of FlatStates for several filters)."""
    out = _partition(self._items, filters, strict=False, to=FlatState)
    return out[0] if len(out) == 1 else tuple(out)

  def to_nested_state(self) -> State:
    return State.from_flat_path(self._items)

  def __repr__(self):
    return f'FlatState({self._items!r})'


class State(MutableMapping):
  """A nested mapping of Variables with attribute access (see the module docstring)."""

  __slots__ = ('_mapping',)

  def __init__(self, mapping: Mapping | tp.Iterable = (), /):
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    object.__setattr__(self, '_mapping', {
      k: State(v) if isinstance(v, Mapping) and not isinstance(v, State) else v
      for k, v in items})

  # -- mapping ---------------------------------------------------------------------------
  def __getitem__(self, key):
    return self._mapping[key]

  def __setitem__(self, key, value):
    if isinstance(value, Mapping) and not isinstance(value, State):
      value = State(value)
    self._mapping[key] = value

  def __delitem__(self, key):
    del self._mapping[key]

  def __iter__(self):
    return iter(self._mapping)

  def __len__(self):
    return len(self._mapping)

  def __getattr__(self, name):
    if name.startswith('__') or name == '_mapping':
      raise AttributeError(name)
    try:
      return self._mapping[name]
    except KeyError:
      raise AttributeError(f'State has no key {name!r}; keys: {list(self._mapping)}') from None

  def __setattr__(self, name, value):
    self[name] = value

  __eq__ = object.__eq__
  __hash__ = None  # type: ignore[assignment]

  def __reduce__(self):  # copy.deepcopy and pickle
    return State, (self._mapping,)

  # -- flat views ------------------------------------------------------------------------
  def flat_state(self) -> FlatState:
    """All ``(path, leaf)`` pairs, sorted by path."""
    items: list = []

    def walk(mapping, prefix):
      for k, v in mapping._mapping.items():
        if isinstance(v, State):
          walk(v, (*prefix, k))
        else:
          items.append(((*prefix, k), v))

    walk(self, ())
    return FlatState(items)

  @classmethod
  def from_flat_path(cls, items: tp.Iterable[tuple[PathParts, tp.Any]]) -> State:
    """A nested State from ``(path, leaf)`` pairs (a FlatState or any iterable)."""
    root: dict = {}
    for path, leaf in items:
      node = root
      for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
          raise ValueError(f'Path {path!r} goes through a leaf at {key!r}.')
      if isinstance(node.get(path[-1]), dict):
        raise ValueError(f'Path {path!r} is a leaf where other paths have a subtree; a '
                         'State cannot hold both.')
      node[path[-1]] = leaf
    return cls(root)

  # -- filtering -------------------------------------------------------------------------
  def filter(self, *filters):
    """The Variables matching the filter (a tuple of States for several filters)."""
    if not filters:
      raise TypeError('State.filter needs at least one filter.')
    out = _partition(self.flat_state(), filters, strict=False)
    return out[0] if len(out) == 1 else tuple(out)

  def split(self, *filters):
    """Partitions the State by the filters; every leaf must match one of them."""
    if not filters:
      return self
    out = _partition(self.flat_state(), filters, strict=True)
    return out[0] if len(out) == 1 else tuple(out)

  @staticmethod
  def merge(state, /, *states) -> State:
    """One State from several (later ones win on equal paths)."""
    return merge_state(state, *states)

  # -- pure dicts ------------------------------------------------------------------------
  def to_pure_dict(self, extract_fn: tp.Callable | None = None) -> dict:
    """Nested plain dicts of the Variables' values (for checkpoints), keys sorted as in
    ``flat_state`` and empty sub-States left out, as flax.nnx does."""
    extract = extract_fn or (lambda v: v.get_value() if isinstance(v, Variable) else v)
    root: dict = {}
    for path, leaf in self.flat_state():
      node = root
      for key in path[:-1]:
        node = node.setdefault(key, {})
      node[path[-1]] = extract(leaf)
    return root

  def replace_by_pure_dict(self, pure_dict: Mapping, replace_fn: tp.Callable | None = None):
    """Puts the values of a pure dict into the State (each Variable replaced by one of the
    same type and metadata carrying the new value). String keys that stand for list
    indices (``'0'``) are matched to integer keys. A path the State lacks, or a value whose
    shape or dtype differs from the current one, is an error naming the path."""
    replace = replace_fn or _replace_checked
    for path, value in State(pure_dict).flat_state():
      node, keys = self, []
      for key in path:
        if not isinstance(node, State):
          raise ValueError(f'replace_by_pure_dict: {"/".join(map(str, path))!r} goes through '
                           f'a leaf at {"/".join(map(str, keys))!r}')
        key = _match_key(node, key, path)
        keys.append(key)
        parent, node = node, node[key]
      if isinstance(node, State):
        raise ValueError(f'replace_by_pure_dict: {"/".join(map(str, keys))!r} holds a '
                         f'sub-State {list(node.keys())}, the pure dict has a leaf there.')
      parent[keys[-1]] = replace(node, value, tuple(keys)) if replace is _replace_checked \
        else replace(node, value)

  def __repr__(self):
    from bridge._repr import state_repr
    return state_repr(self)


def _match_key(state: State, key, path):
  if key in state:
    return key
  if isinstance(key, str) and key.isdigit() and int(key) in state:
    return int(key)
  raise ValueError(f'replace_by_pure_dict: the State has no {"/".join(map(str, path))!r} '
                   f'(no key {key!r} among {list(state.keys())}).')


def _replace_checked(current, value, path):
  where = '/'.join(map(str, path))
  old = current.get_value() if isinstance(current, Variable) else current
  if hasattr(value, 'shape') and hasattr(old, 'shape') and value.shape != old.shape:
    raise ValueError(f'replace_by_pure_dict: {where!r} has shape {old.shape}, the new value '
                     f'has shape {value.shape}.')
  if hasattr(value, 'dtype') and hasattr(old, 'dtype') and value.dtype != old.dtype:
    raise ValueError(f'replace_by_pure_dict: {where!r} has dtype {old.dtype}, the new value '
                     f'has dtype {value.dtype}; cast it first if that is intended.')
  return current.replace(value) if isinstance(current, Variable) else value


def _partition(flat, filters, strict: bool, to=None):
  predicates = filterlib.filters_to_predicates(filters)
  groups: list[list] = [[] for _ in predicates]
  for path, leaf in flat:
    for group, predicate in zip(groups, predicates, strict=True):
      if predicate(path, leaf):
        group.append((path, leaf))
        break
    else:
      if strict:
        raise ValueError(
          f'{type(leaf).__name__} at {"/".join(map(str, path))!r} matches none of the '
          f'filters {filters!r}; add `...` as the last filter to collect the rest.')
  return [(to or State.from_flat_path)(g) for g in groups]


# -- pytree -------------------------------------------------------------------------------
def _flatten_with_keys(state: State):
  keys = tuple(sorted(state._mapping, key=_sort_key))
  return tuple((jax.tree_util.DictKey(k), state._mapping[k]) for k in keys), keys


def _flatten(state: State):
  keys = tuple(sorted(state._mapping, key=_sort_key))
  return tuple(state._mapping[k] for k in keys), keys


def _unflatten(keys, children):
  new = object.__new__(State)
  object.__setattr__(new, '_mapping', dict(zip(keys, children, strict=True)))
  return new


jax.tree_util.register_pytree_with_keys(State, _flatten_with_keys, _unflatten, _flatten)


# -- functions ----------------------------------------------------------------------------
def _as_state(state: Mapping) -> State:
  return state if isinstance(state, State) else State(state)


def to_flat_state(state: State) -> FlatState:
  """``state.flat_state()``."""
  return _as_state(state).flat_state()


def from_flat_state(flat_state: Mapping[PathParts, tp.Any] | tp.Iterable[tuple[PathParts, tp.Any]],
                    *, cls: type[State] = State) -> State:
  """A nested State (of type ``cls``) from a ``{path: leaf}`` mapping or ``(path, leaf)``
  pairs (a FlatState).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> s = nnx.from_flat_state({('linear', 'bias'): nnx.Param(jnp.zeros(2))})
  >>> s.linear.bias.shape
  (2,)
  """
  items = flat_state.items() if isinstance(flat_state, Mapping) else flat_state
  return cls.from_flat_path(items)


def merge_state(state, /, *states, cls: type[State] = State) -> State:
  """One ``cls`` (a State by default) with the leaves of all (later States win on equal
  paths).

  >>> merge_state({'a': 1}, {'b': 2}).to_pure_dict()
  {'a': 1, 'b': 2}
  """
  items: dict = {}
  for s in (state, *states):
    items.update(to_flat_state(s))
  return cls.from_flat_path(items.items())


def filter_state(state: State, first, /, *filters):
  """``state.filter(first, *filters)``."""
  return _as_state(state).filter(first, *filters)


def split_state(state: State, first, /, *filters):
  """``state.split(first, *filters)``."""
  return state.split(first, *filters)


def map_state(f: tp.Callable[[PathParts, tp.Any], tp.Any], state: State) -> State:
  """A State with ``f(path, leaf)`` in place of each leaf."""
  return State.from_flat_path((p, f(p, v)) for p, v in to_flat_state(state))


def to_pure_dict(state: State, extract_fn: tp.Callable | None = None) -> dict:
  """``state.to_pure_dict()``."""
  return _as_state(state).to_pure_dict(extract_fn)


def replace_by_pure_dict(state: State, pure_dict: Mapping,
                         replace_fn: tp.Callable | None = None) -> None:
  """``state.replace_by_pure_dict(pure_dict)``."""
  state.replace_by_pure_dict(pure_dict, replace_fn)


def restore_int_paths(pure_dict: Mapping) -> dict:
  """A pure dict with digit-string keys (as checkpoints store list indices) made ints."""
  return {int(k) if isinstance(k, str) and k.isdigit() else k:
          restore_int_paths(v) if isinstance(v, Mapping) else v for k, v in pure_dict.items()}
