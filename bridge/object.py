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

import jax

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
  ``_object__`` are bookkeeping and are not part of the graph. Subclasses are JAX pytrees
  (see ``bridge.pytreelib``) unless declared with ``pytree=False``.
  """

  _object__pytree_key = jax.tree_util.GetAttrKey  # the key path entry of a child
  _object__fields: dict = {}  # {name: is_data} declared on the class (nnx.data/static)

  def __init_subclass__(cls, *, pytree: bool = True, **kwargs):
    super().__init_subclass__(**kwargs)
    cls._object__fields = pytreelib.class_statuses(cls)
    cls._object__pytree = pytree
    if pytree:
      pytreelib.register(cls)

  def __setattr__(self, name, value):
    value, declared = pytreelib.unwrap_marker(value)
    pytreelib.check_value(self, name, value, declared)
    if declared is not None:
      vars(self).setdefault('_object__explicit', {})[name] = declared
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


from bridge import pytreelib  # noqa: E402 (pytreelib needs Object defined)

pytreelib.register(Object)
