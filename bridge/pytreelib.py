"""Modules as JAX pytrees: which attributes are data (leaves) and which are static.

Every ``Object`` subclass (Modules, ``Rngs``, ``nnx.List``...) is registered with JAX unless
declared with ``pytree=False``, so ``jax.jit(f)(model)``, ``jax.tree.map(f, model)`` and
``jax.vmap`` take Modules as they are. An attribute is *data* (its leaves are pytree leaves)
when its value holds data: arrays, Variables, other Objects, types registered with
``register_data_type``; or when it is marked with ``nnx.data``. Everything else is *static*
(part of the tree structure, compared by equality). ``nnx.static`` marks an attribute static
and refuses data in it. An Object rebuilt by ``jax.tree.map`` & co. remembers which
attributes were data, so a tree of axes (``nnx.prefix``) keeps the Module's structure.

>>> import jax, jax.numpy as jnp
>>> import bridge as nnx
>>> class Model(nnx.Module):
...   def __init__(self):
...     self.w = nnx.Param(jnp.ones(2))
...     self.scale = nnx.data(2.0)   # a Python float, but a leaf
...     self.name = 'model'          # static
>>> [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(Model())[0]]
['.scale', '.w.value']
>>> is_param = lambda x: isinstance(x, nnx.Param)
>>> axes = jax.tree.map(lambda x: 0, Model(), is_leaf=is_param)
>>> axes.w, jax.tree.structure(axes) == jax.tree.structure(Model(), is_leaf=is_param)
(0, True)
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
import numpy as np

from bridge import object as objectlib
from bridge import variables as variablelib
from bridge._static import IMMUTABLE, hashable

A = tp.TypeVar('A')
Data = tp.Annotated[A, '__data__']
"""Annotation marking a class attribute as data: ``count: nnx.Data[int]``."""
Static = tp.Annotated[A, '__static__']
"""Annotation marking a class attribute as static: ``size: nnx.Static[int]``."""

_MISSING = object()
_REGISTERED: list[type] = []
_data_types: tuple | None = None


def register_data_type(type_, /):
  """Registers ``type_`` so that its instances are data (pytree leaves) in Modules.

  >>> import bridge as nnx
  >>> @nnx.register_data_type
  ... class Token: pass
  >>> nnx.is_data(Token())
  True
  """
  global _data_types
  _REGISTERED.append(type_)
  _data_types = None
  return type_


def _types() -> tuple:
  global _data_types
  if _data_types is None:
    _data_types = (jax.Array, np.ndarray, variablelib.Variable, objectlib.Object,
                   *_REGISTERED)
  return _data_types


_STATIC_SCALARS = (int, float, complex, str, bool, bytes, type(None), type)


def is_data(value, /) -> bool:
  """Whether ``value`` itself is data: an array, a Variable, an Object (Module, Rngs...) or
  an instance of a type registered with ``register_data_type``. Containers are not data;
  see ``has_data``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> nnx.is_data(jnp.ones(1)), nnx.is_data(1), nnx.is_data([jnp.ones(1)])
  (True, False, False)
  """
  return isinstance(value, _types())


def has_data(value, /) -> list:
  """The data values found anywhere in the pytree ``value`` (empty if it has none).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> len(nnx.has_data([1, jnp.ones(1), {'a': nnx.Param(2)}]))
  2
  """
  if isinstance(value, _STATIC_SCALARS):
    return []
  if is_data(value):
    return [value]
  return [x for x in jax.tree.leaves(value, is_leaf=is_data) if is_data(x)]


def data(value: tp.Any = _MISSING, /, **kwargs) -> tp.Any:
  """Marks an attribute as data. ``self.x = nnx.data(value)`` on assignment, or
  ``x: T = nnx.data()`` on the class (``kwargs`` go to ``dataclasses.field``).

  >>> import jax
  >>> import bridge as nnx
  >>> class M(nnx.Module):
  ...   def __init__(self):
  ...     self.steps = nnx.data(0)
  >>> jax.tree.leaves(M())
  [0]
  """
  return _marker(value, kwargs, static=False)


def static(value: tp.Any = _MISSING, /, **kwargs) -> tp.Any:
  """Marks an attribute as static (never leaves; assigning data to it is a ValueError).
  ``self.x = nnx.static(value)`` on assignment or ``x: T = nnx.static()`` on the class.

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> class M(nnx.Module):
  ...   def __init__(self):
  ...     self.sizes = nnx.static([1, 2])
  >>> jax.tree.leaves(M())
  []
  """
  return _marker(value, kwargs, static=True)


def _marker(value, kwargs, *, static: bool):
  if value is _MISSING:
    metadata = {**kwargs.pop('metadata', {}), 'static': static}
    return dataclasses.field(metadata=metadata, **kwargs)
  if kwargs:
    raise TypeError(f'nnx.{"static" if static else "data"}(value) takes no keyword '
                    f'arguments when given a value; got {sorted(kwargs)}.')
  return dataclasses.field(metadata={'nnx_value': value, 'static': static})


def unwrap_marker(value) -> tuple[tp.Any, bool | None]:
  """``(value, is_data)`` for an ``nnx.data(v)``/``nnx.static(v)`` marker, else
  ``(value, None)``."""
  if type(value) is dataclasses.Field and 'nnx_value' in value.metadata:
    return value.metadata['nnx_value'], not value.metadata['static']
  return value, None


# -- class-level declarations -------------------------------------------------------------
def class_statuses(cls) -> dict[str, bool]:
  """``{name: is_data}`` declared on ``cls`` and its bases: ``nnx.data()``/``nnx.static()``
  defaults and ``nnx.Data[...]``/``nnx.Static[...]`` annotations."""
  out: dict[str, bool] = {}
  for klass in reversed(cls.__mro__):
    for name, annotation in vars(klass).get('__annotations__', {}).items():
      status = _annotation_status(annotation)
      if status is not None:
        out[name] = status
    for name, value in vars(klass).items():
      if isinstance(value, dataclasses.Field) and 'static' in value.metadata:
        out[name] = not value.metadata['static']
  return out


def _annotation_status(annotation) -> bool | None:
  if isinstance(annotation, str):  # ``from __future__ import annotations``
    head = annotation.split('[', 1)[0].rsplit('.', 1)[-1]
    return {'Data': True, 'Static': False}.get(head)
  for tag in getattr(annotation, '__metadata__', ()):
    if tag == '__data__':
      return True
    if tag == '__static__':
      return False
  return None


# -- attribute checks ---------------------------------------------------------------------
def status_of(obj, name) -> bool | None:
  """The declared status of attribute ``name`` (``True`` data, ``False`` static), if any."""
  explicit = vars(obj).get('_object__explicit')
  if explicit is not None and name in explicit:
    return explicit[name]
  return type(obj)._object__fields.get(name)


def check_value(obj, name: str, value, declared: bool | None) -> None:
  """Raises the ValueError flax.nnx raises when data goes into a static attribute."""
  status = declared if declared is not None else status_of(obj, name)
  if status is not False:
    return
  found = has_data(value)
  if found:
    how = 'annotated with nnx.static(...)' if declared is False else 'declared static'
    kinds = ', '.join(sorted({type(x).__name__ for x in found}))
    raise ValueError(
      f"Found data ({kinds}) in the value of type '{type(value).__name__}' {how} for "
      f"attribute '{name}' of Pytree type '{type(obj).__name__}'. Static attributes cannot "
      f"hold arrays, Variables or Modules: mark it as data instead (`self.{name} = "
      f"nnx.data(...)` or `{name}: T = nnx.data()` on the class).")


def check_pytree(pytree) -> None:
  """Checks every attribute of ``pytree`` against its declared status (ValueError for data
  in a static attribute; TypeError if ``pytree`` is not a Pytree).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> class M(nnx.Module):
  ...   size: int = nnx.static()
  >>> m = M()
  >>> vars(m)['size'] = jnp.ones(1)  # bypasses the check on assignment
  >>> nnx.check_pytree(m)
  Traceback (most recent call last):
  ...
  ValueError: Found data (ArrayImpl) in the value of type 'ArrayImpl' declared static ...
  """
  if not isinstance(pytree, objectlib.Object):
    raise TypeError(f'check_pytree expects a Pytree (a Module or other nnx.Pytree), got '
                    f'{type(pytree).__name__}.')
  for name, value in pytree._graph_children().items():
    check_value(pytree, name, value, None)


# -- pytree registration ------------------------------------------------------------------
def _is_data_attr(obj, name, value) -> bool:
  status = status_of(obj, name)
  if status is not None:
    return status
  rebuilt = vars(obj).get('_object__data')
  if rebuilt is not None and name in rebuilt:
    return True
  return type(value) not in IMMUTABLE and bool(has_data(value))


def _flatten_with_keys(obj):
  children = obj._graph_children()
  key = type(obj)._object__pytree_key
  names = sorted(children)  # sorted, so equal objects built in any order match
  data_items = [k for k in names if _is_data_attr(obj, k, children[k])]
  static = tuple((k, _static_aux(children[k])) for k in names if k not in data_items)
  explicit = vars(obj).get('_object__explicit')
  aux = (tuple(names), static, tuple(sorted(explicit.items())) if explicit else ())
  return tuple((key(k), children[k]) for k in data_items), aux


def _static_aux(value):
  """``value`` as pytree aux data: as it is when it never changes (ints, strings, functions:
  compared at C speed on every jax.jit call), else wrapped to compare by value."""
  return value if type(value) in IMMUTABLE else hashable(value)


def _flatten(obj):
  leaves, aux = _flatten_with_keys(obj)
  return [v for _, v in leaves], aux


def _make_unflatten(cls):
  def unflatten(aux, leaves):
    names, static, explicit = aux
    static_values = {k: v.value if type(v) is hashable else v for k, v in static}
    data_names = [k for k in names if k not in static_values]
    values = {**dict(zip(data_names, leaves, strict=True)), **static_values}
    obj = object.__new__(cls)
    obj._graph_set_children({k: values[k] for k in names})
    # the attributes that were data stay data whatever they hold now (ints of a prefix
    # tree, tracers, None...), so the rebuilt object flattens to the same structure
    vars(obj)['_object__data'] = frozenset(data_names)
    if explicit:
      vars(obj)['_object__explicit'] = dict(explicit)
    return obj
  return unflatten


def register(cls) -> None:
  """Registers the Object subclass ``cls`` as a JAX pytree (attributes as above)."""
  jax.tree_util.register_pytree_with_keys(cls, _flatten_with_keys, _make_unflatten(cls),
                                          _flatten)


# -- dataclasses and duplicates -----------------------------------------------------------
def dataclass(cls=None, /, *, init: bool = True, eq: bool = True, order: bool = False,
              unsafe_hash: bool = False, match_args: bool = True, kw_only: bool = False,
              slots: bool = False, weakref_slot: bool = False):
  """``dataclasses.dataclass`` for Pytrees; fields default to the data/static rules above
  and ``nnx.static()``/``nnx.data()`` field defaults declare them.

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> @nnx.dataclass
  ... class Point(nnx.Pytree):
  ...   xy: jax.Array
  ...   label: str = nnx.static(default='p')
  >>> p = Point(jnp.zeros(2))
  >>> p.label, len(jax.tree.leaves(p))
  ('p', 1)
  """
  kwargs = dict(init=init, eq=eq, order=order, unsafe_hash=unsafe_hash, match_args=match_args,
                kw_only=kw_only, slots=slots, weakref_slot=weakref_slot)
  if cls is None:
    return lambda c: dataclass(c, **kwargs)
  if not isinstance(cls, type) or not issubclass(cls, objectlib.Object):
    raise TypeError(f'nnx.dataclass decorates subclasses of nnx.Pytree/nnx.Module, got '
                    f'{cls!r}.')
  return dataclasses.dataclass(cls, repr=False, **kwargs)


def find_duplicates(node, /, *, only=...) -> list[list[tuple]]:
  """The paths of every node or Variable reachable by more than one path, one list per
  shared object (paths sorted); ``only`` is a filter on the shared objects.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> class Tied(nnx.Module):
  ...   def __init__(self):
  ...     self.a = nnx.Param(jnp.ones(1))
  ...     self.b = self.a
  >>> nnx.find_duplicates(Tied())
  [[('a',), ('b',)]]
  """
  from bridge import filters as filterlib
  from bridge.graph import walk_paths
  predicate = filterlib.to_predicate(only)
  paths: dict[int, list] = {}
  objects: dict[int, tp.Any] = {}
  for path, x in walk_paths(node):
    paths.setdefault(id(x), []).append(path)
    objects[id(x)] = x
  groups = [sorted(ps, key=_path_key) for i, ps in paths.items()
            if len(ps) > 1 and predicate(ps[0], objects[i])]
  return sorted(groups, key=lambda ps: _path_key(ps[0]))


def _path_key(path):
  return tuple((False, k) if isinstance(k, int) else (True, str(k)) for k in path)


Pytree = objectlib.Object
Object = objectlib.Object

__all__ = ['Pytree', 'Object', 'Data', 'Static', 'data', 'static', 'is_data', 'has_data',
           'register_data_type', 'dataclass', 'find_duplicates', 'check_pytree']
