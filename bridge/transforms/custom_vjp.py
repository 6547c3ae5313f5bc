"""``custom_vjp``: ``jax.custom_vjp`` for functions of Modules.

The function, ``fwd`` and ``bwd`` see Modules; at the boundary a Module argument is the list
of its leaves, and the Variables the function writes come out as extra outputs, so they are
written back to the caller's objects. In graph mode with graph updates (the default),
``bwd(*nondiff_args, res, (input_updates_g, out_g))`` gets, per differentiated argument, a
``State`` of each Module's whole state (the cotangent of its updates; ``None`` for other
arguments) and returns per argument a ``State`` for a Module (its differentiable leaves: all
of them, or those a ``DiffState`` in ``nondiff_argnums`` picks) or the argument's cotangent.
With ``graph=False`` or ``graph_updates=False``, ``bwd(*nondiff_args, res, out_g)`` returns a
Module of the argument's structure for a Module, as in flax.nnx; a ``bwd`` that declares an
``updates_g`` keyword also gets the arguments with each Module holding the cotangents of
the Variables the function wrote (the others ``None``).

>>> import jax
>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> class Foo(nnx.Module):
...   def __init__(self):
...     self.x = nnx.Param(jnp.array(1.0))
>>> @nnx.custom_vjp
... def f(m):
...   return jnp.sin(m.x.value)
>>> def f_fwd(m):
...   return f(m), jnp.cos(m.x.value)
>>> def f_bwd(cos_x, g):
...   (m_updates_g,), out_g = g
...   m_g = jax.tree.map(lambda x: x, m_updates_g)
...   m_g['x'].value = 10 * cos_x * out_g
...   return (m_g,)
>>> f.defvjp(f_fwd, f_bwd)
>>> round(float(nnx.grad(f)(Foo())['x'].value), 4)
5.403
"""

from __future__ import annotations

import functools
import inspect
import typing as tp
from collections.abc import Mapping

import jax
import numpy as np

from bridge.graph import flatten
from bridge.graph_mode import resolve
from bridge.object import Object
from bridge.state import State
from bridge.transforms import tree_mode
from bridge.transforms._boundary import (
  Box,
  Flat,
  NodeSlot,
  build_inside,
  extract,
  flatten_outside,
  insert,
  write_back,
)
from bridge.transforms.autodiff import DiffSplit, DiffState
from bridge.variables import Variable


