"""Linen variable collections <-> a tree of Variables.

Linen keeps variables by collection first (``{'params': {'Dense_0': {'kernel': ...}}}``);
``bridge`` keeps them by path, the collection being the Variable's type
(``{'Dense_0': {'kernel': Param(...)}}``). The mapping goes through the registry of
``register_variable_name``; an unknown collection gets a new Variable type named after it.

>>> import jax.numpy as jnp
>>> from bridge.interop.collections import linen_to_tree, tree_to_linen
>>> tree = linen_to_tree({'params': {'w': jnp.ones(2)}, 'batch_stats': {'m': jnp.zeros(2)}})
>>> sorted((k, type(v).__name__) for k, v in tree.items())
[('m', 'BatchStat'), ('w', 'Param')]
>>> sorted(tree_to_linen(tree))
['batch_stats', 'params']
"""

from __future__ import annotations

import typing as tp

from flax.core import meta

from bridge.interop.metadata import to_linen_var, to_nnx_var
from bridge.variables import Variable, variable_name_from_type

Path = tuple


def _flat(tree: tp.Mapping, prefix: Path = (), is_leaf=lambda x: False,
          keep_empty: bool = False) -> dict[Path, tp.Any]:
  """``{path: leaf}``; with ``keep_empty`` an empty mapping below the top is a leaf too."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, tp.Mapping) and not is_leaf(v) and not (keep_empty and not v):
      out.update(_flat(v, (*prefix, k), is_leaf, keep_empty))
    else:
      out[(*prefix, k)] = v
  return out


def _nest(flat: tp.Mapping[Path, tp.Any]) -> dict:
  root: dict = {}
  for path, v in flat.items():
    node = root
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return root


def linen_to_tree(variables: tp.Mapping) -> dict:
  """Nested dicts of Variables (paths without the collection) from Linen variables; a path
  present in two collections is an error naming both. An empty dict inside a collection
  becomes a Variable of that collection holding ``{}``, so it comes back."""
  flat: dict[Path, Variable] = {}
  where: dict[Path, str] = {}
  for collection, values in variables.items():
    for path, x in _flat(values, is_leaf=lambda v: isinstance(v, meta.AxisMetadata),
                         keep_empty=True).items():
      if path in flat:
        raise ValueError(
          f'Linen variable {"/".join(map(str, path))!r} is in both collections '
          f'{where[path]!r} and {collection!r}; a bridge Module has one Variable per path. '
          'Rename one of them in the Linen module.')
      flat[path] = to_nnx_var(collection, x)
      where[path] = collection
  return _nest(flat)


def collection_of(var_type: type[Variable], path: Path = ()) -> str:
  """The Linen collection of a Variable type: its registered name, else its class name
  (registered on first sight, as flax does); an error naming ``path`` and the fix when
  that class name already belongs to another type."""
  try:
    return variable_name_from_type(var_type, allow_register=True)
  except ValueError:
    where = f' at {"/".join(map(str, path))!r}' if path else ''
    raise ValueError(
      f'The {var_type.__qualname__} Variable{where} has no Linen collection: its type is not '
      f'registered and its class name {var_type.__name__!r} is already the collection of '
      'another Variable type. Give it a collection name: '
      f'`bridge.register_variable_name("some_name", {var_type.__name__})`.') from None


def tree_to_linen(tree: tp.Mapping, metadata_fn: tp.Callable | None = to_linen_var) -> dict:
  """Linen variables (``{collection: nested dict}``) from a tree of Variables."""
  out: dict[Path, tp.Any] = {}
  for path, var in _flat(tree).items():
    if not isinstance(var, Variable):
      raise ValueError(f'Cannot map {"/".join(map(str, path))!r} to a Linen collection: it is '
                       f'a {type(var).__name__}, not a Variable; keep module state in '
                       'Variables (e.g. bridge.Variable(array)).')
    collection = collection_of(type(var), path)
    out[(collection, *path)] = metadata_fn(var) if metadata_fn else var.get_value()
  return _nest(out)
