"""Graph nodes inside pytrees <-> pure pytrees: ``to_tree`` replaces each graph node (and
Variable) of a pytree by a :class:`NodeStates` (its GraphDef and States, a pytree of arrays),
all split in one ``split_context`` so that nodes shared between leaves stay shared;
``from_tree`` merges them back. Custom transforms use it to pass Modules through plain JAX.

>>> import jax, jax.numpy as jnp
>>> import bridge as nnx
>>> shared = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
>>> tree = nnx.to_tree({'m': [shared, shared], 'k': 3})
>>> [type(x).__name__ for x in tree['m']], len(jax.tree.leaves(tree))
(['NodeStates', 'NodeStates'], 3)
>>> back = nnx.from_tree(tree)
>>> back['m'][0] is back['m'][1], back['k']
(True, 3)
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax

from bridge.graph import GraphDef
from bridge.graph_context import MergeContext, SplitContext, merge_context, split_context
from bridge.object import Object
from bridge.variables import Variable

KeyPath = tuple
Prefix = tp.Any
Leaf = tp.Any


class Missing:
  """The default of ``prefix``: no prefix given."""


@dataclasses.dataclass(frozen=True)
class NodeStates:
  """A graph node as a pytree: its ``graphdef`` (static) and ``states`` (pytree children),
  with user ``metadata`` (static). See the module docstring."""
  _graphdef: GraphDef | None
  states: tuple[tp.Any, ...]
  metadata: tp.Any

  @property
  def graphdef(self) -> GraphDef:
    if self._graphdef is None:
      raise ValueError('This NodeStates has no GraphDef (made by NodeStates.from_states).')
    return self._graphdef

  @property
  def state(self):
    """The single State; an error when there are several."""
    if len(self.states) != 1:
      raise ValueError(f'NodeStates.state: expected one State, there are {len(self.states)}.')
    return self.states[0]

  @classmethod
  def from_split(cls, graphdef: GraphDef | None, state, /, *states,
                 metadata: tp.Any = None) -> NodeStates:
    return cls(graphdef, (state, *states), metadata)

  @classmethod
  def from_states(cls, state, *states) -> NodeStates:
    return cls(None, (state, *states), None)

  @classmethod
  def from_prefixes(cls, prefixes: tp.Iterable[tp.Any], /, *,
                    metadata: tp.Any = None) -> NodeStates:
    return cls(None, tuple(prefixes), metadata)


jax.tree_util.register_pytree_with_keys(
  NodeStates,
  lambda n: (((jax.tree_util.GetAttrKey('states'), n.states),), (n._graphdef, n.metadata)),
  lambda aux, children: NodeStates(aux[0], children[0], aux[1]),
  lambda n: ((n.states,), (n._graphdef, n.metadata)),
)


def is_graph_node(x) -> bool:
  """Whether ``to_tree`` splits ``x`` (a graph node: Module, Rngs, ...)."""
  return isinstance(x, Object)


def is_tree_node(x) -> bool:
  """Whether ``from_tree`` merges ``x`` (a :class:`NodeStates`)."""
  return isinstance(x, NodeStates)


def default_split_fn(ctx: SplitContext, path: KeyPath, prefix: Prefix, leaf: Leaf):
  """``to_tree``'s default: ``NodeStates.from_split(*ctx.split(leaf))``."""
  return NodeStates.from_split(*ctx.split(leaf))


def merge_tree_node(ctx: MergeContext, path: KeyPath, prefix: Prefix, leaf: Leaf):
  """``from_tree``'s default: the graph a :class:`NodeStates` describes."""
  if not isinstance(leaf, NodeStates):
    raise ValueError(f'from_tree: expected a NodeStates at {jax.tree_util.keystr(path)}, '
                     f'got {type(leaf).__name__}.')
  return ctx.merge(leaf.graphdef, *leaf.states)


def _splittable(x) -> bool:
  return isinstance(x, Variable) or is_graph_node(x)


def _leaf_prefixes(prefix, tree, is_leaf) -> list:
  """The prefix of each leaf of ``tree`` (``prefix`` is a tree prefix of ``tree``)."""
  out: list = []

  def expand(p, subtree):
    out.extend([p] * len(jax.tree.leaves(subtree, is_leaf=is_leaf)))
  jax.tree.map(expand, prefix, tree, is_leaf=lambda x: x is None or is_leaf(x))
  return out


def _map_leaves(tree, prefix, is_leaf, fn) -> tp.Any:
  """``fn(path, prefix, leaf)`` over the leaves of ``tree`` (graph nodes are leaves)."""
  entries, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  prefixes = [prefix] * len(entries) if prefix is Missing or prefix is None else \
    _leaf_prefixes(prefix, tree, is_leaf)
  return treedef.unflatten(fn(path, p, leaf) for (path, leaf), p in zip(entries, prefixes,
                                                                           strict=True))


def to_tree(tree, /, *, prefix: tp.Any = Missing,
            split_fn: tp.Callable[[SplitContext, KeyPath, Prefix, Leaf], tp.Any] =
            default_split_fn, map_non_graph_nodes: bool = False,
            ctxtag: tp.Hashable | None = None, check_aliasing: bool = True) -> tp.Any:
  """``tree`` with each graph node and Variable replaced by ``split_fn(ctx, path, prefix,
  leaf)`` (every leaf with ``map_non_graph_nodes``), all in one ``split_context(ctxtag)``.
  With ``check_aliasing``, a node reached under two different prefixes is a ValueError.
  See the module docstring for an example."""
  seen: dict[int, tuple] = {}

  def split(path, leaf_prefix, leaf):
    if not (map_non_graph_nodes or _splittable(leaf)):
      return leaf
    if check_aliasing and _splittable(leaf) and prefix is not Missing:
      first = seen.setdefault(id(leaf), (path, leaf_prefix))
      if first[1] != leaf_prefix:
        raise ValueError(
          f'to_tree: the same {type(leaf).__name__} is at {jax.tree_util.keystr(first[0])} '
          f'with prefix {first[1]!r} and at {jax.tree_util.keystr(path)} with prefix '
          f'{leaf_prefix!r}; a shared node needs one prefix.')
    return split_fn(ctx, path, leaf_prefix, leaf)

  with split_context(ctxtag) as ctx:
    return _map_leaves(tree, prefix, _splittable, split)


def from_tree(tree: tp.Any, /, *, prefix: tp.Any = Missing,
              merge_fn: tp.Callable[[MergeContext, KeyPath, Prefix, Leaf], tp.Any] =
              merge_tree_node, is_node_leaf: tp.Callable[[Leaf], bool] = is_tree_node,
              is_leaf: tp.Callable[[Leaf], bool] = is_tree_node,
              map_non_graph_nodes: bool = False, is_inner: bool | None = None,
              ctxtag: tp.Hashable | None = None) -> tp.Any:
  """``tree`` with each leaf that ``is_node_leaf`` (a :class:`NodeStates`) or is a Variable
  replaced by ``merge_fn(ctx, path, prefix, leaf)`` (every leaf with
  ``map_non_graph_nodes``), all in one ``merge_context(ctxtag, is_inner)``; ``is_leaf``
  says where to stop flattening. See the module docstring for an example."""
  def merge(path, leaf_prefix, leaf):
    if map_non_graph_nodes or is_node_leaf(leaf) or isinstance(leaf, Variable):
      return merge_fn(ctx, path, leaf_prefix, leaf)
    return leaf

  with merge_context(ctxtag, is_inner) as ctx:
    return _map_leaves(tree, prefix, is_leaf, merge)
