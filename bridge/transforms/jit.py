"""``jit``: ``jax.jit`` over functions of Modules, with in-place updates visible afterwards.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> class Counter(nnx.Module):
...   def __init__(self):
...     self.n = nnx.BatchStat(jnp.array(0))
>>> @nnx.jit
... def tick(c, k):
...   c.n.value += k
...   return c.n.value * 10
>>> c = Counter()
>>> int(tick(c, 2)), int(tick(c, 3)), int(c.n.value)
(20, 50, 5)
"""

from __future__ import annotations

import collections
import functools
import inspect
import typing as tp

import jax

from bridge.graph import GraphDef
from bridge.transforms import tree_mode
from bridge.transforms._boundary import (
  Box,
  FlatCache,
  build_inside,
  extract,
  flatten_outside,
  insert,
  is_graph,
  write_back,
)
from bridge.transforms.state_sharding import StateSharding
from bridge.variables import Variable


def _as_tuple(x) -> tuple:
  if x is None:
    return ()
  return (x,) if isinstance(x, (int, str)) else tuple(x)


class _CallStatic(tp.NamedTuple):
  graphdef: GraphDef
  n_roots: int
  static_args: tuple  # ((position, value), ...)
  static_kwargs: tuple  # ((name, value), ...)
  n_args: int
  donate: tuple = ()  # donated positions of ``_pure``'s arguments (see ``_donation``)


