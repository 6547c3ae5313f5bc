"""``with_rngs``: a copy of a tree (Rngs, Modules, pytrees of them) whose RNG streams are
split, broadcast or forked by filter, for ``vmap``/``scan`` over freshly split keys.

>>> import bridge as nnx
>>> rngs = nnx.Rngs(params=0, dropout=1)
>>> new = nnx.with_rngs(rngs, split={'params': 4}, fork=..., graph=False)
>>> new.params.key.shape, new.dropout.key.shape
((4,), ())
"""

from __future__ import annotations

import functools
import typing as tp

from bridge import filters as filterlib
from bridge.graph_map import recursive_map
from bridge.graph_mode import resolve
from bridge.rngs import RngStream

_MISSING = object()


def _rules(how) -> list:
  """``(filter, predicate, shape)`` for a split/broadcast argument: a shape for every
  stream or a mapping from filters to shapes."""
  if how is None:
    return []
  if isinstance(how, (int, tuple)):
    how = {...: how}
  return [(f, filterlib.to_predicate(f), n) for f, n in how.items()]


def with_rngs(node=_MISSING, /, *, split=None, fork=None, broadcast=None, only=True,
              graph: bool | None = None, graph_updates: bool | None = None):
  """A copy of ``node`` (new Modules and containers, the same other Variables) where each
  ``RngStream`` that matches ``only`` is replaced by ``stream.split(shape)`` if a ``split``
  filter matches it, else ``stream.broadcast(shape)`` if a ``broadcast`` one does, else
  ``stream.fork()`` if a ``fork`` filter does; the originals' counters advance as when
  drawing a key. Two specific rules (not ``...``) matching one stream are a ValueError.
  Without ``node``, a decorator that does this to a function's arguments for each call.
  As in flax.nnx, it needs ``graph=False`` or ``graph_updates=False``.

  >>> import bridge as nnx
  >>> new = nnx.with_rngs(nnx.Rngs(0), broadcast=3, graph_updates=False)
  >>> new.default.key.shape
  (3,)
  """
  if all(resolve(graph, graph_updates)):
    raise NotImplementedError('graph=True and graph_updates=True is not supported for '
                              '`with_rngs`; pass graph=False or graph_updates=False.')
  kwargs = dict(split=split, fork=fork, broadcast=broadcast, only=only, graph=graph,
                graph_updates=False)
  if node is _MISSING:
    def decorator(f):
      @functools.wraps(f)
      def wrapper(*args, **kw):
        args, kw = with_rngs((args, kw), **kwargs)
        return f(*args, **kw)
      return wrapper
    return decorator
  splits, broadcasts = _rules(split), _rules(broadcast)
  forks = [] if fork is None else [fork] if isinstance(fork, str) or not isinstance(
    fork, tp.Sequence) else list(fork)
  forks = [(f, filterlib.to_predicate(f), None) for f in forks]
  only_predicate = filterlib.to_predicate(only)

  def replace(path, x):
    if not isinstance(x, RngStream) or not only_predicate(path, x):
      return x
    matched = {}
    for kind, rules in (('split', splits), ('broadcast', broadcasts), ('fork', forks)):
      hit = next(((f, n) for f, p, n in rules if p(path, x)), None)
      if hit is not None:
        matched[kind] = hit
    specific = [k for k, (f, _) in matched.items() if f is not Ellipsis and f is not True]
    if len(specific) > 1:
      listed = '\n'.join(f'  - {k} matches filter {f!r}' for k, (f, _) in matched.items())
      raise ValueError(f'with_rngs: the RngStream at {path} matches multiple rules:\n'
                       f'{listed}')
    if 'split' in matched:
      return x.split(matched['split'][1])
    if 'broadcast' in matched:
      return x.broadcast(matched['broadcast'][1])
    if 'fork' in matched:
      return x.fork()
    return x

  return recursive_map(replace, node, graph=graph)
