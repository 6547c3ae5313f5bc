"""``make_jaxpr``: the jaxpr of a function of Modules. A Module argument's inputs are its
leaves in ``split`` order; the outputs are the function's own (Variables it writes are
not outputs, as in flax.nnx).
"""

from __future__ import annotations

import functools

import jax

from bridge.graph_mode import resolve
from bridge.transforms import tree_mode
from bridge.transforms._boundary import build_inside, insert, split_args


def make_jaxpr(f=None, *, graph: bool | None = None, graph_updates: bool | None = None,
               static_argnums=()):
  """``jax.make_jaxpr`` for functions of Modules (a decorator, with or without arguments).
  As in flax.nnx, it needs ``graph_updates=False``. See the module docstring.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> jaxpr = nnx.make_jaxpr(lambda m, x: m(x), graph_updates=False)(model, jnp.ones((1, 2)))
  >>> [v.aval.shape for v in jaxpr.jaxpr.invars]
  [(3,), (2, 3), (1, 2)]
  """
  _, updates = resolve(graph, graph_updates)
  if updates:
    raise ValueError('nnx.make_jaxpr does not support graph_updates=True.')
  if f is None:
    return functools.partial(make_jaxpr, graph=graph, graph_updates=graph_updates,
                             static_argnums=static_argnums)
  static = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)

  @functools.wraps(f)
  def wrapper(*args):
    n = len(args)
    fixed = {i % n: args[i] for i in static}
    dyn_args, flat, leaves = split_args([a for i, a in enumerate(args) if i not in fixed])

    def pure(leaves, dyn):
      it = iter(insert(dyn, build_inside(flat.graphdef, leaves)[0]))
      return f(*(fixed[i] if i in fixed else next(it) for i in range(n)))

    return jax.make_jaxpr(pure)(leaves, dyn_args)

  return tree_mode.wrap('make_jaxpr', wrapper, graph, graph_updates)
