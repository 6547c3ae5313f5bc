"""Variables: values with a type, metadata and hooks.

A ``Variable`` holds one value (usually an array) and any metadata as attributes. Its type
says what the value is for (``Param`` is learned, ``BatchStat`` is a running statistic,
``Cache`` holds decoding state, ``Intermediate`` holds sown values) and is what filters,
``split`` and the Linen adapters key on. Variables are pytrees whose only child is the value,
so ``jax.tree.map(jnp.shape, state)`` keeps the Variables and shows the shapes.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> w = nnx.Param(jnp.ones((2, 3)), sharding=('in', 'out'))
>>> w.shape, w.sharding
((2, 3), ('in', 'out'))
>>> (jnp.ones((1, 2)) @ w).tolist()
[[2.0, 2.0, 2.0]]
"""

from __future__ import annotations

import functools

import jax
import jax.extend
import jax.numpy as jnp

from bridge._static import hashable
from bridge.object import bump_structure_epoch

MISSING = object()
# ``bridge.spmd`` sets this to place a new Variable's value as its ``out_sharding`` says
# (eager sharding); a function ``(value, metadata) -> value``
shard_on_create = None

# Hook names as flax 0.12 spells them, and the seed pages' names for the same hooks.
HOOK_NAMES = ('on_set_value', 'on_get_value', 'on_create_value', 'on_add_axis', 'on_remove_axis')
SEED_HOOK_NAMES = {
  'set_value_hooks': 'on_set_value',
  'get_value_hooks': 'on_get_value',
  'create_value_hooks': 'on_create_value',
  'add_axis_hooks': 'on_add_axis',
  'remove_axis_hooks': 'on_remove_axis',
}


def _as_hooks(hooks) -> tuple:
  """One hook, a sequence of hooks or nothing, as a tuple."""
  if not hooks:
    return ()
  if callable(hooks):
    return (hooks,)
  return tuple(hooks)


def canonical_hooks(kwargs: dict) -> dict:
  """Pops hook arguments in either spelling out of ``kwargs``; returns them by flax name.

  Raises when both spellings of one hook are given.
  """
  hooks = {}
  for seed_name, flax_name in SEED_HOOK_NAMES.items():
    seed, flax = kwargs.pop(seed_name, ()), kwargs.pop(flax_name, ())
    if seed and flax:
      raise TypeError(f'Give {flax_name!r} or {seed_name!r}, not both: they are the same hook.')
    if value := _as_hooks(seed or flax):
      hooks[flax_name] = value
  return hooks



def _same_metadata(a: dict, b: dict) -> bool:
  """``a == b`` for metadata dicts, by identity or plain ``==`` first (the per-call case of
  ``update_from_state``), by frozen value where ``==`` is ambiguous (array values)."""
  if a is b:
    return True
  try:
    return bool(a == b)
  except ValueError:
    return hashable(a) == hashable(b)

class VariableMetadata:
  """A value waiting to become a Variable, with the hooks and metadata it will carry.

  Initializers wrapped by :func:`with_metadata` return one; any Variable built from it
  carries its metadata and hooks. Hook arguments take either the seed pages' names
  (``set_value_hooks``, ...) or flax's (``on_set_value``, ...).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> m = nnx.VariableMetadata(jnp.zeros(2), metadata={'sharding': ('x',)})
  >>> nnx.Param(m).sharding
  ('x',)
  """

  __slots__ = ('raw_value', 'metadata', *HOOK_NAMES)

  def __init__(self, raw_value, set_value_hooks=(), get_value_hooks=(), create_value_hooks=(),
               add_axis_hooks=(), remove_axis_hooks=(), metadata=None, **flax_hooks):
    unknown = set(flax_hooks) - set(HOOK_NAMES)
    if unknown:
      raise TypeError(f'VariableMetadata got unexpected arguments {sorted(unknown)}')
    hooks = canonical_hooks({
      'set_value_hooks': set_value_hooks, 'get_value_hooks': get_value_hooks,
      'create_value_hooks': create_value_hooks, 'add_axis_hooks': add_axis_hooks,
      'remove_axis_hooks': remove_axis_hooks, **flax_hooks})
    self.raw_value = raw_value
    self.metadata = dict(metadata or {})
    for name in HOOK_NAMES:
      setattr(self, name, hooks.get(name, ()))

  set_value_hooks = property(lambda self: self.on_set_value)
  get_value_hooks = property(lambda self: self.on_get_value)
  create_value_hooks = property(lambda self: self.on_create_value)
  add_axis_hooks = property(lambda self: self.on_add_axis)
  remove_axis_hooks = property(lambda self: self.on_remove_axis)

  def __repr__(self):
    hooks = ''.join(f', {n}={getattr(self, n)!r}' for n in HOOK_NAMES if getattr(self, n))
    return f'VariableMetadata(raw_value={self.raw_value!r}{hooks}, metadata={self.metadata!r})'


