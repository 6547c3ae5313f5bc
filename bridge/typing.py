"""Type aliases of flax's ``flax.typing`` that ``flax.nnx`` exports.

>>> import jax
>>> import bridge as nnx
>>> init: nnx.Initializer = jax.nn.initializers.zeros
>>> init(jax.random.key(0), (2,)).tolist()
[0.0, 0.0]
"""

import typing as tp
from collections.abc import Callable

import jax

Initializer = jax.nn.initializers.Initializer | Callable[..., tp.Any]
"""An initializer: ``init(key, shape, dtype=...) -> Array``."""
