"""Structural matching: pair Linen modules with model modules by their shapes and order.

A module is the set of variables sharing a parent path; its *signature* is what it holds:
``(collection, name, shape)`` for each variable. Modules are paired within a signature:

- one Linen module and one model module with that signature: they pair
  (rule ``'structure (the only modules holding these variables)'``);
- several on each side: they pair in creation order. On the Linen side that is the order
  of Linen's automatic names when the modules differ only by them (``Dense_1``,
  ``Dense_2``, ``layers_10``: Linen numbers modules of one type as it creates them, so this
  holds even after a checkpoint has sorted the keys), else the order of the variables (the
  order Linen created them in; a checkpoint's order is not, so there such groups are
  *ambiguous*: add a rename rule). Digits inside an explicit name (``b1``, ``b2``) say
  nothing about order. On the model side it is the order its attributes were assigned
  (``layers/0``, ``layers/1`` for a List); a State has no such order, so its modules are
  taken in its (sorted) order;
- different counts on the two sides: none of them pair.

Each pair records the rule that made it (``Pair.rule``).

>>> from bridge.migrate.matching import Leaf
>>> from bridge.migrate.structure import match_structure
>>> def leaves(*paths, shape=(8, 8)):
...   return [Leaf(tuple(p.split('/')), tuple(p.split('/')), 'params', shape, 'float32', None,
...                order) for order, p in enumerate(paths)]
>>> pairs, ambiguous, _, _ = match_structure(
...   leaves('Dense_10/kernel', 'Dense_2/kernel'), leaves('b2/kernel', 'b1/kernel'))
>>> [(a.name, b.name) for a, b, _ in pairs]
[('Dense_2/kernel', 'b2/kernel'), ('Dense_10/kernel', 'b1/kernel')]
>>> pairs[0].rule
'structure (Linen name numbers, model attribute order)'
>>> _, ambiguous, _, _ = match_structure(leaves('enc/kernel', 'dec/kernel'),
...                                      leaves('a/kernel', 'b/kernel'), linen_ordered=False)
>>> ambiguous[0].split('; ')[1]
'their Linen order is unknown (no automatic names, sorted keys)'
"""

from __future__ import annotations

import collections
import re
import typing as tp

if tp.TYPE_CHECKING:
  from bridge.migrate.matching import Leaf


class Pair(tp.NamedTuple):
  """A Linen leaf, the model leaf it goes to, and the rule that paired them."""
  linen: Leaf
  model: Leaf
  rule: str


def _auto_number(key) -> tuple[str, int] | None:
  """``'Dense_10'`` -> ``('Dense', 10)`` (a Linen automatic name, or a list index
  ``'layers_2'``), ``'0'`` -> ``('', 0)``; ``None`` for other keys (``'b2'``, ``'out'``)."""
  m = re.fullmatch(r'(?:(.*)_)?(\d+)', str(key))
  return (m[1] or '', int(m[2])) if m else None


def _natural_key(path: tuple) -> tuple:
  return tuple(_auto_number(k) or (str(k), -1) for k in path)


def _auto_named(paths: list[tuple]) -> bool:
  """Whether the paths differ only by automatic numbers (and so are in creation order)."""
  differing = {i for p in paths for i, k in enumerate(p) if k != paths[0][i]}
  return len({len(p) for p in paths}) == 1 and all(
    len({_auto_number(p[i]) and _auto_number(p[i])[0] for p in paths}) == 1
    and all(_auto_number(p[i]) for p in paths) for i in differing) and \
    len({_natural_key(p) for p in paths}) == len(paths)


def _modules(leaves: tp.Iterable[Leaf]) -> dict[tuple, dict[tuple, Leaf]]:
  modules: dict[tuple, dict[tuple, Leaf]] = collections.defaultdict(dict)
  for leaf in leaves:
    modules[leaf.path[:-1]][(leaf.collection, leaf.path[-1])] = leaf
  return modules


def _signature(module: dict[tuple, Leaf]) -> tuple:
  return tuple(sorted((c, str(n), tuple(leaf.shape)) for (c, n), leaf in module.items()))


def _describe(signature: tuple) -> str:
  return ', '.join(f'{c}/{n} {shape}' for c, n, shape in signature)


def _fmt(paths: tp.Iterable[tuple]) -> list[str]:
  return sorted('/'.join(map(str, p)) or '<root>' for p in paths)


def _first(module: dict[tuple, Leaf]) -> int:
  return min(leaf.order for leaf in module.values())


def match_structure(linen: list[Leaf], model: list[Leaf], *, linen_ordered: bool = True):
  """Pairs the leaves of modules with equal signatures (see the module docstring);
  ``linen_ordered`` says whether the order of the Linen leaves is Linen's creation order
  (true for variables from ``init``, not for a checkpoint's sorted keys).

  Returns ``(pairs, ambiguous, linen_left, model_left)``: the ``Pair``s, one message per
  ambiguous group, and the leaves left unpaired on each side.
  """
  linen_modules, model_modules = _modules(linen), _modules(model)
  groups: dict[tuple, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
  for path, module in linen_modules.items():
    groups[_signature(module)][0].append(path)
  for path, module in model_modules.items():
    groups[_signature(module)][1].append(path)

  pairs, ambiguous, linen_left, model_left = [], [], [], []
  for signature, (linen_paths, model_paths) in groups.items():
    if len(linen_paths) != len(model_paths):
      linen_left += [leaf for p in linen_paths for leaf in linen_modules[p].values()]
      model_left += [leaf for p in model_paths for leaf in model_modules[p].values()]
      continue
    if len(linen_paths) == 1:
      rule = 'structure (the only modules holding these variables)'
    elif _auto_named(linen_paths):
      linen_paths = sorted(linen_paths, key=_natural_key)
      rule = 'structure (Linen name numbers, model attribute order)'
    elif linen_ordered:
      linen_paths = sorted(linen_paths, key=lambda p: _first(linen_modules[p]))
      rule = 'structure (Linen creation order, model attribute order)'
    else:
      ambiguous.append(
        f'Linen modules {_fmt(linen_paths)} and model modules {_fmt(model_paths)} hold the '
        f'same variables ({_describe(signature)}); their Linen order is unknown (no '
        'automatic names, sorted keys)')
      continue
    model_paths = sorted(model_paths, key=lambda p: _first(model_modules[p]))
    for a, b in zip(linen_paths, model_paths, strict=True):
      pairs += [Pair(leaf, model_modules[b][key], rule)
                for key, leaf in linen_modules[a].items()]
  return pairs, ambiguous, linen_left, model_left