def with_metadata(initializer, set_value_hooks=(), get_value_hooks=(), create_value_hooks=(),
                  add_axis_hooks=(), remove_axis_hooks=(), **metadata):
  """Wraps ``initializer`` so that its output carries hooks and metadata.

  The wrapped initializer returns a :class:`VariableMetadata`; a Variable built from it
  (``nnx.Param(init(key, shape))``) gets the metadata as attributes and runs the hooks.
  flax's hook names (``on_set_value=...``) are accepted as keywords too.

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> init = nnx.with_metadata(nnx.initializers.ones_init(), sharding=('a', 'b'))
  >>> p = nnx.Param(init(jax.random.key(0), (2, 3)))
  >>> p.sharding, p.shape
  (('a', 'b'), (2, 3))
  """
  hooks = canonical_hooks({
    'set_value_hooks': set_value_hooks, 'get_value_hooks': get_value_hooks,
    'create_value_hooks': create_value_hooks, 'add_axis_hooks': add_axis_hooks,
    'remove_axis_hooks': remove_axis_hooks,
    **{name: metadata.pop(name) for name in HOOK_NAMES if name in metadata}})

  @functools.wraps(initializer)
  def wrapper(*args, **kwargs):
    return VariableMetadata(initializer(*args, **kwargs), metadata=metadata, **hooks)

  return wrapper


def _run_value_hooks(hooks, variable, value):
  for hook in hooks:
    value = hook(variable, value)
  return value


def _operator(name):
  def method(self, *args):
    return getattr(self.get_value(), name)(*(a.get_value() if isinstance(a, Variable) else a
                                             for a in args))
  method.__name__ = name
  return method


def _no_inplace(name, symbol):
  def method(self, other):
    raise NotImplementedError(
      f'In-place operators on a Variable are not supported (nor in flax.nnx 0.12): '
      f'`var {symbol}= x` would replace the Variable with an array. Write '
      f'`var[...] {symbol}= x` or `var.value {symbol}= x` instead.')
  method.__name__ = name
  return method


