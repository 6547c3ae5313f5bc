"""The less common transforms side by side with flax.nnx 0.12.8: vjp, jvp, checkify,
cached_partial, jit_partial, with_rngs, pmap, make_jaxpr, transform_metadata."""

import inspect

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import bridge as nnx


class Counted:
  """A Linear that counts its calls in a BatchStat (an effect to write back)."""

  @staticmethod
  def make(lib):
    class CountedLinear(lib.Module):
      def __init__(self, rngs):
        self.linear = lib.Linear(3, 2, rngs=rngs)
        self.calls = lib.BatchStat(jnp.zeros(()))

      def __call__(self, x):
        self.calls.value += 1.0
        return self.linear(x)
    return CountedLinear(lib.Rngs(0))


def loss(m, x):
  return jnp.sum(jnp.tanh(m(x)) ** 2)


def x23():
  return jnp.arange(6.0).reshape(2, 3) / 5.0 - 0.4


def assert_same_signature(name):
  ours = inspect.signature(getattr(nnx, name)).parameters
  theirs = inspect.signature(getattr(fnnx, name)).parameters
  assert list(ours) == list(theirs), name
  for k in list(ours)[1:]:
    if theirs[k].kind is not inspect.Parameter.VAR_POSITIONAL:
      assert ours[k].default == theirs[k].default or k in ('primals', 'tangents'), (name, k)


# -- vjp / jvp -----------------------------------------------------------------------------
@pytest.mark.parametrize('mode', [dict(graph=False), dict(graph_updates=False)])
def test_vjp_matches_flax_and_writes_effects_back(mode):
  m, fm = Counted.make(nnx), Counted.make(fnnx)
  out, vjp_fn = nnx.vjp(loss, m, x23(), **mode)
  e_out, e_vjp_fn = fnnx.vjp(loss, fm, x23(), **mode)
  np.testing.assert_array_equal(out, e_out)
  g_m, g_x = vjp_fn(jnp.ones_like(out))
  e_m, e_x = e_vjp_fn(jnp.ones_like(e_out))
  assert type(g_m).__name__ == type(e_m).__name__ == 'CountedLinear'
  assert type(g_m.linear.kernel) is nnx.Param
  np.testing.assert_array_equal(g_m.linear.kernel.value, e_m.linear.kernel.value)
  np.testing.assert_array_equal(g_m.linear.bias.value, e_m.linear.bias.value)
  np.testing.assert_array_equal(g_x, e_x)
  assert float(m.calls.value) == float(fm.calls.value) == 1.0


def test_vjp_has_aux_and_decorator():
  @nnx.vjp(has_aux=True, graph=False)
  def f(m, x):
    y = m(x)
    return jnp.sum(y), y
  @fnnx.vjp(has_aux=True, graph=False)
  def g(m, x):
    y = m(x)
    return jnp.sum(y), y
  out, vjp_fn, aux = f(Counted.make(nnx), x23())
  e_out, e_vjp_fn, e_aux = g(Counted.make(fnnx), x23())
  np.testing.assert_array_equal(aux, e_aux)
  np.testing.assert_array_equal(vjp_fn(2.0)[1], e_vjp_fn(2.0)[1])


def test_vjp_and_jvp_in_graph_mode_with_updates_are_not_implemented_as_in_flax():
  for lib in (nnx, fnnx):
    with pytest.raises(NotImplementedError, match='graph_updates'):
      lib.vjp(loss, lib.Linear(3, 2, rngs=lib.Rngs(0)), x23())
    with pytest.raises(NotImplementedError, match='graph_updates'):
      lib.jvp(loss)


