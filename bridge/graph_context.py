"""Split and merge several graphs as one: ``split_context`` / ``merge_context``, and
``update_context`` for writing a transform that updates the caller's objects in place.

Inside one ``split_context`` every ``ctx.split`` shares one index, so a node or Variable
already split (shared between graphs) is referenced, not repeated; the matching
``merge_context`` rebuilds the sharing. In an ``update_context(tag)``, the graphs split
outside a transform (outer split), merged inside it (``merge_context(tag, inner=True)``),
split again inside and merged outside (``inner=False``) come back as the caller's very
objects, updated in place.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> shared = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
>>> a, b = nnx.Dict(l=shared), nnx.Dict(l=shared, w=nnx.Param(jnp.ones(1)))
>>> with nnx.split_context() as ctx:
...   (ga, sa), (gb, sb) = ctx.split(a), ctx.split(b)
>>> list(sb)  # the shared Linear is only in `a`'s State
['w']
>>> with nnx.merge_context() as ctx:
...   a2, b2 = ctx.merge(ga, sa), ctx.merge(gb, sb)
>>> a2['l'] is b2['l'], a2['l'] is shared
(True, False)
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import typing as tp

from bridge.graph import GraphDef, VariableDef, _Flattener, _fmt, _Unflattener
from bridge.state import State, _partition, merge_state
from bridge.transforms._boundary import _Reuser
from bridge.variables import Variable

A = tp.TypeVar('A')


class _InnerFlattener(_Flattener):
  """Gives the nodes that came from the outer graph their outer index (so the outer merge
  finds them) and new nodes indices after the outer ones."""

  __slots__ = ('outer_index', 'offset')

  def __init__(self, outer_index: dict[int, int], offset: int):
    super().__init__()
    self.outer_index = outer_index
    self.offset = offset

  def _new_index(self, x) -> int:
    i = self.outer_index.get(id(x))
    if i is None:
      i = self.offset + len(self.nodes)
    self.index[id(x)] = i
    self.nodes.append(x)
    return i


@dataclasses.dataclass
class SplitContext:
  """What ``split_context`` yields: ``split`` and ``flatten`` sharing one index (``ref_index``,
  node id -> index) across calls. See the module docstring."""
  ctxtag: tp.Hashable | None
  ref_index: dict[int, int]
  is_inner: bool | None
  _flattener: _Flattener = dataclasses.field(default_factory=_Flattener, repr=False)

  def __post_init__(self):
    self._flattener.index = self.ref_index

  def flatten(self, node, *filters):
    """``(graphdef, flat_state)`` (one flat State per filter) of ``node``."""
    graphdef, leaves = self._walk(node)
    if not filters:
      return graphdef, State.from_flat_path(leaves).flat_state()
    return (graphdef, *(s.flat_state() for s in _partition(leaves, filters, strict=True)))

  def split(self, node: A, *filters) -> tuple:
    """``(graphdef, state, ...)`` of ``node``, as ``nnx.split``, within the shared index."""
    graphdef, leaves = self._walk(node)
    if not filters:
      return graphdef, State.from_flat_path(leaves)
    return (graphdef, *_partition(leaves, filters, strict=True))

  def _walk(self, node):
    f = self._flattener
    f.leaves = []
    return GraphDef(f.walk(node, ())), f.leaves


@dataclasses.dataclass
class MergeContext:
  """What ``merge_context`` yields: ``merge`` and ``unflatten`` sharing the nodes built so
  far (``index_ref``, index -> node) across calls. See the module docstring."""
  ctxtag: tp.Hashable | None
  index_ref: dict[int, tp.Any]
  is_inner: bool | None
  _reuse: dict[int, tp.Any] | None = dataclasses.field(default=None, repr=False)

  def merge(self, graphdef: GraphDef, state, /, *states) -> A:
    """The graph of ``graphdef`` with the Variables of the State(s), as ``nnx.merge``;
    nodes built (or split) earlier in the context are reused."""
    by_path = dict(merge_state(state, *states).flat_state())

    def lookup(path, d):
      if path not in by_path:
        kind = d.type.__name__ if isinstance(d, VariableDef) else 'array'
        raise ValueError(f'State does not fit the GraphDef: it has no {kind} at '
                         f'{_fmt(path)}.')
      return by_path[path]
    return self._build(graphdef, lookup)

  def unflatten(self, graphdef: GraphDef, flat_state, /, *flat_states) -> A:
    """``merge`` from flat States (``(path, leaf)`` pairs)."""
    by_path = {p: v for fs in (flat_state, *flat_states) for p, v in fs}
    return self._build(graphdef, lambda path, d: by_path[path])

  def _build(self, graphdef: GraphDef, lookup):
    if self._reuse is None:
      builder = _Unflattener(lookup)
    else:  # the caller's Variables take the new values (and the GraphDef's metadata)
      builder = _Reuser(lambda path, d: _raw(lookup(path, d)), self._reuse)
    builder.nodes = self.index_ref
    return builder.build(graphdef.root, ())


def _raw(leaf):
  return leaf.raw_value if isinstance(leaf, Variable) else leaf


@dataclasses.dataclass
class UpdateContext:
  """What ``update_context(tag)`` yields: the index maps that connect the outer split, the
  inner merge, the inner split and the outer merge of one transform. See the module
  docstring."""
  tag: tp.Hashable
  outer_index_outer_ref: dict[int, tp.Any] | None = None
  inner_ref_outer_index: dict[int, int] | None = None
  _keep_alive: list = dataclasses.field(default_factory=list, repr=False)

  def flatten_end(self, ref_index) -> None:
    """Records the outer split's nodes (index -> node), unless it was an inner split."""
    if self.inner_ref_outer_index is None:
      self.outer_index_outer_ref = dict(enumerate(ref_index))

  def unflatten_end(self, index_ref: dict[int, tp.Any], inner_merge: bool) -> None:
    """Records which outer index each node of the inner merge came from."""
    if inner_merge:
      self.inner_ref_outer_index = {id(x): i for i, x in index_ref.items()}
      self._keep_alive = list(index_ref.values())


