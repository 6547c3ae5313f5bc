"""The transform boundary: graph arguments in, pure arrays across, mutations back out.

A transform's arguments may hold graph nodes (Modules, Rngs, Variables). At the boundary the
nodes of all arguments are flattened together (so references shared between arguments stay
shared) into a static ``GraphDef`` and a list of leaves. Inside, ``unflatten`` builds fresh
nodes over traced leaves; after the function runs they are flattened again and each node
remembers which input node it came from (its *origin*), so the caller's own objects are
updated in place, new Variables and attributes included.

The walk is cached per argument set and redone only when ``structure_epoch()`` moved, a
plain list/dict inside the graph changed, or a static attribute that can change in place
(a list, a dataclass config, a NumPy array: see ``bridge._static``) no longer equals its
value at the walk, so a steady-state call costs a list comprehension over the Variables, not
a walk over Python objects. The cache holds the argument objects weakly: a walk is dropped
when one of its Modules or Variables is freed, so a dropped model's arrays go with it.
"""

from __future__ import annotations

import typing as tp
import weakref

import jax
import numpy as np

from bridge._static import freeze, is_mutable
from bridge.graph import (
  ArrayDef,
  GraphDef,
  NodeDef,
  StaticDef,
  VariableDef,
  _Flattener,
  _key_of,
  _Unflattener,
)
from bridge.object import Object, bump_structure_epoch, structure_epoch
from bridge.variables import Variable

GRAPH_TYPES = (Object, Variable)


def is_graph(x) -> bool:
  return isinstance(x, GRAPH_TYPES)


class NodeSlot:
  """Stands for graph argument ``index`` inside a pytree of ordinary arguments; static."""

  __slots__ = ('index',)

  def __init__(self, index: int):
    self.index = index

  def __eq__(self, other):
    return isinstance(other, NodeSlot) and other.index == self.index

  def __hash__(self):
    return hash((NodeSlot, self.index))

  def __repr__(self):
    return f'NodeSlot({self.index})'


jax.tree_util.register_pytree_node(NodeSlot, lambda s: ((), s.index), lambda i, _: NodeSlot(i))

_PLAIN = (jax.Array, np.ndarray, np.generic, int, float, complex, bool, str, type(None))


def extract(values: tp.Sequence, nodes: list) -> list:
  """``values`` with every graph node replaced by a ``NodeSlot`` (nodes appended to
  ``nodes``, each object once)."""
  out = []
  for v in values:
    if isinstance(v, GRAPH_TYPES):
      out.append(_slot(v, nodes))
    elif isinstance(v, _PLAIN):
      out.append(v)
    else:
      out.append(jax.tree.map(lambda x: _slot(x, nodes) if is_graph(x) else x, v,
                              is_leaf=is_graph))
  return out


def split_args(args: tp.Sequence) -> tuple[list, Flat, list]:
  """``args`` with graph nodes replaced by slots, the walk of those nodes, and their current
  leaf values in walk order."""
  nodes: list = []
  dyn_args = extract(list(args), nodes)
  flat = Flat(tuple(nodes))
  return dyn_args, flat, [h._raw_value for h in flat.handles]


def _slot(node, nodes: list) -> NodeSlot:
  for i, n in enumerate(nodes):
    if n is node:
      return NodeSlot(i)
  nodes.append(node)
  return NodeSlot(len(nodes) - 1)


def insert(values, nodes: tp.Sequence):
  """Undoes ``extract``: every ``NodeSlot`` replaced by its node."""
  return jax.tree.map(lambda x: nodes[x.index] if isinstance(x, NodeSlot) else x, values,
                      is_leaf=lambda x: isinstance(x, NodeSlot))


# -- leaves that are not Variables: raw array attributes ----------------------------------
class _AttrSlot:
  """Write-back handle for a raw array attribute, shaped like a Variable (``_raw_value``)."""

  __slots__ = ('parent', 'key')

  def __init__(self, parent_ref, key):
    self.parent, self.key = parent_ref, key

  @property
  def _raw_value(self):
    parent = _strong(self.parent)
    if isinstance(parent, Object):
      return parent._graph_children()[self.key]
    return parent[self.key]

  @_raw_value.setter
  def _raw_value(self, value):
    parent = _strong(self.parent)
    if isinstance(parent, Object):
      object.__setattr__(parent, self.key, value)
    else:
      parent[self.key] = value


