"""``Rngs``: named streams of random keys, stored as Variables.

Each stream holds a key (``RngKey``) and a counter (``RngCount``); calling the stream returns
``jax.random.fold_in(key, count)`` and increments the counter, so keys are derived exactly as
flax.nnx derives them and the same seeds give the same weights. A stream that is not there
falls back to ``default``.

>>> import bridge as nnx
>>> rngs = nnx.Rngs(0, params=1)
>>> k1, k2 = rngs.params(), rngs.params()
>>> bool((k1 != k2))
True
>>> rngs['dropout']().dtype == rngs.default().dtype  # 'dropout' falls back to 'default'
True
"""

from __future__ import annotations

import functools
import typing as tp

import jax
import jax.numpy as jnp

from bridge import filters as filterlib
from bridge.graph import check_tree, iter_graph
from bridge.graph_mode import resolve
from bridge.object import Object
from bridge.rng_methods import RngMethods
from bridge.variables import Variable


class RngState(Variable):
  """The Variables of a stream (its key and counter); filter for all RNG state."""
  __slots__ = ()


class RngKey(RngState):
  """A stream's key."""
  __slots__ = ()


class RngCount(RngState):
  """A stream's counter (how many keys it has handed out)."""
  __slots__ = ()


def _as_key(key) -> jax.Array:
  if isinstance(key, int):
    return jax.random.key(key)
  if isinstance(key, jax.Array) and key.dtype == jnp.uint32:
    return jax.random.wrap_key_data(key)
  if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  raise ValueError(f'Invalid RNG seed {key!r}: expected an int, a jax.random.key(...) or '
                   'legacy uint32 key data.')


class RngStream(RngMethods, Object):
  """One named stream: ``stream()`` gives ``fold_in(key, count)`` and counts up."""

  def __init__(self, key, *, tag: str):
    key = _as_key(key)
    self.tag = tag
    self.key = RngKey(key, tag=tag)
    self.count = RngCount(jnp.zeros(key.shape, dtype=jnp.uint32), tag=tag)

  def __call__(self) -> jax.Array:
    count = self.count.raw_value
    key = jax.random.fold_in(self.key.raw_value, count)
    self.count.raw_value = count + 1
    return key

  _next_key = __call__

  def split(self, k: int | tuple[int, ...]) -> RngStream:
    """A new stream whose key is the next key split ``k`` ways."""
    return type(self)(jax.random.split(self(), k), tag=self.tag)

  def fork(self) -> RngStream:
    """A new stream seeded with the next key."""
    return type(self)(self(), tag=self.tag)

  def broadcast(self, k: int | tuple[int, ...]) -> RngStream:
    """A new stream whose key is the next key repeated to shape ``k``."""
    key = self()
    shape = (k,) if isinstance(k, int) else tuple(k)
    return type(self)(jnp.broadcast_to(key, shape + key.shape), tag=self.tag)



class MissingRngStreamError(LookupError):
  """An ``Rngs`` has neither the stream asked for nor ``default``; ``name`` is the stream.
  Raised as a ``KeyError`` by ``rngs[name]`` and an ``AttributeError`` by ``rngs.name``.

  >>> import bridge as nnx
  >>> try:
  ...   nnx.Rngs(params=0).dropout
  ... except MissingRngStreamError as e:
  ...   print(e.name, isinstance(e, AttributeError))
  dropout True
  """

  def __init__(self, name: str, message: str):
    super().__init__(message)
    self.name = name


class _MissingKey(MissingRngStreamError, KeyError):
  pass


class _MissingAttribute(MissingRngStreamError, AttributeError):
  pass


_MISSING = {KeyError: _MissingKey, AttributeError: _MissingAttribute}

