"""Soundness of the transform core (issue #10): transforms never modify what they must not,
jit never runs on a stale walk or stale metadata, its caches are bounded and hold no model
alive, and bad static arguments / layer configurations get clear errors."""

import dataclasses
import gc
import weakref

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bridge as nnx
from bridge import graph


def _names(module) -> tuple:
  """The paths of ``module``'s Variables, as ``state`` sees them (static, so a jitted
  function can return it)."""
  return tuple(sorted('/'.join(map(str, path)) for path, _ in nnx.state(module).flat_state()))


# -- eval_shape ----------------------------------------------------------------------------
@pytest.mark.parametrize('lib', [fnnx, nnx], ids=['flax', 'bridge'])
def test_eval_shape_never_modifies_its_arguments(lib):
  model = lib.Linear(2, 3, rngs=lib.Rngs(0))
  rngs = lib.Rngs(0)
  kernel = model.kernel[...]

  def f(m, r, x):
    m.kernel[...] = m.kernel[...] + 1  # writes, a new attribute and an RNG draw: all dropped
    m.extra = lib.Param(jnp.ones(4))
    r.params()
    return m, m.kernel, m(x)

  out_model, out_kernel, y = lib.eval_shape(f, model, rngs, jnp.ones((1, 2)))
  np.testing.assert_array_equal(model.kernel[...], kernel)
  assert isinstance(model.kernel[...], jax.Array)
  assert not hasattr(model, 'extra')
  assert int(rngs.params.count[...]) == 0
  # The output's Modules are new abstract objects, with the sharing of the traced ones.
  assert out_model is not model and out_kernel is out_model.kernel
  assert isinstance(out_model.kernel.get_value(), jax.ShapeDtypeStruct)
  assert out_model.extra.get_value().shape == (4,)
  assert y.shape == (1, 3)


# -- metadata changed by update ------------------------------------------------------------
def test_jit_sees_metadata_changed_by_update():
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0), kernel_metadata={'tag': 'old'})
  seen = []

  @nnx.jit(static_argnums=1)
  def f(m, grow):
    seen.append(m.kernel.get_metadata('tag'))
    if grow:  # a structural change: the caller's graph is rebuilt from the trace's
      m.extra = nnx.BatchStat(jnp.zeros(()))
    return m.kernel[...].sum()

  f(model, False)
  state = nnx.state(model)
  state['kernel'] = state['kernel'].replace(tag='new')
  nnx.update(model, state)
  f(model, False)
  assert seen == ['old', 'new']
  f(model, True)
  assert model.kernel.get_metadata('tag') == 'new'


def test_update_with_the_same_metadata_keeps_the_cached_walk():
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  f = nnx.jit(lambda m: m.kernel[...].sum())
  f(model)
  (flat,) = f.cache.entries.values()
  nnx.update(model, nnx.state(model))
  f(model)
  assert f.cache.entries[(id(model),)] is flat


# -- the walk cache holds no model alive -----------------------------------------------------
def _live(shape) -> int:
  return sum(a.shape == shape for a in jax.live_arrays())


def test_a_freed_model_frees_its_arrays_after_jit():
  shape = (7, 13)  # a shape nothing else in the process uses
  f = nnx.jit(lambda m, x: m(x).sum())
  model = nnx.Linear(*shape, rngs=nnx.Rngs(0))
  f(model, jnp.ones((1, 7)))
  f(model, jnp.ones((1, 7)))  # the cached walk
  assert _live(shape) == 1
  ref = weakref.ref(model)
  del model
  gc.collect()
  assert ref() is None
  assert _live(shape) == 0
  assert not f.cache.entries
  assert f.compiled  # the compiled function stays, without the model


def test_a_freed_argument_drops_its_walk_but_not_the_others():
  f = nnx.jit(lambda a, b: a.kernel[...].sum() + b.kernel[...].sum())
  a, b = (nnx.Linear(2, 2, rngs=nnx.Rngs(i)) for i in range(2))
  f(a, b)
  f(b, b)
  del a
  gc.collect()
  assert list(f.cache.entries) == [(id(b),)]  # b once: the roots are distinct objects
  assert float(f(b, b)) == float(2 * b.kernel[...].sum())


