"""``grad`` and ``value_and_grad`` over Modules: gradients come back as a ``State``.

For an argument that is a Module, the gradient is taken with respect to its Variables that
match a filter (``Param`` unless a ``DiffState(argnum, filter)`` says otherwise); other
changes made inside (BatchNorm statistics, sown values, RNG counters) are applied to the
caller's objects.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
>>> grads = nnx.grad(lambda m, x: m(x).sum())(model, jnp.ones((3, 2)))
>>> grads['kernel'].value.tolist(), grads['bias'].value.tolist()
([[3.0], [3.0]], [3.0])
"""

from __future__ import annotations

import functools
import typing as tp

import jax

from bridge import filters as filterlib
from bridge.graph_mode import resolve
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
from bridge.variables import Param, Variable


class DiffState(tp.NamedTuple):
  """Differentiate argument ``argnum`` with respect to the Variables matching ``filter``."""
  argnum: int
  filter: tp.Any


def _is_single(argnums) -> bool:
  """Whether ``argnums`` names one argument (an int or one DiffState, itself a tuple)."""
  return isinstance(argnums, DiffState) or not isinstance(argnums, (tuple, list))


def _diff_specs(argnums, default_filter) -> list[DiffState]:
  specs = (argnums,) if _is_single(argnums) else argnums
  return [s if isinstance(s, DiffState) else DiffState(s, default_filter) for s in specs]


def _is_slot(x) -> bool:
  return isinstance(x, NodeSlot)


class _DiffArg(tp.NamedTuple):
  """One differentiated argument: its pytree cut at the graph nodes (``treedef``), and
  for each cut leaf either the graph-leaf indices it stands for (a node) or ``None``."""
  argnum: int
  treedef: tp.Any
  parts: list  # per cut leaf: list of graph-leaf indices (a node) or None (a value)
  values: list  # per cut leaf: the NodeSlot or the plain value


class DiffSplit:
  """The differentiated arguments of a call split at the boundary: each one's value with
  its graph nodes replaced by the lists of their differentiated leaves (``inputs``), and
  the graph leaves no argument differentiates (``rest``). A graph leaf goes to the first
  spec (and first occurrence of its node) whose filter it matches; a Variable passed
  itself (alone or in a pytree such as a ``State``) is differentiated whatever the filter,
  as in flax.nnx, where the filter picks among a Module's Variables."""

  def __init__(self, specs: tp.Sequence[DiffState], dyn_args: list, flat: Flat, name: str):
    argnums = [s.argnum for s in specs]
    if len(set(argnums)) != len(argnums):
      raise ValueError(f'{name}: an argnum is repeated in argnums={argnums}.')
    self.dyn_args, self.flat = dyn_args, flat
    taken: set[int] = set()
    self.args: list[_DiffArg] = []
    for spec in specs:
      if not -len(dyn_args) <= spec.argnum < len(dyn_args):
        raise TypeError(f'{name}: differentiating with respect to argnums={spec.argnum} needs'
                        f' at least {spec.argnum + 1} positional arguments, got '
                        f'{len(dyn_args)}.')
      values, treedef = jax.tree_util.tree_flatten(dyn_args[spec.argnum], is_leaf=_is_slot)
      predicate = filterlib.to_predicate(spec.filter)
      parts = []
      for v in values:
        if not isinstance(v, NodeSlot):
          parts.append(None)
          continue
        pick = _everything if isinstance(flat.root(v.index), Variable) else predicate
        chosen = [i for i, (path, h) in enumerate(zip(flat.paths, flat.handles, strict=True))
                  if path[0] == v.index and i not in taken
                  and pick(path[1:], h if isinstance(h, Variable) else h._raw_value)]
        taken.update(chosen)
        parts.append(chosen)
      self.args.append(_DiffArg(spec.argnum % len(dyn_args), treedef, parts, values))
    self.is_diff = [i in taken for i in range(len(flat.handles))]

  def inputs(self) -> tuple[list, list]:
    """``(inputs, rest)`` at the current leaf values."""
    leaves = [h._raw_value for h in self.flat.handles]
    rest = [x for x, diff in zip(leaves, self.is_diff, strict=True) if not diff]
    inputs = [d.treedef.unflatten([v if part is None else [leaves[i] for i in part]
                                   for part, v in zip(d.parts, d.values, strict=True)])
              for d in self.args]
    return inputs, rest

  def assemble(self, inputs, rest) -> tuple[list, list]:
    """Undoes ``inputs``: ``(all graph leaves, positional arguments with NodeSlots)``."""
    it_rest = iter(rest)
    full = [None if diff else next(it_rest) for diff in self.is_diff]
    call_args = list(self.dyn_args)
    for d, value in zip(self.args, inputs, strict=True):
      values = []
      for part, v, cut in zip(d.parts, d.values, d.treedef.flatten_up_to(value), strict=True):
        if part is None:
          values.append(cut)
        else:
          for i, x in zip(part, cut, strict=True):
            full[i] = x
          values.append(v)
      call_args[d.argnum] = d.treedef.unflatten(values)
    return full, call_args


def _everything(path, value) -> bool:
  return True