class Variable:
  """The base of all Variable types: a value plus metadata, filterable by its type.

  Subclass it to make a new kind of state; every subclass is a pytree and a filter.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> class Counter(nnx.Variable):
  ...   pass
  >>> c = Counter(jnp.array(0))
  >>> c.value += 1
  >>> int(c[...]), type(c).__name__
  (1, 'Counter')
  """

  __slots__ = ('_raw_value', '_metadata', '_trace', '__weakref__')  # weak: jit's walk cache

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    _register_pytree(cls)

  def __init__(self, value, **metadata):
    hooks = canonical_hooks(metadata)
    if isinstance(value, VariableMetadata):
      for name in HOOK_NAMES:
        if getattr(value, name) and name not in hooks:
          hooks[name] = getattr(value, name)
      metadata = {**value.metadata, **metadata}
      value = value.raw_value
    if isinstance(value, Variable):
      raise TypeError(
        f'{type(self).__name__} got a {type(value).__name__} as its value; pass its array '
        f'(`var.value`) or use `var.replace()` to retype it.')
    for name in HOOK_NAMES:  # hooks defined as methods of a Variable subclass
      if name not in hooks and callable(getattr(type(self), name, None)):
        hooks[name] = (getattr(type(self), name),)
    metadata.update(hooks)
    _fill(self, value, metadata)
    if 'on_create_value' in metadata:
      value = _run_value_hooks(metadata['on_create_value'], self, value)
      object.__setattr__(self, '_raw_value', value)
    if metadata.get('out_sharding') and shard_on_create is not None:
      object.__setattr__(self, '_raw_value', shard_on_create(value, metadata))

  # -- value ---------------------------------------------------------------------------
  @property
  def raw_value(self):
    """The stored value, without running get hooks."""
    return self._raw_value

  @raw_value.setter
  def raw_value(self, value):
    self._check_writable()
    self._check_trace(value)
    object.__setattr__(self, '_raw_value', value)

  def _check_trace(self, value) -> None:
    """Refuses a traced value for a Variable made outside the current trace: it would
    leak the tracer out of its transform."""
    if _has_tracer(value) and self._trace is not _current_trace() \
        and self._trace != _current_trace():
      shape = getattr(value, 'shape', None)
      where = _owner_path(self)
      raise TraceContextError(
        f'Cannot write a traced value (shape {shape}) into the {type(self).__name__}'
        f'{f" at {where!r}" if where else ""}: it was created outside this transform, so the '
        'tracer would escape. Pass the Module that holds it as an argument of the transform '
        '(e.g. bridge.jit(f)(model, x)) instead of closing over it, or use bridge transforms '
        'rather than jax ones for Modules.')

  def _check_writable(self) -> None:
    """Refuses a write to a Variable made read-only by ``nnx.with_vars(mutable=False)``."""
    if self._metadata.get('mutable') is False:
      from bridge.var_modes import ImmutableVariableError
      where = _owner_path(self)
      raise ImmutableVariableError(
        f'Cannot write the read-only {type(self).__name__}{f" at {where!r}" if where else ""}'
        f': it was made with nnx.with_vars(..., mutable=False). Make it writable with '
        f'nnx.with_vars(node, mutable=True).')

  def get_value(self, *, index=MISSING):
    """The value (``value[index]`` if given), after the get hooks."""
    value = self._raw_value
    if index is not MISSING and index is not Ellipsis:
      value = value[index]
    hooks = self._metadata.get('on_get_value')
    return _run_value_hooks(hooks, self, value) if hooks else value

  def set_value(self, value, *, index=MISSING):
    """Stores ``value`` (or writes it at ``index``) after the set hooks."""
    self._check_writable()
    if isinstance(value, Variable):
      value = value.get_value()
    hooks = self._metadata.get('on_set_value')
    if hooks:
      value = _run_value_hooks(hooks, self, value)
    if index is not MISSING and index is not Ellipsis:
      current = self._raw_value
      value = current.at[index].set(value) if isinstance(current, jax.Array) else _set_at(
        current, index, value)
    self._check_trace(value)
    object.__setattr__(self, '_raw_value', value)

  value = property(get_value, set_value, doc='The value, through the get and set hooks.')

  def __getitem__(self, index):
    return self.get_value(index=index)

  def __setitem__(self, index, value):
    self.set_value(value, index=index)

  # -- metadata ------------------------------------------------------------------------
  def get_metadata(self, name: str | None = None, default=MISSING):
    """All metadata as a dict, or one entry (``default`` if it is missing)."""
    if name is None:
      return dict(self._metadata)
    if name in self._metadata:
      return self._metadata[name]
    if default is MISSING:
      raise KeyError(f'{type(self).__name__} has no metadata {name!r}; it has '
                     f'{sorted(self._metadata)}')
    return default

  def set_metadata(self, *args, **kwargs) -> None:
    """``set_metadata(name, value)``, ``set_metadata(**entries)`` or ``set_metadata(dict)``
    (which replaces all metadata)."""
    if len(args) == 2:
      kwargs = {args[0]: args[1], **kwargs}
      new = {**self._metadata, **kwargs}
    elif len(args) == 1:
      new = {**args[0], **kwargs}
    else:
      new = {**self._metadata, **kwargs}
    object.__setattr__(self, '_metadata', new)
    bump_structure_epoch()  # metadata is part of the GraphDef

  def __getattr__(self, name):
    try:
      metadata = object.__getattribute__(self, '_metadata')
    except AttributeError:
      raise AttributeError(name) from None
    if name in metadata:
      return metadata[name]
    if name == 'sharding' and 'out_sharding' in metadata:
      return metadata['out_sharding']
    if name.startswith('__'):
      raise AttributeError(name)
    return getattr(object.__getattribute__(self, '_raw_value'), name)

  def __setattr__(self, name, value):
    if hasattr(getattr(type(self), name, None), '__set__'):  # value, raw_value, properties
      object.__setattr__(self, name, value)
    elif name in self._metadata:
      self.set_metadata(name, value)
    else:  # not even on a subclass with a __dict__: it would be lost by the pytree
      raise AttributeError(
        f'{type(self).__name__} has no attribute {name!r}; to add metadata use '
        f'`var.set_metadata({name}=...)`')

  @property
  def type(self):
    """The Variable's type, e.g. ``Param``."""
    return type(self)

  # -- copies and axes -----------------------------------------------------------------
  def replace(self, value=MISSING, **metadata):
    """A new Variable of the same type with a new value and/or updated metadata.

    Hooks are not re-run: the value is stored as given.
    """
    return _fill(object.__new__(type(self)), self._raw_value if value is MISSING else value,
                 {**self._metadata, **metadata})

  def copy(self, value=MISSING, **metadata):
    """Alias of :meth:`replace` (flax's name)."""
    return self.replace(value, **metadata)

  def update_from_state(self, other: Variable) -> None:
    """Takes the value and metadata of ``other`` (of the same type) in place."""
    object.__setattr__(self, '_raw_value', other._raw_value)
    if not _same_metadata(other._metadata, self._metadata):
      object.__setattr__(self, '_metadata', dict(other._metadata))
      bump_structure_epoch()  # metadata is part of the GraphDef

  copy_from = update_from_state

  def add_axis(self, axis_index: int, axis_name) -> None:
    """Runs the add-axis hooks: a transform is adding a mapped axis at ``axis_index``."""
    for hook in self._metadata.get('on_add_axis', ()):
      hook(self, axis_index, axis_name)

  def remove_axis(self, axis_index: int, axis_name) -> None:
    """Runs the remove-axis hooks: a transform is removing the axis at ``axis_index``."""
    for hook in self._metadata.get('on_remove_axis', ()):
      hook(self, axis_index, axis_name)

  # -- behave like the array -----------------------------------------------------------
  def __jax_array__(self):
    return jnp.asarray(self.get_value())

  def __array__(self, dtype=None, copy=None):
    import numpy as np
    return np.asarray(self.get_value(), dtype=dtype)

  def __len__(self):
    return len(self.get_value())

  def __iter__(self):
    return iter(self.get_value())

  def __bool__(self):
    return bool(self.get_value())

  def __float__(self):
    return float(self.get_value())

  def __int__(self):
    return int(self.get_value())

  def __index__(self):
    return self.get_value().__index__()

  def __neg__(self):
    return -self.get_value()

  def __pos__(self):
    return +self.get_value()

  def __abs__(self):
    return abs(self.get_value())

  def __invert__(self):
    return ~self.get_value()

  __hash__ = object.__hash__

  for _name in ('add sub mul matmul truediv floordiv mod pow lshift rshift and xor or divmod'
                .split()):
    locals()[f'__{_name}__'] = _operator(f'__{_name}__')
    locals()[f'__r{_name}__'] = _operator(f'__r{_name}__')
  for _name in ('eq', 'ne', 'lt', 'le', 'gt', 'ge'):
    locals()[f'__{_name}__'] = _operator(f'__{_name}__')
  for _name, _symbol in zip('add sub mul matmul truediv floordiv mod pow lshift rshift and xor or'
                            .split(), '+ - * @ / // % ** << >> & ^ |'.split(), strict=True):
    locals()[f'__i{_name}__'] = _no_inplace(f'__i{_name}__', _symbol)
  del _symbol
  del _name

  def __repr__(self):
    from bridge._repr import variable_repr
    return variable_repr(self)

  def __copy__(self):
    return self.replace()

  def __deepcopy__(self, memo):
    import copy
    new = object.__new__(type(self))
    memo[id(self)] = new
    return _fill(new, copy.deepcopy(self._raw_value, memo),
                 copy.deepcopy(self._metadata, memo))

  def __getstate__(self):
    return {'_raw_value': self._raw_value, '_metadata': self._metadata}

  def __setstate__(self, state):
    _fill(self, state['_raw_value'], state['_metadata'])