@pytest.mark.parametrize('mode', [dict(graph=False), dict(graph_updates=False)])
def test_jvp_matches_flax(mode):
  m, fm = nnx.Linear(3, 2, rngs=nnx.Rngs(0)), fnnx.Linear(3, 2, rngs=fnnx.Rngs(0))
  t = nnx.clone(m)
  t.kernel.value = jnp.full((3, 2), 0.5)
  t.bias.value = jnp.ones(2)
  ft = jax.tree.map(lambda v: v, fm)
  ft.kernel.value = jnp.full((3, 2), 0.5)
  ft.bias.value = jnp.ones(2)
  tx = jnp.ones((2, 3))
  out, t_out = nnx.jvp(loss, (m, x23()), (t, tx), **mode)
  e_out, e_t_out = fnnx.jvp(loss, (fm, x23()), (ft, tx), **mode)
  np.testing.assert_array_equal(out, e_out)
  np.testing.assert_array_equal(t_out, e_t_out)
  out, t_out, aux = nnx.jvp(lambda m, x: (loss(m, x), 7), has_aux=True, **mode)(
    (m, x23()), (t, tx))
  assert aux == 7
  np.testing.assert_array_equal(t_out, e_t_out)


def test_jvp_tangent_of_another_structure_is_an_error():
  m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='tangents must have the structure of primals'):
    nnx.jvp(loss, (m, x23()), (nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(0)),
                               jnp.ones((2, 3))), graph=False)


@pytest.mark.parametrize('name', ['vjp', 'jvp'])
def test_signatures_match_flax(name):
  assert_same_signature(name)


# -- checkify ------------------------------------------------------------------------------
def checked(m, x):
  checkify.check(jnp.all(x > 0), 'x must be positive, got {}', x[0, 0])
  return m(x)


def test_checkify_over_a_module_matches_flax_and_writes_back():
  from jax.experimental import checkify as checkify_lib
  assert checkify_lib.user_checks == inspect.signature(nnx.checkify).parameters['errors'].default
  m, fm = Counted.make(nnx), Counted.make(fnnx)
  for x in (x23() + 1.0, -jnp.ones((2, 3))):
    err, out = nnx.jit(nnx.checkify(checked))(m, x)
    e_err, e_out = fnnx.jit(fnnx.checkify(checked))(fm, x)
    assert err.get() == e_err.get()
    np.testing.assert_array_equal(out, e_out)
  assert err.get() is not None and 'x must be positive, got -1.0' in err.get()
  assert float(m.calls.value) == float(fm.calls.value) == 2.0


def test_checkify_with_jax_error_kinds():
  from jax.experimental import checkify as checkify_lib
  def f(m, i):
    return m(x23())[i]
  m, fm = nnx.Linear(3, 2, rngs=nnx.Rngs(0)), fnnx.Linear(3, 2, rngs=fnnx.Rngs(0))
  err, _ = nnx.checkify(f, errors=checkify_lib.index_checks)(m, 5)
  e_err, _ = fnnx.checkify(f, errors=checkify_lib.index_checks)(fm, 5)
  assert err.get() is not None and err.get() == e_err.get()


# -- make_jaxpr ----------------------------------------------------------------------------
def test_make_jaxpr_equals_flax_and_needs_graph_updates_false():
  m, fm = Counted.make(nnx), Counted.make(fnnx)
  ours = nnx.make_jaxpr(loss, graph_updates=False)(m, x23())
  theirs = fnnx.make_jaxpr(loss, graph_updates=False)(fm, x23())
  assert str(ours) == str(theirs)
  assert float(m.calls.value) == 0.0  # tracing writes nothing back
  static = nnx.make_jaxpr(lambda m, x, k: loss(m, x) * k, graph_updates=False,
                          static_argnums=2)(m, x23(), 3.0)
  e_static = fnnx.make_jaxpr(lambda m, x, k: loss(m, x) * k, graph_updates=False,
                             static_argnums=2)(fm, x23(), 3.0)
  assert str(static) == str(e_static)
  for lib in (nnx, fnnx):
    with pytest.raises(ValueError, match='does not support graph_updates=True'):
      lib.make_jaxpr(loss)


# -- cached_partial / jit_partial ----------------------------------------------------------
def train_step(lib):
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)
    value, grads = lib.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return value
  return step


def _models_and_optimizers():
  import optax
  out = []
  for lib in (nnx, fnnx):
    model = lib.Linear(2, 3, rngs=lib.Rngs(0))
    out.append((model, lib.Optimizer(model, optax.adamw(1e-2), wrt=lib.Param)))
  return out


