"""``bridge.Module``: NNX Modules written in Linen's style, with Linen's ``init``/``apply``.

A ``bridge.Module`` subclass is a dataclass (its annotated attributes are its constructor
arguments). Parameters and submodules are created lazily, the first time the code that
needs them runs: in ``setup()`` or in a method decorated with ``@bridge.compact``, where
``self.param(name, init_fn, *args)`` creates a ``Param`` from the ``params`` RNG stream and a
submodule constructed without a name gets ``ClassName_<n>``, as in Linen. ``init`` returns
Linen-style variables (``{'params': {...}}``) and ``apply`` runs a method on a copy of the
module filled with them, so Linen training code drives it unchanged.

>>> import jax, jax.numpy as jnp
>>> import bridge as nnx
>>> class Dense(nnx.bridge.Module):
...   features: int
...   @nnx.bridge.compact
...   def __call__(self, x):
...     w = self.param('w', nnx.initializers.lecun_normal(), (x.shape[-1], self.features))
...     return x @ w
>>> class MLP(nnx.bridge.Module):
...   @nnx.bridge.compact
...   def __call__(self, x):
...     h = jax.nn.relu(Dense(4)(x))
...     return Dense(2)(h)
>>> variables = MLP().init(0, jnp.ones((1, 3)))
>>> jax.tree.map(jnp.shape, variables['params'])
{'Dense_0': {'w': (3, 4)}, 'Dense_1': {'w': (4, 2)}}
>>> MLP().apply(variables, jnp.ones((5, 3))).shape
(5, 2)
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import inspect
import threading
import typing as tp

import jax
import numpy as np
from flax import errors
from flax.core.frozen_dict import FrozenDict

from bridge import module as nnx_module
from bridge.graph import clone, iter_graph, update
from bridge.graph import state as graph_state
from bridge.interop.collections import linen_to_tree, tree_to_linen
from bridge.interop.to_nnx import ToNNX, _merge_into, set_initializing
from bridge.object import Object
from bridge.rngs import Rngs, RngState
from bridge.state import State
from bridge.variables import Param, Variable, VariableMetadata, variable_type_from_name

A = tp.TypeVar('A')
F = tp.TypeVar('F', bound=tp.Callable[..., tp.Any])


@dataclasses.dataclass
class ModuleStackEntry:
  """What ``current_context()`` returns: the running bridge Module, whether the running
  method is ``@compact`` (submodules made there are named and attached automatically), and
  how many submodules of each type it has named so far."""
  module: Module
  in_compact: bool
  type_counter: collections.defaultdict = dataclasses.field(
    default_factory=lambda: collections.defaultdict(int))


class _ModuleContext(threading.local):
  def __init__(self):
    self.module_stack: list[ModuleStackEntry | None] = [None]


MODULE_CONTEXT = _ModuleContext()


def current_context() -> ModuleStackEntry | None:
  """The innermost running bridge Module method's context, or None outside one.

  >>> import bridge as nnx
  >>> class Foo(nnx.bridge.Module):
  ...   @nnx.bridge.compact
  ...   def __call__(self):
  ...     return nnx.bridge.current_context().in_compact
  >>> Foo().apply({}), nnx.bridge.current_context()
  (True, None)
  """
  return MODULE_CONTEXT.module_stack[-1]


def current_module() -> Module | None:
  """The innermost bridge Module whose method is running, or None outside one.

  >>> import bridge as nnx
  >>> class Foo(nnx.bridge.Module):
  ...   def __call__(self):
  ...     return type(nnx.bridge.current_module()).__name__
  >>> Foo().apply({})
  'Foo'
  """
  ctx = current_context()
  return None if ctx is None else ctx.module


class Scope(Object):
  """What a bound bridge Module draws from while ``init``/``apply`` runs: the ``Rngs`` and
  the ``mutable`` collections of the call.

  >>> import bridge as nnx
  >>> scope = nnx.bridge.Scope(nnx.Rngs(0), mutable=True)
  >>> scope.copy().rngs is scope.rngs, scope.mutable
  (True, True)
  """

  def __init__(self, rngs: Rngs, mutable):
    self.rngs = rngs
    self.mutable = mutable

  def copy(self) -> Scope:
    return Scope(self.rngs, self.mutable)


class AttrPriority(enum.IntEnum):
  """Which attribute comes first when a node is reachable by several names (its State
  path): lower first, then by name. Submodules made in ``@compact`` code get ``INIT_PARENT``
  for their automatic name, other attributes ``DEFAULT``.

  >>> import bridge as nnx
  >>> nnx.bridge.AttrPriority.HIGH < nnx.bridge.AttrPriority.DEFAULT
  True
  """
  HIGH = 0
  INIT_PARENT = 20
  DEFAULT = 50
  LOW = 100


def _auto_name(ctx: ModuleStackEntry, cls: type) -> str:
  index = ctx.type_counter[cls]
  ctx.type_counter[cls] += 1
  return f'{cls.__name__}_{index}'


def _bridge_modules(value) -> list[Module]:
  leaves = jax.tree.leaves(value, is_leaf=lambda x: isinstance(x, Object))
  return [x for x in leaves if isinstance(x, Module)]


def _set_initializing(node, initializing: bool) -> None:
  """Marks every Object in ``node``'s graph as initializing or not (``ToNNX`` inits then)."""
  for _, value in iter_graph(node):
    if isinstance(value, ToNNX):
      set_initializing(value, initializing)
    elif isinstance(value, Object):
      object.__setattr__(value, '_object__initializing', initializing)