def _set_at(container, index, value):
  """``container[index] = value`` on a copy, for non-array values (dicts, lists, tuples)."""
  if isinstance(container, tuple):
    items = list(container)
    items[index] = value
    return tuple(items)
  new = container.copy()  # dict, list, numpy array
  new[index] = value
  return new


# -- pytree registration ------------------------------------------------------------------
def _flatten_with_keys(v: Variable):
  return ((jax.tree_util.GetAttrKey('value'), v._raw_value),), hashable(v._metadata)


def _flatten(v: Variable):
  return (v._raw_value,), hashable(v._metadata)


def _unflatten(cls, metadata, children):
  return _fill(object.__new__(cls), children[0], metadata.value)


def _owner_path(var: Variable) -> str | None:
  """A path to ``var`` for error messages: ``'Module/attr/...'`` from the ``self`` of a
  method on the call stack, else ``'name/attr/...'`` from a Module held in a local or
  global variable of a calling function."""
  import sys
  frame = sys._getframe(2)
  while frame is not None:
    owner = frame.f_locals.get('self')
    if owner is not None and owner is not var and hasattr(owner, '_graph_children'):
      path = _find(owner, var, set())
      if path is not None:
        return '/'.join((type(owner).__name__, *map(str, path)))
    for scope in (frame.f_locals, frame.f_globals):
      for name, value in list(scope.items()):
        if hasattr(value, '_graph_children') and not isinstance(value, type):
          path = _find(value, var, set())
          if path is not None:
            return '/'.join((name, *map(str, path)))
    frame = frame.f_back
  return None