def test_cached_partial_train_steps_match_flax():
  (m, opt), (fm, fopt) = _models_and_optimizers()
  step = nnx.cached_partial(nnx.jit(train_step(nnx)), m, opt)
  e_step = fnnx.cached_partial(fnnx.jit(train_step(fnnx)), fm, fopt)
  x, y = jnp.ones((4, 2)), jnp.linspace(0, 1, 12).reshape(4, 3)
  for _ in range(3):
    np.testing.assert_array_equal(step(x, y), e_step(x, y))
  np.testing.assert_array_equal(m.kernel.value, fm.kernel.value)


def test_jit_partial_train_steps_match_flax():
  (m, opt), (fm, fopt) = _models_and_optimizers()
  step = nnx.jit_partial(train_step(nnx), m, opt)
  e_step = fnnx.jit_partial(train_step(fnnx), fm, fopt, graph=False)
  x, y = jnp.ones((4, 2)), jnp.linspace(0, 1, 12).reshape(4, 3)
  for _ in range(3):
    np.testing.assert_array_equal(step(x, y), e_step(x, y))
  np.testing.assert_array_equal(m.bias.value, fm.bias.value)


@pytest.mark.parametrize('name', ['checkify', 'make_jaxpr', 'cached_partial', 'jit_partial'])
def test_more_signatures_match_flax(name):
  assert_same_signature(name)


# -- with_rngs -----------------------------------------------------------------------------
def with_rngs_trace(lib):
  """Shapes, key data and counters through split / fork / broadcast rules, errors and the
  decorator form."""
  out = []
  rngs = lib.Rngs(params=0, dropout=1, noise=2)
  new = lib.with_rngs(rngs, split={'params': 4, ...: (2, 3)}, graph=False)
  out += [new.params.key.shape, new.noise.key.shape,
          jax.random.key_data(new.params.key[...]).tolist(), int(rngs.params.count[...])]
  new = lib.with_rngs(rngs, split={'params': 4}, fork=lib.Not('params'), graph_updates=False)
  out += [new.dropout.key.shape, jax.random.key_data(new.dropout.key[...]).tolist(),
          int(new.dropout.count[...]), int(rngs.dropout.count[...])]
  new = lib.with_rngs(rngs, broadcast=3, only='noise', graph=False)
  out += [new.noise.key.shape, new.params.key.shape, new.params is rngs.params]
  with pytest.raises(ValueError, match='multiple rules'):
    lib.with_rngs(rngs, split={'params': 2}, fork='params', graph=False)
  with pytest.raises(NotImplementedError, match='with_rngs'):
    lib.with_rngs(rngs, split=2)

  @lib.with_rngs(split=2, graph=False)
  def f(r, n=None):
    return r.params.key.shape, n.default.key.shape
  out.append(f(rngs, n=lib.Rngs(3)))
  return out


def test_with_rngs_matches_flax():
  assert with_rngs_trace(nnx) == with_rngs_trace(fnnx)


def test_with_rngs_copies_a_module_and_keeps_its_other_variables():
  def run(lib):
    class M(lib.Module):
      def __init__(self):
        self.rngs = lib.Rngs(0)
        self.w = lib.Param(jnp.ones(2))
    m = M()
    new = lib.with_rngs(m, split=2, graph=False)
    return new is m, new.w is m.w, new.rngs.default.key.shape, m.rngs.default.key.shape
  assert run(nnx) == run(fnnx) == (False, True, (2,), ())


def test_with_rngs_signature_matches_flax():
  assert_same_signature('with_rngs')


# -- pmap ----------------------------------------------------------------------------------
def pmap_run(lib):
  """Layers created one per device, a forward with a collective, a broadcast counter."""
  @lib.split_rngs(splits=8)
  @lib.pmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return lib.Linear(2, 3, rngs=rngs)
  m = create(lib.Rngs(0))

  class C(lib.Module):
    def __init__(self):
      self.n = lib.BatchStat(jnp.zeros(()))
  c = C()

  @lib.pmap(in_axes=(0, None, 0, None), out_axes=0, axis_name='d',
            static_broadcasted_argnums=3)
  def forward(m, c, x, scale):
    c.n[...] += 1.0
    return jax.lax.pmean(m(x), 'd') * scale
  y = forward(m, c, jnp.arange(64.0).reshape(8, 4, 2) / 64, 2.0)
  return type(m).__name__, m.kernel.value, y, c.n.value


