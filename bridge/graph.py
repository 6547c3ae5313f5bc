"""The graph API: any object graph <-> a static ``GraphDef`` plus ``State``.

``split`` walks a graph of Objects (Modules, Rngs), containers (lists, tuples, dicts and
other pytrees) and Variables, and returns the static structure (a hashable ``GraphDef``) and
the Variables in one or more ``State``\\ s. ``merge`` builds the graph back. Variables are
not copied: the State holds the very Variables the graph holds, and a Variable or node
reachable by two paths appears once, so sharing survives the round trip.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> class Tied(nnx.Module):
...   def __init__(self):
...     self.w = nnx.Param(jnp.ones(2))
...     self.x_alias = self.w
>>> graphdef, state = nnx.split(Tied())
>>> list(state.keys())
['w']
>>> model = nnx.merge(graphdef, state)
>>> model.x_alias is model.w
True
"""

from __future__ import annotations

import typing as tp
from collections.abc import MutableMapping, MutableSequence

import jax
import numpy as np

from bridge._static import hashable
from bridge.graph_mode import resolve_graph
from bridge.object import Object, bump_structure_epoch
from bridge.state import FlatState, State, _partition, merge_state
from bridge.variables import Variable, _unflatten

Key = tp.Hashable  # one step of a path: an attribute name, a dict key or a list index
PathParts = tuple[Key, ...]


# -- definitions: the static structure ----------------------------------------------------
class NodeDef(tp.NamedTuple):
  """An Object (``kind='object'``) or container (list, tuple, dict, other pytree)."""
  kind: str
  type: type
  index: int
  children: tuple  # ((key, Def), ...)
  aux: tp.Any = None  # PyTreeDef for other pytrees; an Object's nnx.data/static markers


class VariableDef(tp.NamedTuple):
  type: type
  index: int
  metadata: hashable


class ArrayDef(tp.NamedTuple):
  """A raw array leaf (an array attribute that is not in a Variable)."""


class StaticDef(tp.NamedTuple):
  value: hashable


class NodeRef(tp.NamedTuple):
  """A second path to a node or Variable already defined at ``index``."""
  index: int


_ARRAY_DEF = ArrayDef()


class GraphDef:
  """The static part of a graph: node types, static attributes, Variable types and metadata.

  Hashable and equal for equal structures, so it can key jit caches.

  >>> import bridge as nnx
  >>> a = nnx.graphdef(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  >>> b = nnx.graphdef(nnx.Linear(2, 3, rngs=nnx.Rngs(1)))
  >>> a == b, hash(a) == hash(b)
  (True, True)
  """

  __slots__ = ('root', '_hash')

  def __init__(self, root):
    self.root = root
    self._hash = None

  def __hash__(self):
    if self._hash is None:
      self._hash = hash(self.root)
    return self._hash

  def __eq__(self, other):
    return self is other or (isinstance(other, GraphDef) and hash(self) == hash(other)
                             and self.root == other.root)

  def merge(self, state, /, *states):
    """``merge(self, state, *states)``."""
    return merge(self, state, *states)

  def apply(self, state, *states, graph: bool | None = None):
    """A proxy calling a method of the merged graph: ``graphdef.apply(state)(x)`` returns
    ``(output, (graphdef, state))`` (see ``bridge.graph_call.apply``)."""
    from bridge.graph_call import apply  # graph_call imports this module
    return apply(self, state, *states, graph=graph)

  def __repr__(self):
    return f'GraphDef({_def_repr(self.root)})'


# A GraphDef is a pytree without leaves (itself the static data), as in flax.nnx, so
# ``jax.jit(f)(graphdef, state)`` works.
jax.tree_util.register_pytree_node(GraphDef, lambda g: ((), g), lambda g, _: g)


def _def_repr(d) -> str:
  if isinstance(d, NodeDef):
    inner = ', '.join(f'{k}={_def_repr(c)}' for k, c in d.children)
    return f'{d.type.__name__}({inner})'
  if isinstance(d, VariableDef):
    return d.type.__name__
  if isinstance(d, StaticDef):
    return repr(d.value.value)
  if isinstance(d, NodeRef):
    return f'<ref {d.index}>'
  return 'Array'


# -- flatten ------------------------------------------------------------------------------
_STATIC_TYPES = (int, float, complex, str, bytes, bool, type(None), type, np.dtype,
                 type(Ellipsis))
_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