# -- a structural change during the walk -----------------------------------------------------
def test_jit_sees_a_structural_change_made_during_its_walk(monkeypatch):
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  walk = graph._Flattener.walk
  changed = []

  def walk_racing_with_another_thread(self, x, path):
    if path == (0, 'kernel') and not changed:  # the model's attributes are already listed
      changed.append(True)
      model.extra = nnx.Param(jnp.ones(3))
    return walk(self, x, path)

  monkeypatch.setattr(graph._Flattener, 'walk', walk_racing_with_another_thread)
  f = nnx.jit(_names)
  assert f(model) == ('bias', 'kernel')  # walked before the change landed
  assert changed
  assert f(model) == ('bias', 'extra', 'kernel') == _names(model)


# -- plain containers without leaves ---------------------------------------------------------
class Holder(nnx.Module):
  def __init__(self):
    self.d = {}
    self.l = []
    self.static = {'sizes': [1, 2]}


@pytest.mark.parametrize('where', ['d', 'l', 'static'])
def test_jit_sees_a_variable_added_to_a_leafless_container(where):
  holder = Holder()
  f = nnx.jit(_names)
  assert f(holder) == () == _names(holder)
  container = getattr(holder, where)
  if isinstance(container, list):
    container.append(nnx.Param(jnp.ones(2)))
  else:
    container['w'] = nnx.Param(jnp.ones(2))
  assert _names(holder)  # state() sees it, so must jit
  assert f(holder) == _names(holder)


# -- negative static_argnums -----------------------------------------------------------------
def test_negative_static_argnums_count_from_the_end_as_in_jax_jit():
  def repeat(x, n):
    for _ in range(n):  # needs a static n
      x = x * 2
    return x

  x = jnp.arange(3.0)
  expected = jax.jit(repeat, static_argnums=-1)(x, 3)
  np.testing.assert_array_equal(nnx.jit(repeat, static_argnums=-1)(x, 3), expected)
  np.testing.assert_array_equal(fnnx.jit(repeat, static_argnums=-1)(x, 3), expected)

  def varargs(*args):  # -1 is whichever argument comes last in each call
    return repeat(args[0], args[-1])

  for args in [(x, 3), (x, 1.0, 3)]:
    np.testing.assert_array_equal(nnx.jit(varargs, static_argnums=-1)(*args),
                                  jax.jit(varargs, static_argnums=-1)(*args))


def test_negative_static_argnums_with_a_module():
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  f = nnx.jit(lambda m, x, n: m(x) * len(range(n)), static_argnums=(-1,))
  x = jnp.ones((1, 2))
  np.testing.assert_array_equal(f(model, x, 3), model(x) * 3)


# -- the compiled cache is bounded -----------------------------------------------------------
def test_jitted_keeps_the_most_recently_used_compilations():
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  traces = []

  def f(m):
    traces.append(m.tag)
    return m.kernel[...].sum()

  jitted = nnx.jit(f)
  assert nnx.jit(f).max_compiled == 64  # the documented default
  jitted.max_compiled = 2
  for tag in 'abcbdb':  # each tag is a structure
    model.tag = tag
    jitted(model)
  assert len(jitted.compiled) == 2
  # 'b' was used again before 'd' came, so 'c' (least recently used) went, not 'b'.
  assert traces == ['a', 'b', 'c', 'd']


# -- clear errors ----------------------------------------------------------------------------
def _flax_error(fn):
  with pytest.raises(Exception) as info:
    fn()
  return info.type


@pytest.mark.parametrize('how', ['position', 'keyword'])
def test_an_unhashable_static_argument_is_named(how):
  def f(x, sizes):
    return x * len(sizes)

  x = jnp.ones(2)
  if how == 'position':
    flax_type = _flax_error(lambda: fnnx.jit(f, static_argnums=1)(x, [1, 2]))
    call = lambda: nnx.jit(f, static_argnums=1)(x, [1, 2])  # noqa: E731
  else:
    flax_type = _flax_error(lambda: fnnx.jit(f, static_argnames='sizes')(x, sizes=[1, 2]))
    call = lambda: nnx.jit(f, static_argnames='sizes')(x, sizes=[1, 2])  # noqa: E731
  with pytest.raises(flax_type, match=r"static argument .*'sizes'.* must be hashable, but "
                     r'got a list: \[1, 2\]'):
    call()


