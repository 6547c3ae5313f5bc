"""Lets a module object also be called as a function.

flax.nnx has the functions ``nnx.variables`` and ``nnx.state`` where bridge has modules of
the same names; ``make_callable`` gives such a module a ``__call__`` so that both
``nnx.variables(model)`` and ``from bridge.variables import Param`` (or
``import bridge.variables as bv``) work.

>>> import types
>>> m = types.ModuleType('m')
>>> make_callable(m, len)
>>> m([1, 2, 3])
3
"""

from __future__ import annotations

import inspect
import types
import typing as tp


def make_callable(module: types.ModuleType, fn: tp.Callable) -> None:
  """Makes ``module(...)`` call ``fn(...)`` (the module keeps all its attributes)."""
  signature = inspect.signature(fn)
  module.__class__ = type(type(module).__name__, (types.ModuleType,), {
    '__call__': staticmethod(fn),
    '__signature__': property(lambda self: signature),  # inspect.signature(module)
  })