def _transform(f, argnums, has_aux, holomorphic, allow_int, return_value: bool,
               as_state: bool):
  specs = _diff_specs(argnums, Param if as_state else ...)
  single = _is_single(argnums)

  @functools.wraps(f)
  def wrapper(*args, **kwargs):
    nodes: list = []
    dyn_args = extract(args, nodes)
    dyn_kwargs = dict(zip(kwargs, extract(list(kwargs.values()), nodes), strict=True))
    flat = Flat(tuple(nodes))
    split = DiffSplit(specs, dyn_args, flat, f'{"value_and_" if return_value else ""}grad')

    def pure(inputs, rest):
      full, call_args = split.assemble(inputs, rest)
      roots, origin = build_inside(flat.graphdef, full)
      out = f(*insert(call_args, roots), **insert(dyn_kwargs, roots))
      value, aux = out if has_aux else (out, None)
      out_static, out_leaves = flatten_outside(roots, aux, origin)
      return value, (out_leaves, Box(out_static))

    (value, (out_leaves, box)), grads = jax.value_and_grad(
      pure, argnums=0, has_aux=True, holomorphic=holomorphic, allow_int=allow_int)(
        *split.inputs())
    aux = write_back(flat, box.value, out_leaves)
    grads = [node_grads(d, g, flat, as_state) for d, g in zip(split.args, grads, strict=True)]
    grads = grads[0] if single else tuple(grads)
    if return_value:
      return ((value, aux) if has_aux else value), grads
    return (grads, aux) if has_aux else grads

  return wrapper


def node_grads(d: _DiffArg, grads, flat: Flat, as_state: bool):
  """The gradient of one argument, each graph node's part as a State of its leaves or
  (``as_state=False``) as a node of the same structure holding the gradients."""
  values = []
  for part, v, cut in zip(d.parts, d.values, d.treedef.flatten_up_to(grads), strict=True):
    if part is None:
      values.append(cut)
    elif as_state and isinstance(node := flat.root(v.index), Variable):
      # a Variable passed itself: its gradient is a Variable of its type (zero if another
      # argument, which holds it too, took it)
      values.append(node.replace(cut[0] if cut else jax.numpy.zeros_like(node._raw_value)))
    elif as_state:
      values.append(State.from_flat_path(
        (flat.paths[i][1:], h.replace(g) if isinstance(h := flat.handles[i], Variable) else g)
        for i, g in zip(part, cut, strict=True)))
    else:
      full = [h._raw_value for h in flat.handles]
      for i, g in zip(part, cut, strict=True):
        full[i] = g
      values.append(build_inside(flat.graphdef, full)[0][v.index])
  return d.treedef.unflatten(values)


def _check_reduce_axes(reduce_axes, name):
  if reduce_axes:
    raise NotImplementedError(f'reduce_axes argument to {name} is deprecated')


def grad(f=None, *, argnums=0, has_aux: bool = False, holomorphic: bool = False,
         allow_int: bool = False, reduce_axes=(), graph: bool | None = None,
         graph_updates: bool | None = None):
  """``jax.grad`` for functions of Modules: a Module argument's gradient is a State of its
  ``Param``\\ s (or of the Variables and arrays a ``DiffState`` filter picks); Modules may
  sit anywhere inside the arguments' pytrees.

  With ``graph=False`` or ``graph_updates=False`` (tree mode) every array of a Module
  argument is differentiated and its gradient is a Module of the same structure, as in
  flax.nnx; ``DiffState`` is then an error.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  >>> g_model, g_x = nnx.grad(lambda p: p[0](p[1]).sum())((model, jnp.ones((1, 2))))
  >>> g_model['bias'].value.tolist(), g_x.shape
  ([1.0], (1, 2))
  >>> type(nnx.grad(lambda m: m(jnp.ones((1, 2))).sum(), graph=False)(model)).__name__
  'Linear'
  """
  _check_reduce_axes(reduce_axes, 'grad')
  if f is None:
    return functools.partial(grad, argnums=argnums, has_aux=has_aux, holomorphic=holomorphic,
                             allow_int=allow_int, graph=graph, graph_updates=graph_updates)
  transformed = _transform(f, argnums, has_aux, holomorphic, allow_int, return_value=False,
                           as_state=_as_state(argnums, graph, graph_updates, 'grad'))
  return tree_mode.wrap('grad', transformed, graph, graph_updates)


def value_and_grad(f=None, *, argnums=0, has_aux: bool = False, holomorphic: bool = False,
                   allow_int: bool = False, reduce_axes=(), graph: bool | None = None,
                   graph_updates: bool | None = None):
  """Like :func:`grad`, returning ``(value, grads)`` (``((value, aux), grads)`` with
  ``has_aux``).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  >>> loss, grads = nnx.value_and_grad(lambda m: (m(jnp.ones((1, 2))) * 0).sum())(model)
  >>> float(loss), sorted(grads.keys())
  (0.0, ['bias', 'kernel'])
  """
  _check_reduce_axes(reduce_axes, 'value_and_grad')
  if f is None:
    return functools.partial(value_and_grad, argnums=argnums, has_aux=has_aux,
                             holomorphic=holomorphic, allow_int=allow_int, graph=graph,
                             graph_updates=graph_updates)
  transformed = _transform(f, argnums, has_aux, holomorphic, allow_int, return_value=True,
                           as_state=_as_state(argnums, graph, graph_updates, 'value_and_grad'))
  return tree_mode.wrap('value_and_grad', transformed, graph, graph_updates)


def _as_state(argnums, graph, graph_updates, name: str) -> bool:
  """Whether gradients of graph nodes are States (graph mode with updates) or nodes of
  the same structure (tree mode, where ``DiffState`` is an error as in flax.nnx)."""
  if all(resolve(graph, graph_updates)):
    return True
  specs = (argnums,) if _is_single(argnums) else argnums
  if any(isinstance(s, DiffState) for s in specs):
    raise ValueError(f'{name}: `argnums` cannot contain `DiffState` objects when '
                     '`graph=False` or `graph_updates=False`; remove them, or pass '
                     'graph=True and graph_updates=True.')
  return False
