"""``pmap`` for functions of Modules: ``jax.pmap`` with ``vmap``'s argument rules.

A Module argument's ``in_axes`` entry is an axis for all its arrays, ``None`` (broadcast)
or a ``StateAxes``; its Variables keep their axis on the way out and what the function
writes to them reaches the caller's objects (the function must not add or remove
Variables of its arguments). Modules the function creates and returns are stacked on
``out_axes`` like any output, so layers can be created one per device.
"""

from __future__ import annotations

import functools
from types import MappingProxyType

import jax

from bridge.graph import GraphDef, _Flattener, flatten, unflatten
from bridge.transforms import tree_mode
from bridge.transforms._boundary import Box, NodeSlot, build_inside, insert, is_graph
from bridge.transforms.iteration import _axis_change, _leaves_of, _map_args
from bridge.variables import Variable


class _NodeLeaves:
  """A graph node in the output, as its leaves (mapped on the node's ``out_axes``) and the
  index of its GraphDef."""

  __slots__ = ('index', 'leaves')

  def __init__(self, index: int, leaves: list):
    self.index, self.leaves = index, leaves


jax.tree_util.register_pytree_node(_NodeLeaves, lambda n: ((n.leaves,), n.index),
                                   lambda i, c: _NodeLeaves(i, c[0]))


def _cut_nodes(out, roots: tuple, defs: list):
  """``out`` with argument roots as NodeSlots and other graph nodes as ``_NodeLeaves``."""
  def cut(x):
    if not is_graph(x):
      return x
    for i, root in enumerate(roots):
      if x is root:
        return NodeSlot(i)
    graphdef, leaves = flatten(x)
    defs.append(graphdef)
    return _NodeLeaves(len(defs) - 1, [v.raw_value if isinstance(v, Variable) else v
                                       for _, v in leaves])
  return jax.tree.map(cut, out, is_leaf=is_graph)


def pmap(f=None, *, axis_name=None, in_axes=0, out_axes=0, static_broadcasted_argnums=(),
         devices=None, backend=None, axis_size=None, donate_argnums=(),
         transform_metadata=MappingProxyType({}), graph: bool | None = None,
         graph_updates: bool | None = None):
  """``jax.pmap`` for functions of Modules (a decorator, with or without arguments); see
  the module docstring. A broadcast (``None``) Variable comes back from the first device.
  ``donate_argnums`` is not supported.

  >>> import jax
  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> n = jax.local_device_count()
  >>> @nnx.split_rngs(splits=n)
  ... @nnx.pmap(in_axes=0, out_axes=0)
  ... def create(rngs):
  ...   return nnx.Linear(2, 3, rngs=rngs)
  >>> layers = create(nnx.Rngs(0))
  >>> layers.kernel.value.shape == (n, 2, 3)
  True
  """
  if f is None:
    return functools.partial(
      pmap, axis_name=axis_name, in_axes=in_axes, out_axes=out_axes,
      static_broadcasted_argnums=static_broadcasted_argnums, devices=devices,
      backend=backend, axis_size=axis_size, donate_argnums=donate_argnums,
      transform_metadata=transform_metadata, graph=graph, graph_updates=graph_updates)
  if donate_argnums not in ((), None):
    raise NotImplementedError('pmap: donate_argnums is not supported; use nnx.jit with '
                              'donate_argnums around it.')
  statics = (static_broadcasted_argnums,) if isinstance(static_broadcasted_argnums, int) \
    else tuple(static_broadcasted_argnums)

  @functools.wraps(f)
  def wrapper(*args):
    n = len(args)
    fixed = {i % n: args[i] for i in statics}
    positions = [i for i in range(n) if i not in fixed]
    dyn_in_axes = in_axes if not isinstance(in_axes, (tuple, list)) or not fixed else \
      tuple(in_axes[i] for i in positions)
    dyn_args, flat, leaves, leaf_axes, arg_specs, _ = _map_args(
      tuple(args[i] for i in positions), dyn_in_axes)

    def pure(leaves, dyn):
      roots, _ = build_inside(flat.graphdef, leaves)
      _axis_change(_leaves_of(roots), leaf_axes, axis_name, False, transform_metadata)
      it = iter(insert(dyn, roots))
      out = f(*(fixed[i] if i in fixed else next(it) for i in range(n)))
      after = _Flattener()
      if GraphDef(after.walk(roots, ())) != flat.graphdef:
        raise ValueError('pmap: the function changed the structure of its Module arguments '
                         '(new or removed Variables or attributes); it must keep it.')
      variables = [v for _, v in after.leaves]
      _axis_change(variables, leaf_axes, axis_name, True, transform_metadata)
      if isinstance(out_axes, int):  # Variables created inside and returned
        created = [v for x in jax.tree.leaves(out, is_leaf=is_graph) if is_graph(x)
                   and not any(x is r for r in roots) for v in _leaves_of((x,))]
        _axis_change(created, [out_axes] * len(created), axis_name, True, transform_metadata)
      defs: list = []
      out = _cut_nodes(out, roots, defs)
      return [v.raw_value if isinstance(v, Variable) else v for v in variables], out, \
        Box(defs)

    new_leaves, out, box = jax.pmap(
      pure, axis_name, in_axes=(leaf_axes, arg_specs), out_axes=(leaf_axes, out_axes, None),
      devices=devices, backend=backend, axis_size=axis_size)(leaves, dyn_args)
    for handle, value in zip(flat.handles, new_leaves, strict=True):
      handle._raw_value = value
    out = jax.tree.map(lambda x: unflatten(box.value[x.index], x.leaves)
                       if isinstance(x, _NodeLeaves) else x, out,
                       is_leaf=lambda x: isinstance(x, _NodeLeaves))
    return insert(out, flat.roots)

  return tree_mode.wrap('pmap', wrapper, graph, graph_updates)
