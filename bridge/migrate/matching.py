"""Pairing Linen variables with a model's Variables, one to one, or a clear error.

Each Linen leaf is named by its path string with the collection first
(``'params/Dense_0/kernel'``); rename rules (``bridge.migrate.rename``) rewrite it, and what
follows the collection is the model path it goes to (``'linear0/kernel'``, a Variable whose
type is that collection). With ``match='structure'`` the leaves left unpaired by their
paths are paired by module shapes and order (``bridge.migrate.structure``). Then every
pair must agree in collection, shape and dtype. Anything else (a leaf left on either side,
two leaves going to one Variable, a pair that differs, modules that cannot be told apart)
is a ``VariableMatchError`` listing all of it.

The model's Variables are all those of the target except RNG state (``RngKey``,
``RngCount``), which Linen keeps outside its variables.

>>> import jax, jax.numpy as jnp
>>> import flax.linen as nn
>>> import bridge as nnx
>>> from bridge.migrate import match_variables
>>> variables = nn.Dense(3).init(jax.random.key(0), jnp.ones((1, 2)))
>>> class Port(nnx.Module):
...   def __init__(self, rngs):
...     self.proj = nnx.Linear(2, 3, rngs=rngs)
>>> match_variables(variables, Port(nnx.Rngs(0)), rules={'params': 'params/proj'})
{('params', 'bias'): ('proj', 'bias'), ('params', 'kernel'): ('proj', 'kernel')}
"""

from __future__ import annotations

import collections
import typing as tp

import jax
import numpy as np
from flax.core import meta

from bridge.graph import state as graph_state
from bridge.interop.collections import _flat
from bridge.interop.metadata import to_nnx_var
from bridge.migrate.errors import VariableMatchError
from bridge.migrate.rename import Rules, apply_rules, compile_rules
from bridge.migrate.structure import Pair, match_structure
from bridge.module import Module
from bridge.object import Object
from bridge.rngs import RngState
from bridge.state import State
from bridge.variables import Variable, variable_name_from_type

Match = tp.Literal['path', 'structure']


class Leaf(tp.NamedTuple):
  """One variable on either side: ``key`` is its own path (the Linen one with the
  collection first, before rules; the model one with its int keys), ``path`` the string
  keys it is matched on (the Linen one after rules, without the collection), ``item`` the
  Linen leaf as a Variable (``to_nnx_var``) or the model's Variable itself, ``order`` its
  place in creation order (the Linen variables' order; the model's attribute order)."""
  key: tuple
  path: tuple[str, ...]
  collection: str
  shape: tuple
  dtype: tp.Any
  item: tp.Any
  order: int = 0

  @property
  def name(self) -> str:
    return path_str(self.key)

  def __str__(self):
    return f'{self.name} {tuple(self.shape)} {self.dtype}'


def path_str(path: tp.Iterable) -> str:
  return '/'.join(map(str, path))


def _shape_dtype(x) -> tuple[tuple, tp.Any]:
  if hasattr(x, 'shape') and hasattr(x, 'dtype'):
    return tuple(x.shape), np.dtype(x.dtype) if not _is_key(x.dtype) else x.dtype
  x = np.asarray(x)
  return x.shape, x.dtype


def _is_key(dtype) -> bool:
  return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def linen_items(variables: tp.Mapping) -> tp.Iterator[tuple[str, tuple, tp.Any]]:
  """``(collection, path, value)`` for each leaf of Linen variables (boxes kept whole)."""
  for collection, values in variables.items():
    if not isinstance(values, tp.Mapping):
      raise ValueError(f'Linen variables are {{collection: nested dict}}; {collection!r} holds '
                       f'a {type(values).__name__}. Pass only the variable collections.')
    for path, x in _flat(values, is_leaf=lambda v: isinstance(v, meta.AxisMetadata)).items():
      yield collection, path, x


