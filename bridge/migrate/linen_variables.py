"""Linen variables <-> a ``bridge`` model's State, and loading them into a model in place.

``linen_to_state`` and ``state_to_linen`` convert without loss (values, dtypes, metadata
boxes: ``nn.Partitioned`` comes back as the same ``nn.Partitioned``), optionally renaming
paths with rules (``bridge.migrate.rename``); keys that are all digits become ints in the
State (list indices) and strings again in Linen, as long as the int gives the same string
back (``'01'`` and ``'007'`` stay strings); an empty dict inside a collection is kept.
``load_linen_variables`` writes Linen variables into an existing model (a ``ToNNX``
wrapper, or a hand-ported model with its own names, paired by rules or by structure);
``to_linen_variables`` gives a model's Variables as Linen variables.

>>> import jax, jax.numpy as jnp
>>> import flax.linen as nn
>>> import bridge as nnx
>>> from bridge.migrate import load_linen_variables, to_linen_variables
>>> class LinenMLP(nn.Module):
...   @nn.compact
...   def __call__(self, x):
...     x = nn.relu(nn.Dense(8)(x))
...     return nn.Dense(2)(x)
>>> class MLP(nnx.Module):  # the hand-written port, with its own names
...   def __init__(self, rngs):
...     self.layers = nnx.List([nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)])
...   def __call__(self, x):
...     return self.layers[1](nnx.relu(self.layers[0](x)))
>>> x = jnp.ones((1, 4))
>>> variables = LinenMLP().init(jax.random.key(0), x)
>>> model = load_linen_variables(MLP(nnx.Rngs(1)), variables,
...                              rules={r'Dense_(\\d+)': r'layers/\\1'})
>>> bool((model(x) == LinenMLP().apply(variables, x)).all())
True
>>> to_linen_variables(model, rules={r'layers/(\\d+)': r'Dense_\\1'})['params'].keys()
dict_keys(['Dense_0', 'Dense_1'])
"""

from __future__ import annotations

import typing as tp

from bridge.interop.collections import linen_to_tree, tree_to_linen
from bridge.migrate.matching import (
  Match,
  linen_items,
  linen_leaves,
  model_leaves,
  pair_leaves,
  path_str,
  renamed_path,
)
from bridge.migrate.rename import Rules, compile_rules
from bridge.state import State
from bridge.variables import Variable, variable_name_from_type


class _Claims:
  """The renamed paths taken so far: two leaves at one path, or one leaf inside another,
  is an error naming both (nothing is overwritten)."""

  def __init__(self):
    self.leaves: dict[tuple, str] = {}
    self.nodes: dict[tuple, str] = {}  # proper prefixes of leaves -> one leaf under them

  def claim(self, new: tuple, name: str) -> None:
    clash = self.leaves.get(new) or self.nodes.get(new) or next(
      (self.leaves[new[:i]] for i in range(1, len(new)) if new[:i] in self.leaves), None)
    if clash:
      raise ValueError(f'Rename rules send {clash!r} and {name!r} to the same path, or one '
                       f'inside the other ({path_str(new)!r}); make the rules tell them apart.')
    self.leaves[new] = name
    for i in range(1, len(new)):
      self.nodes.setdefault(new[:i], name)


def _rename_linen(variables: tp.Mapping, rules: Rules | None) -> dict:
  """Linen variables with their paths renamed."""
  compiled, claims = compile_rules(rules), _Claims()
  out: dict = {}
  for collection, path, x in linen_items(variables):
    new = renamed_path(collection, path, compiled)
    claims.claim(new, path_str((collection, *path)))
    node = out.setdefault(collection, {})
    for key in new[:-1]:
      node = node.setdefault(key, {})
    node[new[-1]] = x
  return out


def linen_to_state(variables: tp.Mapping, *, rules: Rules | None = None) -> State:
  """A State of Variables (one type per collection, boxes as metadata) from Linen
  variables, paths renamed by ``rules``.

  >>> import jax.numpy as jnp
  >>> import flax.linen as nn
  >>> from bridge.migrate import linen_to_state, state_to_linen
  >>> variables = {'params': {'Dense_0': {'kernel': nn.Partitioned(jnp.ones((2, 3)),
  ...                                                              names=('in', 'out'))}},
  ...              'batch_stats': {'BatchNorm_0': {'mean': jnp.zeros(3)}}}
  >>> state = linen_to_state(variables, rules={r'Dense_(\\d+)': r'layers/\\1'})
  >>> type(state['layers'][0]['kernel']).__name__, state['layers'][0]['kernel'].out_sharding
  ('Param', ('in', 'out'))
  >>> back = state_to_linen(state, rules={r'layers/(\\d+)': r'Dense_\\1'})
  >>> back['params']['Dense_0']['kernel'].names
  ('in', 'out')
  """
  if rules:
    variables = _rename_linen(variables, rules)
  return State(_int_keys(linen_to_tree(variables)))


def _int_keys(tree: tp.Mapping) -> dict:
  """The tree with keys that spell an int exactly (``'0'``, ``'12'``; not ``'01'``) made
  ints: list indices in the State, strings again in ``state_to_linen``."""
  return {int(k) if isinstance(k, str) and k.isascii() and k.isdigit() and str(int(k)) == k
          else k: _int_keys(v) if isinstance(v, tp.Mapping) else v for k, v in tree.items()}


def state_to_linen(state: tp.Mapping, *, rules: Rules | None = None) -> dict:
  """Linen variables (``{collection: nested dict}``, boxes rebuilt from metadata) from a
  State of Variables, paths renamed by ``rules`` (written ``'collection/path'``); see
  ``linen_to_state``."""
  compiled, claims = compile_rules(rules), _Claims()
  items = []
  for path, var in (state if isinstance(state, State) else State(state)).flat_state():
    if not isinstance(var, Variable):
      raise ValueError(f'state_to_linen: {path_str(path)!r} is a {type(var).__name__}, not '
                       'a Variable; only Variables have a Linen collection.')
    collection = variable_name_from_type(type(var), allow_register=True)
    new = renamed_path(collection, tuple(map(str, path)), compiled)
    claims.claim(new, path_str(path))
    items.append((new, var))
  return tree_to_linen(State.from_flat_path(items))


def load_linen_variables(target, variables: tp.Mapping, *, rules: Rules | None = None,
                         match: Match = 'path'):
  """Writes Linen variables into the Variables of ``target`` (a Module, or a State) in
  place and returns ``target``.

  Every Linen leaf goes to exactly one Variable and every Variable of the target (RNG
  state aside) gets one: by path, after ``rules``; with ``match='structure'``, the leaves
  left over are paired by module shapes and order (see ``bridge.migrate.matching``).
  Collections, shapes and dtypes must agree; anything that does not pair up is a
  ``VariableMatchError`` listing it, and nothing is written. The Variables keep their own
  type and metadata and take the Linen value as it is (unboxed).
  """
  pairs = pair_leaves(linen_leaves(variables, rules), model_leaves(target), match)
  for linen, model, _ in pairs:
    model.item.raw_value = linen.item.raw_value
  return target


def to_linen_variables(model, *, rules: Rules | None = None) -> dict:
  """The Variables of ``model`` (a Module or State; RNG state left out) as Linen
  variables, paths renamed by ``rules``; see the module docstring."""
  return state_to_linen(State.from_flat_path((leaf.key, leaf.item)
                                             for leaf in model_leaves(model)), rules=rules)
