"""Structural matching: pair Linen modules with model modules by their shapes and order.

A module is the set of variables sharing a parent path; its *signature* is what it holds:
``(collection, name, shape)`` for each variable. Modules are paired within a signature:

- one Linen module and one model module with that signature: they pair;
- several on each side: they pair in order when the names on each side tell the order,
  i.e. they differ only by their numbers (``Dense_1``, ``Dense_2``; ``linear1``,
  ``linear2``; ``layers/0``, ``layers/1``), and are *ambiguous* otherwise
  (``encoder`` and ``decoder``: add a rename rule for them);
- different counts on the two sides: none of them pair.

Linen numbers modules of one type in creation order (``Dense_0``, ``Dense_1``, ...), so
numbers are the module order even after a checkpoint has sorted the keys.

>>> from bridge.migrate.matching import Leaf
>>> from bridge.migrate.structure import match_structure
>>> def leaves(*paths, shape=(8, 8)):
...   return [Leaf(tuple(p.split('/')), tuple(p.split('/')), 'params', shape, 'float32', None)
...           for p in paths]
>>> pairs, ambiguous, _, _ = match_structure(
...   leaves('Dense_2/kernel', 'Dense_10/kernel'), leaves('linear_b2/kernel', 'linear_b1/kernel'))
>>> [(a.name, b.name) for a, b in pairs]
[('Dense_2/kernel', 'linear_b1/kernel'), ('Dense_10/kernel', 'linear_b2/kernel')]
>>> _, ambiguous, _, _ = match_structure(leaves('enc/kernel', 'dec/kernel'),
...                                      leaves('a/kernel', 'b/kernel'))
>>> print(ambiguous[0])
Linen modules ['dec', 'enc'] and model modules ['a', 'b'] hold the same variables
(params/kernel (8, 8)) and their names do not tell their order
"""

from __future__ import annotations

import collections
import re
import typing as tp

if tp.TYPE_CHECKING:
  from bridge.migrate.matching import Leaf


def _number_split(key) -> tuple[str, int]:
  """``'Dense_10'`` -> ``('Dense', 10)``, ``'linear1'`` -> ``('linear', 1)``, ``'0'`` ->
  ``('', 0)``, ``'out'`` -> ``('out', -1)``."""
  m = re.fullmatch(r'(.*?)_?(\d+)', str(key))
  return (m[1], int(m[2])) if m else (str(key), -1)


def _template(path: tuple) -> tuple[str, ...]:
  return tuple(_number_split(k)[0] for k in path)


def _natural_key(path: tuple) -> tuple:
  return tuple(_number_split(k) for k in path)


def _orderable(paths: list[tuple]) -> bool:
  """Whether the paths differ only by their numbers (and so are in a known order)."""
  return len({_template(p) for p in paths}) == 1 and \
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


def match_structure(linen: list[Leaf], model: list[Leaf]):
  """Pairs the leaves of modules with equal signatures (see the module docstring).

  Returns ``(pairs, ambiguous, linen_left, model_left)``: the ``(linen, model)`` leaf
  pairs, one message per ambiguous group, and the leaves left unpaired on each side.
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
    if len(linen_paths) > 1 and not (_orderable(linen_paths) and _orderable(model_paths)):
      ambiguous.append(
        f'Linen modules {_fmt(linen_paths)} and model modules {_fmt(model_paths)} hold the '
        f'same variables ({_describe(signature)}) and their names do not tell their order')
      continue
    for a, b in zip(sorted(linen_paths, key=_natural_key),
                    sorted(model_paths, key=_natural_key), strict=True):
      pairs += [(leaf, model_modules[b][key]) for key, leaf in linen_modules[a].items()]
  return pairs, ambiguous, linen_left, model_left
