"""``vjp`` and ``jvp`` over functions of Modules: linearize at the primals, cotangents and
tangents of a Module are Modules of the same structure.

As in flax.nnx 0.12, they run with ``graph=False`` or ``graph_updates=False`` (graph mode
with graph updates is ``NotImplementedError``). Variables the function writes are written
back to the caller's objects.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
>>> out, vjp_fn = nnx.vjp(lambda m, x: m(x).sum(), m, jnp.ones((3, 2)), graph=False)
>>> m_grad, x_grad = vjp_fn(jnp.ones_like(out))
>>> type(m_grad).__name__, m_grad.bias.value.tolist(), x_grad.shape
('Linear', [3.0], (3, 2))
"""

from __future__ import annotations

import functools

import jax

from bridge.graph_mode import resolve
from bridge.transforms import tree_mode
from bridge.transforms._boundary import (
  Box,
  Flat,
  build_inside,
  extract,
  flatten_outside,
  insert,
  split_args,
  write_back,
)


def _check_mode(name: str, graph, graph_updates) -> None:
  if all(resolve(graph, graph_updates)):
    raise NotImplementedError(f'graph-mode with graph_updates is not supported for nnx.{name}. '
                              'Set graph=False or graph_updates=False.')


def _pure(flat: Flat, f, has_aux: bool):
  """``f`` over ``(leaves, dyn_args)`` returning ``(primal_out, (effect leaves, Box))``; the
  effects are the Variables written and ``aux``."""
  def pure(leaves, dyn_args):
    roots, origin = build_inside(flat.graphdef, leaves)
    out = f(*insert(dyn_args, roots))
    value, aux = out if has_aux else (out, None)
    static, out_leaves = flatten_outside(roots, aux, origin)
    return value, (out_leaves, Box(static))
  return pure


def _as_nodes(flat: Flat, leaves: list, dyn_args):
  """The arguments rebuilt over ``leaves`` (cotangents, tangents): new nodes of the
  arguments' structure."""
  roots, _ = build_inside(flat.graphdef, leaves)
  return tuple(insert(dyn_args, roots))


def vjp(f=None, *primals, has_aux: bool = False, reduce_axes=(), graph: bool | None = None,
        graph_updates: bool | None = None):
  """``jax.vjp`` for functions of Modules: returns ``(primals_out, vjp_fn)`` (and ``aux``
  with ``has_aux``); ``vjp_fn(cotangent)`` gives one cotangent per primal, a Module's as a
  Module of the same structure. Without primals it is a decorator.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> @nnx.vjp(graph_updates=False)
  ... def f(m, x):
  ...   return m(x).sum()
  >>> out, vjp_fn = f(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), jnp.ones((1, 2)))
  >>> vjp_fn(1.0)[0].bias.value.tolist()
  [1.0]
  """
  _check_mode('vjp', graph, graph_updates)
  if reduce_axes:
    raise NotImplementedError('reduce_axes argument to vjp is deprecated')
  if f is None or not primals:
    return functools.partial(vjp, *(() if f is None else (f,)), has_aux=has_aux,
                             graph=graph, graph_updates=graph_updates)
  primals = tree_mode.call('vjp', lambda *a: a, graph, graph_updates, *primals)
  dyn_args, flat, leaves = split_args(primals)
  out, raw_vjp, (effects, box) = jax.vjp(_pure(flat, f, has_aux), leaves, dyn_args,
                                         has_aux=True)
  aux = write_back(flat, box.value, effects)

  def vjp_fn(cotangent):
    return _as_nodes(flat, *raw_vjp(cotangent))

  return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


def jvp(f=None, primals=None, tangents=None, *, has_aux: bool = False,
        graph: bool | None = None, graph_updates: bool | None = None):
  """``jax.jvp`` for functions of Modules: returns ``(primals_out, tangent_out)`` (and
  ``aux`` with ``has_aux``). A Module primal's tangent is a Module of the same structure
  (e.g. ``nnx.clone`` of it with the tangent values). Without primals it is a decorator
  called as ``f(primals, tangents)``.

  >>> import jax
  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  >>> zero = nnx.clone(m)
  >>> for v in (zero.kernel, zero.bias): v.value = jnp.zeros_like(v.value)
  >>> out, tangent = nnx.jvp(lambda m, x: m(x).sum(), (m, jnp.ones((1, 2))),
  ...                        (zero, jnp.ones((1, 2))), graph=False)
  >>> bool(tangent == m.kernel.value.sum())
  True
  """
  _check_mode('jvp', graph, graph_updates)
  if f is None or primals is None or tangents is None:
    return functools.partial(jvp, *(() if f is None else (f,)), has_aux=has_aux,
                             graph=graph, graph_updates=graph_updates)
  primals = tree_mode.call('jvp', lambda *a: a, graph, graph_updates, *primals)
  tangents = tree_mode.call('jvp', lambda *a: a, graph, graph_updates, *tangents)
  dyn_args, flat, leaves = split_args(primals)
  t_nodes: list = []
  t_dyn = extract(list(tangents), t_nodes)
  t_flat = Flat(tuple(t_nodes))
  if t_flat.paths != flat.paths or jax.tree.structure(t_dyn) != jax.tree.structure(dyn_args):
    raise ValueError('jvp: tangents must have the structure of primals (a Module primal '
                     'takes a Module tangent of the same structure); primals have graph '
                     f'leaves {flat.paths}, tangents {t_flat.paths}.')
  t_leaves = [h._raw_value for h in t_flat.handles]
  (out, (effects, box)), (t_out, _) = jax.jvp(_pure(flat, f, has_aux), (leaves, dyn_args),
                                              (t_leaves, t_dyn))
  aux = write_back(flat, box.value, effects)
  return (out, t_out, aux) if has_aux else (out, t_out)
