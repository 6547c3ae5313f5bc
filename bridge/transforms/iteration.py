"""``vmap`` and ``scan`` over Modules, with ``StateAxes`` saying which Variables are mapped,
carried or broadcast.

The layer-stacking idiom: create ``N`` layers with ``vmap`` (their Variables gain a leading
axis), run them in sequence with ``scan``.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> @nnx.split_rngs(splits=4)
... @nnx.vmap(in_axes=0, out_axes=0)
... def create(rngs):
...   return nnx.Linear(3, 3, rngs=rngs)
>>> layers = create(nnx.Rngs(0))
>>> layers.kernel.value.shape
(4, 3, 3)
>>> @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
... def forward(x, layer):
...   return layer(x)
>>> forward(jnp.ones((2, 3)), layers).shape
(2, 3)
"""

from __future__ import annotations

import functools
import typing as tp

import jax
import jax.numpy as jnp
from jax import lax

from bridge import filters as filterlib
from bridge.graph import _Flattener
from bridge.object import Object
from bridge.transforms import tree_mode
from bridge.transforms._boundary import (
  Box,
  Flat,
  NodeSlot,
  build_inside,
  flatten_outside,
  insert,
  split_args,
  write_back,
)
from bridge.variables import Variable


class _ScanStructureError(ValueError, TypeError):
  """A scanned body changed its Modules' structure: flax.nnx raises a TypeError (carried
  Module) or a ValueError (broadcast Module) there; this is both."""


def _structure_changed(before: list, after: list):
  def fmt(paths):
    return ', '.join(repr('/'.join(map(str, p[1:]))) for p in paths) or 'none'
  added = [p for p in after if p not in set(before)]
  removed = [p for p in before if p not in set(after)]
  raise _ScanStructureError(
    f'scan: the body changed the structure of its Modules (new Variables: {fmt(added)}; '
    f'removed: {fmt(removed)}); scanned bodies must keep it, as in flax.nnx. Create the '
    'Variables before the scan (e.g. run the body once outside it, or initialize the Module'
    ' eagerly).')


class Carry:
  """In ``scan``'s ``in_axes``/``out_axes``: this argument (or these Variables) is the
  loop carry."""


class StateAxes:
  """Per-filter axes for a Module argument of ``vmap``/``scan``:
  ``StateAxes({nnx.Param: 0, nnx.BatchStat: None, ...: Carry})``. A Variable takes the axis
  of the first filter it matches; one that matches none is an error naming its path."""

  def __init__(self, filter_axes: tp.Mapping):
    self.filter_axes = dict(filter_axes)
    self._rules = [(filterlib.to_predicate(f), a) for f, a in self.filter_axes.items()]

  def axis(self, path, value):
    for predicate, axis in self._rules:
      if predicate(path, value):
        return axis
    raise ValueError(f'StateAxes: {type(value).__name__} at {"/".join(map(str, path))!r} '
                     f'matches none of the filters {list(self.filter_axes)}; add `...: '
                     'axis` to cover the rest.')

  def __repr__(self):
    return f'StateAxes({self.filter_axes!r})'


class _Mapped(tp.NamedTuple):
  """The arguments of a ``vmap``/``scan`` call, split at the boundary, with their axes."""
  dyn_args: list  # the arguments, graph nodes replaced by NodeSlots
  flat: Flat
  leaves: list  # the graph leaves' values
  leaf_axes: list  # the axis (or Carry/None) of every graph leaf
  arg_specs: list  # the axis of every other argument (None for graph nodes)
  root_spec: dict  # the spec of every graph argument, by root index


def _map_args(args: tuple, in_axes) -> _Mapped:
  """Splits ``args`` and gives each graph leaf the axis of its argument's spec (the first
  spec if a Module is passed twice)."""
  dyn_args, flat, leaves = split_args(args)
  root_spec: dict[int, tp.Any] = {}
  arg_specs = []
  for slot, spec in zip(dyn_args, _specs(in_axes, len(args)), strict=True):
    if isinstance(slot, NodeSlot):
      root_spec.setdefault(slot.index, spec)
      arg_specs.append(None)
    elif isinstance(spec, StateAxes):
      raise ValueError(f'StateAxes given for an argument that is not a Module: {slot!r}')
    else:
      arg_specs.append(_spread_spec(slot, spec, root_spec))
  leaf_axes = [_axis_at(root_spec.get(path[0]), path[1:], handle)
               for path, handle in zip(flat.paths, flat.handles, strict=True)]
  return _Mapped(dyn_args, flat, leaves, leaf_axes, arg_specs, root_spec)


