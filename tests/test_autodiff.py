"""Tests for ``bridge.grad`` / ``bridge.value_and_grad``: argnums, has_aux, DiffState,
gradients as State, exact agreement with ``jax.grad`` and ``flax.nnx.grad``."""

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bridge as nnx


def x34():
  return jnp.arange(12.0).reshape(4, 3) / 7.0 - 0.5


def y42():
  return jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)


def pure_loss(kernel, bias, x, y):
  return jnp.mean((x @ kernel + bias - y) ** 2)


def linear_loss(m, x, y):
  return jnp.mean((m(x) - y) ** 2)


def test_grad_equals_jax_grad_on_pure_function():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x, y = x34(), y42()
  grads = nnx.grad(linear_loss)(model, x, y)
  assert isinstance(grads, nnx.State)
  assert sorted(grads.keys()) == ['bias', 'kernel']
  assert type(grads['kernel']) is nnx.Param and type(grads['bias']) is nnx.Param
  gk, gb = jax.grad(pure_loss, argnums=(0, 1))(model.kernel.value, model.bias.value, x, y)
  np.testing.assert_array_equal(grads['kernel'].value, gk)
  np.testing.assert_array_equal(grads['bias'].value, gb)


def test_grad_equals_flax_nnx_grad():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  reference = fnnx.Linear(3, 2, rngs=fnnx.Rngs(0))
  np.testing.assert_array_equal(model.kernel.value, reference.kernel.value)
  x, y = x34(), y42()
  grads = nnx.grad(linear_loss)(model, x, y)
  expected = fnnx.grad(linear_loss)(reference, x, y)
  np.testing.assert_array_equal(grads['kernel'].value, expected['kernel'].value)
  np.testing.assert_array_equal(grads['bias'].value, expected['bias'].value)


def test_value_and_grad():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x, y = x34(), y42()
  loss, grads = nnx.value_and_grad(linear_loss)(model, x, y)
  exp_loss, (gk, gb) = jax.value_and_grad(pure_loss, argnums=(0, 1))(
    model.kernel.value, model.bias.value, x, y)
  assert float(loss) == float(exp_loss)
  np.testing.assert_array_equal(grads['kernel'].value, gk)
  np.testing.assert_array_equal(grads['bias'].value, gb)


def test_decorator_form():
  @nnx.value_and_grad(has_aux=True)
  def f(m, x):
    out = m(x)
    return out.sum(), out.shape

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  (value, shape), grads = f(model, x34())
  assert shape == (4, 2)
  np.testing.assert_array_equal(grads['bias'].value, np.full(2, 4.0, np.float32))
  np.testing.assert_array_equal(grads['kernel'].value,
                                np.tile(np.asarray(x34()).sum(0)[:, None], (1, 2)))
  assert float(value) == float(model(x34()).sum())


def test_has_aux_grad():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x, y = x34(), y42()

  def f(m, x, y):
    pred = m(x)
    return jnp.mean((pred - y) ** 2), {'pred': pred}

  grads, aux = nnx.grad(f, has_aux=True)(model, x, y)
  np.testing.assert_array_equal(aux['pred'], model(x))
  gk, _ = jax.grad(pure_loss, argnums=(0, 1))(model.kernel.value, model.bias.value, x, y)
  np.testing.assert_array_equal(grads['kernel'].value, gk)


def test_argnums_tuple_module_and_array():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x, y = x34(), y42()
  g_model, g_x = nnx.grad(linear_loss, argnums=(0, 1))(model, x, y)
  gk, gb, gx = jax.grad(pure_loss, argnums=(0, 1, 2))(model.kernel.value, model.bias.value,
                                                        x, y)
  assert isinstance(g_model, nnx.State)
  np.testing.assert_array_equal(g_model['kernel'].value, gk)
  np.testing.assert_array_equal(g_model['bias'].value, gb)
  assert isinstance(g_x, jax.Array)
  np.testing.assert_array_equal(g_x, gx)


def test_argnums_int_non_module():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x, y = x34(), y42()
  g_y = nnx.grad(linear_loss, argnums=2)(model, x, y)
  expected = jax.grad(pure_loss, argnums=3)(model.kernel.value, model.bias.value, x, y)
  np.testing.assert_array_equal(g_y, expected)


