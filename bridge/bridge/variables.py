"""Linen metadata boxes <-> Variable metadata, as ``flax.nnx.bridge.variables`` names them.

>>> import jax
>>> import bridge as nnx
>>> init = nnx.bridge.with_partitioning(nnx.initializers.ones_init(), ('in', 'out'))
>>> box = nnx.bridge.variables.to_linen_var(nnx.Param(init(jax.random.key(0), (2, 3))))
>>> type(box).__name__, box.names
('Partitioned', ('in', 'out'))
"""

from bridge.interop.metadata import NNXMeta, to_linen_var, to_nnx_var, with_partitioning

__all__ = ['NNXMeta', 'to_linen_var', 'to_nnx_var', 'with_partitioning']
