"""``bridge.bridge``: the ``flax.nnx.bridge`` namespace (``import bridge as nnx`` then
``nnx.bridge.Module``, ``nnx.bridge.ToNNX``, ...): Linen-style bridge Modules
(:mod:`bridge.interop.bridge_module`), Linen and plain Modules inside them
(:mod:`bridge.interop.bridge_submodules`), and the Linen <-> bridge wrappers.

>>> import bridge as nnx
>>> nnx.bridge.ToNNX is nnx.ToNNX, nnx.bridge.initializers is nnx.initializers
(True, True)
"""

from bridge.bridge import interop, module, variables, wrappers
from bridge.bridge.interop import linen_in_bridge_mdl, nnx_in_bridge_mdl
from bridge.bridge.module import (
  AttrPriority,
  Module,
  Scope,
  compact,
  current_context,
  current_module,
)
from bridge.bridge.variables import NNXMeta, with_partitioning
from bridge.bridge.wrappers import Functional, ToLinen, ToNNX, functional, lazy_init, to_linen
from bridge.nn import initializers

__all__ = ['AttrPriority', 'Functional', 'Module', 'NNXMeta', 'Scope', 'ToLinen', 'ToNNX',
           'compact', 'current_context', 'current_module', 'functional', 'initializers',
           'interop', 'lazy_init', 'linen_in_bridge_mdl', 'module', 'nnx_in_bridge_mdl',
           'to_linen', 'variables', 'with_partitioning', 'wrappers']