def test_non_module_pytree_argument():
  def f(params, x):
    return jnp.sum(jnp.tanh(x @ params['w']) * params['b'])

  params = {'w': jnp.ones((3, 2)) * 0.3, 'b': jnp.array([1.0, -2.0])}
  got = nnx.grad(f)(params, x34())
  expected = jax.grad(f)(params, x34())
  assert set(got) == {'w', 'b'}
  np.testing.assert_array_equal(got['w'], expected['w'])
  np.testing.assert_array_equal(got['b'], expected['b'])


def test_two_modules_argnums_tuple():
  a = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  b = nnx.Linear(2, 1, rngs=nnx.Rngs(1))
  x = x34()

  def f(a, b, x):
    return jnp.sum(b(jnp.tanh(a(x))))

  ga, gb = nnx.grad(f, argnums=(0, 1))(a, b, x)

  def pure(pa, pb, x):
    h = jnp.tanh(x @ pa['kernel'] + pa['bias'])
    return jnp.sum(h @ pb['kernel'] + pb['bias'])

  pa = {'kernel': a.kernel.value, 'bias': a.bias.value}
  pb = {'kernel': b.kernel.value, 'bias': b.bias.value}
  ea, eb = jax.grad(pure, argnums=(0, 1))(pa, pb, x)
  for got, want in ((ga, ea), (gb, eb)):
    np.testing.assert_array_equal(got['kernel'].value, want['kernel'])
    np.testing.assert_array_equal(got['bias'].value, want['bias'])


def test_only_second_argument_differentiated():
  a = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  b = nnx.Linear(2, 1, rngs=nnx.Rngs(1))

  def f(a, b, x):
    return jnp.sum(b(a(x)))

  gb = nnx.grad(f, argnums=1)(a, b, x34())
  assert sorted(gb.keys()) == ['bias', 'kernel']
  assert gb['kernel'].value.shape == (2, 1)
  h = a(x34())
  np.testing.assert_array_equal(gb['kernel'].value, h.sum(0)[:, None])


# -- DiffState: which Variables are differentiated ---------------------------------------
class Scaled(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.array([1.0, 2.0]))
    self.s = nnx.BatchStat(jnp.array([3.0, 4.0]))

  def __call__(self, x):
    return jnp.sum(x * self.w.value * self.s.value)


def test_default_filter_is_param():
  m = Scaled()
  grads = nnx.grad(lambda m, x: m(x))(m, jnp.array([1.0, 1.0]))
  assert list(grads.keys()) == ['w']
  np.testing.assert_array_equal(grads['w'].value, np.array([3.0, 4.0], np.float32))


def test_diffstate_selects_other_type():
  m = Scaled()
  grads = nnx.grad(lambda m, x: m(x), argnums=nnx.DiffState(0, nnx.BatchStat))(
    m, jnp.array([1.0, 1.0]))
  assert list(grads.keys()) == ['s']
  assert type(grads['s']) is nnx.BatchStat
  np.testing.assert_array_equal(grads['s'].value, np.array([1.0, 2.0], np.float32))


def test_diffstate_everything_and_path_filter():
  m = Scaled()
  x = jnp.array([2.0, 1.0])
  grads = nnx.grad(lambda m, x: m(x), argnums=nnx.DiffState(0, ...))(m, x)
  assert sorted(grads.keys()) == ['s', 'w']
  assert type(grads['w']) is nnx.Param and type(grads['s']) is nnx.BatchStat
  np.testing.assert_array_equal(grads['w'].value, np.array([6.0, 4.0], np.float32))
  np.testing.assert_array_equal(grads['s'].value, np.array([2.0, 2.0], np.float32))
  only_w = nnx.grad(lambda m, x: m(x), argnums=nnx.DiffState(0, nnx.PathContains('w')))(m, x)
  assert list(only_w.keys()) == ['w']


