"""``capture``: run a function and return what Modules ``sow`` (and ``perturb``) during it.

Inside ``capture(fn, *var_types)``, ``Module.sow``/``Module.perturb`` start from nothing
(or from ``init``); afterwards the values sown into ``var_types`` are returned as State(s)
keyed by Module path and the Modules are left as they were: sown Variables are removed and
Intermediates that were there before are put back. Sowing into a type that is not captured
has no lasting effect, as in flax.nnx.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> class Model(nnx.Module):
...   def __init__(self, rngs):
...     self.linear = nnx.Linear(2, 3, rngs=rngs)
...   def __call__(self, x):
...     y = self.linear(x)
...     self.sow(nnx.Intermediate, 'features', y)
...     return y
>>> model = Model(nnx.Rngs(0))
>>> y, intermediates = nnx.capture(model, nnx.Intermediate)(jnp.ones(2))
>>> intermediates['features'][...][0].shape, hasattr(model, 'features')
((3,), False)
"""

from __future__ import annotations

import functools
import inspect
import typing as tp

from bridge.module import Module, iter_modules
from bridge.state import State, to_flat_state
from bridge.variables import Intermediate, Variable


def _sowing_method(method, variable_type):
  @functools.wraps(method)
  def sowing(self, *args, **kwargs):
    out = method(self, *args, **kwargs)
    self.sow(variable_type, method.__name__, out)
    return out
  return sowing


def _patch_methods(classes, variable_type) -> list[tuple[type, str, tp.Any]]:
  """Makes the public methods (and ``__call__``) each class defines sow their outputs as
  ``variable_type`` under the method's name; returns what to put back."""
  patched = []
  for cls in classes:
    for name, method in list(vars(cls).items()):
      if inspect.isfunction(method) and (not name.startswith('_') or name == '__call__'):
        patched.append((cls, name, method))
        setattr(cls, name, _sowing_method(method, variable_type))
  return patched


class _Session:
  """The sown Variables of one ``capture`` call, and what to restore afterwards."""

  def __init__(self, module, captured: set[type]):
    self.modules = list(iter_modules(module))
    self.captured = captured
    self.stashed: list[tuple[Module, str, Variable]] = []
    self.before: set[int] = set()
    for _, m in self.modules:
      for name, value in list(vars(m).items()):
        if isinstance(value, Intermediate):  # sow starts from nothing inside capture
          self.stashed.append((m, name, value))
          delattr(m, name)
        elif isinstance(value, Variable):
          self.before.add(id(value))

  def _is_sown(self, value) -> bool:
    return isinstance(value, Variable) and id(value) not in self.before and (
      isinstance(value, Intermediate) or type(value) in self.captured)

  def seed(self, init: State) -> None:
    """Puts ``init``'s Variables (grouped by Module path) where ``sow``/``perturb`` find them."""
    by_path = dict(self.modules)
    for path, var in to_flat_state(init):
      module = by_path.get(path[:-1])
      if module is None or not isinstance(var, Variable):
        continue  # as flax.nnx: only Variables at Module paths seed the capture
      current = vars(module).get(path[-1])
      if current is not None:
        raise ValueError(
          f"capture: init has a {type(var).__name__} at {'/'.join(map(str, path))!r} but "
          f'the {type(module).__name__} there already has a {type(current).__name__} '
          f'attribute {path[-1]!r}.')
      setattr(module, path[-1], type(var)(var.get_value()))

  def collect(self, var_types) -> State:
    """Removes the sown Variables and returns those of ``var_types`` by path."""
    flat = []
    for path, m in self.modules:
      for name, value in list(vars(m).items()):
        if self._is_sown(value):
          if type(value) in var_types:
            flat.append(((*path, name), value))
          delattr(m, name)
    return State.from_flat_path(flat)

  def restore(self) -> None:
    for m, name, value in self.stashed:
      setattr(m, name, value)


def capture(fn: tp.Callable | type[Variable], *var_types: type[Variable],
            init: State | None = None, method_outputs: type[Variable] | None = None):
  """Wraps ``fn`` to return ``(result, *states)``: one State per type in ``var_types`` with
  the values Modules sowed (``Module.sow``/``perturb``) into that type during the call.

  ``fn`` is a function whose first argument is the Module, a Module (its ``__call__``) or a
  bound method of a Module; or a Variable type, and then ``capture`` is a decorator. ``init``
  (a State keyed by Module path, e.g. from an earlier capture of ``Perturbation``) seeds the
  values ``sow`` reduces onto and ``perturb`` adds. ``method_outputs`` sows every public
  method's (and ``__call__``'s) output under the method's name. With no ``var_types`` the
  wrapper returns just the result.

  >>> import jax
  >>> import bridge as nnx
  >>> class Model(nnx.Module):
  ...   def __call__(self, x):
  ...     return 3 * self.perturb('x', x)
  >>> model = Model()
  >>> _, perturbations = nnx.capture(model, nnx.Perturbation)(1.0)
  >>> def loss(perturbations, x):
  ...   return nnx.capture(model, nnx.Intermediate, init=perturbations)(x)
  >>> grads, _ = jax.grad(loss, has_aux=True)(perturbations, 1.0)
  >>> float(grads['x'][...])
  3.0
  """
  if isinstance(fn, type) and issubclass(fn, Variable):
    types = (fn, *var_types)
    return lambda actual_fn: capture(actual_fn, *types, init=init, method_outputs=method_outputs)
  if not callable(fn):
    raise TypeError(f'capture: fn must be a function, a Module or a Variable type, got a '
                    f'{type(fn).__name__}.')
  for t in var_types:
    if not (isinstance(t, type) and issubclass(t, Variable)):
      raise TypeError(f'capture: var_types must be Variable types, got {t!r}.')
  owner = fn if isinstance(fn, Module) else getattr(fn, '__self__', None)
  owner = owner if isinstance(owner, Module) else None

  def wrapper(*args, **kwargs):
    module = owner if owner is not None else (args[0] if args else None)
    if not isinstance(module, Module):
      raise TypeError(f'capture: the first argument of the wrapped function must be the '
                      f'Module to capture from, got {type(module).__name__}.')
    captured = set(var_types) | {type(v) for _, v in to_flat_state(init or State())}
    session = _Session(module, captured)
    patched = []
    try:
      if init:
        session.seed(init)
      if method_outputs is not None:
        patched = _patch_methods({type(m) for _, m in session.modules}, method_outputs)
      result = fn(*args, **kwargs)
    finally:
      for cls, name, method in patched:
        setattr(cls, name, method)
      states = session.collect(set(var_types))
      session.restore()
    if not var_types:
      return result
    split = states.split(*var_types) if len(var_types) > 1 else states
    return (result, *split) if len(var_types) > 1 else (result, split)

  if not isinstance(fn, Module):  # a Module's __dict__ holds its Variables: not copied
    functools.update_wrapper(wrapper, fn)
  return wrapper