def test_pmap_matches_flax_on_8_devices():
  assert jax.device_count() == 8
  (name, kernel, y, n), (e_name, e_kernel, e_y, e_n) = pmap_run(nnx), pmap_run(fnnx)
  assert name == e_name == 'Linear'
  assert kernel.shape == (8, 2, 3)
  np.testing.assert_array_equal(kernel, e_kernel)
  np.testing.assert_array_equal(y, e_y)
  assert float(n) == float(e_n) == 1.0


def test_pmap_state_axes_and_errors():
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  y = nnx.pmap(lambda m, x: m(x), in_axes=(nnx.StateAxes({...: None}), 0))(m, jnp.ones((8, 2)))
  np.testing.assert_array_equal(y, jax.vmap(m)(jnp.ones((8, 2))))

  def grow(m, x):
    m.extra = nnx.Param(jnp.zeros(()))
    return m(x)
  with pytest.raises(ValueError, match='changed the structure'):
    nnx.pmap(grow, in_axes=(None, 0))(m, jnp.ones((8, 2)))
  with pytest.raises(NotImplementedError, match='donate_argnums'):
    nnx.pmap(lambda x: x, donate_argnums=0)


def test_pmap_signature_matches_flax():
  assert_same_signature('pmap')


# -- transform_metadata --------------------------------------------------------------------
def transform_metadata_run(lib):
  kw = {'eager_sharding': False} if lib is fnnx else {}  # flax would want a mesh otherwise

  class Stack(lib.Module):
    def __init__(self, sharding):
      self.w = lib.Param(jnp.ones((4, 3)), out_sharding=sharding, **kw)

  seen = []

  @lib.transform_metadata(in_axes=(0, None), out_axes=0, partition='layers')
  def f(m, x):
    seen.append(m.w.get_metadata()['out_sharding'])
    m.w.value = m.w.value * x
    return Stack(('model',))

  m = Stack(('layers', 'model'))
  out = f(m, 3.0)
  return (seen, m.w.get_metadata()['out_sharding'], m.w.value.tolist(),
          out.w.get_metadata()['out_sharding'])


def test_transform_metadata_matches_flax():
  ours = transform_metadata_run(nnx)
  assert ours == transform_metadata_run(fnnx)
  assert ours[0] == [('model',)] and ours[1] == ('layers', 'model') == ours[3]


def test_transform_metadata_signature_matches_flax():
  assert_same_signature('transform_metadata')


# -- tracers -------------------------------------------------------------------------------
def test_tracers_module_matches_flax():
  from flax.nnx import tracers as ftracers
  assert nnx.tracers.current_jax_trace() == ftracers.current_jax_trace()
  for lib in (nnx.tracers, ftracers):
    outside = lib.TraceState()
    closed, passed = jax.jit(lambda s, o=outside: (o.is_valid(), s.is_valid()))(outside)
    assert outside.is_valid() and not closed and passed  # rebuilt inside: the inner trace
    assert outside == lib.TraceState() and jax.tree.leaves(outside) == []


# -- tree mode / no graph updates ----------------------------------------------------------
def test_tree_mode_refuses_shared_references_and_no_updates_keeps_new_attributes_inside():
  for lib, message in ((nnx, 'shared reference'), (fnnx, 'Duplicate')):
    m = lib.Linear(3, 2, rngs=lib.Rngs(0))
    with pytest.raises(ValueError, match=message):
      lib.vjp(lambda a, b: loss(a, x23()) + loss(b, x23()), m, m, graph=False)

  def grow(lib):
    def f(m, x):
      m.extra = lib.BatchStat(jnp.zeros(()))
      m.calls[...] += 1.0
      return m(x)
    m = Counted.make(lib)
    lib.checkify(f, graph_updates=False)(m, x23())
    return hasattr(m, 'extra'), float(m.calls[...])
  assert grow(nnx) == grow(fnnx) == (False, 2.0)  # f and the call each count once