@pytest.mark.parametrize('make, match', [
  (lambda lib: lib.Linear(0, 3, rngs=lib.Rngs(0)), 'Linear: in_features must be a positive '
   'int, got 0'),
  (lambda lib: lib.Linear(2, 0, rngs=lib.Rngs(0)), 'Linear: out_features must be a positive '
   'int, got 0'),
  (lambda lib: lib.Linear(-2, 3, rngs=lib.Rngs(0)), 'in_features must be a positive int, '
   'got -2'),
  (lambda lib: lib.LinearGeneral(2, (3, 0), rngs=lib.Rngs(0)), 'LinearGeneral: every entry '
   r'of out_features must be a positive int, got \(3, 0\)'),
  (lambda lib: lib.Einsum('ab,bc->ac', (0, 3), rngs=lib.Rngs(0)), 'Einsum: every entry of '
   r'kernel_shape must be a positive int, got \(0, 3\)'),
  (lambda lib: lib.Conv(0, 3, 3, rngs=lib.Rngs(0)), 'Conv: in_features must be a positive '
   'int, got 0'),
  (lambda lib: lib.ConvTranspose(2, 0, 3, rngs=lib.Rngs(0)), 'ConvTranspose: out_features '
   'must be a positive int, got 0'),
], ids=['linear_in', 'linear_out', 'linear_negative', 'linear_general', 'einsum', 'conv',
        'conv_transpose'])
def test_a_non_positive_feature_size_is_named_with_flaxs_exception_type(make, match):
  flax_type = _flax_error(lambda: make(fnnx))  # flax: a ZeroDivisionError or TypeError
  with pytest.raises(flax_type, match=match) as info:
    make(nnx)
  assert isinstance(info.value, ValueError)


@pytest.mark.parametrize('layer, kwargs', [
  ('Conv', {'strides': 0}), ('Conv', {'strides': (1, -1)}), ('Conv', {'kernel_dilation': 0}),
  ('ConvTranspose', {'strides': 0}),
])
def test_a_non_positive_conv_stride_or_dilation_is_named(layer, kwargs):
  (name, value), = kwargs.items()
  x = jnp.ones((1, 5, 5, 2))
  flax_type = _flax_error(  # flax fails only when called, deep in lax
    lambda: getattr(fnnx, layer)(2, 3, (3, 3), rngs=fnnx.Rngs(0), **kwargs)(x))
  with pytest.raises(flax_type, match=f'{layer}: {name} must be positive, got'):
    getattr(nnx, layer)(2, 3, (3, 3), rngs=nnx.Rngs(0), **kwargs)  # at construction


@pytest.mark.parametrize('rngs', [None, 'x'])
@pytest.mark.parametrize('layer', ['Linear', 'Conv'])
def test_a_layer_without_rngs_says_what_rngs_must_be(layer, rngs):
  args = (2, 3) if layer == 'Linear' else (2, 3, 3)
  flax_type = _flax_error(lambda: getattr(fnnx, layer)(*args, rngs=rngs))  # AttributeError
  with pytest.raises(flax_type, match=f'{layer}: rngs must be an nnx.Rngs .*'
                     r'rngs=nnx.Rngs\(0\).*, got ' + repr(rngs)):
    getattr(nnx, layer)(*args, rngs=rngs)


# -- static data changed in place is seen by jit (flax.nnx.jit returns stale results) ---------
@dataclasses.dataclass
class _Cfg:
  scales: list
  table: np.ndarray


@dataclasses.dataclass(frozen=True)
class _FrozenCfg:
  sizes: tuple


def _configured(lib):
  class M(lib.Module):
    def __init__(self):
      self.cfg = _Cfg([1.0], np.array([1.0, 1.0]))
      self.t = ([1.0],)
      self.d = {'k': [2.0]}
      self.w = lib.Param(jnp.ones(2))

    def __call__(self, x):
      scale = sum(self.cfg.scales) * sum(self.t[0]) * sum(self.d['k'])
      return x * self.w * scale * jnp.asarray(self.cfg.table)
  return M()


_MUTATIONS = [
  lambda m: m.cfg.scales.append(3.0),  # a dataclass field, in place
  lambda m: m.cfg.table.__setitem__(0, 5.0),  # a NumPy array in a dataclass, in place
  lambda m: m.t[0].__setitem__(0, 7.0),  # a list element in a tuple, replaced
  lambda m: m.d['k'].append(1.0),  # a list in a dict, in place
]


