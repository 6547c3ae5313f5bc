"""``Object``: the base of graph nodes whose state is their attributes.

``Module``, ``Rngs`` and ``RngStream`` are Objects. Setting or deleting an attribute of any
Object bumps a global *structure epoch*; transforms cache a graph's flattened form and walk
the Python objects again only when the epoch has moved, so a steady-state call does not pay
for the walk. Writing a Variable's value does not change the structure and does not bump it.

>>> import bridge as nnx
>>> class Box(nnx.Object):
...   def __init__(self):
...     self.n = 1
>>> before = nnx.object.structure_epoch()
>>> Box().n
1
>>> nnx.object.structure_epoch() > before
True
"""

from __future__ import annotations

import itertools

_epoch = itertools.count(1)
_current = [0]


def structure_epoch() -> int:
  """A number that changes whenever any Object's attributes are set or deleted."""
  return _current[0]


def bump_structure_epoch() -> None:
  """Records that some graph's structure may have changed."""
  _current[0] = next(_epoch)


class Object:
  """A graph node: its attributes are its children (Variables, other nodes, static data).

  Attributes are walked in sorted order by ``split``/``state``; names starting with
  ``_object__`` are bookkeeping and are not part of the graph.
  """

  def __setattr__(self, name, value):
    object.__setattr__(self, name, value)
    _current[0] = next(_epoch)

  def __delattr__(self, name):
    object.__delattr__(self, name)
    _current[0] = next(_epoch)

  def __repr__(self):
    from bridge._repr import object_repr
    return object_repr(self)

  def _graph_children(self) -> dict:
    """The attributes that make up this node in the graph, by name."""
    return {k: v for k, v in vars(self).items() if not k.startswith('_object__')}

  def _graph_set_children(self, children: dict) -> None:
    """Fills a node made by ``object.__new__`` (``merge``) with its attributes."""
    vars(self).update(children)

  def __deepcopy__(self, memo):
    from bridge.graph import clone
    return clone(self)