class CustomVjp:
  """What ``custom_vjp`` returns: call it like the function once ``defvjp(fwd, bwd)`` gave
  its rules. See the module docstring.

  >>> import bridge as nnx
  >>> double = nnx.custom_vjp(lambda x: 2 * x)
  >>> double.defvjp(lambda x: (2 * x, None), lambda res, g: (2 * g[1],))
  >>> type(double).__name__, double(3.0)
  ('CustomVjp', 6.0)
  """

  def __init__(self, fun, nondiff_argnums: tuple, graph: bool | None,
               graph_updates: bool | None):
    functools.update_wrapper(self, fun)
    self.fun, self.graph, self.graph_updates = fun, graph, graph_updates
    self.nondiff_ints = tuple(n for n in nondiff_argnums if not isinstance(n, DiffState))
    self.diff_states = {d.argnum: d for d in nondiff_argnums if isinstance(d, DiffState)}
    self.as_state = all(resolve(graph, graph_updates))
    self.fwd = self.bwd = None

  def defvjp(self, fwd: tp.Callable, bwd: tp.Callable, symbolic_zeros: bool = False) -> None:
    """Sets the forward rule ``fwd(*args) -> (out, residuals)`` (residuals may hold
    Modules) and the backward rule (see the module docstring)."""
    if symbolic_zeros:
      raise NotImplementedError('custom_vjp: symbolic_zeros is not supported.')
    self.fwd, self.bwd = fwd, bwd
    try:
      self.wants_updates_g = 'updates_g' in inspect.signature(bwd).parameters
    except (TypeError, ValueError):
      self.wants_updates_g = False

  def __call__(self, *args):
    if self.fwd is None:
      raise AttributeError(f'No VJP defined for custom_vjp function {self.__name__} using '
                           'defvjp.')
    args = tree_mode.call('custom_vjp', lambda *a: a, self.graph, self.graph_updates, *args)
    nodes: list = []
    dyn_args = extract(args, nodes)
    flat = Flat(tuple(nodes))
    nondiff = self._nondiff_positions(dyn_args)
    specs = [self.diff_states.get(i, DiffState(i, ...)) for i in range(len(args))
             if i not in nondiff]
    split = DiffSplit(specs, dyn_args, flat, 'custom_vjp')
    nondiff_values = [args[i] for i in nondiff]

    def call(fn, inputs, rest):
      full, call_args = split.assemble(inputs, rest)
      roots, origin = build_inside(flat.graphdef, full)
      out = fn(*insert(call_args, roots))
      static, leaves = flatten_outside(roots, None, origin, full, flat.graphdef)
      return out, (leaves, Box(static))

    @jax.custom_vjp
    def pure(inputs, rest):
      return call(self.fun, inputs, rest)

    def fwd(inputs, rest):
      (out, res), effects = call(self.fwd, inputs, rest)
      res_nodes: list = []
      (res_dyn,) = extract([res], res_nodes)
      res_flat = Flat(tuple(res_nodes))
      return (out, effects), ([h._raw_value for h in res_flat.handles], res_dyn,
                              Box(res_flat.graphdef))

    def bwd(res, g):
      res_leaves, res_dyn, res_def = res
      res_value = insert(res_dyn, build_inside(res_def.value, res_leaves)[0])
      out_g, (updates_g, box) = g
      updates_g, written = _per_leaf(updates_g, box.value.changed, primals)
      if self.as_state:
        result = self.bwd(*nondiff_values, res_value,
                          (self._updates_as_states(split, updates_g), out_g))
      elif self.wants_updates_g:
        result = self.bwd(*nondiff_values, res_value, out_g,
                          updates_g=_updates_as_nodes(flat, dyn_args, updates_g, written))
      else:
        result = self.bwd(*nondiff_values, res_value, out_g)
      return self._cotangents(split, result, primals), None

    pure.defvjp(fwd, bwd)
    inputs, rest = split.inputs()
    primals = [jax.ShapeDtypeStruct(np.shape(h._raw_value),
                                    jax.dtypes.result_type(h._raw_value))
               for h in flat.handles]
    out, (effects, box) = pure(inputs, rest)
    write_back(flat, box.value, effects)
    return out

  def _nondiff_positions(self, dyn_args) -> list[int]:
    n = len(dyn_args)
    positions = []
    for i in self.nondiff_ints:
      if not -n <= i < n:
        raise ValueError(f'custom_vjp: nondiff_argnums entry {i} is out of range for {n} '
                         'positional arguments.')
      leaves = jax.tree.leaves(dyn_args[i], is_leaf=lambda x: isinstance(x, NodeSlot))
      if any(isinstance(x, NodeSlot) for x in leaves):
        raise ValueError(f'custom_vjp: nondiff_argnums marks argument {i % n}, which holds a '
                         'Module (graph node); integers cannot mark graph nodes as '
                         'non-differentiable, use a DiffState(argnum, filter) instead.')
      positions.append(i % n)
    return sorted(positions)

  def _updates_as_states(self, split: DiffSplit, updates_g: list) -> tuple:
    """Per differentiated argument: its value with each Module replaced by the State of
    the cotangents of all its leaves, other values by ``None``."""
    flat = split.flat
    out = []
    for d in split.args:
      values = [None if part is None else State.from_flat_path(
        (path[1:], h.replace(updates_g[i]) if isinstance(h, Variable) else updates_g[i])
        for i, (path, h) in enumerate(zip(flat.paths, flat.handles, strict=True))
        if path[0] == v.index) for part, v in zip(d.parts, d.values, strict=True)]
      out.append(d.treedef.unflatten(values))
    return tuple(out)

  def _cotangents(self, split: DiffSplit, result, primals: list) -> list:
    """``bwd``'s result in the layout of ``split.inputs()``."""
    if not isinstance(result, (tuple, list)) or len(result) != len(split.args):
      raise ValueError(f'custom_vjp: bwd must return a tuple with one cotangent per '
                       f'differentiated argument ({len(split.args)}), got {result!r:.200}.')
    out = []
    for d, r in zip(split.args, result, strict=True):
      values = []
      for part, cut in zip(d.parts, d.treedef.flatten_up_to(r), strict=True):
        if part is None:
          values.append(cut)
          continue
        by_path = _leaves_by_path(cut)
        values.append([_cotangent(by_path.get(split.flat.paths[i][1:]), primals[i])
                       for i in part])
      out.append(d.treedef.unflatten(values))
    return out


