"""Lifting JAX transforms over functions of Modules: ``eval_shape``, ``remat``, ``cond``,
``switch``, ``fori_loop``, ``while_loop``.

Each one splits the graph arguments at the boundary (``_boundary``), runs the JAX
transform on a pure function of their leaves, and writes the effects back.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> abstract = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
>>> abstract.kernel.value.shape, type(abstract.kernel.value).__name__
((2, 3), 'ShapeDtypeStruct')
"""

from __future__ import annotations

import functools
import typing as tp

import jax
from jax import lax

from bridge.transforms import tree_mode
from bridge.transforms._boundary import (
  Box,
  Flat,
  build_copy,
  build_inside,
  flatten_outside,
  insert,
  split_args,
  write_back,
)


def _pure(flat: Flat, f):
  """``f`` as a function of ``(leaves, dynamic args)`` returning ``(leaves, Box)``."""
  def pure(leaves, dyn_args):
    roots, origin = build_inside(flat.graphdef, leaves)
    out = f(*insert(dyn_args, roots))
    static, out_leaves = flatten_outside(roots, out, origin)
    return out_leaves, Box(static)
  return pure


def lifted_call(run: tp.Callable, fns: tp.Sequence[tp.Callable], args: tp.Sequence):
  """Calls ``run(pures, leaves, dyn_args)`` where ``pures`` are ``fns`` made pure over the
  graph nodes in ``args``; writes the effects back and returns the output."""
  dyn_args, flat, leaves = split_args(args)
  out_leaves, box = run([_pure(flat, f) for f in fns], leaves, dyn_args)
  return write_back(flat, box.value, out_leaves)


def eval_shape(f, *args, graph: bool | None = None, graph_updates: bool | None = None,
               **kwargs):
  """``jax.eval_shape`` for functions of Modules: the output (Modules included) with
  ``jax.ShapeDtypeStruct`` values; no arrays are allocated. The arguments are never
  modified: Modules in the output are new objects, even those ``f`` got as arguments.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> out = nnx.eval_shape(lambda m, x: m(x), model, jnp.ones((1, 2)))
  >>> out.shape, type(model.kernel.value).__name__
  ((1, 3), 'ArrayImpl')
  """
  args = tree_mode.call('eval_shape', lambda *a: a, graph, graph_updates, *args)
  g = functools.partial(f, **kwargs) if kwargs else f
  dyn_args, flat, leaves = split_args(args)
  out_leaves, box = jax.eval_shape(_pure(flat, g), leaves, dyn_args)
  return build_copy(box.value, out_leaves)


def remat(f=None, *, prevent_cse: bool = True, static_argnums=(), policy=None,
          graph: bool | None = None, graph_updates: bool | None = None):
  """``jax.checkpoint`` for functions of Modules: intermediates are recomputed in the
  backward pass instead of stored.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  >>> g = nnx.grad(nnx.remat(lambda m, x: m(x).sum()))(model, jnp.ones((1, 2)))
  >>> g['bias'].value.tolist()
  [1.0, 1.0]
  """
  if f is None:
    return functools.partial(remat, prevent_cse=prevent_cse, static_argnums=static_argnums,
                             policy=policy, graph=graph, graph_updates=graph_updates)
  if static_argnums:
    raise NotImplementedError('remat: static_argnums is not supported; close over the '
                              'static values instead (functools.partial).')

  @functools.wraps(f)
  def wrapper(*args):
    return lifted_call(
      lambda pures, leaves, dyn: jax.checkpoint(pures[0], prevent_cse=prevent_cse,
                                                policy=policy)(leaves, dyn), [f], args)
  return tree_mode.wrap('remat', wrapper, graph, graph_updates)


checkpoint = remat


