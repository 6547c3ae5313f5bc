"""Tests for ``bridge.jit``: the split/merge boundary, write-back of in-place changes,
sharing, retracing, static/donated arguments and shardings."""

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import bridge as nnx


class Counter(nnx.Module):
  def __init__(self):
    self.n = nnx.BatchStat(jnp.array(0))


class Block(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 4, rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.linear(x))


def x34():
  return jnp.arange(12.0).reshape(4, 3) / 7.0


# -- decorator forms ---------------------------------------------------------------------
def test_decorator_without_arguments():
  @nnx.jit
  def f(c, k):
    c.n.value += k
    return c.n.value * 10

  c = Counter()
  assert int(f(c, 2)) == 20
  assert int(f(c, 3)) == 50
  assert int(c.n.value) == 5


def test_decorator_with_arguments():
  @nnx.jit(static_argnums=1)
  def f(c, k):
    c.n.value += k
    return k

  c = Counter()
  assert f(c, 4) == 4  # a static argument comes back as the Python value
  assert type(f(c, 4)) is int
  assert int(c.n.value) == 8


def test_jit_on_method():
  class Model(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array([1.0, 2.0]))
      self.calls = nnx.BatchStat(jnp.array(0))

    @nnx.jit
    def __call__(self, x):
      self.calls.value += 1
      return x * self.w.value

  m = Model()
  np.testing.assert_array_equal(m(jnp.array([3.0, 4.0])), np.array([3.0, 8.0]))
  m(jnp.ones(2))
  assert int(m.calls.value) == 2


def test_jit_method_with_static_argname():
  class Model(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(2.0))

    @nnx.jit(static_argnames='power')
    def apply(self, x, power):
      return x ** power * self.w.value

  m = Model()
  assert float(m.apply(jnp.array(3.0), power=2)) == 18.0
  assert float(m.apply(jnp.array(3.0), power=3)) == 54.0


def test_jit_output_matches_eager():
  model = Block(nnx.Rngs(0))
  eager_model = nnx.clone(model)
  x = x34()
  out = nnx.jit(lambda m, x: m(x))(model, x)
  expected = eager_model(x)
  # XLA may fuse differently under jit than op-by-op; allow float32 rounding.
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(model.bn.mean.value, eager_model.bn.mean.value, rtol=1e-6,
                             atol=1e-7)


# -- write-back of in-place changes ------------------------------------------------------
def test_param_update_inside_is_visible():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  kernel0 = np.asarray(model.kernel.value)
  kernel_var = model.kernel

  @nnx.jit
  def f(m):
    m.kernel.value = m.kernel.value * 2.0
    m.bias.value = m.bias.value + 1.0

  assert f(model) is None
  assert model.kernel is kernel_var  # the caller's Variable, updated in place
  np.testing.assert_array_equal(model.kernel.value, kernel0 * 2.0)
  np.testing.assert_array_equal(model.bias.value, np.ones(2, np.float32))


def test_batchnorm_stats_updated():
  model = Block(nnx.Rngs(0))
  reference = fnnx.BatchNorm(4, rngs=fnnx.Rngs(0))
  h = model.linear(x34())

  @nnx.jit
  def f(m, x):
    return m(x)

  f(model, x34())
  assert not np.all(np.asarray(model.bn.mean.value) == 0)
  # the same stats flax.nnx's BatchNorm computes eagerly on the same features
  reference(h)
  np.testing.assert_allclose(model.bn.mean.value, reference.mean.value, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(model.bn.var.value, reference.var.value, rtol=1e-6, atol=1e-7)


def test_sown_intermediates_appear_on_caller():
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(3.0))

    def __call__(self, x):
      y = x * self.w.value
      self.sow(nnx.Intermediate, 'y', y)
      return y

  m = M()
  f = nnx.jit(lambda m, x: m(x))
  f(m, jnp.array(2.0))
  assert isinstance(m.y, nnx.Intermediate)
  assert len(m.y.value) == 1 and float(m.y.value[0]) == 6.0
  f(m, jnp.array(5.0))
  assert [float(v) for v in m.y.value] == [6.0, 15.0]
  popped = nnx.pop(m, nnx.Intermediate)
  assert 'y' in popped and not hasattr(m, 'y')
  f(m, jnp.array(1.0))  # structure changed back: still correct
  assert [float(v) for v in m.y.value] == [3.0]


