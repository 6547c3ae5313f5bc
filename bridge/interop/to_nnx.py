"""``ToNNX``: any Linen module as a ``bridge`` Module.

The Linen variables live as attributes of the wrapper, by path (``model.Dense_0['kernel']``
is a ``Param``), so every bridge API (``split``, ``jit``, ``Optimizer``, ...) sees them.
``lazy_init`` runs Linen's ``init``; a call runs ``apply`` with fresh keys from the
wrapper's ``Rngs`` and writes the mutable collections back.

>>> import jax.numpy as jnp
>>> import flax.linen as nn
>>> import bridge
>>> model = bridge.ToNNX(nn.Dense(4), rngs=bridge.Rngs(0)).lazy_init(jnp.ones((1, 3)))
>>> model.kernel.shape, model(jnp.ones((2, 3))).shape
((3, 4), (2, 4))
"""

from __future__ import annotations

import functools
import re
import typing as tp

import flax.errors
import flax.linen as nn
import jax

from bridge.graph import iter_graph
from bridge.interop.collections import collection_of, linen_to_tree, tree_to_linen
from bridge.module import Dict, Module
from bridge.rngs import Rngs
from bridge.variables import Variable


def _rng_dict(rngs) -> dict:
  """Fresh Linen rngs from an ``Rngs`` (``default`` serves as ``params`` when absent)."""
  if rngs is None:
    return {}
  if isinstance(rngs, jax.Array):
    return {'params': rngs}
  keys = {name: stream() for name, stream in rngs.items()}
  if 'params' not in keys and 'default' in keys:
    keys['params'] = keys.pop('default')
  return keys


def _enclosing_linen_module() -> nn.Module | None:
  """The Linen module whose method is running (a ToLinen around this wrapper), if any."""
  stack = nn.module._context.module_stack
  return stack[-1] if stack else None


def _mutable_names(mutable, present: tp.Iterable[str]):
  """Linen's ``mutable`` from ours: a bool, a name, names, or Variable types. By default,
  what the enclosing ``bridge.bridge.Module`` apply or Linen call may change (as in flax);
  outside both, every collection but params (a stateful Module updates its statistics in
  place)."""
  if mutable is None:
    from bridge.interop.bridge_module import current_module  # imports this module: import late
    bridge_parent = current_module()
    if bridge_parent is not None and bridge_parent.scope is not None:
      return bridge_parent.scope.mutable
    linen_parent = _enclosing_linen_module()
    if linen_parent is not None and linen_parent.scope is not None:
      return linen_parent.scope.mutable
    names = [c for c in present if c != 'params']
    return names or False
  if isinstance(mutable, (bool, str)):
    return mutable
  items = mutable if isinstance(mutable, (list, tuple)) else (mutable,)
  return [collection_of(m) if isinstance(m, type) else m for m in items]


class ToNNX(Module):
  """Wraps a Linen module; ``lazy_init(*args)`` initializes it like ``init``, calls work
  like ``apply``, and any method of the Linen module is reachable as an attribute
  (``model.encode(x)``). A call's ``mutable=`` (True, a collection name, names, Variable
  types) says which collections it writes back; by default every collection the wrapper
  has but ``params`` (BatchNorm statistics update on each call), or, inside a Linen
  module's call, what that call may change. See the module docstring for an example."""

  def __init__(self, module: nn.Module, rngs: Rngs | jax.Array | None = None):
    if not isinstance(module, nn.Module):
      raise TypeError(f'ToNNX: module must be a flax.linen Module, got '
                      f'{type(module).__name__} {module!r:.80}.')
    if not (rngs is None or isinstance(rngs, (Rngs, jax.Array))):
      raise TypeError(f'ToNNX({type(module).__name__}): rngs must be a bridge.Rngs, a JAX '
                      f'key or None, got {type(rngs).__name__} {rngs!r:.80}; e.g. '
                      'rngs=bridge.Rngs(0).')
    self.to_nnx__module = module
    self.to_nnx__rngs = rngs.fork() if isinstance(rngs, Rngs) else (
      Rngs(params=rngs) if isinstance(rngs, jax.Array) else rngs)
    self.to_nnx__initialized = False

  def lazy_init(self, *args, **kwargs) -> ToNNX:
    """``lazy_init(self, *args, **kwargs)``: initialize from sample inputs; returns self."""
    return lazy_init(self, *args, **kwargs)

  def __getattr__(self, name: str):
    module = vars(self).get('to_nnx__module')
    if module is None or name.startswith('_'):
      raise AttributeError(name)
    if callable(getattr(type(module), name, None)):
      method = functools.partial(self.__call__, method=name)
      method.__self__ = self
      return method
    raise AttributeError(f'{type(self).__name__} wrapping {type(module).__name__} has no '
                         f'attribute {name!r}')

  def _variables_tree(self) -> dict:
    return {k: v for k, v in self._graph_children().items() if not k.startswith('to_nnx__')}

  def __call__(self, *args, rngs=None, method=None, mutable=None, **kwargs):
    module = self.to_nnx__module
    keys = _rng_dict(self.to_nnx__rngs if rngs is None else rngs)
    if vars(self).get('to_nnx__initializing'):
      out, variables = module.init_with_output(keys, *args, method=method, **kwargs)
      self._write(variables)
      self.to_nnx__initialized = True
      return out
    if not self.to_nnx__initialized:
      raise ValueError(
        f'ToNNX({type(module).__name__}) is called before it is initialized: call '
        f'`model.lazy_init(*sample_args)` (or `bridge.lazy_init(model.{method or "__call__"}, '
        '...)`) first.')
    variables = tree_to_linen(self._variables_tree())
    mutable = _mutable_names(mutable, variables)
    try:
      out = module.apply(variables, *args, rngs=keys, method=method, mutable=mutable, **kwargs)
    except (flax.errors.ScopeParamNotFoundError, flax.errors.ScopeCollectionNotFound,
            flax.errors.ScopeVariableNotFoundError) as e:
      raise _missing_variables_error(module, method, e) from e
    if mutable is False:
      return out
    out, updates = out
    self._write(updates)
    return out

  def _write(self, variables: tp.Mapping) -> None:
    """Merges Linen variables into the attributes: existing Variables are updated in
    place (their identity kept), new paths become new entries."""
    _merge_into(self, linen_to_tree(variables))


