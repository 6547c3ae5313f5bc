"""``cached_partial`` and ``jit_partial``: bind the Modules a step function always takes
(model, optimizer) once, and call it with the rest.

``jit`` already keeps the walk of its graph arguments while their structure is unchanged, so
binding them is all the caching needed: the steady call costs what a direct call of the
jitted function costs, and changes made inside reach the bound objects.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
>>> @nnx.jit
... def step(model, x):
...   model.bias.value += 1.0
...   return model(x).shape
>>> cached_step = nnx.cached_partial(step, model)
>>> cached_step(jnp.ones((3, 2))), model.bias.value.tolist()
((3, 1), [1.0])
"""

from __future__ import annotations

import functools

from bridge.graph_mode import resolve
from bridge.transforms.jit import jit


def cached_partial(f, *cached_args, graph: bool | None = None,
                   graph_updates: bool | None = None):
  """``f`` with ``cached_args`` bound as its first positional arguments (usually the
  Modules of a jitted train step); returns a function of the remaining arguments. See the
  module docstring.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  >>> nnx.cached_partial(lambda m, x: m(x), model)(jnp.ones((3, 2))).shape
  (3, 1)
  """
  resolve(graph, graph_updates)
  return functools.partial(f, *cached_args)


def jit_partial(fun, *partial_args, in_shardings=None, out_shardings=None,
                static_argnums=None, static_argnames=None, donate_argnums=None,
                donate_argnames=None, keep_unused: bool = False, device=None, backend=None,
                inline: bool = False, graph: bool | None = None,
                graph_updates: bool | None = None):
  """``jit(fun, ...)`` with ``partial_args`` bound as its first positional arguments.
  Argument numbers (``static_argnums``, ``donate_argnums``, ``in_shardings`` entries)
  count the bound arguments too, as positions of ``fun``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  >>> forward = nnx.jit_partial(lambda m, x: m(x), model)
  >>> forward(jnp.ones((3, 2))).shape
  (3, 1)
  """
  jitted = jit(fun, in_shardings=in_shardings, out_shardings=out_shardings,
               static_argnums=static_argnums, static_argnames=static_argnames,
               donate_argnums=donate_argnums, donate_argnames=donate_argnames,
               keep_unused=keep_unused, device=device, backend=backend, inline=inline,
               graph=graph, graph_updates=graph_updates)
  return functools.partial(jitted, *partial_args)