def test_new_variable_and_attribute_created_inside():
  m = Counter()

  @nnx.jit
  def f(m):
    m.extra = nnx.Param(jnp.ones(3) * m.n.value)
    m.label = 'set-inside'
    m.child = nnx.Linear(2, 2, rngs=nnx.Rngs(1))

  f(m)
  assert isinstance(m.extra, nnx.Param)
  np.testing.assert_array_equal(m.extra.value, np.zeros(3, np.float32))
  assert m.label == 'set-inside'
  assert isinstance(m.child, nnx.Linear)
  expected = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
  np.testing.assert_array_equal(m.child.kernel.value, expected.kernel.value)


def test_attribute_deleted_inside():
  m = Counter()
  m.tmp = nnx.Param(jnp.ones(2))

  @nnx.jit
  def f(m):
    del m.tmp

  f(m)
  assert not hasattr(m, 'tmp')
  assert int(m.n.value) == 0


def test_rng_counters_advance():
  rngs = nnx.Rngs(0, dropout=1)

  @nnx.jit
  def f(rngs):
    return rngs.dropout(), rngs.dropout()

  k1, k2 = f(rngs)
  assert int(rngs.dropout.count.value) == 2
  k3, _ = f(rngs)
  assert int(rngs.dropout.count.value) == 4
  assert int(rngs.default.count.value) == 0
  # keys equal the ones the same stream gives eagerly
  eager = nnx.Rngs(0, dropout=1)
  expected = [eager.dropout() for _ in range(3)]
  for got, want in zip((k1, k2, k3), expected, strict=True):
    np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(want))
  assert not np.array_equal(jax.random.key_data(k1), jax.random.key_data(k3))


def test_rngs_inside_module_draws_differ_across_calls():
  class Noisy(nnx.Module):
    def __init__(self):
      self.rngs = nnx.Rngs(noise=3)

    def __call__(self, x):
      return x + jax.random.normal(self.rngs.noise(), x.shape)

  m = Noisy()
  f = nnx.jit(lambda m, x: m(x))
  a = f(m, jnp.zeros(4))
  b = f(m, jnp.zeros(4))
  assert not np.array_equal(a, b)
  assert int(m.rngs.noise.count.value) == 2


def test_raw_array_attribute_update():
  class M(nnx.Module):
    def __init__(self):
      self.buffer = jnp.zeros(2)

  m = M()

  @nnx.jit
  def f(m):
    m.buffer = m.buffer + 1.0

  f(m)
  f(m)
  np.testing.assert_array_equal(m.buffer, np.full(2, 2.0, np.float32))


def test_nested_containers_in_arguments():
  a, b = Counter(), Counter()

  @nnx.jit
  def f(pair, d, x):
    pair[0].n.value += 1
    pair[1].n.value += 2
    d['c'].n.value += x
    return d['k'] * 2

  out = f((a, b), {'c': a, 'k': jnp.array(3)}, jnp.array(10))
  assert int(out) == 6
  assert int(a.n.value) == 11 and int(b.n.value) == 2


# -- sharing -----------------------------------------------------------------------------
def test_shared_variable_across_two_modules():
  shared = nnx.Param(jnp.array(1.0))
  m1, m2 = Counter(), Counter()
  m1.w = shared
  m2.w = shared

  @nnx.jit
  def f(m1, m2):
    assert m1.w is m2.w  # rebuilt as one Variable inside
    m1.w.value = m1.w.value + 1.0
    return m2.w.value

  assert float(f(m1, m2)) == 2.0
  assert m1.w is shared and m2.w is shared
  assert float(shared.value) == 2.0


def test_module_passed_twice():
  m = Counter()

  @nnx.jit
  def f(a, b):
    assert a is b
    a.n.value += 1
    b.n.value += 10

  f(m, m)
  assert int(m.n.value) == 11