def _maybe_call_setup(module) -> None:
  if (isinstance(module, Module) and hasattr(module, 'setup')
      and not vars(module).get('_object__is_setup')):
    MODULE_CONTEXT.module_stack.append(ModuleStackEntry(module, in_compact=False))
    try:
      module.setup()
      object.__setattr__(module, '_object__is_setup', True)
    finally:
      MODULE_CONTEXT.module_stack.pop()


def _bind(parent: Module, module: Module) -> None:
  """Gives ``module`` (and the bridge Modules inside it) the parent's scope, then runs
  their ``setup``."""
  unbound = module.scope is None
  for _, value in reversed(list(iter_graph(module))):
    if isinstance(value, Module):
      if unbound:
        value.scope = parent.scope.copy()
      _maybe_call_setup(value)


def _fill(node, tree: dict) -> None:
  """Puts the Variables of ``tree`` (nested dicts) into ``node``: into the attribute they
  name if it is there, else kept aside until the submodule of that name is created."""
  if isinstance(node, ToNNX):
    _merge_into(node, tree)
    node.to_nnx__initialized = True
    return
  if not isinstance(node, Module):
    update(node, State(tree))
    return
  pending = vars(node).setdefault('_object__pending', {})
  for key, value in tree.items():
    current = vars(node).get(key)
    if isinstance(value, Variable):
      if isinstance(current, Variable):
        current.update_from_state(value)
      else:
        object.__setattr__(node, key, value)
    elif isinstance(current, Object):
      _fill(current, value)
    else:
      pending[key] = value


class _ModuleMeta(type(nnx_module.Module)):
  """Creating a bridge Module inside another one's ``setup``/``@compact`` method attaches it
  to that parent: under ``name=`` if given, else (in ``@compact``) as ``ClassName_<n>``;
  ``parent=None`` keeps it detached."""

  def __call__(cls, *args, **kwargs):
    ctx = current_context()
    parent = name = None
    if ctx is not None:
      if 'parent' in kwargs:
        parent = kwargs.pop('parent')
        if ctx.in_compact and parent is not None:
          raise ValueError(f"{cls.__name__}: 'parent' can only be set to None inside a "
                           f'@compact method, got {type(parent).__name__}.')
      else:
        parent = ctx.module
      if 'name' in kwargs:
        name = kwargs['name']
        if 'name' not in inspect.get_annotations(cls):
          kwargs.pop('name')
        if not isinstance(name, str):
          raise ValueError(f"{cls.__name__}: 'name' must be a 'str', got "
                           f'{type(name).__name__}.')
      elif ctx.in_compact:
        name = _auto_name(ctx, cls)
    module = super().__call__(*args, **kwargs)
    module.scope = None
    module.attr_priorities = {}
    if parent is not None and name is not None:
      setattr(parent, name, module)
      parent.set_attr_priority(name, AttrPriority.INIT_PARENT)
    return module


