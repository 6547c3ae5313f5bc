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


def test_diffstate_on_non_module_is_an_error():
  with pytest.raises(ValueError, match='not a Module'):
    nnx.grad(lambda a, x: jnp.sum(x), argnums=nnx.DiffState(1, nnx.BatchStat))(
      nnx.Linear(2, 2, rngs=nnx.Rngs(0)), jnp.ones(2))


def test_argnum_out_of_range_is_an_error():
  with pytest.raises(ValueError, match='out of range'):
    nnx.grad(lambda m: m(jnp.ones((1, 2))).sum(), argnums=3)(nnx.Linear(2, 2,
                                                                         rngs=nnx.Rngs(0)))


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
