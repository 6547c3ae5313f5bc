"""``checkify``: ``jax.experimental.checkify`` for functions of Modules.

>>> import jax.numpy as jnp
>>> from jax.experimental import checkify as checkify_lib
>>> import bridge as nnx
>>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
>>> def f(m, x):
...   checkify_lib.check(jnp.all(x > 0), 'x must be positive')
...   return m(x)
>>> err, out = nnx.jit(nnx.checkify(f))(model, -jnp.ones((1, 2)))
>>> err.get(), out.shape
('x must be positive (`check` failed)', (1, 1))
"""

from __future__ import annotations

import functools

from jax.experimental import checkify as checkify_lib

from bridge.transforms import tree_mode
from bridge.transforms.lift import lifted_call


def checkify(f, errors=checkify_lib.user_checks, graph: bool | None = None,
             graph_updates: bool | None = None):
  """Returns ``g`` with ``g(*args) == (error, f(*args))``: the checks ``f`` makes (and the
  ``errors`` kinds jax can add) come back as a ``checkify.Error`` instead of raising, and
  changes made to Modules are written back. See the module docstring.

  >>> from jax.experimental import checkify as checkify_lib
  >>> import bridge as nnx
  >>> def positive(x):
  ...   checkify_lib.check(x > 0, 'not positive')
  ...   return x
  >>> err, out = nnx.checkify(positive)(-1.0)
  >>> err.get(), float(out)
  ('not positive (`check` failed)', -1.0)
  """
  @functools.wraps(f)
  def wrapper(*args, **kwargs):
    g = functools.partial(f, **kwargs) if kwargs else f
    error = []

    def run(pures, leaves, dyn_args):
      err, out = checkify_lib.checkify(pures[0], errors=errors)(leaves, dyn_args)
      error.append(err)
      return out

    out = lifted_call(run, [g], args)
    return error[0], out

  return tree_mode.wrap('checkify', wrapper, graph, graph_updates)
