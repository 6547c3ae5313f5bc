"""``flax.nnx.bridge.module``'s names: the Linen-style ``bridge.Module``, defined in
:mod:`bridge.interop.bridge_module` (it uses flax.linen's machinery, which only
``bridge.interop`` imports).

>>> import bridge as nnx
>>> nnx.bridge.module.Module is nnx.bridge.Module
True
"""

from bridge.interop.bridge_module import (
  AttrPriority,
  Module,
  Scope,
  compact,
  current_context,
  current_module,
)

__all__ = ['AttrPriority', 'Module', 'Scope', 'compact', 'current_context', 'current_module']
