"""``ToLinen``: any ``bridge`` Module as a Linen module.

``init`` builds the Module (its ``Rngs`` fed by Linen's rngs) and stores its Variables as
Linen variables, one collection per Variable type. ``apply`` does not run the Module's
initializers again: the Module's structure is built once (abstractly, or taken from
``init``) and cached; each apply fills it with the incoming variables, calls the method
and stores the mutable collections back. Variables a call created (sown values, a cache)
that come back in the incoming variables are set again where they were. A Module that
keeps RNG streams gets, at each apply, the streams its constructor would make from Linen's
keys (as flax's ToLinen, which rebuilds the Module), computed by a compiled function in
which the initializers are traced once but never run.

>>> import jax, jax.numpy as jnp
>>> import bridge
>>> model = bridge.ToLinen(bridge.Linear, args=(3, 4))
>>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
>>> variables['params']['kernel'].shape
(3, 4)
>>> model.apply(variables, jnp.ones((2, 3))).shape
(2, 4)
"""

from __future__ import annotations

import functools
import typing as tp

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict, meta

from bridge._static import hashable
from bridge.graph import flatten, iter_graph, pop, unflatten
from bridge.interop.collections import _flat, collection_of, tree_to_linen
from bridge.interop.metadata import to_linen_var, to_nnx_var
from bridge.interop.to_nnx import ToNNX, set_initializing
from bridge.module import Module
from bridge.rngs import MissingRngStreamError, RngCount, RngKey, Rngs, RngState
from bridge.transforms.lift import eval_shape
from bridge.variables import Variable


class _Template(tp.NamedTuple):
  """A Module's structure: its GraphDef and, per leaf, its path, Variable type and value
  layout (``_layout``; ``None`` inside a ToNNX wrapper, whose Linen module checks its own);
  and the function giving the RNG state its constructor makes from Linen's keys."""
  graphdef: tp.Any
  leaves: tuple  # ((path, type, tag or None, layout or None), ...)
  rng_state: tp.Callable[[dict], dict]


def _shape(x) -> tuple:
  return tuple(getattr(x, 'shape', np.shape(x)))


_ONE_LEAF = jax.tree.structure(0)