def _weak(node, callback=None):
  """A weak reference to an Object or Variable (what may hold a model or its arrays);
  other nodes (lists, dicts) as they are."""
  return weakref.ref(node, callback) if isinstance(node, GRAPH_TYPES) else node


class _PathRef:
  """A plain list or dict of the graph, found again from its (weakly held) root on each
  use: the walk holds no strong reference to it, since a list holding the model (or any
  Object leading back to it) would keep the model alive."""

  __slots__ = ('root', 'keys')

  def __init__(self, root: weakref.ref, keys: tuple):
    self.root, self.keys = root, keys

  def __call__(self):
    node = self.root()
    for key in self.keys:
      node = _child(node, key)
    return node


def _child(node, key):
  if isinstance(node, Object):
    if type(node)._graph_children is Object._graph_children:
      return vars(node)[key]
    return node._graph_children()[key]
  if type(node) in (list, tuple, dict):
    return node[key]
  entries, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda y: y is not node)
  return next(v for p, v in entries if _key_of(p[0]) == key)


_REFS = (weakref.ref, _PathRef)


def _strong(ref):
  return ref() if type(ref) in _REFS else ref


class _Walker(_Flattener):
  """A walk that snapshots every plain list and dict when it reaches it, leafless ones
  included (they become static, yet a Variable added to one later must be seen), and
  records the frozen form of each outermost static value that can change in place."""

  __slots__ = ('containers', 'statics')

  def __init__(self):
    super().__init__()
    self.containers: dict[int, tuple] = {}
    self.statics: list[tuple] = []

  def walk(self, x, path):
    n = len(self.statics)
    d = super().walk(x, path)
    if type(d) is StaticDef and is_mutable(x):
      del self.statics[n:]  # covered by x's own frozen form
      self.statics.append((x, d.value.frozen()))
    return d

  def _walk_container(self, x, path):
    if type(x) in (list, dict):
      self.containers[id(x)] = (x, _snapshot(x), path)
    return super()._walk_container(x, path)


class Flat:
  """One walk of a set of graph arguments: GraphDef, leaf handles, nodes by index.

  Objects and Variables (the roots among them) are held weakly; ``on_free(ref)`` is
  called when a root is freed.
  """

  __slots__ = ('graphdef', 'paths', '_handles', '_groups', '_nodes', 'containers',
               'statics', 'epoch', '_roots', 'calls', '_weak_handles')

  def __init__(self, roots: tuple, on_free: tp.Callable | None = None):
    self.epoch = structure_epoch()  # before the walk: a change made during it is not missed
    f = _Walker()
    self.graphdef = GraphDef(f.walk(roots, ()))
    self._roots = tuple(_weak(r, on_free) for r in roots)
    self._nodes = [_weak(n) if isinstance(n, GRAPH_TYPES) else
                   self._path_ref(f.containers[id(n)][2]) for n in f.nodes]
    self.paths = [path for path, _ in f.leaves]
    # A Variable passed as an argument itself is its own handle: held weakly, as a root.
    root_vars = {id(r) for r in roots if isinstance(r, Variable)}
    self._weak_handles = bool(root_vars)
    self._handles = [(_weak(leaf) if id(leaf) in root_vars else leaf)
                     if isinstance(leaf, Variable) else self._attr_slot(roots, path)
                     for path, leaf in f.leaves]
    bounds = [0] * (len(roots) + 1)  # leaves are in root order: root r's are a slice
    for path, _ in f.leaves:
      bounds[path[0] + 1] += 1
    for r in range(len(roots)):
      bounds[r + 1] += bounds[r]
    self._groups = [self._handles[bounds[r]:bounds[r + 1]] for r in range(len(roots))]
    self.containers = [(self._path_ref(path), snap) for _, snap, path in f.containers.values()]
    self.statics = f.statics
    self.calls: dict = {}  # the transform's compiled callables for this walk

  def _path_ref(self, path) -> _PathRef:
    return _PathRef(self._roots[path[0]], path[1:])

  def _attr_slot(self, roots, path) -> _AttrSlot:
    parent = roots[path[0]]
    for key in path[1:-1]:
      parent = _child(parent, key)
    ref = weakref.ref(parent) if isinstance(parent, Object) else self._path_ref(path[:-1])
    return _AttrSlot(ref, path[-1])

  @property
  def roots(self) -> tuple:
    return tuple(map(_strong, self._roots))

  @property
  def handles(self) -> list:
    """The leaves' handles in walk order: Variables, or slots of raw array attributes."""
    if self._weak_handles:
      return list(map(_strong, self._handles))
    return self._handles

  @property
  def groups(self) -> list[list]:
    """``handles`` split by root."""
    if self._weak_handles:
      return [list(map(_strong, group)) for group in self._groups]
    return self._groups

  @property
  def nodes(self) -> list:
    """The walked nodes (Objects, Variables, lists, dicts) by index."""
    return list(map(_strong, self._nodes))

  def root(self, index: int):
    """Graph argument ``index`` (what ``NodeSlot(index)`` stands for)."""
    return _strong(self._roots[index])

  def node(self, index: int):
    return _strong(self._nodes[index])

  def still_valid(self) -> bool:
    """Whether nothing in the walked graph changed its structure since the walk."""
    if self.epoch != structure_epoch():
      return False
    if self.statics and any(freeze(v) != frozen for v, frozen in self.statics):
      return False
    try:  # (containers are in walk order: a replaced parent fails before its children)
      return all(_snapshot(c()) == snap for c, snap in self.containers)
    except (LookupError, TypeError, StopIteration):  # a container's path is gone
      return False

  def leaf_groups(self) -> list[list]:
    """The current leaf values, one list per root."""
    return [[h._raw_value for h in group] for group in self.groups]