def child_items(x: Object) -> list:
  """An Object's ``(name, child)`` pairs in walk order: by name, unless its class orders
  them (``_graph_child_order``, e.g. ``bridge.bridge.Module``'s ``AttrPriority``)."""
  order = getattr(type(x), '_graph_child_order', None)
  items = x._graph_children().items()
  return order(x, items) if order is not None else sorted(items)


class _Flattener:
  __slots__ = ('index', 'leaves', 'nodes')

  def __init__(self):
    self.index: dict[int, int] = {}
    self.leaves: list[tuple[PathParts, tp.Any]] = []
    self.nodes: list = []  # keeps walked objects alive while their ids are keys

  def _new_index(self, x) -> int:
    i = len(self.nodes)
    self.index[id(x)] = i
    self.nodes.append(x)
    return i

  def walk(self, x, path: PathParts):
    if isinstance(x, _STATIC_TYPES) or callable(x) and not isinstance(x, (Object, Variable)):
      return StaticDef(hashable(x))
    seen = self.index.get(id(x))
    if seen is not None:
      return NodeRef(seen)
    if isinstance(x, Variable):
      i = self._new_index(x)
      self.leaves.append((path, x))
      return VariableDef(type(x), i, hashable(x._metadata))
    if isinstance(x, Object):
      i = self._new_index(x)
      children = tuple((k, self.walk(v, (*path, k))) for k, v in child_items(x))
      explicit = vars(x).get('_object__explicit')  # nnx.data/nnx.static markers
      return NodeDef('object', type(x), i, children,
                     tuple(sorted(explicit.items())) if explicit else None)
    if isinstance(x, _ARRAY_TYPES):
      self.leaves.append((path, x))
      return _ARRAY_DEF
    return self._walk_container(x, path)

  def _walk_container(self, x, path):
    n_leaves = len(self.leaves)
    if type(x) in (list, tuple):
      items, aux = enumerate(x), None
    elif type(x) is dict:
      items, aux = x.items(), None
    else:
      entries, aux = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
      if aux.num_nodes == 1 and aux.num_leaves == 1:  # not a pytree container: static
        return StaticDef(hashable(x))
      items = ((_key_of(p[0]), v) for p, v in entries)
    children = tuple((k, self.walk(v, (*path, k))) for k, v in items)
    if len(self.leaves) == n_leaves and all(isinstance(c, StaticDef) for _, c in children):
      return StaticDef(hashable(x))
    i = self._new_index(x) if isinstance(x, (list, dict)) else -1
    return NodeDef(type(x).__name__ if aux is None else 'pytree', type(x), i, children, aux)


def _key_of(entry) -> tp.Hashable:
  for attr in ('key', 'idx', 'name'):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return str(entry)


def flatten(node, *, graph: bool | None = None
            ) -> tuple[GraphDef, list[tuple[PathParts, tp.Any]]]:
  """The GraphDef of ``node`` and its leaves (Variables and raw arrays) as
  ``(path, leaf)`` pairs in walk order; each Variable once, at its first path.

  In tree mode (``graph=False``, or ``set_graph_mode(False)``) shared references are a
  ValueError naming their paths.
  """
  check_tree(node, 'flatten', graph)
  return _flatten(node)


def _flatten(node) -> tuple[GraphDef, list[tuple[PathParts, tp.Any]]]:
  f = _Flattener()
  root = f.walk(node, ())
  return GraphDef(root), f.leaves


# -- unflatten ----------------------------------------------------------------------------
class _Unflattener:
  __slots__ = ('lookup', 'nodes')

  def __init__(self, lookup: tp.Callable[[PathParts, tp.Any], tp.Any]):
    self.lookup = lookup
    self.nodes: dict[int, tp.Any] = {}

  def build(self, d, path):
    if type(d) is StaticDef:
      return d.value.value
    if type(d) is NodeRef:
      return self.nodes[d.index]
    if type(d) is VariableDef:
      leaf = self.lookup(path, d)
      if isinstance(leaf, _Raw):
        var = leaf.value
      elif isinstance(leaf, Variable):
        if type(leaf) is not d.type:
          raise ValueError(f'State does not fit the GraphDef at {_fmt(path)}: expected a '
                           f'{d.type.__name__}, got a {type(leaf).__name__}.')
        var = leaf
      else:
        var = _unflatten(d.type, d.metadata, (leaf,))
      self.nodes[d.index] = var
      return var
    if type(d) is ArrayDef:
      leaf = self.lookup(path, d)
      return leaf.get_value() if isinstance(leaf, Variable) else leaf
    if d.kind == 'object':
      obj = object.__new__(d.type)
      self.nodes[d.index] = obj
      if d.aux:
        vars(obj)['_object__explicit'] = dict(d.aux)
      obj._graph_set_children({k: self.build(c, (*path, k)) for k, c in d.children})
      return obj
    values = [self.build(c, (*path, k)) for k, c in d.children]
    if d.aux is not None:
      out = d.aux.unflatten(values)
    elif d.type is dict:
      out = {k: v for (k, _), v in zip(d.children, values, strict=True)}
    elif d.type is list:
      out = values
    else:
      out = tuple(values)
    if d.index >= 0:
      self.nodes[d.index] = out
    return out


