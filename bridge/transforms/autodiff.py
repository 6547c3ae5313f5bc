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
from bridge.state import State
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


def _diff_specs(argnums) -> list[DiffState]:
  specs = (argnums,) if _is_single(argnums) else argnums
  return [s if isinstance(s, DiffState) else DiffState(s, Param) for s in specs]


def _transform(f, argnums, has_aux, holomorphic, allow_int, return_value: bool):
  specs = _diff_specs(argnums)
  single = _is_single(argnums)

  @functools.wraps(f)
  def wrapper(*args, **kwargs):
    nodes: list = []
    dyn_args = extract(args, nodes)
    dyn_kwargs = dict(zip(kwargs, extract(list(kwargs.values()), nodes), strict=True))
    flat = Flat(tuple(nodes))
    leaves = [leaf for group in flat.leaf_groups() for leaf in group]
    paths = flat.paths
    # Which leaves each spec differentiates (graph arguments) or which argument (others).
    diff_masks, plain_argnums = [], []
    for spec in specs:
      if spec.argnum >= len(args):
        raise ValueError(f'grad: argnum {spec.argnum} is out of range for {len(args)} '
                         'positional arguments.')
      slot = dyn_args[spec.argnum]
      if isinstance(slot, NodeSlot):
        predicate = filterlib.to_predicate(spec.filter)
        diff_masks.append([path[0] == slot.index and isinstance(h, Variable)
                           and predicate(path[1:], h)
                           for path, h in zip(paths, flat.handles, strict=True)])
      else:
        if not isinstance(spec.filter, type) or spec.filter is not Param:
          raise ValueError(f'grad: DiffState filter given for argument {spec.argnum}, '
                           'which is not a Module.')
        diff_masks.append(None)
        plain_argnums.append(spec.argnum)
    masks = [m for m in diff_masks if m is not None]
    owner = [next((k for k, m in enumerate(masks) if m[i]), None) for i in range(len(leaves))]
    rest = [x for x, o in zip(leaves, owner, strict=True) if o is None]
    diff_inputs = [[x for x, m in zip(leaves, mask, strict=True) if m] if mask is not None
                   else dyn_args[spec.argnum] for spec, mask in zip(specs, diff_masks,
                                                                       strict=True)]

    def pure(diff_inputs, rest):
      it_rest = iter(rest)
      its = [iter(d) for d, m in zip(diff_inputs, diff_masks, strict=True) if m is not None]
      full = [next(it_rest) if o is None else next(its[o]) for o in owner]
      roots, origin = build_inside(flat.graphdef, full)
      call_args = list(dyn_args)
      for spec, value, mask in zip(specs, diff_inputs, diff_masks, strict=True):
        if mask is None:
          call_args[spec.argnum] = value
      call_args = insert(call_args, roots)
      out = f(*call_args, **insert(dyn_kwargs, roots))
      value, aux = out if has_aux else (out, None)
      out_static, out_leaves = flatten_outside(roots, aux, origin)
      return value, (out_leaves, Box(out_static))

    (value, (out_leaves, box)), grads = jax.value_and_grad(
      pure, argnums=0, has_aux=True, holomorphic=holomorphic, allow_int=allow_int)(
        diff_inputs, rest)
    aux = write_back(flat, box.value, out_leaves)
    grads = [g if mask is None else _grad_state(g, mask, paths, flat.handles)
             for g, mask in zip(grads, diff_masks, strict=True)]
    grads = grads[0] if single else tuple(grads)
    if return_value:
      return ((value, aux) if has_aux else value), grads
    return (grads, aux) if has_aux else grads

  return wrapper


def _grad_state(grads: list, mask: list, paths, handles) -> State:
  chosen = [(path[1:], h) for path, h, m in zip(paths, handles, mask, strict=True) if m]
  return State.from_flat_path((path, h.replace(g)) for (path, h), g in
                              zip(chosen, grads, strict=True))


def grad(f=None, *, argnums=0, has_aux: bool = False, holomorphic: bool = False,
         allow_int: bool = False):
  """``jax.grad`` for functions of Modules: a Module argument's gradient is a State of its
  ``Param``\\ s (or of the Variables a ``DiffState`` filter picks)."""
  if f is None:
    return functools.partial(grad, argnums=argnums, has_aux=has_aux, holomorphic=holomorphic,
                             allow_int=allow_int)
  return _transform(f, argnums, has_aux, holomorphic, allow_int, return_value=False)


def value_and_grad(f=None, *, argnums=0, has_aux: bool = False, holomorphic: bool = False,
                   allow_int: bool = False):
  """Like :func:`grad`, returning ``(value, grads)`` (``((value, aux), grads)`` with
  ``has_aux``)."""
  if f is None:
    return functools.partial(value_and_grad, argnums=argnums, has_aux=has_aux,
                             holomorphic=holomorphic, allow_int=allow_int)
  return _transform(f, argnums, has_aux, holomorphic, allow_int, return_value=True)
