"""``Module``: a Python object whose attributes are its state, and the containers.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> class Scale(nnx.Module):
...   def __init__(self, n):
...     self.w = nnx.Param(jnp.full((n,), 2.0))
...   def __call__(self, x):
...     self.sow(nnx.Intermediate, 'seen', x)
...     return x * self.w
>>> m = Scale(3)
>>> m(jnp.ones(3)).tolist()
[2.0, 2.0, 2.0]
>>> len(m.seen.value)
1
"""

from __future__ import annotations

import typing as tp
from collections.abc import MutableMapping, MutableSequence

import jax
import jax.numpy as jnp

from bridge import filters as filterlib
from bridge.graph import check_tree, iter_graph
from bridge.object import Object, bump_structure_epoch
from bridge.variables import Perturbation, Variable, variable_type_from_name


def tuple_reduce(xs: tuple, x) -> tuple:
  """``sow``'s default reduction: append ``x`` to the tuple ``xs``."""
  return (*xs, x)


def tuple_init() -> tuple:
  """``sow``'s default initial value: the empty tuple."""
  return ()


class Module(Object):
  """The base class of layers and models; subclass it and assign Variables and Modules.

  See the module docstring for an example.
  """

  def sow(self, variable_type: type[Variable] | str, name: str, value,
          reduce_fn: tp.Callable = tuple_reduce, init_fn: tp.Callable = tuple_init) -> bool:
    """Stores ``value`` in the ``variable_type`` Variable ``name`` of this Module:
    ``reduce_fn(init_fn(), value)`` the first time, ``reduce_fn(current, value)`` after."""
    if isinstance(variable_type, str):
      variable_type = variable_type_from_name(variable_type, allow_register=True)
    current = vars(self).get(name)
    if current is None:
      setattr(self, name, variable_type(reduce_fn(init_fn(), value)))
    elif not isinstance(current, Variable) or type(current) is not variable_type:
      raise ValueError(
        f'{type(self).__name__}.sow: attribute {name!r} is a {type(current).__name__}, '
        f'expected a {variable_type.__name__} to sow into; pick another name.')
    else:
      current.set_value(reduce_fn(current.get_value(), value))
    return True

  def perturb(self, name: str, value, variable_type: type[Variable] = Perturbation):
    """Adds a zero Variable ``name`` to ``value`` so that ``grad`` can differentiate with
    respect to this intermediate (created as zeros on the first call)."""
    if name not in vars(self):
      setattr(self, name, variable_type(jnp.zeros_like(value)))
    return getattr(self, name).get_value() + value

  def iter_modules(self) -> tp.Iterator[tuple[tuple, Module]]:
    """``iter_modules(self)``."""
    return iter_modules(self)

  def iter_children(self) -> tp.Iterator[tuple[str, Module]]:
    """``iter_children(self)``."""
    return iter_children(self)

  def set_attributes(self, *filters, raise_if_not_found: bool = True, **attributes) -> None:
    """Sets ``attributes`` on every nested Module (matching the filters) that has them.

    With ``raise_if_not_found``, an attribute no selected Module has is an error.
    """
    predicates = tuple(map(filterlib.to_predicate, filters or (True,)))
    missing = set(attributes)
    for path, module in iter_modules(self):
      if any(p(path, module) for p in predicates):
        for name, value in attributes.items():
          if hasattr(module, name):
            missing.discard(name)
            setattr(module, name, value)
    if missing and raise_if_not_found:
      raise ValueError(f'No selected Module has the attribute(s) {sorted(missing)}.')

  def train(self, **attributes) -> None:
    """Training mode: ``deterministic=False`` and ``use_running_average=False`` wherever
    a nested Module has them (Dropout, BatchNorm), plus ``attributes``."""
    self.set_attributes(deterministic=False, use_running_average=False, **attributes,
                        raise_if_not_found=False)

  def eval(self, **attributes) -> None:
    """Evaluation mode: ``deterministic=True`` and ``use_running_average=True``."""
    self.set_attributes(deterministic=True, use_running_average=True, **attributes,
                        raise_if_not_found=False)


def iter_modules(module, /, *, graph: bool | None = None) -> tp.Iterator[tuple[tuple, Module]]:
  """Every Module in the graph once, as ``(path, module)``, children before parents.

  >>> import bridge as nnx
  >>> m = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
  >>> [(p, type(x).__name__) for p, x in nnx.iter_modules(m)]
  [(('layers', 0), 'Linear'), ((), 'Sequential')]
  """
  for path, x in iter_graph(module, graph=graph):
    if isinstance(x, Module):
      yield path, x