def test_diffstate_lora_subset_nested():
  class LoRAParam(nnx.Param):
    pass

  class Layer(nnx.Module):
    def __init__(self):
      self.base = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      self.a = LoRAParam(jnp.full((3, 1), 0.1))
      self.b = LoRAParam(jnp.full((1, 2), 0.2))

    def __call__(self, x):
      return self.base(x) + x @ self.a.value @ self.b.value

  m = Layer()
  x, y = x34(), y42()
  grads = nnx.grad(linear_loss, argnums=nnx.DiffState(0, LoRAParam))(m, x, y)
  assert sorted(grads.keys()) == ['a', 'b']
  assert type(grads['a']) is LoRAParam

  def pure(a, b):
    return jnp.mean((x @ m.base.kernel.value + m.base.bias.value + x @ a @ b - y) ** 2)

  ga, gb = jax.grad(pure, argnums=(0, 1))(m.a.value, m.b.value)
  np.testing.assert_array_equal(grads['a'].value, ga)
  np.testing.assert_array_equal(grads['b'].value, gb)
  # the default Param filter takes subclasses too, with their nested paths
  all_params = nnx.grad(linear_loss)(m, x, y)
  assert sorted(p for p, _ in all_params.flat_state()) == [
    ('a',), ('b',), ('base', 'bias'), ('base', 'kernel')]


def test_diffstate_filter_on_a_plain_argument_is_ignored_as_in_flax():
  f = lambda a, x: jnp.sum(a(x) * x)  # noqa: E731
  x = jnp.ones((1, 2))
  got = nnx.grad(f, argnums=nnx.DiffState(1, nnx.BatchStat))(
    nnx.Linear(2, 2, rngs=nnx.Rngs(0)), x)
  expected = fnnx.grad(f, argnums=fnnx.DiffState(1, fnnx.BatchStat))(
    fnnx.Linear(2, 2, rngs=fnnx.Rngs(0)), x)
  np.testing.assert_array_equal(got, expected)


def test_argnum_out_of_range_is_a_type_error_as_in_jax():
  with pytest.raises(TypeError, match='argnums=3 needs at least 4 positional arguments'):
    nnx.grad(lambda m: m(jnp.ones((1, 2))).sum(), argnums=3)(nnx.Linear(2, 2,
                                                                         rngs=nnx.Rngs(0)))


def test_repeated_argnum_is_an_error():
  with pytest.raises(ValueError, match='repeated'):
    nnx.grad(lambda m: m(jnp.ones((1, 2))).sum(), argnums=(0, nnx.DiffState(0, ...)))(
      nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match='repeated'):
    fnnx.grad(lambda m: m(jnp.ones((1, 2))).sum(), argnums=(0, fnnx.DiffState(0, ...)))(
      fnnx.Linear(2, 2, rngs=fnnx.Rngs(0)))


# -- Modules inside argument pytrees -------------------------------------------------------
def test_grad_over_a_tuple_holding_a_module_gives_state_and_array_grads():
  x, y = x34(), y42()
  loss = lambda p: linear_loss(p[0], p[1], y)  # noqa: E731
  g_model, g_x = nnx.grad(loss)((nnx.Linear(3, 2, rngs=nnx.Rngs(0)), x))
  e_model, e_x = fnnx.grad(loss)((fnnx.Linear(3, 2, rngs=fnnx.Rngs(0)), x))
  assert isinstance(g_model, nnx.State) and sorted(g_model.keys()) == ['bias', 'kernel']
  np.testing.assert_array_equal(g_model['kernel'].value, e_model['kernel'].value)
  np.testing.assert_array_equal(g_model['bias'].value, e_model['bias'].value)
  np.testing.assert_array_equal(g_x, e_x)


def test_value_and_grad_over_a_dict_holding_a_module_with_aux():
  x, y = x34(), y42()
  def loss(p):
    return linear_loss(p['m'], p['x'], y), p['m'](p['x'])
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  (value, aux), grads = nnx.value_and_grad(loss, has_aux=True)({'m': model, 'x': x})
  (e_value, e_aux), e_grads = fnnx.value_and_grad(loss, has_aux=True)(
    {'m': fnnx.Linear(3, 2, rngs=fnnx.Rngs(0)), 'x': x})
  np.testing.assert_array_equal(value, e_value)
  np.testing.assert_array_equal(aux, e_aux)
  assert set(grads) == {'m', 'x'} and isinstance(grads['m'], nnx.State)
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(grads['m'][name].value, e_grads['m'][name].value)
  np.testing.assert_array_equal(grads['x'], e_grads['x'])


def test_a_module_twice_in_one_pytree_gets_its_gradient_once_as_in_flax():
  x = x34()
  loss = lambda p: (p[0](x) + 2 * p[1](x)).sum()  # noqa: E731
  m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  f = fnnx.Linear(3, 2, rngs=fnnx.Rngs(0))
  first, second = nnx.grad(loss)((m, m))
  e_first, e_second = fnnx.grad(loss)((f, f))
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(first[name].value, e_first[name].value)
  assert len(second) == 0 and len(e_second) == 0