def unflatten(graphdef: GraphDef, leaves: tp.Iterable) -> tp.Any:
  """Builds the graph from its GraphDef and its leaves in ``flatten``'s order (Variables
  or raw values, which are wrapped in Variables of the recorded type and metadata)."""
  it = iter(leaves)
  node = _Unflattener(lambda path, d: next(it)).build(graphdef.root, ())
  bump_structure_epoch()
  return node


def _fmt(path: PathParts) -> str:
  return repr('/'.join(map(str, path))) if path else 'the root'


# -- the public API -----------------------------------------------------------------------
def split(node, *filters, graph: bool | None = None):
  """Splits ``node`` into its GraphDef and one State per filter.

  Each Variable goes to the first filter it matches; with filters given, every Variable must
  match one (end with ``...`` to catch the rest).

  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  >>> sorted(params.keys()), len(rest)
  (['bias', 'kernel'], 0)
  """
  check_tree(node, 'split', graph)
  graphdef, leaves = _flatten(node)
  if not filters:
    return graphdef, State.from_flat_path(leaves)
  return (graphdef, *_partition(leaves, filters, strict=True))


def state(node, *filters, graph: bool | None = None):
  """The State of ``node`` (only the Variables matching a filter; a tuple for several).

  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> sorted(nnx.state(model, nnx.Param).keys())
  ['bias', 'kernel']
  """
  check_tree(node, 'state', graph)
  _, leaves = _flatten(node)
  if not filters:
    return State.from_flat_path(leaves)
  states = _partition(leaves, filters, strict=False)
  return states[0] if len(states) == 1 else tuple(states)


def graphdef(node, /, *, graph: bool | None = None) -> GraphDef:
  """The GraphDef of ``node``.

  >>> import bridge as nnx
  >>> nnx.graphdef(nnx.Rngs(0)) == nnx.graphdef(nnx.Rngs(1))
  True
  """
  check_tree(node, 'graphdef', graph)
  return _flatten(node)[0]


def merge(graphdef_or_graphstate, /, *states, copy: bool = False,
          recreate_variables: bool = True):
  """Builds the graph back from a GraphDef and the State(s) ``split`` gave, or from the
  GraphStates ``unpack`` gave (``merge(params, rest)``).

  The Variables in the States are used as they are, unless ``copy=True`` (new Variables
  holding the same values). A plain value where the GraphDef has a Variable is wrapped in a
  Variable of that type and metadata, unless ``recreate_variables=False`` (then it is put
  in the graph as it is). A State that does not fit the GraphDef is an error naming the
  first path that does not fit.

  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> graphdef, state = nnx.split(model)
  >>> nnx.merge(graphdef, state).kernel is state['kernel']
  True
  >>> nnx.merge(graphdef, state, copy=True).kernel is state['kernel']
  False
  >>> pure = nnx.State(state.to_pure_dict())
  >>> type(nnx.merge(graphdef, pure, recreate_variables=False).kernel).__name__
  'ArrayImpl'
  """
  graphdef = graphdef_or_graphstate
  if not isinstance(graphdef, GraphDef) and hasattr(graphdef, '_graphdef'):  # GraphState
    graphdef, states = graphdef._graphdef, (graphdef._state, *states)
  if not isinstance(graphdef, GraphDef):
    raise TypeError(f'merge expects a GraphDef or a GraphState (from nnx.unpack) first, got '
                    f'{type(graphdef).__name__}.')
  if not states:
    raise TypeError("merge() missing 1 required positional argument: 'state' (merge takes a "
                    'GraphDef and the State(s) split gave, or GraphStates from nnx.unpack).')
  by_path = dict(merge_state(*states).flat_state())
  used: set = set()

  def lookup(path, d):
    if path not in by_path:
      kind = d.type.__name__ if isinstance(d, VariableDef) else 'array'
      raise ValueError(f'State does not fit the GraphDef: it has no {kind} at {_fmt(path)}.')
    used.add(path)
    leaf = by_path[path]
    if isinstance(leaf, Variable):
      return leaf.replace() if copy else leaf
    return leaf if recreate_variables or not isinstance(d, VariableDef) else _Raw(leaf)

  node = _Unflattener(lookup).build(graphdef.root, ())
  if len(used) != len(by_path):
    extra = sorted((p for p in by_path if p not in used), key=str)
    raise ValueError(f'State does not fit the GraphDef: the GraphDef has nothing at '
                     f'{_fmt(extra[0])} ({len(extra)} unexpected path(s)).')
  bump_structure_epoch()
  return node


