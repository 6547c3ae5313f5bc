"""``iter_module_children``: the Modules that are direct children of a node, and the
``A``/``M`` type variables flax.nnx exports.

>>> import bridge as nnx
>>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
>>> [(k, type(m).__name__) for k, m in nnx.iter_module_children(model.layers)]
[(0, 'Linear')]
>>> list(nnx.iter_module_children(model.layers[0]))  # a Linear's children are Variables
[]
"""

from __future__ import annotations

import typing as tp

from bridge.graph import child_items
from bridge.module import Module
from bridge.object import Object

A = tp.TypeVar('A')
M = tp.TypeVar('M', bound=Module)


def iter_module_children(node: tp.Any, /, *, graph: bool | None = None
                         ) -> tp.Iterator[tuple[tp.Hashable, Module]]:
  """``(key, module)`` for each direct child of ``node`` that is a Module, in walk order.
  See the module docstring for an example."""
  if not isinstance(node, Object):
    raise ValueError(f'iter_module_children: expected a graph node (Module, List, Dict, ...),'
                     f' got {type(node).__name__}.')
  for key, value in child_items(node):
    if isinstance(value, Module):
      yield key, value