def _is_spec_leaf(x) -> bool:
  return x is None or isinstance(x, (StateAxes, Object, Variable))


def _spread_spec(slot, spec, root_spec: dict):
  """For a pytree argument holding graph nodes (a dict of Variables...): gives each node
  the part of the prefix ``spec`` over it; returns the spec of the rest."""
  def visit(axis, sub):
    for x in jax.tree.leaves(sub, is_leaf=lambda x: isinstance(x, NodeSlot)):
      if isinstance(x, NodeSlot):
        root_spec.setdefault(x.index, axis)
    return None if isinstance(axis, (Object, Variable)) else axis
  return jax.tree.map(visit, spec, slot, is_leaf=_is_spec_leaf)


def _axis_at(spec, path: tuple, value):
  """The axis that the prefix ``spec`` of a graph argument (an int, None, ``StateAxes`` or
  a tree of them shaped like the node, as ``nnx.prefix`` makes) gives the leaf at
  ``path``."""
  for i, key in enumerate(path):
    if isinstance(spec, StateAxes):
      return spec.axis(path[i:], value)
    if isinstance(spec, Object):
      children = spec._graph_children()
    elif isinstance(spec, (dict, list, tuple)):
      children = spec if isinstance(spec, dict) else dict(enumerate(spec))
    else:
      return spec
    if key not in children:
      raise ValueError(f'in_axes: the prefix of a graph argument has no entry '
                       f'{"/".join(map(str, path[:i + 1]))!r} for the leaf at '
                       f'{"/".join(map(str, path))!r} ({type(value).__name__}).')
    spec = children[key]
  if isinstance(spec, StateAxes):
    return spec.axis((), value)
  return spec._raw_value if isinstance(spec, Variable) else spec


def _specs(axes, n: int) -> tuple:
  if isinstance(axes, (tuple, list)):
    if len(axes) != n:
      raise ValueError(f'in_axes has {len(axes)} entries for {n} positional arguments.')
    return tuple(axes)
  return (axes,) * n


PARTITION_NAME = 'partition_name'


def _axis_change(variables: tp.Iterable, axes: tp.Iterable, axis_name, adding: bool,
                 transform_metadata, run_hooks: bool = True) -> None:
  """Tells each Variable mapped on an int axis that the axis is removed (entering the
  transform) or added back (leaving it): its hooks run, and with
  ``transform_metadata={PARTITION_NAME: name}`` its sharding metadata loses / regains
  ``name`` at that axis."""
  partition = (transform_metadata or {}).get(PARTITION_NAME)
  for var, axis in zip(variables, axes, strict=True):
    if not (isinstance(var, Variable) and isinstance(axis, int) and axis is not True):
      continue
    if partition is not None:
      key = next((k for k in ('out_sharding', 'sharding') if k in var._metadata), None)
      if key is not None and var._metadata[key] is not None:
        spec = list(var._metadata[key])
        if adding:
          spec.insert(axis, partition)
        else:
          del spec[axis]
        var.set_metadata(key, tuple(spec))
    if run_hooks:
      (var.add_axis if adding else var.remove_axis)(axis, axis_name)


def _leaves_of(roots) -> list:
  f = _Flattener()
  f.walk(roots, ())
  return [leaf for _, leaf in f.leaves]