def test_shared_submodule_stays_shared():
  class Two(nnx.Module):
    def __init__(self, inner):
      self.a = inner
      self.b = inner

  inner = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  m = Two(inner)
  kernel0 = np.asarray(inner.kernel.value)

  @nnx.jit
  def f(m):
    assert m.a is m.b
    m.a.kernel.value = m.a.kernel.value + 1.0

  f(m)
  assert m.a is inner and m.b is inner
  np.testing.assert_array_equal(inner.kernel.value, kernel0 + 1.0)


# -- returning modules -------------------------------------------------------------------
def test_returning_passed_module_is_the_callers_object():
  m = Counter()

  @nnx.jit
  def f(m, x):
    m.n.value += 1
    return m, x + 1

  out, y = f(m, jnp.array(1))
  assert out is m
  assert int(y) == 2
  assert int(m.n.value) == 1
  out2, _ = f(m, jnp.array(1))  # second (cached) call
  assert out2 is m
  assert int(m.n.value) == 2


def test_returning_passed_variable_is_the_callers_object():
  m = Counter()
  out = nnx.jit(lambda m: m.n)(m)
  assert out is m.n


def test_returning_new_module_built_inside():
  @nnx.jit
  def make(seed_rngs):
    return nnx.Linear(3, 2, rngs=seed_rngs)

  rngs = nnx.Rngs(0)
  model = make(rngs)
  expected = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  assert isinstance(model, nnx.Linear)
  assert isinstance(model.kernel, nnx.Param)
  np.testing.assert_array_equal(model.kernel.value, expected.kernel.value)
  np.testing.assert_array_equal(model.bias.value, expected.bias.value)
  assert int(rngs.params.count.value) == 2  # the caller's Rngs advanced
  assert int(rngs.default.count.value) == 2


def test_returning_new_module_holding_input_variable():
  m = Counter()

  @nnx.jit
  def f(m):
    out = nnx.Module()
    out.n = m.n
    out.w = nnx.Param(jnp.zeros(2))
    return out

  out = f(m)
  assert out is not m
  assert out.n is m.n  # the Variable in the output is the caller's one
  assert isinstance(out.w, nnx.Param)


# -- retracing ---------------------------------------------------------------------------
def _traced_counter():
  traces = []

  @nnx.jit
  def f(m, x):
    traces.append(1)
    total = x
    for _, leaf in nnx.iter_graph(m):
      if isinstance(leaf, nnx.Param):
        total = total + leaf.value.sum()
    return total

  return f, traces


def test_no_retrace_for_same_structure():
  f, traces = _traced_counter()
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  for i in range(4):
    f(model, jnp.array(float(i)))
  assert len(traces) == 1
  other = nnx.Linear(3, 2, rngs=nnx.Rngs(1))  # another object, same structure
  f(other, jnp.array(0.0))
  assert len(traces) == 1


def test_no_retrace_for_steady_state_updates():
  traces = []
  model = Block(nnx.Rngs(0))

  @nnx.jit
  def step(m, x):
    traces.append(1)
    m.linear.kernel.value = m.linear.kernel.value * 0.5
    return m(x).sum()

  for _ in range(3):
    step(model, x34())
  assert len(traces) == 1


def test_retrace_when_attribute_added():
  f, traces = _traced_counter()
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  base = float(f(model, jnp.array(0.0)))
  model.extra = nnx.Param(jnp.full((2,), 5.0))
  out = float(f(model, jnp.array(0.0)))
  assert len(traces) == 2
  assert out == pytest.approx(base + 10.0, rel=1e-6)  # float32 sum order may differ
  f(model, jnp.array(0.0))
  assert len(traces) == 2