class Rngs(RngMethods, Object):
  """Named RNG streams: ``Rngs(0)``, ``Rngs(params=0, dropout=1)``, ``Rngs({'a': 0})``.

  ``rngs.params()``, ``rngs['dropout']()`` and ``rngs()`` (the ``default`` stream) return
  fresh keys; an absent stream falls back to ``default``. ``rngs.normal((2,))`` and the
  other ``jax.random`` functions draw from ``default``.
  """

  def __init__(self, default=None, /, **rngs):
    if default is not None:
      rngs = {**default, **rngs} if isinstance(default, tp.Mapping) else \
        {'default': default, **rngs}
    for tag, key in rngs.items():
      if isinstance(key, RngStream):
        key = key.key.raw_value
      setattr(self, tag, RngStream(key, tag=tag))

  def _stream(self, name: str, error: type[Exception]) -> RngStream:
    """The stream ``name`` (or ``default``); a ``MissingRngStreamError`` that is also an
    ``error`` when neither is there."""
    streams = vars(self)
    stream = streams.get(name)
    if isinstance(stream, RngStream):
      return stream
    default = streams.get('default')
    if isinstance(default, RngStream):
      return default
    raise _MISSING[error](
      name, f'No RNG stream {name!r} in Rngs({", ".join(self)}) and no \'default\' stream '
      f'to fall back to; pass it, e.g. nnx.Rngs({name}=0).')

  def __getitem__(self, name: str) -> RngStream:
    return self._stream(name, KeyError)

  def __getattr__(self, name: str) -> RngStream:
    if name.startswith('_'):
      raise AttributeError(name)
    return self._stream(name, AttributeError)

  def __call__(self) -> jax.Array:
    return self._stream('default', AttributeError)()

  def _next_key(self):
    return self()

  def __iter__(self) -> tp.Iterator[str]:
    return (name for name, s in vars(self).items() if isinstance(s, RngStream))

  def __len__(self) -> int:
    return sum(1 for _ in self)

  def __contains__(self, name) -> bool:
    return isinstance(vars(self).get(name), RngStream)

  def items(self) -> tp.Iterator[tuple[str, RngStream]]:
    return ((name, vars(self)[name]) for name in self)

  def _map_streams(self, how, method: str) -> Rngs:
    if how is None or isinstance(how, (int, tuple)):
      how = {...: how}
    rules = [(filterlib.to_predicate(f), n) for f, n in how.items()]
    streams = {}
    for name, stream in self.items():
      n = next((n for p, n in rules if p((name,), stream)), None)
      streams[name] = stream if n is None else getattr(stream, method)(n)
    return Rngs(**streams)

  def split(self, k) -> Rngs:
    """New Rngs whose streams' keys are split ``k`` ways; ``k`` may map filters to sizes
    (``None``: keep that stream as it is)."""
    return self._map_streams(k, 'split')

  def broadcast(self, k) -> Rngs:
    """New Rngs whose streams' next keys are repeated to shape ``k`` (or per filter)."""
    return self._map_streams(k, 'broadcast')

  def fork(self, *, split=None) -> Rngs:
    """New Rngs seeded with each stream's next key (split ``split`` ways if given)."""
    if split is not None:
      return self.split(split)
    return Rngs(**{name: stream.fork() for name, stream in self.items()})