class _Raw(tp.NamedTuple):
  """A plain value that ``merge(..., recreate_variables=False)`` puts where the GraphDef
  has a Variable, as it is."""
  value: tp.Any


def update(node, state, /, *states) -> None:
  """Writes the values (and metadata) of the State(s) into ``node``'s Variables in place;
  a path the node does not have yet gets a new Variable attribute, inside new dicts where
  the path goes through entries that do not exist. As in flax.nnx, a pytree Object (a
  Module, ``nnx.Dict``...) refuses a new entry holding a dict of Variables (ValueError); a
  ``bridge.bridge.Module`` (not a pytree), a dict or a list takes it.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> nnx.update(model, {'kernel': nnx.Param(jnp.zeros((2, 3))), 'extra': nnx.Param(1)})
  >>> float(model.kernel[...].sum()), model.extra[...]
  (0.0, 1)
  """
  for path, leaf in merge_state(state, *states).flat_state():
    parent = node
    for i, key in enumerate(path[:-1]):
      child = _child(parent, key, path, default=_MISSING)
      if child is _MISSING:
        _add_nested(parent, key, path[i + 1:], leaf, path)
        break
      parent = child
    else:
      key = path[-1]
      current = _child(parent, key, path, default=None)
      if isinstance(current, Variable):
        if isinstance(leaf, Variable):
          current.update_from_state(leaf)
        else:
          current.raw_value = leaf
      else:
        _set_child(parent, key, leaf)


_MISSING = object()


def _add_nested(parent, key, rest: PathParts, leaf, path: PathParts) -> None:
  """``update`` of a path whose ``key`` is missing in ``parent``: a new dict holding
  ``leaf`` at ``rest``."""
  if isinstance(parent, Object) and type(parent)._object__pytree:
    raise ValueError(
      f'update: the node has nothing at {key!r} on the way to {_fmt(path)}, and a new entry '
      f'holding a dict of Variables is not allowed in the {type(parent).__name__} (a pytree '
      f'Module, nnx.Dict or nnx.List). Create it first (e.g. `self.{key} = nnx.Dict()`).')
  value = leaf
  for k in reversed(rest):
    value = {k: value}
  _set_child(parent, key, value)


def _child(parent, key, path, default=...):
  try:
    if isinstance(parent, Object):
      return parent._graph_children()[key]
    if isinstance(parent, (list, dict)) or type(parent) is tuple:
      return parent[key]
    return getattr(parent, key)  # other pytrees (NamedTuples, dataclasses): by field name
  except (KeyError, IndexError, TypeError, AttributeError):
    if default is not ...:
      return default
    raise ValueError(f'update: the node has nothing at {key!r} on the way to {_fmt(path)}.') \
      from None


def _is_attribute_node(parent) -> bool:
  """Whether ``parent``'s children are attributes (a Module) rather than items (a List,
  Dict, list or dict)."""
  return isinstance(parent, Object) and not isinstance(parent, (MutableMapping,
                                                                MutableSequence))


def _set_child(parent, key, value):
  if _is_attribute_node(parent):
    setattr(parent, key, value)
  else:
    parent[key] = value
    bump_structure_epoch()


def _del_child(parent, key):
  if _is_attribute_node(parent):
    delattr(parent, key)
  else:
    del parent[key]
    bump_structure_epoch()