def _layout(value) -> tuple:
  """What an incoming value must match: its tree structure and the shape of each array
  (an array, the common case, without walking it as a tree)."""
  if isinstance(value, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
    return _ONE_LEAF, (tuple(value.shape),)
  leaves, treedef = jax.tree.flatten(value)
  return treedef, tuple(_shape(x) for x in leaves)


def _describe(layout: tuple) -> str:
  treedef, shapes = layout
  if treedef.num_nodes == 1 and treedef.num_leaves == 1:
    return f'shape {shapes[0]}'
  if not shapes:
    return f'no array ({jax.tree.unflatten(treedef, [])!r})'
  return f'a {treedef} of shapes {list(shapes)}'


class _ShapeError(flax.errors.ScopeParamShapeError):
  """An incoming variable whose shape (or tree structure) is not the Module's (the type
  Linen raises for a parameter of the wrong shape)."""

  def __init__(self, message: str):
    Exception.__init__(self, message)  # FlaxError would add a link to a page it has not


_TEMPLATES: dict[tp.Hashable, _Template] = {}
_DEFAULT_STREAM = 0x64656661  # folded into the params key for a default stream ("defa")


def _construct(nnx_class, args, kwargs, skip_rng: bool, stream_names, make_key):
  kwargs = dict(kwargs)
  if not skip_rng:
    kwargs['rngs'] = Rngs(**{n: make_key(n) for n in stream_names})
  return nnx_class(*args, **kwargs)


def _rng_state_fn(nnx_class, args, kwargs, skip_rng, stream_names) -> tp.Callable:
  """``keys -> {path: value}``: the RNG state of the Module constructed with ``keys``,
  compiled (the initializers' work is dead code XLA drops)."""
  paths: list = []

  @jax.jit
  def rng_values(keys):
    module = _construct(nnx_class, args, kwargs, skip_rng, stream_names, keys.__getitem__)
    leaves = [(p, v.raw_value) for p, v in flatten(module)[1] if isinstance(v, RngState)]
    paths[:] = [p for p, _ in leaves]
    return [v for _, v in leaves]

  def rng_state(keys: dict) -> dict:
    values = rng_values(keys)  # the first call traces, which records the paths
    return dict(zip(paths, values, strict=True))

  return rng_state


def _template_of(module, rng_state) -> _Template:
  graphdef, leaves = flatten(module)
  lazy = [p for p, node in iter_graph(module) if isinstance(node, ToNNX)]
  if any(not isinstance(v, Variable) for _, v in leaves):
    bad = next(p for p, v in leaves if not isinstance(v, Variable))
    raise ValueError(f'ToLinen: {type(module).__name__} holds a raw array at '
                     f'{"/".join(map(str, bad))!r}; keep module state in Variables '
                     '(e.g. bridge.Variable(array)) so it can live in a Linen collection.')
  return _Template(graphdef, tuple(
    (p, type(v), v._metadata.get('tag'),
     None if any(p[:len(w)] == w for w in lazy) else _layout(v.raw_value)) for p, v in leaves),
    rng_state)


def _method(module, nnx_method):
  if nnx_method is None:
    nnx_method = '__call__'
  method = getattr(type(module), nnx_method) if isinstance(nnx_method, str) else nnx_method
  if not callable(method):
    raise TypeError(f'{type(module).__name__}.{nnx_method} is not callable.')
  return method


class ToLinen(nn.Module):
  """Wraps a ``bridge`` Module class (built with ``nnx_class(*args, **kwargs, rngs=...)``)
  as a Linen module; see the module docstring. ``nnx_method`` (or attribute access,
  ``wrapper.attend(x)``) calls another method; ``metadata_fn`` turns a Variable into its
  Linen value (default: its original box, an ``NNXMeta``, or the raw array)."""

  nnx_class: tp.Callable[..., tp.Any]
  args: tp.Sequence = ()
  kwargs: tp.Mapping[str, tp.Any] = FrozenDict({})
  skip_rng: bool = False
  metadata_fn: tp.Callable[[Variable], tp.Any] | None = to_linen_var

  def _rng_names(self) -> tuple[str, ...]:
    return tuple(sorted(self.scope.rngs)) if self.scope is not None else ()

  def _stream_names(self, rng_names: tuple[str, ...]) -> tuple[str, ...]:
    """The module's streams: Linen's rngs plus ``default``."""
    return rng_names if 'default' in rng_names else (*rng_names, 'default')

  def _stream_keys(self, rng_names: tuple[str, ...]) -> dict[str, jax.Array]:
    """A key per stream: Linen's next key for each of its rngs (one ``make_rng`` each, as
    flax's ToLinen, so keys match flax's even under ``nn.scan``, where every extra call
    shifts them); a ``default`` stream Linen lacks gets a key derived from the ``params``
    key, or a fixed key without ``params``."""
    keys = {name: self.make_rng(name) for name in rng_names}
    if 'default' not in keys:
      keys['default'] = jax.random.fold_in(keys['params'], _DEFAULT_STREAM) \
        if 'params' in keys else jax.random.key(0)
    return keys

  def _linen_key(self, name: str) -> jax.Array:
    """Linen's next key for stream ``name`` (Linen falls back to ``params``); a fixed key
    when Linen has no rngs at all."""
    try:
      return self.make_rng(name)
    except flax.errors.InvalidRngError:
      return jax.random.key(0)

  def _build(self, rng_names: tuple[str, ...], make_key):
    return _construct(self.nnx_class, self.args, self.kwargs, self.skip_rng,
                      self._stream_names(rng_names), make_key)

  def _init_module(self, rng_names: tuple[str, ...]):
    """The Module built for ``init``. Without a ``params`` rng (and no ``default``), its
    ``Rngs`` has only Linen's streams: a constructor that needs a key Linen did not give is
    an ``InvalidRngError``, as in Linen (never a fixed key that sibling layers share)."""
    if self.skip_rng or 'params' in rng_names or 'default' in rng_names:
      return self._build(rng_names, self._stream_keys(rng_names).__getitem__)
    keys = {name: self.make_rng(name) for name in rng_names}
    try:
      return _construct(self.nnx_class, self.args, self.kwargs, False, rng_names,
                        keys.__getitem__)
    except MissingRngStreamError as e:
      raise flax.errors.InvalidRngError(
        f'{self.name or type(self).__name__} (ToLinen({_name(self.nnx_class)})) needs PRNG '
        f'for "{e.name}"; init got rngs for {list(rng_names)}. Pass a key: '
        '`init(key, ...)` or `init({"params": key, ...}, ...)`.') from e

  def _key(self, rng_names) -> tp.Hashable:
    return hashable((self.nnx_class, tuple(self.args), dict(self.kwargs), self.skip_rng,
                     rng_names))

  def _new_template(self, module, rng_names) -> _Template:
    return _template_of(module, _rng_state_fn(self.nnx_class, tuple(self.args),
                                              dict(self.kwargs), self.skip_rng,
                                              self._stream_names(rng_names)))

  @nn.compact
  def __call__(self, *args, nnx_method=None, **kwargs):
    rng_names = self._rng_names()
    if self.is_initializing() and not any(self.variables.values()):
      module = self._init_module(rng_names)
      before = {p: v.raw_value for p, v in flatten(module)[1] if isinstance(v, Variable)}
      wrappers = _lazy_wrappers(module)
      try:
        out = _method(module, nnx_method)(module, *args, **kwargs)
      finally:
        for m in wrappers:
          set_initializing(m, False)
      self._store(module, restore=before)
      # what init did not keep (sown intermediates) is not part of the structure
      _drop_variables(module, lambda collection: not self.is_mutable_collection(collection))
      _TEMPLATES[self._key(rng_names)] = self._new_template(module, rng_names)
      return out
    # apply, or a second call during init (which, as in Linen, uses the variables the
    # first call created and does not change them)
    module = self._from_variables(rng_names, args, kwargs, nnx_method)
    before = {p: v.raw_value for p, v in flatten(module)[1]} if self.is_initializing() else None
    out = _method(module, nnx_method)(module, *args, **kwargs)
    self._store(module, restore=before)
    return out

  def _template(self, rng_names, args, kwargs, nnx_method) -> _Template:
    key = self._key(rng_names)
    template = _TEMPLATES.get(key)
    if template is None:  # e.g. variables restored in a fresh process: build abstractly
      def build():
        module = self._build(rng_names, lambda _: jax.random.key(0))
        wrappers = _lazy_wrappers(module)
        if wrappers:  # ToNNX inside: their variables come from a call
          _method(module, nnx_method)(module, *args, **kwargs)
          for m in wrappers:
            set_initializing(m, False)
          _drop_variables(module, lambda collection: collection == 'intermediates')
        return module
      template = _TEMPLATES[key] = self._new_template(eval_shape(build), rng_names)
    return template

  def _from_variables(self, rng_names, args, kwargs, nnx_method):
    """The Module rebuilt from the cached template and this scope's variables."""
    template = self._template(rng_names, args, kwargs, nnx_method)
    incoming = {}
    for collection, values in self.variables.items():
      for path, x in _flat(values, is_leaf=lambda v: isinstance(v, meta.AxisMetadata)).items():
        incoming[path] = (collection, x)
    leaves, rng_state = [], None
    for path, var_type, tag, layout in template.leaves:
      if issubclass(var_type, RngState):
        if rng_state is None:
          rng_state = template.rng_state(self._stream_keys(rng_names))
        leaves.append(rng_state[path] if path in rng_state else self._rng_leaf(var_type, tag))
        continue
      collection = collection_of(var_type, path)
      if incoming.get(path, (None,))[0] != collection:
        raise ValueError(
          f'ToLinen({_name(self.nnx_class)}): no variable {"/".join(map(str, path))!r} in '
          f'collection {collection!r} of the incoming variables; pass the variables that '
          '`init` returned (all collections).')
      var = to_nnx_var(collection, incoming.pop(path)[1])
      if layout is not None and (given := _layout(var.raw_value)) != layout:
        raise _ShapeError(
          f'ToLinen({_name(self.nnx_class)}): the incoming variable '
          f'{"/".join(map(str, (collection, *path)))!r} has {_describe(given)}, but the '
          f'module expects {_describe(layout)}; pass the variables that `init` returned for '
          'this module.')
      leaves.append(var)
    module = unflatten(template.graphdef, leaves)
    if incoming:
      self._attach(module, incoming)
    return module

  def _attach(self, module, extra: dict) -> None:
    """Sets incoming variables that a call created (sown values, a cache made on first
    use) on their Module again; anything else is an unknown path."""
    nodes = dict(iter_graph(module))
    unknown = sorted('/'.join(map(str, p)) for p, (collection, _) in extra.items()
                     if collection == 'params' or p in nodes
                     or not isinstance(nodes.get(p[:-1]), Module))
    if unknown:
      raise ValueError(
        f'ToLinen({_name(self.nnx_class)}): incoming variables the module does not have: '
        f'{unknown}. Pass the variables that `init` (or a mutable `apply`) returned for '
        'this module.')
    for path, (collection, x) in extra.items():
      setattr(nodes[path[:-1]], path[-1], to_nnx_var(collection, x))

  def _rng_leaf(self, var_type, tag):
    """The state of a stream the constructor does not make (one created by a call)."""
    if issubclass(var_type, RngCount):
      return jnp.zeros((), jnp.uint32)
    return self._linen_key(tag) if issubclass(var_type, RngKey) else jax.random.key(0)

  def _store(self, module, restore: dict | None = None) -> None:
    """Puts the module's Variables (but RNG state) into their Linen collections; with
    ``restore``, Variables that existed before the init call keep their initial values."""
    _, leaves = flatten(module)
    tree: dict = {}
    for path, var in leaves:
      if not isinstance(var, Variable) or isinstance(var, RngState):
        continue
      if restore is not None and path in restore:
        var = var.replace(restore[path])
      node = tree
      for k in path[:-1]:
        node = node.setdefault(k, {})
      node[path[-1]] = var
    for collection, values in tree_to_linen(tree, self.metadata_fn).items():
      if self.is_mutable_collection(collection):
        for k, v in values.items():
          self.put_variable(collection, k, v)

  def __getattr__(self, name: str):
    if name.startswith('_') or name in ('nnx_class', 'args', 'kwargs', 'skip_rng',
                                        'metadata_fn', 'scope', 'parent', 'name'):
      return super().__getattr__(name)
    kwargs = self.__dict__.get('kwargs') or {}
    if name in kwargs:
      return kwargs[name]
    maybe = getattr(self.__dict__.get('nnx_class'), name, None)
    if callable(maybe):
      method = functools.partial(self.__call__, nnx_method=maybe)
      method.__self__ = self
      return method
    return super().__getattr__(name)


def _name(cls) -> str:
  return getattr(cls, '__name__', repr(cls))


def _all_nodes(module):
  return [x for _, x in iter_graph(module)]


def _drop_variables(module, drop: tp.Callable[[str], bool]) -> None:
  """Removes the Variables (but RNG state) whose collection ``drop`` selects."""
  def selected(path, x) -> bool:
    return isinstance(x, Variable) and not isinstance(x, RngState) and \
      drop(collection_of(type(x), path))
  if any(selected(p, v) for p, v in flatten(module)[1]):
    pop(module, selected)


def _lazy_wrappers(module) -> list:
  """Marks the ToNNX modules inside ``module`` as initializing (the first call creates
  their variables); returns them."""
  wrappers = [m for m in _all_nodes(module) if isinstance(m, ToNNX)]
  for m in wrappers:
    set_initializing(m, True)
  return wrappers


def to_linen(nnx_class: tp.Callable[..., tp.Any], *args, metadata_fn=to_linen_var,
             name: str | None = None, skip_rng: bool = False, **kwargs) -> ToLinen:
  """``ToLinen(nnx_class, args=args, kwargs=kwargs, ...)``, the short form.

  >>> import jax, jax.numpy as jnp
  >>> import bridge
  >>> layer = bridge.to_linen(bridge.Linear, 3, 4)
  >>> layer.init(jax.random.key(0), jnp.ones((1, 3)))['params']['bias'].shape
  (4,)
  """
  return ToLinen(nnx_class, args=args, kwargs=FrozenDict(kwargs), skip_rng=skip_rng,
                 metadata_fn=metadata_fn, name=name)