def test_diffstate_everything_includes_plain_array_attributes():
  def make(lib):
    class M(lib.Module):
      def __init__(self):
        self.w = jnp.arange(2.0)
        self.p = lib.Param(jnp.ones(2))
        self.s = lib.BatchStat(jnp.full(2, 3.0))
    return M()
  loss = lambda m: (m.w * m.p * m.s).sum()  # noqa: E731
  everything = nnx.grad(loss, argnums=nnx.DiffState(0, ...))(make(nnx))
  e_everything = fnnx.grad(loss, argnums=fnnx.DiffState(0, ...))(make(fnnx))
  assert sorted(everything.keys()) == sorted(e_everything.keys()) == ['p', 's', 'w']
  assert isinstance(everything['w'], jax.Array)
  for k in ('p', 's'):
    np.testing.assert_array_equal(everything[k].value, e_everything[k].value)
  np.testing.assert_array_equal(everything['w'], e_everything['w'])
  default = nnx.grad(loss)(make(nnx))
  assert sorted(default.keys()) == sorted(fnnx.grad(loss)(make(fnnx)).keys()) == ['p']


@pytest.mark.parametrize('mode', [dict(graph=False), dict(graph_updates=False)])
def test_tree_mode_gradient_is_a_module_of_every_array_as_in_flax(mode):
  x, y = x34(), y42()
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  g = nnx.grad(linear_loss, **mode)(model, x, y)
  e = fnnx.grad(linear_loss, **mode)(fnnx.Linear(3, 2, rngs=fnnx.Rngs(0)), x, y)
  assert type(g) is nnx.Linear and g is not model
  assert type(g.kernel) is nnx.Param
  np.testing.assert_array_equal(g.kernel.value, e.kernel.value)
  np.testing.assert_array_equal(g.bias.value, e.bias.value)
  with pytest.raises(ValueError, match='DiffState'):
    nnx.grad(linear_loss, argnums=nnx.DiffState(0, ...), **mode)
  with pytest.raises(ValueError, match='DiffState'):
    fnnx.grad(linear_loss, argnums=fnnx.DiffState(0, ...), **mode)


def test_grad_signature_matches_flax():
  import inspect
  for name in ('grad', 'value_and_grad'):
    ours = inspect.signature(getattr(nnx, name)).parameters
    theirs = inspect.signature(getattr(fnnx, name)).parameters
    assert list(ours) == list(theirs)
    assert all(ours[k].default == theirs[k].default for k in list(ours)[1:])


# -- side effects ------------------------------------------------------------------------
class MLP(nnx.Module):
  def __init__(self, lib, rngs):
    self.linear = lib.Linear(3, 4, rngs=rngs)
    self.bn = lib.BatchNorm(4, rngs=rngs)
    self.out = lib.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.bn(self.linear(x))))


class FlaxMLP(fnnx.Module):
  def __init__(self, rngs):
    self.linear = fnnx.Linear(3, 4, rngs=rngs)
    self.bn = fnnx.BatchNorm(4, rngs=rngs)
    self.out = fnnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(fnnx.relu(self.bn(self.linear(x))))


def test_batchnorm_stats_updated_inside_grad_match_flax():
  model = MLP(nnx, nnx.Rngs(0))
  reference = FlaxMLP(fnnx.Rngs(0))
  x, y = x34(), y42()
  mean_var = model.bn.mean
  loss, grads = nnx.value_and_grad(linear_loss)(model, x, y)
  exp_loss, exp_grads = fnnx.value_and_grad(linear_loss)(reference, x, y)
  assert model.bn.mean is mean_var  # updated in place
  assert not np.all(np.asarray(model.bn.mean.value) == 0)
  np.testing.assert_array_equal(model.bn.mean.value, reference.bn.mean.value)
  np.testing.assert_array_equal(model.bn.var.value, reference.bn.var.value)
  assert float(loss) == float(exp_loss)
  assert 'mean' not in grads['bn']  # BatchStats are not differentiated by default
  for path in (('linear', 'kernel'), ('linear', 'bias'), ('bn', 'scale'), ('bn', 'bias'),
               ('out', 'kernel'), ('out', 'bias')):
    got, want = grads, exp_grads
    for k in path:
      got, want = got[k], want[k]
    np.testing.assert_array_equal(got.value, want.value, err_msg=str(path))