def _missing_variables_error(module: nn.Module, method, error: Exception) -> ValueError:
  """What to do when a call needs variables the wrapper does not have: initialize the
  method (params), or let the call create them (any other collection)."""
  name = method if isinstance(method, str) or method is None else method.__name__
  call = f'ToNNX({type(module).__name__}).{name or "__call__"}'
  linen_message = str(error).split(' (https://')[0]
  init = f'`bridge.lazy_init(model.{name or "__call__"}, *sample_args)`'
  collection = re.search(r'collection "([^"]+)"', linen_message)
  if collection and collection.group(1) != 'params':
    fix = (f'This call creates variables of collection {collection.group(1)!r}: pass '
           f"`mutable=['{collection.group(1)}']` (or mutable=True) to let it, or create "
           f'them at initialization with {init}.')
  else:
    fix = f'This call needs parameters that initialization did not create: initialize it too ' \
          f'with {init}.'
  return ValueError(f'{call}: {linen_message} {fix}')


def _merge_into(parent, tree: dict) -> None:
  """Merges nested dicts of Variables into ``parent`` (the wrapper or one of its ``Dict``
  containers): existing Variables are updated in place, new subtrees are stored as
  ``bridge.Dict`` containers (which report their own changes, so jitted calls need no per-call
  check of plain containers)."""
  for key, value in tree.items():
    current = parent._graph_children().get(key)
    if isinstance(value, dict) and isinstance(current, Dict):
      _merge_into(current, value)
    elif isinstance(value, Variable) and type(current) is type(value):
      current.update_from_state(value)
    elif isinstance(parent, Dict):
      parent[key] = _as_dicts(value)
    else:
      setattr(parent, key, _as_dicts(value))


def _as_dicts(value):
  return Dict({k: _as_dicts(v) for k, v in value.items()}) if isinstance(value, dict) else value


def lazy_init(fn, *args, **kwargs):
  """Initializes the ``ToNNX`` modules that ``fn`` (a bridge Module, or a bound method of
  one such as ``model.encode``) reaches by calling it once; returns ``fn``."""
  root = fn if isinstance(fn, Module) else getattr(fn, '__self__', None)
  if not isinstance(root, Module):
    raise ValueError(f'lazy_init needs a bridge Module or one of its methods, got {fn!r}.')
  wrappers = [m for _, m in iter_graph(root) if isinstance(m, ToNNX)]
  for m in wrappers:
    set_initializing(m, True)
  try:
    fn(*args, **kwargs)
  finally:
    for m in wrappers:
      set_initializing(m, False)
  return fn


def set_initializing(wrapper: ToNNX, initializing: bool) -> None:
  """Marks ``wrapper`` so that its calls run Linen ``init`` (or removes the mark). The mark
  is a graph attribute, so it holds inside transforms that rebuild the graph (a ToNNX
  initialized under ``vmap`` by ``lazy_init``)."""
  if initializing:
    wrapper.to_nnx__initializing = True
  elif 'to_nnx__initializing' in vars(wrapper):
    del wrapper.to_nnx__initializing