# -- graph-wide operations on streams -----------------------------------------------------
class SplitBackups(list):
  """What ``split_rngs`` replaced; ``restore_rngs`` (or leaving the ``with`` block) puts it
  back."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    restore_rngs(self)


def _streams(node, only) -> tp.Iterator[tuple[tuple, RngStream]]:
  predicate = filterlib.to_predicate(only)
  for path, x in list(iter_graph(node)):
    if isinstance(x, RngStream) and predicate((*path, 'key'), x.key) \
        and predicate((*path, 'count'), x.count):
      yield path, x


def split_rngs(node=None, /, *, splits: int | tuple[int, ...], only=..., squeeze: bool = False,
               graph: bool | None = None, graph_updates: bool | None = None):
  """Replaces the matching streams' keys in ``node`` by ``splits`` keys (for ``vmap``/``scan``
  over layers); returns backups. Without ``node``, a decorator that splits the streams of
  every argument for the call and restores them after. In tree mode (``graph=False``)
  shared references in ``node`` are a ValueError.

  >>> import bridge as nnx
  >>> rngs = nnx.Rngs(params=0)
  >>> with nnx.split_rngs(rngs, splits=5):
  ...   rngs.params.key.shape
  (5,)
  >>> rngs.params.key.shape
  ()
  """
  if node is None:
    def decorator(f):
      @functools.wraps(f)
      def wrapper(*args, **kwargs):
        with split_rngs((args, kwargs), splits=splits, only=only, squeeze=squeeze,
                        graph=graph, graph_updates=graph_updates):
          return f(*args, **kwargs)
      return wrapper
    return decorator

  check_tree(node, 'split_rngs', resolve(graph, graph_updates)[0])
  if squeeze and splits != 1:
    raise ValueError(f'split_rngs: squeeze=True needs splits=1, got splits={splits!r}.')
  backups = SplitBackups()
  for _, stream in _streams(node, only):
    key = jax.random.split(stream(), splits)
    # like flax, the backup keeps the counter after this draw
    backups.append((stream, stream.key.raw_value, stream.count.raw_value))
    if squeeze:
      key = key[0]
    stream.key.raw_value = key
    stream.count.raw_value = jnp.zeros(key.shape, dtype=jnp.uint32)
  return backups


def restore_rngs(backups: tp.Iterable, /) -> None:
  """Puts back the keys and counters that ``split_rngs``/``fork_rngs`` replaced, or the
  keys ``backup_keys`` saved (their counters are left as they are)."""
  for stream, key, *count in backups:
    stream.key.raw_value = key
    if count:
      stream.count.raw_value = count[0]


def backup_keys(node, /, *, graph: bool | None = None) -> list:
  """The key of every ``RngStream`` in ``node``, for ``restore_rngs`` to put back (the
  counters are not saved). flax.nnx has it as ``nnx.compat.backup_keys``.

  >>> import jax
  >>> import bridge as nnx
  >>> rngs = nnx.Rngs(0)
  >>> backups = nnx.compat.backup_keys(rngs)
  >>> rngs.default.key.raw_value = rngs.default()  # e.g. reseeded by a transform
  >>> nnx.restore_rngs(backups)
  >>> bool((jax.random.key_data(rngs.default.key.raw_value) == 0).all())
  True
  """
  return [(stream, stream.key.raw_value) for _, stream in iter_graph(node, graph=graph)
          if isinstance(stream, RngStream)]


def fork_rngs(node, /, *, split=None, graph: bool | None = None,
              graph_updates: bool | None = None):
  """Reseeds the streams in ``node`` with their next key (split ``split`` ways if given:
  a size, or filters mapped to sizes, ``None`` meaning not split; streams no filter
  matches are left alone); returns backups for ``restore_rngs``. In tree mode
  (``graph=False``) shared references in ``node`` are a ValueError.

  >>> import bridge as nnx
  >>> rngs = nnx.Rngs(params=0, dropout=1)
  >>> with nnx.fork_rngs(rngs, split={'params': 4, ...: None}):
  ...   rngs.params.key.shape, rngs.dropout.key.shape
  ((4,), ())
  """
  check_tree(node, 'fork_rngs', resolve(graph, graph_updates)[0])
  if split is None or isinstance(split, (int, tuple)):
    split = {...: split}
  rules = [(filterlib.to_predicate(f), n) for f, n in split.items()]
  backups = SplitBackups()
  for path, stream in _streams(node, ...):
    for predicate, n in rules:
      if predicate((*path, 'key'), stream.key) and predicate((*path, 'count'), stream.count):
        key = stream()
        if n is not None:
          key = jax.random.split(key, n)
        # like flax, the backup keeps the counter after this draw
        backups.append((stream, stream.key.raw_value, stream.count.raw_value))
        stream.key.raw_value = key
        stream.count.raw_value = jnp.zeros(key.shape, dtype=jnp.uint32)
        break
  return backups


def reseed(node, /, *, graph: bool | None = None, policy: str | tp.Callable = 'scalars_only',
           **stream_keys) -> None:
  """Resets the named streams in ``node`` to new seeds (counters back to zero).

  As in flax.nnx, the new keys are drawn from ``Rngs(**stream_keys)``: each stream
  tagged ``name`` gets the next key of the stream ``name`` there, so two streams with
  the same tag get different keys. ``policy`` says what to do with a stream whose key is
  not a scalar (after ``split_rngs``): ``'scalars_only'`` raises, ``'match_shape'`` splits
  the new key to the stream's shape, a callable ``(path, key, shape) -> key`` decides.

  >>> import bridge as nnx
  >>> rngs = nnx.Rngs(dropout=1)
  >>> nnx.reseed(rngs, dropout=7)
  >>> a = rngs.dropout()
  >>> nnx.reseed(rngs, dropout=7)
  >>> bool(rngs.dropout() == a)
  True
  """
  if policy == 'scalars_only':
    policy = _scalars_only
  elif policy == 'match_shape':
    policy = _match_shape
  elif not callable(policy):
    raise ValueError(f"policy must be 'scalars_only', 'match_shape' or a callable, got "
                     f'{policy!r}')
  check_tree(node, 'reseed', graph)
  seeds = Rngs(**stream_keys)
  for path, stream in _streams(node, ...):
    if stream.tag in stream_keys:
      key = policy(path, seeds[stream.tag](), stream.key.raw_value.shape)
      stream.key.raw_value = key
      stream.count.raw_value = jnp.zeros(key.shape, dtype=jnp.uint32)


def _scalars_only(path, key, shape):
  if shape:
    raise ValueError(f'Cannot reseed the stream at {"/".join(map(str, path))!r}: its key has '
                     f"shape {shape}; use policy='match_shape'.")
  return key


def _match_shape(path, key, shape):
  return jax.random.split(key, shape) if shape else key
