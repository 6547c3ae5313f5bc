"""Graph mode vs tree mode: the global switches and the helpers transforms use.

In *graph mode* (the default) ``split``, ``state`` and the transforms walk an object graph:
shared Variables and Modules are kept shared, and changes made inside a transform are written
back to the caller's objects. In *tree mode* (``graph=False``) a Module is treated as the JAX
pytree it is: every reference is a separate leaf, sharing is an error, and updates flow back
only when ``graph_updates`` says so.

``set_graph_mode(value)`` and ``set_graph_updates(value)`` set the default used where a
``graph=``/``graph_updates=`` keyword is ``None``. Called bare they set it until set again; as
a context manager they set it for a ``with`` block; as a decorator, for each call of the
function.

>>> import bridge as nnx
>>> from bridge.graph_mode import resolve_graph
>>> resolve_graph(None), resolve_graph(False)
(True, False)
>>> with nnx.set_graph_mode(False):
...   resolve_graph(None)
False
>>> resolve_graph(None)
True
"""

from __future__ import annotations

import functools
import threading


class _Stacks(threading.local):
  def __init__(self):
    self.graph_mode: list[bool] = []
    self.graph_updates: list[bool] = []


_STACKS = _Stacks()


class ConfigContext:
  """A setting with a per-thread stack: set bare, in a ``with`` block, or per call.

  Subclasses give ``default`` (the value with nothing set) and ``_stack()``.
  ``ConfigContext(value)`` sets the value right away (replacing any value set bare before);
  used with ``with`` the previous value comes back at the end of the block, used as a
  decorator the value is set only during each call.
  """

  default: bool = True

  @classmethod
  def _stack(cls) -> list:
    raise NotImplementedError(f'{cls.__name__} must define _stack()')

  def __init__(self, value, /):
    stack = self._stack()
    self.prev_value = stack[-1] if stack else None
    if stack:
      stack[-1] = value
    else:
      stack.append(value)
    self.new_value = value

  @classmethod
  def current_value(cls):
    """The value in force: the innermost one set, else ``default``."""
    stack = cls._stack()
    return stack[-1] if stack else cls.default

  def __enter__(self):
    if self.prev_value is not None:
      self._stack().insert(-1, self.prev_value)
    return self

  def __exit__(self, *exc):
    self._stack().pop()

  def __call__(self, f):
    stack = self._stack()
    stack.pop()
    if self.prev_value is not None:
      stack.append(self.prev_value)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
      self._stack().append(self.new_value)
      try:
        return f(*args, **kwargs)
      finally:
        self._stack().pop()

    return wrapper


class set_graph_mode(ConfigContext):  # noqa: N801 (flax.nnx name)
  """Sets whether graph functions and transforms treat objects as graphs (``True``, the
  default) or as pytrees (``False``) where their ``graph=`` keyword is ``None``.

  >>> import bridge as nnx
  >>> with nnx.set_graph_mode(False):
  ...   nnx.set_graph_mode.current_value()
  False
  >>> nnx.set_graph_mode.current_value()
  True
  """

  default = True

  @classmethod
  def _stack(cls):
    return _STACKS.graph_mode


class set_graph_updates(ConfigContext):  # noqa: N801 (flax.nnx name)
  """Sets whether transforms write changes made inside them back to the caller's objects
  (``True``, the default) where their ``graph_updates=`` keyword is ``None``.

  >>> import bridge as nnx
  >>> @nnx.set_graph_updates(False)
  ... def f():
  ...   return nnx.set_graph_updates.current_value()
  >>> f(), nnx.set_graph_updates.current_value()
  (False, True)
  """

  default = True

  @classmethod
  def _stack(cls):
    return _STACKS.graph_updates


def _check_flag(name, value):
  if value is not None and not isinstance(value, bool):
    raise TypeError(f'{name}= must be True, False or None (the global default), got {value!r}')


def resolve_graph(graph: bool | None) -> bool:
  """``graph`` if given, else the mode set with :class:`set_graph_mode`.

  >>> resolve_graph(False)
  False
  >>> resolve_graph(None)
  True
  """
  _check_flag('graph', graph)
  return set_graph_mode.current_value() if graph is None else graph


def resolve_graph_updates(graph_updates: bool | None) -> bool:
  """``graph_updates`` if given, else the value set with :class:`set_graph_updates`.

  >>> resolve_graph_updates(None)
  True
  """
  _check_flag('graph_updates', graph_updates)
  return set_graph_updates.current_value() if graph_updates is None else graph_updates


def resolve(graph: bool | None, graph_updates: bool | None) -> tuple[bool, bool]:
  """Both flags of a transform, resolved: ``(graph, graph_updates)``.

  >>> resolve(None, False)
  (True, False)
  """
  return resolve_graph(graph), resolve_graph_updates(graph_updates)