def _find(node, var, seen: set) -> tuple | None:
  """The attribute/item path from ``node`` to ``var`` (identity), or None."""
  if id(node) in seen:
    return None
  seen.add(id(node))
  if isinstance(node, dict):
    items = node.items()
  elif isinstance(node, (list, tuple)):
    items = enumerate(node)
  elif hasattr(node, '__dict__') and not isinstance(node, type):
    items = vars(node).items()
  else:
    return None
  for key, value in items:
    if value is var:
      return (key,)
    if isinstance(value, (dict, list, tuple)) or (hasattr(value, '__dict__')
                                                  and not callable(value)):
      sub = _find(value, var, seen)
      if sub is not None:
        return (key, *sub)
  return None


class TraceContextError(ValueError):
  """A traced value was about to escape its transform through a Variable."""


_current_trace = functools.partial(jax.extend.core.get_opaque_trace_state, convention='nnx')


def _has_tracer(value) -> bool:
  if isinstance(value, jax.core.Tracer):
    return True
  if isinstance(value, (jax.Array, int, float)):
    return False
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(value))


def _fill(var: Variable, value, metadata: dict) -> Variable:
  """Sets a new Variable's slots; it belongs to the current trace."""
  object.__setattr__(var, '_metadata', metadata)
  object.__setattr__(var, '_raw_value', value)
  object.__setattr__(var, '_trace', _current_trace())
  return var


def _register_pytree(cls):
  jax.tree_util.register_pytree_with_keys(
    cls, _flatten_with_keys, functools.partial(_unflatten, cls), _flatten)