def test_jit_sees_static_data_changed_in_place():
  traces = []

  def call(m, x):
    traces.append(1)
    return m(x)
  f = nnx.jit(call)
  ours, theirs, x = _configured(nnx), _configured(fnnx), jnp.arange(2.0)
  np.testing.assert_array_equal(f(ours, x), theirs(x))
  for mutate in _MUTATIONS:
    mutate(ours)
    mutate(theirs)
    # flax.nnx.jit still returns the first result here; the eager flax call is the truth
    np.testing.assert_array_equal(f(ours, x), theirs(x))
  assert len(traces) == 1 + len(_MUTATIONS)
  f(ours, x)
  assert len(traces) == 1 + len(_MUTATIONS)  # unchanged: the cached walk and program


def test_only_static_values_that_can_change_in_place_are_rechecked():
  f = nnx.jit(lambda m, x: m(x))
  plain = nnx.Linear(2, 2, rngs=nnx.Rngs(0))  # ints, strings, functions, dtypes: no work
  plain.frozen = _FrozenCfg((1, 2))  # hashable: trusted not to change (like a Linen module)
  f(plain, jnp.ones(2))
  assert f.cache.get((plain,)).statics == []
  configured = _configured(nnx)
  f(configured, jnp.ones(2))
  rechecked = [value for value, _ in f.cache.get((configured,)).statics]
  assert sorted(map(id, rechecked)) == sorted(
    map(id, [configured.cfg, configured.t, configured.d]))  # outermost values only


def test_an_object_without_value_equality_is_static_by_identity():
  class Opaque:  # neither a dataclass nor hashable by value: compared by identity
    def __init__(self, k):
      self.k = k
    __hash__ = None
  f = nnx.jit(lambda m: m.w[...] * m.o.k)
  m = nnx.Module()
  m.w, m.o = nnx.Param(jnp.ones(())), Opaque(2.0)
  assert float(f(m)) == 2.0
  m.o = Opaque(3.0)  # a new object: a new static value
  assert float(f(m)) == 3.0


def test_a_freed_variable_argument_frees_its_array_after_jit():
  shape = (7, 11)
  f = nnx.jit(lambda v, x: v[...] * x)
  v = nnx.Param(jnp.ones(shape))
  f(v, 2.0)
  np.testing.assert_array_equal(f(v, 2.0), fnnx.jit(lambda v, x: v[...] * x)(
    fnnx.Param(jnp.ones(shape)), 2.0))
  assert _live(shape) == 1
  ref = weakref.ref(v)
  del v
  gc.collect()
  assert ref() is None
  assert _live(shape) == 0
  assert not f.cache.entries


@pytest.mark.parametrize('container', ['list', 'dict', 'nested'])
def test_a_plain_container_holding_the_model_does_not_keep_it_alive(container):
  shape = (7, 17)
  f = nnx.jit(lambda m, x: m(x).sum())
  model = nnx.Linear(*shape, rngs=nnx.Rngs(0))
  model.back = {'list': lambda m: [m], 'dict': lambda m: {'m': m},
                'nested': lambda m: ({'m': [m, jnp.zeros(3)]},)}[container](model)
  reference = fnnx.Linear(*shape, rngs=fnnx.Rngs(0))
  np.testing.assert_array_equal(f(model, jnp.ones((1, 7))), reference(jnp.ones((1, 7))).sum())
  f(model, jnp.ones((1, 7)))  # the cached walk
  ref = weakref.ref(model)
  del model, reference
  gc.collect()
  assert ref() is None
  assert _live(shape) == 0
  assert not f.cache.entries


def test_a_raw_array_in_a_list_is_written_back_through_the_cached_walk():
  m = nnx.Module()
  m.items = [jnp.zeros(()), nnx.Param(jnp.ones(()))]

  @nnx.jit
  def step(m):
    m.items[0] = m.items[0] + m.items[1][...]
  for _ in range(3):
    step(m)
  assert float(m.items[0]) == 3.0


def test_jit_takes_self_referential_static_data_and_sees_it_change():
  @dataclasses.dataclass
  class Node:
    scale: float
    parent: object = None

  class Scaled(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones(2))
      self.cfg = Node(2.0)
      self.cfg.parent = self.cfg  # a cycle: freezing it must not recurse forever

    def __call__(self, x):
      return x * self.w * self.cfg.parent.scale

  m = Scaled()
  f = nnx.jit(lambda m, x: m(x))
  np.testing.assert_array_equal(f(m, jnp.ones(2)), m(jnp.ones(2)))
  m.cfg.scale = 5.0  # in place, inside the cycle
  np.testing.assert_array_equal(f(m, jnp.ones(2)), jnp.full(2, 5.0))
