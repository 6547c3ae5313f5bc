"""Variable modes: ``with_vars`` (read-only Variables), ``var_defaults`` and ``vars_as``.

flax.nnx Variables have *hijax* and *ref* modes (Variables carried through ``jax.jit`` as
mutable JAX references). ``bridge`` Variables are plain Python objects that its transforms
write back at the boundary, so both modes are always off: ``var_defaults()`` reports them
as ``False`` and asking for them is a ``NotImplementedError``. What has a meaning of its own
is ``mutable=False``: read-only Variables, whose writes raise ``ImmutableVariableError``.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> frozen = nnx.with_vars(model, mutable=False)
>>> frozen.kernel[...] = jnp.zeros((2, 3))
Traceback (most recent call last):
...
bridge.var_modes.ImmutableVariableError: Cannot write the read-only Param ...
"""

from __future__ import annotations

import dataclasses
import functools
import typing as tp
import warnings
from collections.abc import Mapping

from bridge import filters as filterlib
from bridge.variables import Variable, _fill

A = tp.TypeVar('A')


class ImmutableVariableError(Exception):
  """A write to a Variable made read-only by ``nnx.with_vars(node, mutable=False)`` (the
  name of flax's exception for a write to an immutable Variable).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> p = nnx.with_vars({'w': nnx.Param(jnp.ones(1))}, mutable=False)['w']
  >>> try:
  ...   p.value = jnp.zeros(1)
  ... except nnx.ImmutableVariableError:
  ...   print('read-only')
  read-only
  """


@dataclasses.dataclass(frozen=True)
class VarDefaults(Mapping):
  """The default Variable modes, a read-only mapping: always ``hijax=False, ref=False`` in
  bridge.

  >>> import bridge as nnx
  >>> nnx.var_defaults()
  VarDefaults(hijax=False, ref=False)
  >>> dict(nnx.var_defaults())
  {'hijax': False, 'ref': False}
  """
  hijax: bool
  ref: bool

  def __getitem__(self, key: str):
    if key not in ('hijax', 'ref'):
      raise KeyError(key)
    return getattr(self, key)

  def __iter__(self):
    return iter(('hijax', 'ref'))

  def __len__(self) -> int:
    return 2


_DEFAULTS = VarDefaults(hijax=False, ref=False)


def _refuse_modes(fn_name: str, hijax, ref) -> None:
  wanted = [name for name, value in (('hijax', hijax), ('ref', ref)) if value]
  if wanted:
    raise NotImplementedError(
      f'{fn_name}({", ".join(f"{n}=True" for n in wanted)}): bridge Variables have no '
      f'hijax or ref mode (they are plain Python objects written back by bridge transforms); '
      f'only hijax=False/ref=False (the defaults) are supported.')


class VarDefaultsContext:
  """What ``var_defaults(hijax=..., ref=...)`` returns: a context manager and a decorator
  that set the default modes (only ``False`` is supported, so it changes nothing).

  >>> import bridge as nnx
  >>> with nnx.var_defaults(hijax=False):
  ...   print(nnx.var_defaults())
  VarDefaults(hijax=False, ref=False)
  """

  def __enter__(self):
    return None

  def __exit__(self, *exc_info):
    return None

  def __call__(self, f: tp.Callable) -> tp.Callable:
    @functools.wraps(f)
    def var_defaults_wrapper(*args, **kwargs):
      with self:
        return f(*args, **kwargs)
    return var_defaults_wrapper


def var_defaults(*, hijax: bool | None = None,
                 ref: bool | None = None) -> VarDefaultsContext | VarDefaults:
  """The current default Variable modes when called without arguments, else a context
  manager (and decorator) setting them. ``hijax=True``/``ref=True`` are a
  NotImplementedError: bridge Variables have no such modes.

  >>> import bridge as nnx
  >>> nnx.var_defaults().hijax
  False
  >>> @nnx.var_defaults(ref=False)
  ... def f():
  ...   return nnx.var_defaults().ref
  >>> f()
  False
  """
  _refuse_modes('var_defaults', hijax, ref)
  if hijax is None and ref is None:
    return _DEFAULTS
  return VarDefaultsContext()