def test_retrace_when_plain_list_appended():
  class Holder(nnx.Module):
    def __init__(self):
      self.items = [nnx.Param(jnp.array(1.0))]

  traces = []

  @nnx.jit
  def f(m):
    traces.append(1)
    return sum(p.value for p in m.items)

  m = Holder()
  assert float(f(m)) == 1.0
  epoch = nnx.object.structure_epoch()
  m.items.append(nnx.Param(jnp.array(2.0)))
  assert nnx.object.structure_epoch() == epoch  # no attribute set: only the list changed
  assert float(f(m)) == 3.0
  assert len(traces) == 2
  m.items[0] = nnx.Param(jnp.array(10.0))  # replaced in place, same structure
  assert float(f(m)) == 12.0
  assert len(traces) == 2


def test_plain_list_mutated_inside_is_written_back():
  class Holder(nnx.Module):
    def __init__(self):
      self.items = [nnx.Param(jnp.array(1.0))]

  m = Holder()
  items = m.items

  @nnx.jit
  def f(m):
    m.items.append(nnx.Param(m.items[-1].value + 1.0))

  f(m)
  f(m)
  assert m.items is items  # the caller's list, updated in place
  assert [float(p.value) for p in m.items] == [1.0, 2.0, 3.0]


def test_retrace_when_static_attribute_changes():
  class Scaled(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(2.0))
      self.factor = 3

  traces = []

  @nnx.jit
  def f(m, x):
    traces.append(1)
    return x * m.w.value * m.factor

  m = Scaled()
  assert float(f(m, jnp.array(1.0))) == 6.0
  assert float(f(m, jnp.array(1.0))) == 6.0
  assert len(traces) == 1
  m.factor = 5
  assert float(f(m, jnp.array(1.0))) == 10.0
  assert len(traces) == 2
  m.factor = 3  # back to a structure seen before: jax's cache, no new trace
  assert float(f(m, jnp.array(1.0))) == 6.0
  assert len(traces) == 2


def test_static_attribute_changed_inside_is_written_back():
  class Mode(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(1.0))
      self.deterministic = False

  m = Mode()

  @nnx.jit
  def f(m):
    m.deterministic = True
    return m.w.value

  f(m)
  assert m.deterministic is True


def test_variable_swapped_outside_is_used():
  # Replacing a Variable object (not its value) between calls must not reuse stale handles.
  f, traces = _traced_counter()
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  f(model, jnp.array(0.0))
  model.bias = nnx.Param(jnp.full((2,), 100.0, jnp.float32))  # not weak-typed
  expected = float(model.kernel.value.sum()) + 200.0
  assert float(f(model, jnp.array(0.0))) == pytest.approx(expected, rel=1e-6)
  assert len(traces) == 1  # same structure


def test_value_update_outside_is_seen():
  m = Counter()
  f = nnx.jit(lambda m: m.n.value + 0)
  assert int(f(m)) == 0
  m.n.value = jnp.array(7)
  assert int(f(m)) == 7


# -- static and donated arguments --------------------------------------------------------
def test_static_argnums_and_argnames():
  traces = []

  def f(x, n, *, mode):
    traces.append((n, mode))
    return x * n if mode == 'mul' else x + n

  jf = nnx.jit(f, static_argnums=1, static_argnames='mode')
  assert float(jf(jnp.array(2.0), 3, mode='mul')) == 6.0
  assert float(jf(jnp.array(2.0), 3, mode='add')) == 5.0
  assert float(jf(jnp.array(4.0), 3, mode='add')) == 7.0
  assert traces == [(3, 'mul'), (3, 'add')]


def test_static_argnames_resolves_positional_use():
  traces = []

  @nnx.jit(static_argnames='n')
  def f(x, n):
    traces.append(n)
    return x * n

  assert float(f(jnp.array(2.0), 4)) == 8.0
  assert float(f(jnp.array(2.0), n=4)) == 8.0
  assert float(f(jnp.array(2.0), 5)) == 10.0
  assert sorted(set(traces)) == [4, 5]


def test_donate_argnums_module():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  old_kernel = model.kernel.value
  expected = np.asarray(old_kernel) * 2.0

  @nnx.jit(donate_argnums=0)
  def f(m):
    m.kernel.value = m.kernel.value * 2.0

  f(model)
  np.testing.assert_array_equal(model.kernel.value, expected)
  assert old_kernel.is_deleted()  # the Module's buffers were donated
  f(model)  # the new buffers are live and usable
  np.testing.assert_array_equal(model.kernel.value, expected * 2.0)


