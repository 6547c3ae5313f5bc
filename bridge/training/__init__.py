"""flax.nnx's ``training`` package layout: ``bridge.training.metrics``,
``bridge.training.optimizer`` and ``bridge.training.ema`` are ``bridge.metrics``,
``bridge.optimizer`` and ``bridge.ema``.

>>> import bridge as nnx
>>> nnx.training.metrics.Average is nnx.metrics.Average
True
"""

from bridge import ema, metrics, optimizer

__all__ = ('ema', 'metrics', 'optimizer')
