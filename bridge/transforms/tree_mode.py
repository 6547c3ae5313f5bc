"""Transforms in tree mode (``graph=False``) or without graph updates (``graph_updates=False``).

Graph mode with updates (the default) is each transform's own code path, untouched. Otherwise
the arguments are prepared as flax.nnx treats them:

- tree mode: a Variable or Module reachable by two paths in the arguments is a ValueError
  naming the paths (a pytree holds each reference once);
- without graph updates: the transform gets structural copies of the Modules that share their
  Variables, so new values written to existing Variables reach the caller while new or
  deleted attributes and Variables stay inside.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> class Counter(nnx.Module):
...   def __init__(self):
...     self.n = nnx.BatchStat(jnp.array(0))
>>> def tick(c):
...   c.n.value += 1
...   c.note = nnx.BatchStat(jnp.array(7))  # a new attribute: stays inside
>>> c = Counter()
>>> nnx.jit(tick, graph=False)(c)
>>> int(c.n.value), hasattr(c, 'note')
(1, False)
"""

from __future__ import annotations

import functools
import typing as tp

from bridge.graph import _fmt, walk_paths
from bridge.graph_mode import resolve
from bridge.object import Object
from bridge.pytreelib import find_duplicates
from bridge.variables import Variable


def wrap(name: str, transformed: tp.Callable, graph: bool | None,
         graph_updates: bool | None) -> tp.Callable:
  """``transformed`` as is in graph mode with updates, else a function that prepares the
  arguments as above before calling it. ``name`` is the transform, for errors."""
  graph, graph_updates = resolve(graph, graph_updates)
  if graph and graph_updates:
    return transformed

  @functools.wraps(transformed)
  def wrapper(*args, **kwargs):
    args, kwargs = prepare(name, args, kwargs, graph)
    out = transformed(*args, **kwargs)
    if name == 'jit':
      _check_not_returned(args, kwargs, out)
    return out

  return wrapper


def call(name: str, fn: tp.Callable, graph: bool | None, graph_updates: bool | None,
         *args, **kwargs):
  """Calls ``fn(*args, **kwargs)`` (a direct-call transform such as ``cond``) with the
  arguments prepared for the mode."""
  graph, graph_updates = resolve(graph, graph_updates)
  if not (graph and graph_updates):
    args, kwargs = prepare(name, args, kwargs, graph)
  return fn(*args, **kwargs)


def prepare(name: str, args: tuple, kwargs: dict, graph: bool) -> tuple[tuple, dict]:
  """The arguments for a call without graph updates (checked for sharing in tree mode)."""
  if not graph:
    _check_no_sharing(name, args, kwargs)
  memo: dict = {}
  return detach(args, memo), detach(kwargs, memo)


def _check_no_sharing(name, args, kwargs):
  duplicates = find_duplicates({'args': args, 'kwargs': kwargs})
  if duplicates:
    listed = '\n'.join(f'  - {_fmt(p)}' for p in duplicates[0])
    raise ValueError(
      f'nnx.{name} in tree mode (graph=False) found a shared reference at paths:\n'
      f'{listed}\nTree mode does not support shared Variables or Modules. Remove the '
      f'duplicates, create separate ones with nnx.clone(), or pass graph=True.')


def detach(x, memo: dict):
  """``x`` with each Object replaced by a copy of its structure (Objects and containers
  new, Variables and all other values the same objects); sharing inside ``x`` is kept.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> m = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
  >>> d = detach(m, {})
  >>> d is m, d.kernel is m.kernel
  (False, True)
  """
  if isinstance(x, Variable):
    return x
  if isinstance(x, Object):
    if id(x) in memo:
      return memo[id(x)]
    new = memo[id(x)] = object.__new__(type(x))
    vars(new).update({k: detach(v, memo) for k, v in vars(x).items()})
    return new
  if type(x) in (list, tuple):
    return type(x)(detach(v, memo) for v in x)
  if type(x) is dict:
    return {k: detach(v, memo) for k, v in x.items()}
  return x


def _check_not_returned(args, kwargs, out):
  inputs = {id(v) for _, v in walk_paths((args, kwargs)) if isinstance(v, Variable)}
  for path, v in walk_paths(out):
    if isinstance(v, Variable) and id(v) in inputs:
      raise ValueError(
        f'nnx.jit with graph=False or graph_updates=False returned an input Variable at '
        f'output path {_fmt(path)}; Variable aliasing between inputs and outputs is not '
        f'supported there. Return new Variables (nnx.clone()) or pass graph=True and '
        f'graph_updates=True.')