def cond(pred, true_fun: tp.Callable, false_fun: tp.Callable, *operands,
         graph: bool | None = None, graph_updates: bool | None = None):
  """``lax.cond`` whose branches may take and mutate Modules (both branches must leave the
  same structure).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> c = nnx.Variable(jnp.array(0))
  >>> def up(c): c.value += 1
  >>> def down(c): c.value -= 1
  >>> nnx.cond(True, up, down, c); int(c.value)
  1
  """
  operands = tree_mode.call('cond', lambda *a: a, graph, graph_updates, *operands)
  return lifted_call(
    lambda pures, leaves, dyn: lax.cond(pred, pures[0], pures[1], leaves, dyn),
    [true_fun, false_fun], operands)


def switch(index, branches: tp.Sequence[tp.Callable], *operands, graph: bool | None = None,
           graph_updates: bool | None = None):
  """``lax.switch`` whose branches may take and mutate Modules.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> c = nnx.Variable(jnp.array(1))
  >>> def double(c): c.value *= 2
  >>> def negate(c): c.value = -c.value
  >>> nnx.switch(1, [double, negate], c); int(c.value)
  -1
  """
  operands = tree_mode.call('switch', lambda *a: a, graph, graph_updates, *operands)
  return lifted_call(lambda pures, leaves, dyn: lax.switch(index, pures, leaves, dyn),
                     list(branches), operands)


def _carry_body(flat: Flat, f, with_index: bool):
  """A loop body over ``(leaves, dyn)`` carries that checks the structure is unchanged."""
  def body(*a):
    i, (leaves, dyn) = (a[0], a[1]) if with_index else (None, a[0])
    roots, _ = build_inside(flat.graphdef, leaves)
    carry = insert(dyn, roots)
    new = f(i, carry) if with_index else f(carry)
    (new_dyn,), after, new_leaves = split_args([new])
    if after.graphdef != flat.graphdef:
      raise ValueError('The loop body changed the structure of the Modules in its carry '
                       '(new or removed Variables or attributes); loops must keep it.')
    return new_leaves, new_dyn
  return body


def _loop(run, f_body, init_val, f_cond=None):
  (dyn,), flat, leaves = split_args([init_val])
  body = _carry_body(flat, f_body, with_index=f_cond is None)
  cond_fn = None
  if f_cond is not None:
    def cond_fn(carry):
      roots, _ = build_inside(flat.graphdef, carry[0])
      return f_cond(insert(carry[1], roots))
  out_leaves, out_dyn = run(body, cond_fn, (leaves, dyn))
  for handle, value in zip(flat.handles, out_leaves, strict=True):
    handle._raw_value = value
  return insert(out_dyn, flat.roots)


def fori_loop(lower, upper, body_fun: tp.Callable, init_val, *, unroll=None,
              graph: bool | None = None, graph_updates: bool | None = None):
  """``lax.fori_loop`` whose carry may hold Modules (updated in place afterwards).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> c = nnx.Variable(jnp.array(0))
  >>> def body(i, c):
  ...   c.value += i
  ...   return c
  >>> int(nnx.fori_loop(0, 4, body, c).value), int(c.value)
  (6, 6)
  """
  kwargs = {} if unroll is None else {'unroll': unroll}
  (init_val,) = tree_mode.call('fori_loop', lambda *a: a, graph, graph_updates, init_val)
  return _loop(lambda body, _, init: lax.fori_loop(lower, upper, body, init, **kwargs),
               body_fun, init_val)


def while_loop(cond_fun: tp.Callable, body_fun: tp.Callable, init_val, *,
               graph: bool | None = None, graph_updates: bool | None = None):
  """``lax.while_loop`` whose carry may hold Modules (updated in place afterwards).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> c = nnx.Variable(jnp.array(1))
  >>> def body(c):
  ...   c.value *= 3
  ...   return c
  >>> int(nnx.while_loop(lambda c: c.value < 20, body, c).value)
  27
  """
  (init_val,) = tree_mode.call('while_loop', lambda *a: a, graph, graph_updates, init_val)
  return _loop(lambda body, cond_fn, init: lax.while_loop(cond_fn, body, init),
               body_fun, init_val, f_cond=cond_fun)