def test_donate_argnames_array():
  @nnx.jit(donate_argnames='x')
  def f(m, x):
    m.n.value += 1
    return x + 1.0

  m = Counter()
  x = jnp.ones(4)
  counter = m.n.value
  y = f(m, x=x)
  np.testing.assert_array_equal(y, np.full(4, 2.0, np.float32))
  assert int(m.n.value) == 1
  assert x.is_deleted()
  assert not counter.is_deleted()  # only the named argument is donated


def test_donate_plain_argument_after_module():
  @nnx.jit(donate_argnums=1)
  def f(m, x):
    m.n.value += 1
    return x * 2.0

  m = Counter()
  counter = m.n.value
  x = jnp.ones(3)
  f(m, x)
  assert x.is_deleted()
  assert not counter.is_deleted()


# -- shardings ---------------------------------------------------------------------------
def test_in_shardings_module_and_array():
  mesh = Mesh(np.array(jax.devices()).reshape(8), ('data',))
  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P('data'))
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x = jnp.arange(24.0).reshape(8, 3)
  expected = np.asarray(x) @ np.asarray(model.kernel.value) + np.asarray(model.bias.value) + 1

  @nnx.jit(in_shardings=(replicated, batch))
  def f(m, x):
    m.bias.value = m.bias.value + 1.0
    return m(x)

  y = f(model, x)
  assert y.sharding.is_equivalent_to(batch, 2)
  # float32 matmul on 8 shards vs NumPy: same products, summation order may differ.
  np.testing.assert_allclose(y, expected, rtol=1e-5)
  assert model.bias.value.sharding.is_equivalent_to(replicated, 1)
  np.testing.assert_array_equal(model.bias.value, np.ones(2, np.float32))


def test_in_shardings_shards_module_arrays():
  mesh = Mesh(np.array(jax.devices()).reshape(8), ('model',))
  column = NamedSharding(mesh, P(None, 'model'))
  model = nnx.Module()
  model.w = nnx.Param(jnp.arange(16.0).reshape(2, 8))

  @nnx.jit(in_shardings=(column,))
  def f(m):
    m.w.value = m.w.value * 2.0
    return m.w.value.sum()

  assert float(f(model)) == 240.0
  assert model.w.value.sharding.is_equivalent_to(column, 2)
  np.testing.assert_array_equal(model.w.value, np.arange(16.0).reshape(2, 8) * 2)


def test_out_shardings():
  mesh = Mesh(np.array(jax.devices()).reshape(8), ('data',))
  batch = NamedSharding(mesh, P('data'))

  @nnx.jit(out_shardings=batch)
  def f(m, x):
    m.n.value += 1
    return x * 2

  m = Counter()
  y = f(m, jnp.ones(8))
  assert y.sharding.is_equivalent_to(batch, 1)
  assert int(m.n.value) == 1


# -- errors ------------------------------------------------------------------------------
def test_tracer_does_not_leak_into_caller_object():
  m = Counter()

  @nnx.jit
  def f(m, x):
    m.n.value = m.n.value + x
    return None

  f(m, jnp.array(3))
  assert not isinstance(m.n.value, jax.core.Tracer)
  assert int(m.n.value) == 3


def test_function_without_modules():
  traces = []

  @nnx.jit
  def f(x):
    traces.append(1)
    return None

  assert f(jnp.ones(2)) is None
  assert f(jnp.zeros(2)) is None
  assert len(traces) == 1
  assert nnx.jit(lambda x: (x * 2, 'tag', 3))(jnp.ones(2))[1:] == ('tag', 3)


def test_rngs_shared_between_module_and_argument():
  class Noisy(nnx.Module):
    def __init__(self, rngs):
      self.rngs = rngs

  rngs = nnx.Rngs(noise=0)
  m = Noisy(rngs)

  @nnx.jit
  def f(m, rngs):
    assert m.rngs is rngs
    a = m.rngs.noise()
    b = rngs.noise()
    return a, b

  a, b = f(m, rngs)
  assert int(rngs.noise.count.value) == 2
  assert m.rngs is rngs
  assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))