# -- vmap ---------------------------------------------------------------------------------
def vmap(f=None, *, in_axes=0, out_axes=0, axis_name=None, axis_size=None,
         spmd_axis_name=None, transform_metadata=None, graph: bool | None = None,
         graph_updates: bool | None = None):
  """``jax.vmap`` for functions of Modules. A Module argument's ``in_axes`` entry is an
  axis for all its Variables, ``None`` (broadcast) or a ``StateAxes``. Changes made inside
  are written back with each Variable's own axis; Variables created inside get their
  Module's axis, and the function's output gets ``out_axes``. Variables' add/remove-axis
  hooks run as the axis is removed on entry and added back on exit."""
  if f is None:
    return functools.partial(vmap, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name,
                             axis_size=axis_size, spmd_axis_name=spmd_axis_name,
                             transform_metadata=transform_metadata, graph=graph,
                             graph_updates=graph_updates)

  @functools.wraps(f)
  def wrapper(*args):
    dyn_args, flat, leaves, leaf_axes, arg_specs, root_spec = _map_args(args, in_axes)

    index_of = {id(n): i for i, n in enumerate(flat.nodes)}
    axis_by_index = {index_of[id(h)]: a for h, a in zip(flat.handles, leaf_axes, strict=True)
                     if isinstance(h, Variable)}

    def out_axis(path, leaf, origin):
      """An input Variable keeps its axis, a new Variable in a Module argument takes that
      argument's axis, the function's output takes ``out_axes``."""
      o = origin.get(id(leaf), -1) if isinstance(leaf, Variable) else -1
      if o >= 0:
        return axis_by_index[o]
      if path[0] == 0:
        spec = root_spec.get(path[1])
        return spec.axis(path[2:], leaf) if isinstance(spec, StateAxes) else spec
      if isinstance(out_axes, (tuple, list)):
        return out_axes[path[1]]
      return out_axes

    def pure(leaves, dyn, hooks: bool = True):
      roots, origin = build_inside(flat.graphdef, leaves)
      _axis_change(_leaves_of(roots), leaf_axes, axis_name, False, transform_metadata, hooks)
      out = f(*insert(dyn, roots))
      walked = _Flattener()
      walked.walk((roots, out), ())
      axes = tuple(out_axis(path, leaf, origin) for path, leaf in walked.leaves)
      _axis_change((leaf for _, leaf in walked.leaves), axes, axis_name, True,
                   transform_metadata, hooks)
      static, out_leaves = flatten_outside(roots, out, origin)
      return out_leaves, Box((static, axes))

    def mapped(fn, out_axes):
      return jax.vmap(fn, in_axes=(leaf_axes, arg_specs), out_axes=out_axes,
                      axis_name=axis_name, axis_size=axis_size, spmd_axis_name=spmd_axis_name)
    # The output's axes depend on what the function creates: learn them from an abstract
    # trace (sharding metadata moved as in the real one, users' axis hooks not run), then
    # map for real with them, so a broadcast Variable that comes out batched is JAX's clear
    # error rather than a silent pick of one element. The function is traced twice.
    _, box = jax.eval_shape(mapped(functools.partial(pure, hooks=False), 0), leaves, dyn_args)
    axes = box.value[1]
    out_leaves, box = mapped(pure, (list(axes), None))(leaves, dyn_args)
    static = box.value[0]
    return write_back(flat, static, out_leaves)

  return tree_mode.wrap('vmap', wrapper, graph, graph_updates)