_register_pytree(Variable)


class Param(Variable):
  """A learnable parameter: what ``grad`` differentiates and optimizers update by default.

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> jax.tree.map(jnp.shape, nnx.state(layer))  # doctest: +NORMALIZE_WHITESPACE
  State({
    'bias': Param(
      value=(3,)
    ),
    'kernel': Param(
      value=(2, 3)
    )
  })
  """
  __slots__ = ()


class BatchStat(Variable):
  """A running statistic (BatchNorm's mean and var): state, but not learned by gradient."""
  __slots__ = ()


class Cache(Variable):
  """Autoregressive decoding state (attention's cached keys and values)."""
  __slots__ = ()


class Intermediate(Variable):
  """A value sown during a call (``Module.sow``), for inspection."""
  __slots__ = ()


class Perturbation(Intermediate):
  """A zero value added to an intermediate so that its gradient can be taken."""
  __slots__ = ()


# -- collection name <-> Variable type ----------------------------------------------------
_NAME_TO_TYPE: dict[str, type[Variable]] = {}
_TYPE_TO_NAME: dict[type[Variable], str] = {}


def register_variable_name(name: str, typ: type[Variable] | None = None, *, overwrite=False):
  """Pairs a Linen collection name with a Variable type; usable as a class decorator.

  >>> import bridge as nnx
  >>> @nnx.register_variable_name('counts_doc')
  ... class Count(nnx.Variable):
  ...   pass
  >>> nnx.variable_type_from_name('counts_doc') is Count
  True
  """
  if typ is None:
    return functools.partial(register_variable_name, name, overwrite=overwrite)
  if not (isinstance(typ, type) and issubclass(typ, Variable)):
    raise TypeError(f'register_variable_name({name!r}) needs a Variable subclass, got {typ!r}')
  taken = _NAME_TO_TYPE.get(name)
  if taken is not None and taken is not typ and not overwrite:
    raise ValueError(
      f'Collection name {name!r} is already registered to {taken.__name__}; pass '
      f'overwrite=True to register {typ.__name__} in its place.')
  if taken is not None:
    _TYPE_TO_NAME.pop(taken, None)
  _NAME_TO_TYPE[name] = typ
  _TYPE_TO_NAME[typ] = name
  return typ


def variable_name_from_type(typ: type[Variable], /, *, allow_register: bool = False) -> str:
  """The collection name of a Variable type (its registered name, or with
  ``allow_register`` its class name, registered on the spot).

  >>> import bridge as nnx
  >>> nnx.variable_name_from_type(nnx.Param)
  'params'
  """
  if typ in _TYPE_TO_NAME:
    return _TYPE_TO_NAME[typ]
  if not allow_register:
    raise ValueError(
      f'Variable type {typ.__name__} has no collection name; register one with '
      f'`bridge.register_variable_name(name)` or pass allow_register=True.')
  register_variable_name(typ.__name__, typ)
  return typ.__name__


def variable_type_from_name(name: str, /, *, base: type[Variable] = Variable,
                            allow_register: bool = True) -> type[Variable]:
  """The Variable type of a collection name; with ``allow_register`` an unknown name gets
  a new subclass of ``base`` named after it.

  >>> import bridge as nnx
  >>> nnx.variable_type_from_name('batch_stats') is nnx.BatchStat
  True
  >>> nnx.variable_type_from_name('my_stats_doc').__name__
  'my_stats_doc'
  """
  if name in _NAME_TO_TYPE:
    return _NAME_TO_TYPE[name]
  if not allow_register:
    raise ValueError(f'No Variable type is registered for collection {name!r}; known: '
                     f'{sorted(_NAME_TO_TYPE)}')
  return register_variable_name(name, type(name, (base,), {'__module__': __name__}))


for _pair in (('params', Param), ('batch_stats', BatchStat), ('cache', Cache),
              ('intermediates', Intermediate)):
  register_variable_name(*_pair)
del _pair
