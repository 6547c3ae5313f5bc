"""``flax.nnx.bridge.interop``'s names: plain and Linen modules inside a ``bridge.Module``,
defined in :mod:`bridge.interop.bridge_submodules`.

>>> import bridge as nnx
>>> nnx.bridge.interop.linen_in_bridge_mdl is nnx.bridge.linen_in_bridge_mdl
True
"""

from bridge.interop.bridge_submodules import linen_in_bridge_mdl, nnx_in_bridge_mdl

__all__ = ['linen_in_bridge_mdl', 'nnx_in_bridge_mdl']