def iter_children(node, /, *, graph: bool | None = None
                  ) -> tp.Iterator[tuple[tp.Hashable, tp.Any]]:
  """The direct children of ``node`` that are graph nodes (Modules, ``nnx.List``...) or
  Variables, as ``(key, child)``; ``node`` is a Module or other Object, a dict or a
  list. In tree mode (``graph=False``) shared references in ``node`` are a ValueError.

  >>> import bridge as nnx
  >>> class Pair(nnx.Module):
  ...   def __init__(self):
  ...     self.a = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
  ...     self.size = 1
  >>> [name for name, _ in nnx.iter_children(Pair())]
  ['a']
  >>> [name for name, _ in nnx.iter_children(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))]
  ['bias', 'kernel']
  """
  check_tree(node, 'iter_children', graph)
  if isinstance(node, Object):
    items = sorted(node._graph_children().items(), key=lambda kv: str(kv[0]))
  elif isinstance(node, dict):
    items = list(node.items())
  elif isinstance(node, (list, tuple)):
    items = list(enumerate(node))
  else:
    raise TypeError(f'iter_children expects a graph node (a Module, Object, dict or list), '
                    f'got {type(node).__name__}.')
  for key, x in items:
    if isinstance(x, (Object, Variable)):
      yield key, x


class List(Object, MutableSequence):
  """A list whose items are graph children (paths ``0``, ``1``, ...).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> layers = nnx.List([nnx.Param(jnp.ones(1)), nnx.Param(jnp.zeros(1))])
  >>> list(nnx.state(layers).keys())
  [0, 1]
  """

  _object__pytree_key = jax.tree_util.SequenceKey

  def __init__(self, items: tp.Iterable = ()):
    object.__setattr__(self, '_object__items', list(items))
    bump_structure_epoch()

  def _graph_children(self):
    return dict(enumerate(self._object__items))

  def _graph_set_children(self, children):
    object.__setattr__(self, '_object__items', [children[i] for i in range(len(children))])

  def __getitem__(self, i):
    items = self._object__items[i]
    return List(items) if isinstance(i, slice) else items

  def __setitem__(self, i, value):
    self._object__items[i] = value
    bump_structure_epoch()

  def __delitem__(self, i):
    del self._object__items[i]
    bump_structure_epoch()

  def __len__(self):
    return len(self._object__items)

  def insert(self, i, value):
    self._object__items.insert(i, value)
    bump_structure_epoch()

  def __repr__(self):
    return f'List({self._object__items!r})'


class Dict(Object, MutableMapping):
  """A dict whose values are graph children (paths are the keys).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> d = nnx.Dict(a=nnx.Param(jnp.ones(1)))
  >>> list(nnx.state(d).keys())
  ['a']
  """

  def __init__(self, *args, **kwargs):
    object.__setattr__(self, '_object__items', dict(*args, **kwargs))
    bump_structure_epoch()

  def _graph_children(self):
    return dict(self._object__items)

  def _graph_set_children(self, children):
    object.__setattr__(self, '_object__items', dict(children))

  def __getitem__(self, key):
    return self._object__items[key]

  def __setitem__(self, key, value):
    self._object__items[key] = value
    bump_structure_epoch()

  def __delitem__(self, key):
    del self._object__items[key]
    bump_structure_epoch()

  def __iter__(self):
    return iter(self._object__items)

  def __len__(self):
    return len(self._object__items)

  def __getattr__(self, name):
    if name.startswith('_object__') or name.startswith('__'):
      raise AttributeError(name)
    try:
      return self._object__items[name]
    except KeyError:
      raise AttributeError(f'Dict has no key {name!r}') from None

  def __setattr__(self, name, value):
    self[name] = value

  def __repr__(self):
    return f'Dict({self._object__items!r})'


class Sequential(Module):
  """Calls its layers in order, each on the previous output (a tuple output is passed as
  positional arguments, a dict as keyword arguments).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.relu)
  >>> model(jnp.ones((1, 2))).shape
  (1, 3)
  """

  def __init__(self, *fns: tp.Callable):
    self.layers = List(fns)

  def __call__(self, *args, rngs=None, **kwargs):
    if not len(self.layers):
      raise ValueError('Sequential has no layers to call.')
    output = None
    for i, f in enumerate(self.layers):
      if not callable(f):
        raise TypeError(f'Sequential layer {i} is a {type(f).__name__}, not callable.')
      if i > 0:
        args, kwargs = ((), output) if isinstance(output, dict) else (
          (output if isinstance(output, tuple) else (output,)), {})
      if rngs is not None:
        kwargs = {**kwargs, 'rngs': rngs}
      output = f(*args, **kwargs)
    return output