def is_read_only(variable: Variable) -> bool:
  """Whether ``variable`` was made read-only by ``with_vars(..., mutable=False)``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> from bridge.var_modes import is_read_only
  >>> p = nnx.Param(jnp.ones(1))
  >>> is_read_only(p), is_read_only(nnx.with_vars(p, mutable=False))
  (False, True)
  """
  return variable._metadata.get('mutable') is False


def with_vars(node: A, /, *, hijax: bool | None = None, ref: bool | None = None,
              mutable: bool | None = None, only: filterlib.Filter = ...,
              allow_duplicates: bool = False) -> A:
  """A copy of ``node``'s structure whose Variables matching ``only`` are made read-only
  (``mutable=False``: writes raise ``ImmutableVariableError``) or writable again
  (``mutable=True``). Variables that do not change are shared with ``node``; changed ones
  are new Variables holding the same arrays. A changed Variable reachable by two paths is
  a ValueError unless ``allow_duplicates=True``. ``hijax``/``ref`` accept only ``False``
  or ``None`` (bridge Variables have no such modes: NotImplementedError).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> frozen = nnx.with_vars(model, mutable=False, only=nnx.Param)
  >>> frozen.kernel is model.kernel, bool((frozen.kernel[...] == model.kernel[...]).all())
  (False, True)
  >>> thawed = nnx.with_vars(frozen, mutable=True)
  >>> thawed.kernel[...] = jnp.zeros((2, 3))
  >>> float(thawed.kernel[...].sum())
  0.0
  """
  from bridge.graph_map import map as graph_map
  from bridge.pytreelib import find_duplicates
  _refuse_modes('with_vars', hijax, ref)
  predicate = filterlib.to_predicate(only)

  def changes(path, x) -> bool:
    return (mutable is not None and isinstance(x, Variable)
            and is_read_only(x) != (not mutable) and predicate(path, x))

  if not allow_duplicates:
    duplicates = find_duplicates(node, only=changes)
    if duplicates:
      listed = '\n'.join('  ---\n' + '\n'.join(f'  {"/".join(map(str, p))}' for p in ps)
                         for ps in duplicates)
      raise ValueError(f'Found duplicate at paths:\n{listed}\n  ---\nwith_vars would give '
                       f'each path its own Variable: pass allow_duplicates=True to accept.')

  def convert(path, x):
    if not changes(path, x):
      return x
    metadata = {k: v for k, v in x._metadata.items() if k != 'mutable'}
    if not mutable:
      metadata['mutable'] = False
    return _fill(object.__new__(type(x)), x._raw_value, metadata)

  return graph_map(convert, node, graph=True)


def vars_as(node: A, /, *, hijax: bool | None = None, ref: bool | None = None,
            mutable: bool | None = None, only: filterlib.Filter = ...,
            allow_duplicates: bool = False) -> A:
  """Deprecated alias of ``with_vars`` (a DeprecationWarning, as in flax.nnx).

  >>> import warnings
  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> with warnings.catch_warnings(record=True) as caught:
  ...   warnings.simplefilter('always')
  ...   _ = nnx.vars_as({'w': nnx.Param(jnp.ones(1))}, mutable=False)
  >>> caught[0].category.__name__, str(caught[0].message)
  ('DeprecationWarning', 'This function is deprecated. Use with_vars instead.')
  """
  warnings.warn('This function is deprecated. Use with_vars instead.', DeprecationWarning,
                stacklevel=2)
  return with_vars(node, hijax=hijax, ref=ref, mutable=mutable, only=only,
                   allow_duplicates=allow_duplicates)


__all__ = ['with_vars', 'vars_as', 'var_defaults', 'VarDefaults', 'VarDefaultsContext',
           'ImmutableVariableError']