class _Contexts(threading.local):
  def __init__(self):
    self.update: dict[tp.Hashable, list[UpdateContext]] = {}


_CONTEXTS = _Contexts()


@contextlib.contextmanager
def update_context(tag: tp.Hashable):
  """Opens an :class:`UpdateContext` for ``tag`` (``split_context(tag)`` and
  ``merge_context(tag, inner)`` use it).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Dict(w=nnx.Param(jnp.ones(2)))
  >>> with nnx.update_context('f'):
  ...   with nnx.split_context('f') as ctx:    # outside the transform
  ...     graphdef, state = ctx.split(model)
  ...   with nnx.merge_context('f', True) as ctx:  # inside: a new graph
  ...     inner = ctx.merge(graphdef, state)
  ...   inner['w'].value = inner['w'].value * 3
  ...   with nnx.split_context('f') as ctx:
  ...     graphdef, state = ctx.split(inner)
  ...   with nnx.merge_context('f', False) as ctx:  # outside again: the caller's objects
  ...     out = ctx.merge(graphdef, state)
  >>> out is model, model['w'].value.tolist()
  (True, [3.0, 3.0])
  """
  stack = _CONTEXTS.update.setdefault(tag, [])
  ctx = UpdateContext(tag)
  stack.append(ctx)
  try:
    yield ctx
  finally:
    stack.pop()
    if not stack:
      del _CONTEXTS.update[tag]


def current_update_context(tag: tp.Hashable) -> UpdateContext:
  """The innermost open :class:`UpdateContext` of ``tag``; a ValueError when there is
  none.

  >>> import bridge as nnx
  >>> with nnx.update_context('t') as ctx:
  ...   nnx.current_update_context('t') is ctx
  True
  """
  stack = _CONTEXTS.update.get(tag)
  if not stack:
    raise ValueError(f'No update context found for tag {tag!r}: open one with '
                     f'`with nnx.update_context({tag!r}):`.')
  return stack[-1]


@contextlib.contextmanager
def split_context(ctxtag: tp.Hashable | None = None):
  """A :class:`SplitContext`: several ``ctx.split`` calls sharing one index. With a
  ``ctxtag``, part of that tag's open ``update_context``. See the module docstring."""
  update = None if ctxtag is None else current_update_context(ctxtag)
  is_inner = update is not None and update.inner_ref_outer_index is not None
  if is_inner:
    outer = update.inner_ref_outer_index
    flattener = _InnerFlattener(outer, offset=len(update.outer_index_outer_ref or ()))
  else:
    flattener = _Flattener()
  ctx = SplitContext(ctxtag, flattener.index, is_inner if update else None, flattener)
  yield ctx
  if update is not None:
    update.flatten_end(flattener.nodes)


@contextlib.contextmanager
def merge_context(ctxtag: tp.Hashable | None = None, inner: bool | None = None):
  """A :class:`MergeContext`: several ``ctx.merge`` calls sharing the nodes built. With a
  ``ctxtag``, part of that tag's open ``update_context``: ``inner=True`` builds new objects
  inside a transform, ``inner=False`` writes back into the objects the outer split saw.
  See the module docstring."""
  update = None if ctxtag is None else current_update_context(ctxtag)
  reuse = None
  if update is not None and inner is False:
    reuse = dict(update.outer_index_outer_ref or {})
  ctx = MergeContext(ctxtag, {}, inner, reuse)
  yield ctx
  if update is not None:
    update.unflatten_end(ctx.index_ref, inner_merge=bool(inner))
