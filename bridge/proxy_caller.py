"""Delayed access: record ``.name`` / ``[key]`` steps now, apply them to an object later.

``call`` uses it so that ``nnx.call((graphdef, state)).encoder.layers[0](x)`` names a
method of a graph that is only built when the call runs.

>>> from bridge.proxy_caller import CallableProxy, DelayedAccessor
>>> accessor = DelayedAccessor().real
>>> accessor(3 + 4j)
3.0
>>> proxy = CallableProxy(lambda accessor, *args: accessor({'f': abs})(*args))
>>> proxy['f'](-2)
2
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax

A = tp.TypeVar('A', covariant=True)


@dataclasses.dataclass(frozen=True)
class GetItem:
  """An ``x[key]`` step."""
  key: tp.Any


@dataclasses.dataclass(frozen=True)
class GetAttr:
  """An ``x.name`` step."""
  name: str


@dataclasses.dataclass(frozen=True)
class DelayedAccessor:
  """A recorded path of steps; calling it on ``x`` walks the path from ``x``. See the
  module docstring."""
  actions: tuple[GetItem | GetAttr, ...] = ()

  def __call__(self, x):
    for step in self.actions:
      x = x[step.key] if isinstance(step, GetItem) else getattr(x, step.name)
    return x

  def __getattr__(self, name: str) -> DelayedAccessor:
    if name.startswith('__'):
      raise AttributeError(name)
    return DelayedAccessor((*self.actions, GetAttr(name)))

  def __getitem__(self, key) -> DelayedAccessor:
    return DelayedAccessor((*self.actions, GetItem(key)))


jax.tree_util.register_static(DelayedAccessor)


class CallableProxy:
  """Records attribute and item access; calling it runs ``callable(accessor, *args,
  **kwargs)`` with the recorded path. See the module docstring."""

  def __init__(self, callable: tp.Callable[..., tp.Any],  # noqa: A002 (flax's name)
               accessor: DelayedAccessor | None = None):
    self._callable = callable
    self._accessor = DelayedAccessor() if accessor is None else accessor

  def __call__(self, *args, **kwargs):
    return self._callable(self._accessor, *args, **kwargs)

  def __getattr__(self, name: str) -> CallableProxy:
    if name.startswith('__'):
      raise AttributeError(name)
    return CallableProxy(self._callable, getattr(self._accessor, name))

  def __getitem__(self, key) -> CallableProxy:
    return CallableProxy(self._callable, self._accessor[key])


class ApplyCaller(tp.Protocol, tp.Generic[A]):
  """The type of what ``call`` returns: attribute/item access gives another ApplyCaller,
  calling gives ``(output, A)``."""

  def __getattr__(self, name) -> ApplyCaller[A]: ...

  def __getitem__(self, name) -> ApplyCaller[A]: ...

  def __call__(self, *args, **kwargs) -> tuple[tp.Any, A]: ...