def _per_leaf(updates_g: list, changed: tuple | None, primals: list) -> tuple[list, list]:
  """The cotangent of every graph leaf (zeros for the ones the function did not write)
  and which ones it wrote."""
  if changed is None:
    if len(updates_g) != len(primals):
      raise ValueError('custom_vjp: the function changed the structure of its Module '
                       'arguments (new or removed Variables); it cannot be differentiated.')
    return list(updates_g), [True] * len(primals)
  full = [_cotangent(None, p) for p in primals]
  written = [False] * len(primals)
  for i, g in zip(changed, updates_g, strict=False):
    full[i], written[i] = g, True
  return full, written


def _updates_as_nodes(flat: Flat, dyn_args: list, updates_g: list, written: list) -> tuple:
  """The arguments with each Module rebuilt over the cotangents of the Variables the
  function wrote (the others ``None``) and every other value ``None`` (tree mode's
  ``updates_g``)."""
  roots, _ = build_inside(flat.graphdef, updates_g)
  for path, w in zip(flat.paths, written, strict=True):
    if not w:
      parent = roots[path[0]]
      for key in path[1:-1]:
        parent = parent._graph_children()[key] if isinstance(parent, Object) else parent[key]
      if isinstance(parent, Object):
        object.__setattr__(parent, path[-1], None)
      else:
        parent[path[-1]] = None
  is_slot = lambda x: isinstance(x, NodeSlot)  # noqa: E731
  return tuple(jax.tree.map(lambda x: roots[x.index] if is_slot(x) else None, a,
                            is_leaf=is_slot) for a in dyn_args)


def _leaves_by_path(tangent) -> dict:
  """A Module's cotangent (State, nested mapping or Module of its structure) by path."""
  if isinstance(tangent, Mapping):
    return dict(State(tangent).flat_state())
  return dict(flatten(tangent)[1])


def _cotangent(leaf, primal: jax.ShapeDtypeStruct):
  """A cotangent leaf for ``primal``: zeros when missing, ``float0`` for integer leaves."""
  if not np.issubdtype(primal.dtype, np.inexact):
    return np.zeros(primal.shape, jax.dtypes.float0)
  if leaf is None:
    return jax.numpy.zeros(primal.shape, primal.dtype)
  return leaf.raw_value if isinstance(leaf, Variable) else leaf


def custom_vjp(fun=None, *, nondiff_argnums: tuple = (), graph: bool | None = None,
               graph_updates: bool | None = None):
  """``jax.custom_vjp`` for functions of Modules (a decorator, with or without arguments);
  returns a :class:`CustomVjp` to give rules with ``defvjp(fwd, bwd)``.

  ``nondiff_argnums`` holds integers (arguments without cotangent, passed first to
  ``bwd``; not Modules) and ``DiffState(argnum, filter)`` (a Module argument's
  differentiable leaves; graph mode with graph updates only). See the module docstring.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> @nnx.custom_vjp(nondiff_argnums=(1,))
  ... def scale(x, k):
  ...   return x * k
  >>> scale.defvjp(lambda x, k: (x * k, None), lambda k, _, g: (g[1] * k * 2,))
  >>> float(nnx.grad(scale)(jnp.array(1.0), 3.0))
  6.0
  """
  if fun is None:
    return functools.partial(custom_vjp, nondiff_argnums=nondiff_argnums, graph=graph,
                             graph_updates=graph_updates)
  if not all(resolve(graph, graph_updates)) and any(isinstance(n, DiffState)
                                                    for n in nondiff_argnums):
    raise ValueError('custom_vjp: `nondiff_argnums` cannot contain `DiffState` objects when '
                     '`graph=False` or `graph_updates=False`.')
  return CustomVjp(fun, tuple(nondiff_argnums), graph, graph_updates)