def clone(node, variables: bool = True, *, arrays: bool = False,
          graph: bool | None = None):
  """A copy of the graph: new nodes with the same structure and sharing. With
  ``variables=True`` the Variables are new ones too (holding the same arrays, or copies of
  them with ``arrays=True``); with ``variables=False`` the copy holds ``node``'s Variables.

  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> copy = nnx.clone(model)
  >>> copy.kernel is model.kernel, bool((copy.kernel == model.kernel).all())
  (False, True)
  >>> nnx.clone(model, variables=False).kernel is model.kernel
  True
  >>> nnx.clone(model, arrays=True).kernel[...] is model.kernel[...]
  False
  """
  if arrays and not variables:
    raise ValueError('clone: If arrays is True, variables should be also True (got '
                     'variables=False, arrays=True).')
  check_tree(node, 'clone', graph)
  graphdef, leaves = _flatten(node)

  def copy_leaf(leaf):
    if arrays:
      leaf = jax.tree.map(lambda x: x.copy() if isinstance(x, (jax.Array, np.ndarray)) else x,
                          leaf)
    return leaf.replace() if variables and isinstance(leaf, Variable) else leaf

  return unflatten(graphdef, [copy_leaf(leaf) for _, leaf in leaves])


def pop(node, *filters):
  """Removes the Variables matching the filters from ``node`` and returns them as State(s).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> class M(nnx.Module):
  ...   def __call__(self):
  ...     self.sow(nnx.Intermediate, 'y', jnp.ones(1))
  >>> m = M(); m()
  >>> sorted(nnx.pop(m, nnx.Intermediate).keys()), hasattr(m, 'y')
  (['y'], False)
  """
  if not filters:
    raise TypeError('pop needs at least one filter (e.g. nnx.pop(model, nnx.Intermediate)).')
  _, leaves = _flatten(node)
  states = _partition(leaves, filters, strict=False)
  # Last path first, so that deleting list item ``i`` does not shift the ones still to pop.
  popped = FlatState(p for s in states for p in s.flat_state())
  for path, _ in reversed(popped):
    parent = node
    for key in path[:-1]:
      parent = _child(parent, key, path)
    _del_child(parent, path[-1])
  return states[0] if len(states) == 1 else tuple(states)


def iter_graph(node, /, *, graph: bool | None = None
               ) -> tp.Iterator[tuple[PathParts, tp.Any]]:
  """Every node and leaf of the graph once, as ``(path, value)``, children before parents.

  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> [p for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)]
  [('bias',), ('kernel',)]
  """
  check_tree(node, 'iter_graph', graph)
  seen: set[int] = set()

  def walk(x, path):
    if id(x) in seen:
      return
    if isinstance(x, (Object, list, dict, Variable)):
      seen.add(id(x))
    if isinstance(x, Object):
      for k, v in child_items(x):
        yield from walk(v, (*path, k))
    elif isinstance(x, (list, tuple)):
      for k, v in enumerate(x):
        yield from walk(v, (*path, k))
    elif isinstance(x, dict):
      for k, v in x.items():
        yield from walk(v, (*path, k))
    yield path, x

  yield from walk(node, ())


def walk_paths(node, path: PathParts = ()) -> tp.Iterator[tuple[PathParts, tp.Any]]:
  """Every path to an Object or Variable in the graph, as ``(path, object)``: an object
  reachable by several paths comes once per path (its children only under the first)."""
  seen: set[int] = set()

  def walk(x, path):
    if isinstance(x, (Object, Variable)):
      yield path, x
      if id(x) in seen:
        return
      seen.add(id(x))
      if isinstance(x, Object):
        for k, v in child_items(x):
          yield from walk(v, (*path, k))
    elif isinstance(x, (list, tuple)):
      for k, v in enumerate(x):
        yield from walk(v, (*path, k))
    elif isinstance(x, dict):
      for k, v in x.items():
        yield from walk(v, (*path, k))

  yield from walk(node, path)


def check_tree(node, fn_name: str, graph: bool | None = None) -> None:
  """In tree mode, a ValueError naming the paths of the first shared Object or Variable
  (tree mode holds each reference once); nothing in graph mode."""
  if resolve_graph(graph):
    return
  from bridge.pytreelib import find_duplicates
  duplicates = find_duplicates(node)
  if duplicates:
    paths = '\n'.join(f'  - {_fmt(p)}' for p in duplicates[0])
    raise ValueError(
      f'{fn_name}: found a shared reference at paths:\n{paths}\nTree mode (graph=False) '
      f'does not support shared references. Remove the duplicates, pass graph=True to '
      f'{fn_name}, or use nnx.compat.{fn_name}.')


__all__ = ['GraphDef', 'split', 'merge', 'state', 'graphdef', 'update', 'clone', 'pop',
           'iter_graph', 'flatten', 'unflatten', 'FlatState']