def renamed_path(collection: str, path: tuple, compiled) -> tuple[str, ...]:
  """The path (without the collection) that ``compiled`` rules give ``collection/path``;
  rules may rename keys but not the collection. Without rules the path is kept as it is;
  with rules (which rewrite ``'/'``-joined strings) a key holding ``'/'`` is an error."""
  if not compiled:
    return tuple(path)
  name = path_str((collection, *path))
  slashed = [k for k in path if '/' in k]
  if slashed:
    raise ValueError(f'Rename rules rewrite paths joined with "/", so the key {slashed[0]!r} '
                     f'of {name!r} would be split; rename it in the Linen variables first, or '
                     'pass no rules.')
  renamed = apply_rules(name, compiled).split('/')
  if renamed[0] != collection or len(renamed) < 2:
    raise ValueError(
      f'Rename rules turned {name!r} into {"/".join(renamed)!r}: a rule must keep the '
      f"collection {collection!r} as the first key and leave a path after it (a Variable's "
      'type is its collection).')
  return tuple(renamed[1:])


def linen_leaves(variables: tp.Mapping, rules: Rules | None = None) -> list[Leaf]:
  """The leaves of Linen variables (``{collection: nested dict}``), matched on their paths
  after ``rules``; each ``item`` is the leaf as a Variable (``to_nnx_var``)."""
  compiled = compile_rules(rules)
  leaves = []
  for order, (collection, path, x) in enumerate(linen_items(variables)):
    var = to_nnx_var(collection, x)
    leaves.append(Leaf((collection, *path), renamed_path(collection, path, compiled),
                       collection, *_shape_dtype(var.raw_value), var, order))
  return leaves


def _attribute_order(target) -> dict[tuple, int]:
  """``{path: i}`` for the Variables of a Module in the order its attributes were assigned
  (a State has no such order: its own)."""
  if isinstance(target, State):
    return {p: i for i, (p, _) in enumerate(target.flat_state())}
  order: dict[tuple, int] = {}

  def walk(x, path):
    if isinstance(x, Variable):
      order.setdefault(path, len(order))
      return
    items = x._graph_children().items() if isinstance(x, Object) else \
      x.items() if isinstance(x, dict) else \
      enumerate(x) if isinstance(x, (list, tuple)) else ()
    for k, v in items:
      walk(v, (*path, k))

  walk(target, ())
  return order


def model_leaves(target) -> list[Leaf]:
  """The Variables of a Module (or State), RNG state left out, matched on their paths;
  any other ``target`` is a ``TypeError``."""
  if not isinstance(target, (Module, State)):
    raise TypeError(f'target is not a Module (or a State of Variables): got '
                    f'{type(target).__name__} {target!r:.80}. Pass the bridge model to load '
                    'into (e.g. MyModel(rngs=nnx.Rngs(0))).')
  flat = target.flat_state() if isinstance(target, State) else graph_state(target).flat_state()
  order = _attribute_order(target)
  leaves = []
  for path, var in flat:
    if not isinstance(var, Variable) or isinstance(var, RngState):
      continue
    collection = variable_name_from_type(type(var), allow_register=True)
    leaves.append(Leaf(path, tuple(map(str, path)), collection,
                       *_shape_dtype(var.raw_value), var, order.get(path, len(order))))
  return leaves