class Module(nnx_module.Module, metaclass=_ModuleMeta, pytree=False):
  """The base class of Linen-style bridge Modules (see the module docstring). As in flax,
  they are graph nodes but not JAX pytrees (``pytree=False``)."""

  scope: tp.ClassVar[Scope | None] = None  # the instance's own value shadows it

  def __init_subclass__(cls) -> None:
    super().__init_subclass__(pytree=False)
    dataclasses.dataclass(repr=False)(cls)
    cls.__hash__ = object.__hash__

  def __setattr__(self, name: str, value) -> None:
    if vars(self).get('scope') is not None:
      pending = vars(self).get('_object__pending')
      if pending and name in pending:
        _fill(value, pending.pop(name))
      for module in _bridge_modules(value):
        object.__setattr__(module, '_object__initializing', self.is_initializing())
        _bind(self, module)
    super().__setattr__(name, value)

  def _graph_child_order(self, items) -> list:
    """Children by (AttrPriority, name): the walk (and so a shared node's State path)
    follows the priorities."""
    priorities = vars(self).get('attr_priorities') or {}
    return sorted(items, key=lambda kv: (priorities.get(kv[0], AttrPriority.DEFAULT), kv[0]))

  def set_attr_priority(self, name: str, value: AttrPriority) -> None:
    """Sets the :class:`AttrPriority` of attribute ``name``."""
    self.attr_priorities[name] = value

  def is_initializing(self) -> bool:
    """Whether this Module runs inside ``init`` (not ``apply``)."""
    return bool(vars(self).get('_object__initializing'))

  def make_rng(self, name: str = 'default') -> jax.Array:
    """A fresh key from stream ``name`` of the running ``init``/``apply``'s Rngs."""
    if self.scope is None:
      raise ValueError(f"{type(self).__name__}.make_rng({name!r}): can't use RNGs on unbound "
                       'modules; call it from a method run by init/apply.')
    return self.scope.rngs[name]()

  def param(self, name: str, init_fn: tp.Callable[..., A], *init_args, unbox: bool = True,
            **init_kwargs) -> Param[A]:
    """The ``Param`` attribute ``name``, created on first use as
    ``init_fn(self.make_rng('params'), *init_args, **init_kwargs)``. An attribute of that
    name that is already a Param is returned as it is (``unbox`` is accepted for Linen
    compatibility: the Param is returned either way)."""
    if self.scope is None:
      raise ValueError(f'{type(self).__name__}.param({name!r}): parameters must be '
                       'initialized in `setup()` or in a method wrapped in `@compact`.')
    if hasattr(self, name):
      current = getattr(self, name)
      if isinstance(current, Variable):
        if not isinstance(current, Param):
          raise ValueError(f"{type(self).__name__}.param: expected '{name}' to be a Param, "
                           f'got {type(current).__name__}.')
        return current
      variable = _wrap_existing(Param, name, current,
                                lambda: init_fn(jax.random.key(0), *init_args, **init_kwargs))
    else:
      variable = Param(init_fn(self.make_rng('params'), *init_args, **init_kwargs))
    setattr(self, name, variable)
    return variable

  def variable(self, col: str, name: str, init_fn: tp.Callable[..., A] | None = None,
               *init_args, unbox: bool = True, **init_kwargs) -> Variable[A]:
    """The Variable attribute ``name`` of collection ``col``, created on first use as
    ``init_fn(*init_args, **init_kwargs)``."""
    variable_type = variable_type_from_name(col, allow_register=True)
    where = f'{type(self).__name__}.variable({col!r}, {name!r})'
    if self.scope is None:
      raise ValueError(f'{where}: variables must be initialized in `setup()` or in a method '
                       'wrapped in `@compact`.')
    current = getattr(self, name) if hasattr(self, name) else None
    if isinstance(current, Variable):
      return current
    if init_fn is None:
      raise ValueError(f"{where}: expected 'init_fn' to be a callable, got None.")
    if current is not None:
      variable = _wrap_existing(variable_type, name, current,
                                lambda: init_fn(*init_args, **init_kwargs))
    else:
      variable = variable_type(init_fn(*init_args, **init_kwargs))
    setattr(self, name, variable)
    return variable

  def _variables_tree(self) -> dict:
    """Every Variable but RNG state, as nested dicts by path, with the Variables given to
    ``apply`` that no submodule has claimed yet."""
    tree: dict = {}
    for path, var in graph_state(self).flat_state():
      if not isinstance(var, RngState):
        _put(tree, path, var)
    for path, node in iter_graph(self):
      for key, sub in (vars(node).get('_object__pending') or {}).items() \
          if isinstance(node, Module) else ():
        _put(tree, (*path, key), sub)
    return tree

  @property
  def variables(self) -> FrozenDict:
    """The Module's Variables as Linen variables (``{collection: nested dict}``)."""
    return FrozenDict(tree_to_linen(self._variables_tree()))

  def apply(self, variables: dict[str, tp.Mapping], *args,
            rngs: int | jax.Array | dict[str, jax.Array] | Rngs | None = None,
            method: tp.Callable[..., tp.Any] | str = '__call__', mutable=False,
            _initialize: bool = False, **kwargs) -> tp.Any:
    """Runs ``method`` on a copy of this Module holding ``variables``, as Linen's
    ``apply``; with ``mutable`` (anything but False) returns ``(out, variables)``."""
    module = clone(self)
    _fill(module, linen_to_tree(variables))
    rngs = _as_rngs(rngs)
    fn = _unbound_method(module, method)
    _set_initializing(module, _initialize)
    for _, value in iter_graph(module):
      if isinstance(value, Module):
        value.scope = Scope(rngs, mutable)
        _maybe_call_setup(value)
    MODULE_CONTEXT.module_stack.append(ModuleStackEntry(module, in_compact=False))
    try:
      out = fn(module, *args, **kwargs)
    finally:
      MODULE_CONTEXT.module_stack.pop()
      _set_initializing(module, False)
      for _, value in iter_graph(module):
        if isinstance(value, Module):
          value.scope = None
    if mutable is False:
      return out
    return out, dict(tree_to_linen(module._variables_tree()))

  def init(self, rngs: int | jax.Array | dict[str, jax.Array] | Rngs | None = None, *args,
           method: tp.Callable[..., tp.Any] | str = '__call__', **kwargs):
    """Linen-style variables created by running ``method`` once, as Linen's ``init``."""
    _, variables = self.apply({}, *args, _initialize=True, mutable=True, rngs=rngs,
                              method=method, **kwargs)
    return variables

  def init_with_output(self, rngs: int | jax.Array | dict[str, jax.Array] | Rngs | None = None,
                       *args, method: tp.Callable[..., tp.Any] | str = '__call__',
                       mutable: tp.Any = False, **kwargs) -> tuple[tp.Any, dict[str, tp.Mapping]]:
    """``(output, variables)`` of ``init`` (``mutable`` is accepted for Linen
    compatibility: every collection is returned)."""
    return self.apply({}, *args, rngs=rngs, method=method, mutable=True, _initialize=True,
                      **kwargs)