def _snapshot(container) -> tuple:
  values = container.values() if isinstance(container, dict) else container
  return (tuple(container) if isinstance(container, dict) else len(container),
          tuple(map(id, values)))


class FlatCache:
  """The walks of the last ``size`` argument sets, reused while their structure is
  unchanged. Keyed by the arguments' ids; a walk is dropped as soon as one of its Modules
  or Variables is freed, so the cache never keeps a model (or its arrays) alive."""

  __slots__ = ('entries', 'size', '__weakref__')

  def __init__(self, size: int = 4):
    self.entries: dict[tuple, Flat] = {}
    self.size = size

  def get(self, roots: tuple) -> Flat:
    key = tuple(map(id, roots))
    flat = self.entries.get(key)
    if flat is not None and flat.still_valid():
      return flat
    flat = Flat(roots, _evicter(weakref.ref(self), key))
    self.entries.pop(key, None)  # replaces an outdated walk of the same objects, if any
    self.entries[key] = flat
    if len(self.entries) > self.size:  # (pop: a freed root may have evicted it meanwhile)
      self.entries.pop(next(iter(self.entries)), None)
    return flat


def _evicter(cache_ref, key):
  """The weakref callback dropping the walk ``key`` of a cache (which may be gone too)."""
  def evict(_):
    cache = cache_ref()
    if cache is not None:
      cache.entries.pop(key, None)
  return evict


# -- inside the trace ---------------------------------------------------------------------
def build_inside(graphdef: GraphDef, leaves: tp.Sequence):
  """Fresh nodes over (traced) leaves; returns ``(roots, origin)`` where ``origin`` maps
  ``id(node)`` to the node's index in ``graphdef``."""
  it = iter(leaves)
  u = _Unflattener(lambda path, d: next(it))
  roots = u.build(graphdef.root, ())
  return roots, {id(node): i for i, node in u.nodes.items()}


def flatten_outside(roots: tuple, out, origin: dict, inputs: list | None = None,
                    graphdef: GraphDef | None = None):
  """Flattens the nodes after the call together with the output; returns ``(static,
  leaves)`` where ``static`` holds the GraphDef and each new node's origin.

  With ``inputs`` (the leaves the nodes were built from, by ``graphdef``) and an unchanged
  structure, leaves that are still the very input values are left out and ``static.changed`` lists
  the ones returned: what the function did not write costs no output.
  """
  f = _Flattener()
  root = f.walk((roots, out), ())
  origins = tuple(origin.get(id(n), -1) for n in f.nodes)
  static = OutStatic(GraphDef(root), origins)
  leaves = [leaf.raw_value if isinstance(leaf, Variable) else leaf for _, leaf in f.leaves]
  if inputs and type(root) is NodeDef and root.children[0][1] == graphdef.root and \
      origins[:len(origin)] == tuple(range(len(origin))):
    n = len(inputs)
    changed = tuple(i for i in range(n) if leaves[i] is not inputs[i])
    if len(changed) < n:
      static.changed = changed
      leaves = [leaves[i] for i in changed] + leaves[n:]
  return static, leaves