class Jitted:
  """A jitted function of Modules (what ``jit`` returns); call it like the function.

  It keeps one ``jax.jit`` per distinct structure of its arguments (and static arguments)
  in ``compiled``, the ``max_compiled`` (64) most recently used ones: a program that keeps
  changing the structure of its Modules does not grow it without bound.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> f = nnx.jit(lambda m: m.kernel.value.sum())
  >>> m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  >>> for i in range(3):
  ...   m.tag = i  # a static attribute: a new structure each time
  ...   _ = f(m)
  >>> len(f.compiled), f.max_compiled
  (3, 64)
  """

  max_compiled = 64

  def __init__(self, fun, *, static_argnums=None, static_argnames=None, donate_argnums=None,
               donate_argnames=None, in_shardings=None, out_shardings=None, **jit_kwargs):
    functools.update_wrapper(self, fun)
    self.fun = fun
    self.static_argnums = frozenset(_as_tuple(static_argnums))
    self.static_argnames = frozenset(_as_tuple(static_argnames))
    self.donate_argnums = frozenset(_as_tuple(donate_argnums))
    self.donate_argnames = frozenset(_as_tuple(donate_argnames))
    self.in_shardings = in_shardings
    self.out_shardings = out_shardings
    self.jit_kwargs = jit_kwargs
    signature = _signature(fun)
    self.static_argnums, self.static_argnames = _resolve(
      signature, self.static_argnums, self.static_argnames)
    self.donate_argnums, self.donate_argnames = _resolve(
      signature, self.donate_argnums, self.donate_argnames)
    self._negative_argnums = any(i < 0 for i in self.static_argnums)
    self.cache = FlatCache()
    self.compiled: collections.OrderedDict[tuple, tp.Any] = collections.OrderedDict()

  def _pure(self, static: _CallStatic, dyn_kwargs, donated_kwargs, *parts):
    node_leaves = [leaf for group in parts[:static.n_roots] for leaf in group]
    roots, origin = build_inside(static.graphdef, node_leaves)
    dyn_args = list(insert(list(parts[static.n_roots:]), roots))
    args = _restore_positions(dyn_args, static.static_args, static.n_args)
    kwargs = {**insert(dyn_kwargs, roots), **insert(donated_kwargs, roots),
              **dict(static.static_kwargs)}
    out = self.fun(*args, **kwargs)
    if self.out_shardings is not None:
      out = _constrain(out, self.out_shardings)
    # Unchanged leaves need not come back, unless donated (their buffers are gone then).
    keep_all = any(3 <= i < 3 + static.n_roots for i in static.donate)
    out_static, leaves = flatten_outside(roots, out, origin,
                                         None if keep_all else node_leaves, static.graphdef)
    return leaves, Box(out_static)

  def _jax_jit(self, static: _CallStatic, donate: tuple, shardings_key):
    """The ``jax.jit`` of ``_pure`` with ``static`` bound (one per distinct static, so
    equal structures share jax's compilation cache)."""
    key = (static, donate, shardings_key)
    jitted = self.compiled.get(key)
    if jitted is not None:
      self.compiled.move_to_end(key)
      return jitted
    kwargs = dict(self.jit_kwargs)
    if shardings_key is not None:
      kwargs['in_shardings'] = tuple(list(s) if isinstance(s, _PerLeaf) else s
                                     for s in shardings_key)
    jitted = jax.jit(functools.partial(self._pure, static),
                     donate_argnums=tuple(i - 1 for i in donate), **kwargs)
    self.compiled[key] = jitted
    if len(self.compiled) > self.max_compiled:
      self.compiled.popitem(last=False)
    return jitted

  def __call__(self, *args, **kwargs):
    static_nums = self.static_argnums if not self._negative_argnums else \
      frozenset(i % len(args) for i in self.static_argnums if -len(args) <= i < len(args))
    static_args = tuple((i, a) for i, a in enumerate(args) if i in static_nums) \
      if static_nums else ()
    dyn_args = [a for i, a in enumerate(args) if i not in static_nums] \
      if static_nums else args
    nodes: list = []
    dyn_args = extract(dyn_args, nodes)
    static_kwargs, dyn_kwargs, donated_kwargs = self._split_kwargs(kwargs, nodes) \
      if kwargs else ((), {}, {})
    flat = self.cache.get(tuple(nodes))
    donate = self._donation(args, kwargs, nodes, static_nums) if (
      self.donate_argnums or self.donate_argnames) else ()
    shardings = self._in_shardings(args, nodes, static_nums, flat) \
      if self.in_shardings is not None else None
    call_key = (static_args, static_kwargs, len(args), donate, shardings)
    try:
      jitted = flat.calls.get(call_key)  # per walk: no GraphDef hashing on a steady call
    except TypeError:
      _check_hashable(self.fun, static_args, static_kwargs)
      raise
    if jitted is None:
      static = _CallStatic(flat.graphdef, len(nodes), static_args, static_kwargs, len(args),
                           donate)
      if len(flat.calls) >= self.max_compiled:
        del flat.calls[next(iter(flat.calls))]
      jitted = flat.calls[call_key] = self._jax_jit(static, donate, shardings)
    leaves, box = jitted(dyn_kwargs, donated_kwargs, *flat.leaf_groups(), *dyn_args)
    return write_back(flat, box.value, leaves)

  def _split_kwargs(self, kwargs, nodes) -> tuple[tuple, dict, dict]:
    """Keyword arguments as (static items, dynamic ones, donated ones)."""
    static_kwargs = tuple(sorted((k, v) for k, v in kwargs.items()
                                 if k in self.static_argnames))
    dyn_kwargs = {k: v for k, v in kwargs.items() if k not in self.static_argnames}
    dyn_kwargs = dict(zip(dyn_kwargs, extract(list(dyn_kwargs.values()), nodes), strict=True))
    donated_kwargs = {k: dyn_kwargs.pop(k) for k in list(dyn_kwargs)
                      if k in self.donate_argnames}
    return static_kwargs, dyn_kwargs, donated_kwargs

  def _donation(self, args, kwargs, nodes, static_nums) -> tuple:
    """Positions of ``_pure``'s arguments to donate: a donated Module donates its leaves.

    ``_pure`` takes ``(static, dyn_kwargs, donated_kwargs, *node_leaf_groups, *dyn_args)``.
    """
    donated = [a for i, a in enumerate(args) if i in self.donate_argnums] + \
      [v for k, v in kwargs.items() if k in self.donate_argnames]
    out = {2} if any(k in self.donate_argnames for k in kwargs) else set()
    dyn_positions = [i for i in range(len(args)) if i not in static_nums]
    for value in donated:
      for r, node in enumerate(nodes):
        if node is value:
          out.add(3 + r)
    for j, i in enumerate(dyn_positions):
      if i in self.donate_argnums and not any(args[i] is n for n in nodes):
        out.add(3 + len(nodes) + j)
    return tuple(sorted(out))

  def _in_shardings(self, args, nodes, static_nums, flat):
    """``in_shardings`` per non-static positional argument (as in ``jax.jit``), moved to
    ``_pure``'s layout (a Module's entry applies to all its leaves; a ``StateSharding``
    gives each leaf the sharding of the first filter it matches)."""
    dyn = [a for i, a in enumerate(args) if i not in static_nums]
    per_arg = self.in_shardings if isinstance(self.in_shardings, (tuple, list)) else \
      (self.in_shardings,) * len(dyn)
    if len(per_arg) != len(dyn):
      raise ValueError(f'jit: in_shardings has {len(per_arg)} entries for {len(dyn)} '
                       'non-static positional arguments; give one per argument.')
    node_shardings = [None] * len(nodes)
    dyn_shardings = []
    for arg, sharding in zip(dyn, per_arg, strict=True):
      r = next((r for r, n in enumerate(nodes) if n is arg), None)
      if r is None:
        dyn_shardings.append(sharding)
      else:  # the argument's own slot holds a leafless NodeSlot
        node_shardings[r] = _PerLeaf(
          sharding.sharding_for(path[1:], h if isinstance(h, Variable) else h._raw_value)
          for path, h in zip(flat.paths, flat.handles, strict=True) if path[0] == r) \
          if isinstance(sharding, StateSharding) else sharding
        dyn_shardings.append(None)
    return (None, None, *node_shardings, *dyn_shardings)

  def __get__(self, obj, objtype=None):
    if obj is None:
      return self
    return functools.partial(self, obj)

  def __repr__(self):
    return f'bridge.jit({getattr(self.fun, "__qualname__", self.fun)!r})'


