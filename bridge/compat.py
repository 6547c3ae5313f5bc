"""``nnx.compat``: the graph functions and transforms with graph mode as their default.

Each name is the ``bridge`` function of that name with ``graph=True`` (and
``graph_updates=True`` where it takes it) bound as a default, so code written for graph
mode keeps working under ``nnx.set_graph_mode(False)``.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> class Tied(nnx.Module):
...   def __init__(self):
...     self.a = nnx.Param(jnp.ones(1))
...     self.b = self.a
>>> with nnx.set_graph_mode(False):
...   graphdef, state = nnx.compat.split(Tied())  # shared references are fine here
>>> list(state.keys())
['a']
"""

from __future__ import annotations

import functools
import inspect

NAMES = ('backup_keys', 'cached_partial', 'checkify', 'clone', 'cond', 'custom_vjp',
         'eval_shape', 'flatten', 'fori_loop', 'fork_rngs', 'get_abstract_model', 'grad',
         'graphdef', 'iter_children', 'iter_graph', 'iter_modules', 'jit', 'jvp', 'pmap',
         'recursive_map', 'remat', 'reseed', 'scan', 'shard_map', 'split', 'split_rngs',
         'state', 'switch', 'value_and_grad', 'view', 'view_info', 'vjp', 'vmap',
         'while_loop')
"""The names flax.nnx 0.12.8's ``nnx.compat`` holds."""

_cache: dict = {}


def graph_mode_version(fn):
  """``fn`` with ``graph=True``/``graph_updates=True`` bound where its signature has them.

  >>> import bridge as nnx
  >>> graph_mode_version(nnx.jit).keywords
  {'graph': True, 'graph_updates': True}
  """
  params = inspect.signature(fn).parameters
  return functools.partial(fn, **{k: True for k in ('graph', 'graph_updates') if k in params})


def __getattr__(name):
  if name not in NAMES:
    raise AttributeError(f'module bridge.compat has no attribute {name!r}')
  if name not in _cache:
    import bridge
    fn = getattr(bridge, name, None) or getattr(bridge.rngs, name, None)
    if fn is None:
      raise AttributeError(f'bridge.compat.{name}: bridge has no {name!r} yet.')
    _cache[name] = graph_mode_version(fn)
  return _cache[name]


def __dir__():
  return sorted({*globals(), *NAMES})