def test_sow_and_rng_inside_grad_are_written_back():
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(2.0))
      self.rngs = nnx.Rngs(dropout=0)

    def __call__(self, x):
      noise = jax.random.uniform(self.rngs.dropout(), ())
      y = x * self.w.value + jax.lax.stop_gradient(noise) * 0.0
      self.sow(nnx.Intermediate, 'y', y)
      return y

  m = M()
  g = nnx.grad(lambda m, x: m(x))(m, jnp.array(3.0))
  assert float(g['w'].value) == 3.0
  assert int(m.rngs.dropout.count.value) == 1
  assert isinstance(m.y, nnx.Intermediate)
  assert not isinstance(m.y.value[0], jax.core.Tracer)
  assert float(m.y.value[0]) == 6.0
  assert 'y' not in g  # Intermediates are not differentiated


def test_params_unchanged_by_grad():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  kernel = np.asarray(model.kernel.value)
  kernel_var = model.kernel
  nnx.grad(linear_loss)(model, x34(), y42())
  assert model.kernel is kernel_var
  assert not isinstance(model.kernel.value, jax.core.Tracer)
  np.testing.assert_array_equal(model.kernel.value, kernel)


def test_shared_param_gradient_accumulates():
  class Tied(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array([1.0, 2.0]))
      self.v = self.w

    def __call__(self, x):
      return jnp.sum(x * self.w.value) + jnp.sum(x * x * self.v.value)

  m = Tied()
  x = jnp.array([3.0, 5.0])
  g = nnx.grad(lambda m, x: m(x))(m, x)
  assert list(g.keys()) == ['v']  # one entry, at the first path in sorted order
  leaf = next(iter(g.values()))
  np.testing.assert_array_equal(leaf.value, np.asarray(x + x * x))


def test_grad_inside_jit_equals_outside():
  model = MLP(nnx, nnx.Rngs(0))
  twin = MLP(nnx, nnx.Rngs(0))
  x, y = x34(), y42()

  @nnx.jit
  def step(m, x, y):
    return nnx.value_and_grad(linear_loss)(m, x, y)

  loss_j, grads_j = step(model, x, y)
  loss_e, grads_e = nnx.value_and_grad(linear_loss)(twin, x, y)
  assert isinstance(grads_j, nnx.State)
  # jit lets XLA fuse and reorder float32 ops; eager runs op by op.
  np.testing.assert_allclose(loss_j, loss_e, rtol=1e-6)
  np.testing.assert_allclose(grads_j['out']['kernel'].value, grads_e['out']['kernel'].value,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model.bn.mean.value, twin.bn.mean.value, rtol=1e-6, atol=1e-7)


def test_grad_under_jit_equals_flax_under_jit():
  model = MLP(nnx, nnx.Rngs(0))
  reference = FlaxMLP(fnnx.Rngs(0))
  x, y = x34(), y42()
  loss, grads = nnx.jit(lambda m, x, y: nnx.value_and_grad(linear_loss)(m, x, y))(
    model, x, y)
  exp_loss, exp_grads = fnnx.jit(lambda m, x, y: fnnx.value_and_grad(linear_loss)(m, x, y))(
    reference, x, y)
  assert float(loss) == float(exp_loss)
  np.testing.assert_array_equal(grads['linear']['kernel'].value,
                                exp_grads['linear']['kernel'].value)
  np.testing.assert_array_equal(model.bn.var.value, reference.bn.var.value)


def test_mixed_diffstate_and_int_argnums():
  m = Scaled()
  x = jnp.array([2.0, 1.0])
  g_m, g_x = nnx.grad(lambda m, x: m(x), argnums=(nnx.DiffState(0, nnx.BatchStat), 1))(m, x)
  assert list(g_m.keys()) == ['s']
  np.testing.assert_array_equal(g_m['s'].value, np.array([2.0, 2.0], np.float32))
  np.testing.assert_array_equal(g_x, np.array([3.0, 8.0], np.float32))


def test_aux_returning_the_module_gives_callers_object():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))

  def f(m, x):
    return m(x).sum(), m

  (value, aux), grads = nnx.value_and_grad(f, has_aux=True)(model, x34())
  assert aux is model
  assert not isinstance(model.kernel.value, jax.core.Tracer)
  assert float(value) == float(model(x34()).sum())
  np.testing.assert_array_equal(grads['bias'].value, np.full(2, 4.0, np.float32))