def test_variable_as_direct_argument():
  v = nnx.Param(jnp.array([1.0, 2.0]))

  @nnx.jit
  def f(v, x):
    v.value = v.value * x
    return v

  out = f(v, jnp.array(3.0))
  assert out is v
  np.testing.assert_array_equal(v.value, np.array([3.0, 6.0], np.float32))


def test_module_returned_inside_container():
  a, b = Counter(), Counter()

  @nnx.jit
  def f(a, b):
    b.n.value += 1
    return {'first': a, 'pair': (b, a), 'value': b.n.value}

  out = f(a, b)
  assert out['first'] is a and out['pair'][0] is b and out['pair'][1] is a
  assert int(out['value']) == 1 and int(b.n.value) == 1


def test_in_shardings_exclude_static_arguments():
  # As in jax.jit, in_shardings has one entry per non-static positional argument.
  mesh = Mesh(np.array(jax.devices()).reshape(8), ('data',))
  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P('data'))
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  f = nnx.jit(lambda m, n, x: m(x) * n, static_argnums=1, in_shardings=(replicated, batch))
  y = f(model, 2, jnp.ones((8, 3)))
  assert y.sharding.is_equivalent_to(batch, 2)
  with pytest.raises(ValueError, match='in_shardings has 1 entries for 2'):
    nnx.jit(lambda m, x: m(x), in_shardings=(replicated,))(model, jnp.ones((8, 3)))


def test_retrace_when_module_list_appended():
  class Stack(nnx.Module):
    def __init__(self):
      self.items = nnx.List([nnx.Param(jnp.array(1.0))])

  traces = []

  @nnx.jit
  def f(m):
    traces.append(1)
    return sum(p.value for p in m.items)

  m = Stack()
  assert float(f(m)) == 1.0
  m.items.append(nnx.Param(jnp.array(2.0)))
  assert float(f(m)) == 3.0
  m.items[0] = nnx.Param(jnp.array(10.0))
  assert float(f(m)) == 12.0
  assert len(traces) == 2


def test_module_passed_as_keyword():
  m = Counter()

  @nnx.jit
  def f(x, *, m):
    m.n.value = m.n.value + x

  f(jnp.array(2), m=m)
  f(jnp.array(3), m=m)
  assert int(m.n.value) == 5


def test_values_the_function_does_not_write_are_not_returned_or_replaced():
  class TwoStats(nnx.Module):
    def __init__(self):
      self.touched = nnx.BatchStat(jnp.zeros(3))
      self.untouched = nnx.BatchStat(jnp.ones(3))

  m = TwoStats()
  before = m.untouched.raw_value

  @nnx.jit
  def f(m):
    m.touched.value = m.touched.value + 1
    return m.untouched.value.sum()

  for _ in range(3):
    assert float(f(m)) == 3.0
  assert m.untouched.raw_value is before  # kept, not a fresh copy out of the computation
  np.testing.assert_array_equal(m.touched.value, jnp.full(3, 3.0))


def test_donated_module_gets_every_value_back_even_unwritten_ones():
  class TwoStats(nnx.Module):
    def __init__(self):
      self.touched = nnx.BatchStat(jnp.zeros(3))
      self.untouched = nnx.BatchStat(jnp.ones(3))

  m = TwoStats()

  @nnx.jit(donate_argnums=0)
  def f(m):
    m.touched.value = m.touched.value + 1

  f(m)
  f(m)
  np.testing.assert_array_equal(m.untouched.value, jnp.ones(3))  # not a deleted buffer
  np.testing.assert_array_equal(m.touched.value, jnp.full(3, 2.0))


def test_a_re_walk_replaces_the_outdated_walk_of_the_same_arguments():
  m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  f = nnx.jit(lambda m, x: m(x))
  for i in range(3):
    m.tag = i  # a structural change: the next call walks the graph again
    f(m, jnp.ones((1, 2)))
  assert len(f.cache.entries) == 1  # not one stale walk (holding m) per change
