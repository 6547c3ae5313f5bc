"""Plain ``bridge`` Modules and Linen modules as submodules of a Linen-style
``bridge.bridge.Module`` (``flax.nnx.bridge.nnx_in_bridge_mdl``/``linen_in_bridge_mdl``).

>>> import jax, jax.numpy as jnp
>>> import flax.linen as nn
>>> import bridge as nnx
>>> class Net(nnx.bridge.Module):
...   @nnx.bridge.compact
...   def __call__(self, x):
...     x = nnx.bridge.nnx_in_bridge_mdl(lambda rngs: nnx.Linear(3, 4, rngs=rngs))(x)
...     return nnx.bridge.linen_in_bridge_mdl(nn.Dense(2))(x)
>>> variables = Net().init(0, jnp.ones((1, 3)))
>>> jax.tree.map(jnp.shape, variables['params'])
{'Dense_0': {'bias': (2,), 'kernel': (4, 2)}, 'Linear_0': {'bias': (4,), 'kernel': (3, 4)}}
>>> Net().apply(variables, jnp.ones((5, 3))).shape
(5, 2)
"""

from __future__ import annotations

import typing as tp

import flax.linen as nn

from bridge.graph import clone, update
from bridge.graph import state as graph_state
from bridge.interop.bridge_module import Module as BridgeModule
from bridge.interop.bridge_module import _auto_name, _set_initializing, current_context
from bridge.interop.to_nnx import ToNNX
from bridge.module import Module
from bridge.rngs import Rngs, RngState
from bridge.transforms.jit import jit
from bridge.transforms.lift import eval_shape


def _bound_parent(what: str) -> tuple:
  ctx = current_context()
  if ctx is None or ctx.module.scope is None:
    raise AssertionError(f'{what}() is only needed inside a bridge Module method run by '
                         'init/apply (its setup() or a @compact method).')
  return ctx, ctx.module


def _attach(ctx, parent: BridgeModule, module, name: str | None, type_for_name: type):
  """In ``@compact`` code, sets ``module`` as attribute ``name`` (default
  ``ClassName_<n>``); in ``setup`` the user assigns it."""
  if ctx.in_compact:
    setattr(parent, name or _auto_name(ctx, type_for_name), module)
  return module


def nnx_in_bridge_mdl(factory: tp.Callable[[Rngs], Module], name: str | None = None) -> Module:
  """A plain ``bridge`` Module as a submodule of the running bridge Module: made by
  ``factory(rngs)`` from the parent's Rngs at ``init``; at ``apply`` made abstract (no
  weights computed) and filled with the given variables, with real RNG state. In
  ``@compact`` code it is attached as ``name`` (default ``ClassName_<n>``). See the module
  docstring for an example."""
  ctx, parent = _bound_parent('nnx_in_bridge_mdl')
  rngs = parent.scope.rngs
  if parent.is_initializing():
    module = factory(rngs)
  else:
    module = eval_shape(factory, clone(rngs) if rngs else Rngs(7))
    if rngs:
      update(module, jit(lambda r: graph_state(factory(r), RngState))(rngs))
  return _attach(ctx, parent, module, name, type(module))


def linen_in_bridge_mdl(linen_module: nn.Module, name: str | None = None) -> Module:
  """A Linen module as a submodule of the running bridge Module, through ``ToNNX`` with the
  parent's Rngs: initialized by the parent's ``init``, applied by its ``apply``. In
  ``@compact`` code it is attached as ``name`` (default ``ClassName_<n>`` of the Linen
  class). See the module docstring for an example."""
  ctx, parent = _bound_parent('linen_in_bridge_mdl')
  module = ToNNX(linen_module, parent.scope.rngs)
  _set_initializing(module, parent.is_initializing())
  return _attach(ctx, parent, module, name, type(linen_module))