def test_module_passed_as_keyword_is_written_back_without_tracers():
  class Recorder(nnx.Module):
    def __call__(self, y):
      self.sow(nnx.Intermediate, 'y', y)
      return y

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  recorder = Recorder()

  def f(m, x, recorder):
    return recorder(m(x)).sum()

  grads = nnx.grad(f)(model, x34(), recorder=recorder)
  assert not isinstance(recorder.y.value[0], jax.core.Tracer)
  np.testing.assert_array_equal(recorder.y.value[0], model(x34()))
  np.testing.assert_array_equal(grads['bias'].value, np.full(2, 4.0, np.float32))


# -- Variables passed themselves; flax.nnx's intermediate-gradient (perturb) recipe ---------
def _perturbed_model(lib):
  class Model(lib.Module):
    def __init__(self):
      self.w = lib.Param(jnp.array([2.0, 3.0]))

    def __call__(self, x):
      h = self.perturb('h', x * self.w[...])
      self.sow(lib.Intermediate, 'h2', h ** 2)
      return (3 * h ** 2).sum()
  return Model()


def _perturb_step(lib, argnums):
  model, x = _perturbed_model(lib), jnp.array([1.0, 2.0])
  _, perturbations = lib.capture(model, lib.Perturbation)(x)

  def loss(model, perturbations, x):
    return lib.capture(model, lib.Intermediate, init=perturbations)(x)
  grads, sowed = lib.grad(loss, argnums=argnums, has_aux=True)(model, perturbations, x)
  perturb_grads = grads[1] if isinstance(grads, tuple) else grads
  return grads, lib.merge_state(perturb_grads, sowed)


def _same_state(ours, theirs):
  ours_flat, theirs_flat = nnx.to_flat_state(ours), fnnx.to_flat_state(theirs)
  assert [(p, type(v).__name__) for p, v in ours_flat] == \
    [(p, type(v).__name__) for p, v in theirs_flat]
  for (_, a), (_, b) in zip(ours_flat, theirs_flat, strict=True):
    jax.tree.map(np.testing.assert_array_equal, a.get_value(), b.get_value())  # sown: tuples


@pytest.mark.parametrize('argnums', ['diffstate', 'int', 'both'])
def test_the_perturb_recipe_gives_flaxs_intermediate_gradients(argnums):
  make = {'diffstate': lambda lib: lib.DiffState(1, lib.Perturbation),
          'int': lambda lib: 1, 'both': lambda lib: (0, 1)}[argnums]
  ours_grads, ours = _perturb_step(nnx, make(nnx))
  theirs_grads, theirs = _perturb_step(fnnx, make(fnnx))
  _same_state(ours, theirs)  # Perturbation gradients and sown Intermediates
  assert sorted(p for p, _ in nnx.to_flat_state(ours)) == [('h',), ('h2',)]
  if argnums == 'both':
    _same_state(ours_grads[0], theirs_grads[0])  # the model's Param gradient


@pytest.mark.parametrize('wrap', ['alone', 'dict', 'State'])
@pytest.mark.parametrize('filter_name', ['int', 'Param', 'Perturbation'])
def test_a_variable_argument_is_differentiated_whatever_the_filter(wrap, filter_name):
  def grads(lib):
    v = lib.Perturbation(jnp.array([1.0, 2.0]))
    arg = {'alone': v, 'dict': {'a': v}, 'State': lib.State({'a': v})}[wrap]
    argnums = 0 if filter_name == 'int' else lib.DiffState(0, getattr(lib, filter_name))
    return lib.grad(lambda a: (jax.tree.leaves(a)[0] ** 3).sum(), argnums=argnums)(arg)
  ours, theirs = grads(nnx), grads(fnnx)
  assert type(ours).__name__ == type(theirs).__name__
  ours_vars = jax.tree.leaves(ours, is_leaf=lambda x: isinstance(x, nnx.Variable))
  theirs_vars = jax.tree.leaves(theirs, is_leaf=lambda x: isinstance(x, fnnx.Variable))
  assert [type(v).__name__ for v in ours_vars] == ['Perturbation'] * len(theirs_vars)
  np.testing.assert_array_equal(ours_vars[0][...], theirs_vars[0][...])