def _check_hashable(fun, static_args: tuple, static_kwargs: tuple) -> None:
  """Raises a ``ValueError`` (what ``jax.jit`` and flax.nnx raise) naming the first static
  argument that cannot be hashed, so cannot key the compilation cache."""
  names = [p.name for p in _positional_params(_signature(fun))]
  for where, value in [*static_args, *static_kwargs]:
    try:
      hash(value)
    except TypeError as error:
      name = repr(where) if isinstance(where, str) else (
        f'at position {where}' + (f' ({names[where]!r})' if where < len(names) else ''))
      raise ValueError(
        f'jit({getattr(fun, "__qualname__", fun)}): static argument {name} must be '
        f'hashable, but got a {type(value).__name__}: {value!r}. Pass a hashable value '
        '(e.g. a tuple instead of a list), or do not mark the argument static.') from error


class _PerLeaf(tuple):
  """The shardings of one Module argument's leaves, in walk order (from a
  ``StateSharding``); a tuple to key caches, a list for ``jax.jit``."""


def _constrain(out, shardings):
  """``out`` with its arrays constrained to ``shardings`` (a prefix of ``out``'s tree),
  so the user's output, not the updated Module state, carries ``out_shardings``."""
  def apply(sharding, sub):
    if sharding is None:
      return sub
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding)
                        if isinstance(x, jax.Array) else x, sub, is_leaf=is_graph)
  return jax.tree.map(apply, shardings, out, is_leaf=lambda s: s is None)


def _signature(fun):
  try:
    return inspect.signature(fun)
  except (TypeError, ValueError):
    return None


def _positional_params(signature) -> list[inspect.Parameter]:
  if signature is None:
    return []
  return [p for p in signature.parameters.values()
          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _resolve(signature, nums: frozenset, names: frozenset) -> tuple[frozenset, frozenset]:
  """Completes argnums from argnames and back through the signature, as jax.jit does
  (a negative argnum counts from the end of each call's arguments, so names none)."""
  if signature is None:
    return nums, names
  params = _positional_params(signature)
  nums = nums | {i for i, p in enumerate(params) if p.name in names}
  names = names | {p.name for i, p in enumerate(params) if i in nums
                   and p.kind is p.POSITIONAL_OR_KEYWORD}
  return nums, names


def _restore_positions(dyn_args: list, static_args: tuple, n_args: int) -> list:
  if not static_args:
    return dyn_args
  out, it = [], iter(dyn_args)
  statics = dict(static_args)
  for i in range(n_args):
    out.append(statics[i] if i in statics else next(it))
  return out


def jit(fun=None, *, in_shardings=None, out_shardings=None, static_argnums=None,
        static_argnames=None, donate_argnums=None, donate_argnames=None, keep_unused=False,
        device=None, backend=None, inline=False, graph: bool | None = None,
        graph_updates: bool | None = None):
  """``jax.jit`` for functions of Modules; a decorator with or without arguments.

  Modules (and Rngs, Variables) among the arguments are split into GraphDef + State at the
  boundary and rebuilt inside; every change made inside (new values, new Variables, RNG
  counters) is visible on the caller's objects afterwards. ``donate_argnums`` on a Module
  donates its arrays; ``in_shardings`` gives one sharding per argument (for a Module, its
  arrays). ``graph=False``/``graph_updates=False``: see ``bridge.transforms.tree_mode``.
  See the module docstring for an example.
  """
  if fun is None:
    return functools.partial(jit, in_shardings=in_shardings, out_shardings=out_shardings,
                             static_argnums=static_argnums, static_argnames=static_argnames,
                             donate_argnums=donate_argnums, donate_argnames=donate_argnames,
                             keep_unused=keep_unused, device=device, backend=backend,
                             inline=inline, graph=graph, graph_updates=graph_updates)
  kwargs = dict(in_shardings=in_shardings, out_shardings=out_shardings,
                static_argnums=static_argnums, static_argnames=static_argnames,
                donate_argnums=donate_argnums, donate_argnames=donate_argnames,
                keep_unused=keep_unused, device=device, backend=backend, inline=inline)
  for name in ('keep_unused', 'inline'):
    if not kwargs[name]:
      del kwargs[name]
  for name in ('device', 'backend'):
    if kwargs[name] is None:
      del kwargs[name]
  return tree_mode.wrap('jit', Jitted(fun, **kwargs), graph, graph_updates)