# -- scan ---------------------------------------------------------------------------------
def scan(f=None, *, length=None, reverse: bool = False, unroll: int | bool = 1,
         in_axes=(Carry, 0), out_axes=(Carry, 0), transform_metadata=None,
         graph: bool | None = None, graph_updates: bool | None = None):
  """``lax.scan`` for functions of Modules. ``in_axes`` gives each positional argument's
  role: ``Carry`` (the loop carry, at most one), an axis to scan over, ``None``
  (broadcast), or for a Module a ``StateAxes``. ``out_axes`` says what the function
  returns: ``Carry`` (the new carry), an axis (stacked outputs) or ``(Carry, axis)``.
  Scanned Variables are updated slice by slice; carried ones carry."""
  if f is None:
    return functools.partial(scan, length=length, reverse=reverse, unroll=unroll,
                             in_axes=in_axes, out_axes=out_axes,
                             transform_metadata=transform_metadata, graph=graph,
                             graph_updates=graph_updates)

  @functools.wraps(f)
  def wrapper(*args):
    dyn_args, flat, leaves, leaf_axes, arg_specs, _ = _map_args(args, in_axes)
    carry_leaves = [x for x, a in zip(leaves, leaf_axes, strict=True) if a is Carry]
    scan_leaves = [jnp.moveaxis(x, a, 0) for x, a in zip(leaves, leaf_axes, strict=True)
                   if isinstance(a, int)]
    carry_args = [x for x, s in zip(dyn_args, arg_specs, strict=True) if s is Carry]
    scan_args = [jax.tree.map(lambda v, a=s: jnp.moveaxis(v, a, 0), x)
                 for x, s in zip(dyn_args, arg_specs, strict=True) if isinstance(s, int)
                 and not isinstance(s, bool)]
    out_spec = out_axes if isinstance(out_axes, tuple) else (out_axes,)

    def body(carry, xs):
      (c_leaves, c_args), (s_leaves, s_args) = carry, xs
      c_it, s_it = iter(c_leaves), iter(s_leaves)
      full = [next(c_it) if a is Carry else next(s_it) if isinstance(a, int) else x
              for x, a in zip(leaves, leaf_axes, strict=True)]
      roots, _ = build_inside(flat.graphdef, full)
      _axis_change(_leaves_of(roots), leaf_axes, None, False, transform_metadata)
      ca, sa = iter(c_args), iter(s_args)
      call_args = [next(ca) if s is Carry else next(sa) if isinstance(s, int) else x
                   for x, s in zip(dyn_args, arg_specs, strict=True)]
      out = f(*insert(call_args, roots))
      outs = out if len(out_spec) > 1 else (out,)
      f2 = _Flattener()
      f2.walk(roots, ())
      if len(f2.leaves) != len(leaves):
        _structure_changed(flat.paths, [path for path, _ in f2.leaves])
      _axis_change([leaf for _, leaf in f2.leaves], leaf_axes, None, True, transform_metadata)
      new = [leaf.raw_value if isinstance(leaf, Variable) else leaf for _, leaf in f2.leaves]
      new_carry = [x for x, a in zip(new, leaf_axes, strict=True) if a is Carry]
      new_scan = [x for x, a in zip(new, leaf_axes, strict=True) if isinstance(a, int)]
      carry_out = [_strip_nodes(o, roots) for o, s in zip(outs, out_spec, strict=True)
                   if s is Carry]
      ys = [_strip_nodes(o, roots) for o, s in zip(outs, out_spec, strict=True)
            if s is not Carry]
      return (new_carry, carry_out), (new_scan, ys)

    init_carry_out = [a for a in carry_args]
    (c_leaves, c_out), (s_leaves, ys) = lax.scan(
      body, (carry_leaves, init_carry_out), (scan_leaves, scan_args), length=length,
      reverse=reverse, unroll=unroll)
    c_it, s_it = iter(c_leaves), iter(s_leaves)
    for handle, a in zip(flat.handles, leaf_axes, strict=True):
      if a is Carry:
        handle._raw_value = next(c_it)
      elif isinstance(a, int):
        handle._raw_value = jnp.moveaxis(next(s_it), 0, a)
    c_out, ys = iter(c_out), iter(ys)
    results = []
    for s in out_spec:
      value = insert(next(c_out), flat.roots) if s is Carry else next(ys)
      if isinstance(s, int) and s != 0:
        value = jax.tree.map(lambda v, a=s: jnp.moveaxis(v, 0, a), value)
      results.append(value)
    return tuple(results) if len(out_spec) > 1 else results[0]

  return tree_mode.wrap('scan', wrapper, graph, graph_updates)


def _strip_nodes(value, roots):
  """``value`` with the (inner) nodes replaced by slots pointing at the argument roots."""
  def slot(x):
    for i, r in enumerate(roots):
      if x is r:
        return NodeSlot(i)
    raise ValueError('scan: a Module returned from the body must be one of its arguments.')
  return jax.tree.map(lambda x: slot(x) if isinstance(x, (Variable,)) or hasattr(
    x, '_graph_children') else x, value, is_leaf=lambda x: hasattr(x, '_graph_children'))