class OutStatic:
  """Static result of the traced function: the output GraphDef, node origins, and which
  input leaves came back (``changed``; ``None``: all of them)."""

  __slots__ = ('graphdef', 'origins', 'changed', 'fast')

  def __init__(self, graphdef, origins):
    self.graphdef, self.origins, self.changed, self.fast = graphdef, origins, None, None

  def _key(self):
    return self.graphdef, self.origins, self.changed

  def __eq__(self, other):
    return isinstance(other, OutStatic) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())


class Box:
  """A pytree node with no children carrying static data through ``jax.jit``'s output."""

  __slots__ = ('value',)

  def __init__(self, value):
    self.value = value


jax.tree_util.register_pytree_node(Box, lambda b: ((), b.value), lambda v, _: Box(v))


# -- back in the caller -------------------------------------------------------------------
def write_back(flat: Flat, static: OutStatic, leaves: list):
  """Applies the traced function's effects to the caller's objects and returns its output.

  The fast path (same structure, nothing new) assigns leaves to the cached handles; any
  other case rebuilds the graph reusing the caller's objects in place.
  """
  if type(static.graphdef.root) is StaticDef:  # no graph nodes in, nothing but static out
    return static.graphdef.root.value.value[1]
  if static.fast is None:
    static.fast = _is_unchanged(flat, static)
  if static.fast:
    set_value = object.__setattr__  # Variable.__setattr__ checks are for users' writes
    handles = flat.handles
    changed = static.changed
    if changed is None:
      n = len(handles)
      for handle, value in zip(handles, leaves, strict=False):
        set_value(handle, '_raw_value', value)
    else:
      n = len(changed)
      for i, value in zip(changed, leaves, strict=False):
        set_value(handles[i], '_raw_value', value)
    out_def = static.graphdef.root.children[1][1]
    if type(out_def) is StaticDef:
      return out_def.value.value
    if type(out_def) is ArrayDef:
      return leaves[n]
    u = _Unflattener(_leaf_iter(leaves[n:]))
    u.nodes = _InputNodes(flat)
    return u.build(out_def, (1,))
  nodes = flat.nodes
  reuse = {i: nodes[o] for i, o in enumerate(static.origins) if o >= 0}
  _, out = _Reuser(_leaf_iter(leaves), reuse).build(static.graphdef.root, ())
  bump_structure_epoch()
  return out


def build_copy(static: OutStatic, leaves: list):
  """The traced function's output built from ``leaves`` as new objects, touching none of
  the caller's (``eval_shape``: the arguments are never modified)."""
  return _Unflattener(_leaf_iter(leaves)).build(static.graphdef.root, ())[1]


class _InputNodes(dict):
  """Node table of an output build: the walk's input nodes, looked up on demand."""

  __slots__ = ('flat',)

  def __init__(self, flat: Flat):
    super().__init__()
    self.flat = flat

  def __missing__(self, index):
    return self.flat.node(index)


def _leaf_iter(leaves):
  it = iter(leaves)
  return lambda path, d: next(it)


def _is_unchanged(flat: Flat, static: OutStatic) -> bool:
  roots_def = static.graphdef.root.children[0][1]
  n = len(flat._nodes)
  return roots_def == flat.graphdef.root and static.origins[:n] == tuple(range(n))


class _Reuser(_Unflattener):
  """Builds a graph, updating the caller's objects (by origin) instead of making new ones."""

  __slots__ = ('reuse',)

  def __init__(self, lookup, reuse: dict):
    super().__init__(lookup)
    self.reuse = reuse

  def build(self, d, path):
    index = d.index if type(d) in (NodeDef, VariableDef) else -1
    target = self.reuse.get(index) if index >= 0 else None
    if target is None:
      return super().build(d, path)
    self.nodes[index] = target
    if isinstance(d, VariableDef):
      leaf = self.lookup(path, d)
      object.__setattr__(target, '_raw_value', leaf)
      object.__setattr__(target, '_metadata', d.metadata.value)
      return target
    assert isinstance(d, NodeDef)
    children = {k: self.build(c, (*path, k)) for k, c in d.children}
    if d.kind == 'object':
      if type(target)._graph_set_children is Object._graph_set_children:  # attributes
        for k in set(target._graph_children()) - set(children):
          object.__delattr__(target, k)
      target._graph_set_children(children)
    elif isinstance(target, dict):
      target.clear()
      target.update(children)
    else:
      target[:] = [children[i] for i in range(len(children))]
    return target