def pair_leaves(linen: list[Leaf], model: list[Leaf], match: Match = 'path', *,
                source: str = 'Linen variables', hint: str | None = None,
                linen_ordered: bool = True) -> list[Pair]:
  """``Pair(linen, model, rule)``s covering both sides, or a ``VariableMatchError`` (naming
  the other side ``source``, ending with ``hint``). ``linen_ordered``: whether the Linen
  leaves come in Linen's creation order (see ``bridge.migrate.structure``)."""
  if match not in ('path', 'structure'):
    raise ValueError(f"match must be 'path' or 'structure', got {match!r}.")
  by_path = {leaf.path: leaf for leaf in model}
  targets: dict[tuple, list[Leaf]] = collections.defaultdict(list)
  for leaf in linen:
    targets[leaf.path].append(leaf)
  pairs, ambiguous, linen_left = [], [], []
  for path, leaves in targets.items():
    if len(leaves) > 1:
      ambiguous.append(f'{", ".join(sorted(leaf.name for leaf in leaves))} all go to '
                       f'{path_str(path)}')
    elif path in by_path:
      pairs.append(Pair(leaves[0], by_path[path], 'path'))
    else:
      linen_left.append(leaves[0])
  model_left = [leaf for leaf in model if leaf.path not in targets]
  if match == 'structure':
    more, more_ambiguous, linen_left, model_left = match_structure(
      linen_left, model_left, linen_ordered=linen_ordered)
    pairs += more
    ambiguous += more_ambiguous
  mismatched = [_mismatch(pair) for pair in pairs
                if _kind(pair.linen) != _kind(pair.model)]
  if linen_left or model_left or mismatched or ambiguous:
    raise VariableMatchError(
      source_only=sorted(map(str, linen_left)), model_only=sorted(map(str, model_left)),
      mismatched=sorted(mismatched), ambiguous=ambiguous, source=source,
      hint=_HINTS[match] if hint is None else hint)
  return pairs


def _kind(leaf: Leaf) -> tuple:
  return leaf.collection, leaf.shape, leaf.dtype


def _mismatch(pair: Pair) -> str:
  a, b = pair.linen, pair.model
  paired = '' if pair.rule == 'path' else f' (paired by {pair.rule})'
  if a.collection == b.collection:
    return f'{a} -> {b}{paired}'
  return f'{a} -> {b} (collection {a.collection!r}, the model\'s Variable is ' \
         f'{b.collection!r}){paired}'


_HINTS = {
  'path': "Rename paths with rules={pattern: replacement} (matched against 'collection/path' "
          "strings such as 'params/Dense_0/kernel'), or pass match='structure' to pair "
          'modules by their shapes and order.',
  'structure': 'Add rename rules for the modules listed: leaves whose renamed paths match '
               'are paired before the structural matching.',
}


def match_variables(variables: tp.Mapping, target, *, rules: Rules | None = None,
                    match: Match = 'path') -> dict[tuple, tuple]:
  """``{linen path (collection first): model path}`` for every Linen leaf and every
  Variable of ``target`` (a Module or State), or a ``VariableMatchError`` listing what
  does not pair up (see the module docstring)."""
  pairs = pair_leaves(linen_leaves(variables, rules), model_leaves(target), match)
  return dict(sorted((pair.linen.key, pair.model.key) for pair in pairs))


def match_report(variables: tp.Mapping, target, *, rules: Rules | None = None,
                 match: Match = 'path') -> list[str]:
  """One line per Linen leaf, ``'linen path -> model path: rule'``, the rule being
  ``path`` (its path, after ``rules``) or the structural rule that paired its module (see
  ``bridge.migrate.structure``); errors as ``match_variables``.

  >>> import jax, jax.numpy as jnp
  >>> import flax.linen as nn
  >>> import bridge as nnx
  >>> from bridge.migrate import match_report
  >>> class Linen(nn.Module):
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     return nn.Dense(2, name='b2')(nn.Dense(2, name='b1')(x))
  >>> class Port(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.first = nnx.Linear(2, 2, rngs=rngs)
  ...     self.second = nnx.Linear(2, 2, rngs=rngs)
  >>> variables = Linen().init(jax.random.key(0), jnp.ones((1, 2)))
  >>> print(match_report(variables, Port(nnx.Rngs(0)), match='structure')[0])
  params/b1/bias -> first/bias: structure (Linen creation order, model attribute order)
  """
  pairs = pair_leaves(linen_leaves(variables, rules), model_leaves(target), match)
  return sorted(f'{pair.linen.name} -> {pair.model.name}: {pair.rule}' for pair in pairs)