def _put(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _wrap_existing(variable_type: type[Variable], name: str, value, abstract_init):
  """A Variable around a raw value already at attribute ``name``, checked against the shape
  the initializer would give (Linen's ``ScopeParamShapeError`` on mismatch)."""
  abstract = jax.eval_shape(abstract_init)
  for val, abs_val in zip(jax.tree.leaves(value), jax.tree.leaves(abstract), strict=False):
    if np.shape(val) != np.shape(abs_val):
      raise errors.ScopeParamShapeError(name, '', np.shape(abs_val), np.shape(val))
  if isinstance(abstract, VariableMetadata):
    abstract.raw_value = value
    value = abstract
  return variable_type(value)


def _as_rngs(rngs) -> Rngs:
  if rngs is None:
    return Rngs()
  if isinstance(rngs, (int, jax.Array)):
    return Rngs(rngs)
  if isinstance(rngs, dict):
    return Rngs(**rngs)
  return rngs


def _unbound_method(module: Module, method) -> tp.Callable:
  if isinstance(method, str):
    attribute = method
    fn = getattr(module, attribute)
    if not callable(fn):
      raise TypeError(f"'{type(module).__name__}.{attribute}' must be a callable, got "
                      f'{type(fn)}.')
    if isinstance(fn, Module):
      def fn(module, *args, **kwargs):
        return getattr(module, attribute)(*args, **kwargs)
  else:
    fn = method
  if inspect.ismethod(fn) and isinstance(fn.__self__, Module):
    fn = fn.__func__
  if not callable(fn) or len(inspect.signature(fn).parameters) < 1:
    raise errors.ApplyModuleInvalidMethodError(fn)
  return fn


def compact(f: F) -> F:
  """Marks a bridge Module method as compact: submodules created while it runs are named
  ``ClassName_<n>`` (or ``name=``) and attached to the Module, as in Linen.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> class Foo(nnx.bridge.Module):
  ...   @nnx.bridge.compact
  ...   def __call__(self, x):
  ...     return x + self.variable('counts', 'n', jnp.zeros, ()).value
  >>> Foo().init(None, 1.0)['counts']['n'].shape
  ()
  """
  @functools.wraps(f)
  def compact_wrapper(self, *args, **kwargs):
    if not isinstance(self, Module):
      raise ValueError(f"@compact {f.__qualname__}: expected 'self' to be a "
                       f'bridge.bridge.Module, got {type(self).__name__}.')
    MODULE_CONTEXT.module_stack.append(ModuleStackEntry(self, in_compact=True))
    try:
      return f(self, *args, **kwargs)
    finally:
      MODULE_CONTEXT.module_stack.pop()

  return compact_wrapper  # type: ignore[return-value]
