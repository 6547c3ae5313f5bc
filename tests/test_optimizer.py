"""Tests for ``bridge.Optimizer``: optax state as Variables, exact agreement with plain
optax and with flax.nnx.Optimizer, ``wrt`` filters, use inside ``bridge.jit``."""

import inspect

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bridge as nnx


def x34():
  return jnp.arange(12.0).reshape(4, 3) / 7.0 - 0.5


def y42():
  return jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)


def linear_loss(m, x, y):
  return jnp.mean((m(x) - y) ** 2)


def pure_loss(params, x, y):
  return jnp.mean((x @ params['kernel'] + params['bias'] - y) ** 2)


TXS = {
  'sgd': lambda: optax.sgd(0.1),
  'sgd_momentum': lambda: optax.sgd(0.05, momentum=0.9),
  'adam': lambda: optax.adam(1e-2),
  'clip_adam': lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
}


@pytest.mark.parametrize('name', sorted(TXS))
def test_matches_plain_optax(name):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, TXS[name](), wrt=nnx.Param)
  tx = TXS[name]()
  params = {'kernel': model.kernel.value, 'bias': model.bias.value}
  opt_state = tx.init(params)
  x, y = x34(), y42()
  for _ in range(3):
    grads = nnx.grad(linear_loss)(model, x, y)
    optimizer.update(model, grads)
    g = jax.grad(pure_loss)(params, x, y)
    updates, opt_state = tx.update(g, opt_state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(model.kernel.value, params['kernel'])
    np.testing.assert_array_equal(model.bias.value, params['bias'])
  assert int(optimizer.step.value) == 3
  # the optax state itself, leaf by leaf
  ours = jax.tree.leaves(jax.tree.map(lambda v: v.value, optimizer.opt_state,
                                      is_leaf=lambda v: isinstance(v, nnx.Variable)))
  theirs = jax.tree.leaves(opt_state)
  assert len(ours) == len(theirs)
  for a, b in zip(ours, theirs, strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('name', sorted(TXS))
def test_matches_plain_optax_inside_jit(name):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, TXS[name](), wrt=nnx.Param)
  tx = TXS[name]()
  params = {'kernel': model.kernel.value, 'bias': model.bias.value}
  opt_state = tx.init(params)
  x, y = x34(), y42()

  @nnx.jit
  def step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(linear_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss

  @jax.jit
  def pure_step(params, opt_state, x, y):
    loss, g = jax.value_and_grad(pure_loss)(params, x, y)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for _ in range(3):
    loss = step(model, optimizer, x, y)
    params, opt_state, exp_loss = pure_step(params, opt_state, x, y)
    assert float(loss) == float(exp_loss)
    np.testing.assert_array_equal(model.kernel.value, params['kernel'])
    np.testing.assert_array_equal(model.bias.value, params['bias'])
  assert int(optimizer.step.value) == 3
  assert not isinstance(optimizer.step.value, jax.core.Tracer)


def test_state_is_kept_as_variables():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  assert isinstance(optimizer.step, nnx.OptState)
  assert optimizer.step.value.dtype == jnp.uint32 and int(optimizer.step.value) == 0
  leaves = jax.tree.leaves(optimizer.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
  # as in flax.nnx: statistics mirroring a parameter are OptVariables, the rest OptArrays
  ref = fnnx.Optimizer(fnnx.Linear(3, 2, rngs=fnnx.Rngs(0)), optax.adam(1e-3), wrt=fnnx.Param)
  ref_leaves = jax.tree.leaves(ref.opt_state, is_leaf=lambda v: isinstance(v, fnnx.Variable))
  assert [type(v).__name__ for v in leaves] == [type(v).__name__ for v in ref_leaves]
  assert isinstance(optimizer.opt_state[0].count, nnx.OptArray)
  assert isinstance(optimizer.opt_state[0].mu['kernel'], nnx.OptVariable)
  assert issubclass(nnx.OptArray, nnx.OptState)
  # the optimizer's state is visible to the graph API as OptState
  opt_state = nnx.state(optimizer, nnx.OptState)
  n_leaves = len(list(opt_state.flat_state()))
  assert n_leaves == len(leaves) + 1  # + step
  assert len(list(nnx.state(optimizer, nnx.Param).flat_state())) == 0
  # adam's moments mirror the parameters' shapes
  mu = optimizer.opt_state[0].mu
  assert mu['kernel'].value.shape == (3, 2) and mu['bias'].value.shape == (2,)


def test_update_returns_updates_and_counts_steps():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
  grads = nnx.grad(linear_loss)(model, x34(), y42())
  bias0 = np.asarray(model.bias.value)
  updates = optimizer.update(model, grads)
  np.testing.assert_array_equal(updates['bias'], -0.5 * np.asarray(grads['bias'].value))
  np.testing.assert_array_equal(model.bias.value, bias0 + np.asarray(updates['bias']))
  optimizer.update(model, grads)
  assert int(optimizer.step.value) == 2


def test_pure_dict_grads_accepted():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
  kernel0 = np.asarray(model.kernel.value)
  optimizer.update(model, {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)})
  np.testing.assert_array_equal(model.kernel.value, kernel0 - 1.0)


class LoRAParam(nnx.Param):
  pass


class LoRALinear(nnx.Module):
  def __init__(self, rngs):
    self.base = nnx.Linear(3, 2, rngs=rngs)
    self.a = LoRAParam(jnp.full((3, 1), 0.1))
    self.b = LoRAParam(jnp.full((1, 2), 0.2))

  def __call__(self, x):
    return self.base(x) + x @ self.a.value @ self.b.value


@pytest.mark.parametrize('grad_filter', [nnx.Param, LoRAParam])
def test_wrt_lora_subset(grad_filter):
  model = LoRALinear(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=LoRAParam)
  kernel0 = np.asarray(model.base.kernel.value)
  bias0 = np.asarray(model.base.bias.value)
  x, y = x34(), y42()
  tx = optax.adam(1e-2)
  lora = {'a': model.a.value, 'b': model.b.value}
  opt_state = tx.init(lora)

  def pure(lora):
    return jnp.mean((x @ kernel0 + bias0 + x @ lora['a'] @ lora['b'] - y) ** 2)

  for _ in range(3):
    # grads may hold more than wrt (all Params): the optimizer uses its subset
    grads = nnx.grad(linear_loss, argnums=nnx.DiffState(0, grad_filter))(model, x, y)
    optimizer.update(model, grads)
    updates, opt_state = tx.update(jax.grad(pure)(lora), opt_state, lora)
    lora = optax.apply_updates(lora, updates)
  np.testing.assert_array_equal(model.a.value, lora['a'])
  np.testing.assert_array_equal(model.b.value, lora['b'])
  np.testing.assert_array_equal(model.base.kernel.value, kernel0)  # untouched
  np.testing.assert_array_equal(model.base.bias.value, bias0)
  assert type(model.a) is LoRAParam
  mu = optimizer.opt_state[0].mu
  assert set(mu) == {'a', 'b'}


def test_wrt_lora_inside_jit():
  model = LoRALinear(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=LoRAParam)
  kernel0 = np.asarray(model.base.kernel.value)
  a0 = np.asarray(model.a.value)

  @nnx.jit
  def step(model, optimizer, x, y):
    grads = nnx.grad(linear_loss, argnums=nnx.DiffState(0, LoRAParam))(model, x, y)
    optimizer.update(model, grads)

  step(model, optimizer, x34(), y42())
  np.testing.assert_array_equal(model.base.kernel.value, kernel0)
  assert not np.array_equal(model.a.value, a0)
  assert int(optimizer.step.value) == 1


def test_mismatched_grads_give_clear_error():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  grads = nnx.grad(linear_loss)(model, x34(), y42())
  del grads['bias']
  with pytest.raises(ValueError, match=r'do not match.*wrt=.*bias'):
    optimizer.update(model, grads)
  other = nnx.Linear(3, 5, rngs=nnx.Rngs(0))
  other_grads = nnx.grad(lambda m: m(x34()).sum())(other)
  with pytest.raises(ValueError):
    optimizer.update(model, {'kernel': other_grads['kernel'].value})
  assert int(optimizer.step.value) == 0  # nothing applied


def test_grads_of_wrong_shape_give_clear_error():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
  other = nnx.Linear(3, 5, rngs=nnx.Rngs(0))
  grads = nnx.grad(lambda m: m(x34()).sum())(other)  # same paths, other shapes
  with pytest.raises(ValueError, match=r"'bias' has shape \(5,\).*shape \(2,\)"):
    optimizer.update(model, grads)
  assert int(optimizer.step.value) == 0


# -- against flax.nnx.Optimizer ----------------------------------------------------------
@pytest.mark.parametrize('name', ['sgd', 'adam', 'clip_adam'])
def test_matches_flax_nnx_optimizer(name):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  reference = fnnx.Linear(3, 2, rngs=fnnx.Rngs(0))
  optimizer = nnx.Optimizer(model, TXS[name](), wrt=nnx.Param)
  ref_optimizer = fnnx.Optimizer(reference, TXS[name](), wrt=fnnx.Param)
  x, y = x34(), y42()
  for _ in range(3):
    optimizer.update(model, nnx.grad(linear_loss)(model, x, y))
    ref_optimizer.update(reference, fnnx.grad(linear_loss)(reference, x, y))
    np.testing.assert_array_equal(model.kernel.value, reference.kernel.value)
    np.testing.assert_array_equal(model.bias.value, reference.bias.value)
  assert int(optimizer.step.value) == int(ref_optimizer.step.value) == 3


# -- the benchmark's train step, side by side with flax.nnx ------------------------------
def _mlp(lib, depth, width):
  class Block(lib.Module):
    def __init__(self, rngs):
      self.linear = lib.Linear(width, width, rngs=rngs)
      self.bn = lib.BatchNorm(width, momentum=0.99, rngs=rngs)

    def __call__(self, h):
      return lib.relu(self.bn(self.linear(h)))

  class MLP(lib.Module):
    def __init__(self, rngs):
      self.blocks = lib.List([Block(rngs) for _ in range(depth)])

    def __call__(self, h):
      for block in self.blocks:
        h = block(h)
      return h

  return MLP(lib.Rngs(0))


def _train(lib, tx, x, y, steps=3, depth=3, width=8):
  model = _mlp(lib, depth, width)
  optimizer = lib.Optimizer(model, tx, wrt=lib.Param)

  @lib.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)
    loss, grads = lib.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, x, y)) for _ in range(steps)]
  return model, optimizer, losses


@pytest.mark.parametrize('tx', [lambda: optax.sgd(0.1), lambda: optax.adam(1e-2)],
                         ids=['sgd', 'adam'])
def test_train_step_matches_flax_nnx(tx):
  x = jax.random.normal(jax.random.key(1), (4, 8))
  y = jax.random.normal(jax.random.key(2), (4, 8))
  model, optimizer, losses = _train(nnx, tx(), x, y)
  ref, ref_optimizer, ref_losses = _train(fnnx, tx(), x, y)
  assert losses == ref_losses
  assert losses[-1] < losses[0]
  for i in range(3):
    ours, theirs = model.blocks[i], ref.blocks[i]
    for name in ('kernel', 'bias'):
      np.testing.assert_array_equal(getattr(ours.linear, name).value,
                                    getattr(theirs.linear, name).value)
    for name in ('scale', 'bias', 'mean', 'var'):
      np.testing.assert_array_equal(getattr(ours.bn, name).value,
                                    getattr(theirs.bn, name).value)
  assert not np.all(np.asarray(model.blocks[0].bn.mean.value) == 0)
  assert int(optimizer.step.value) == int(ref_optimizer.step.value) == 3


def test_train_step_with_donation_matches_flax_nnx():
  x = jax.random.normal(jax.random.key(1), (4, 8))
  y = jax.random.normal(jax.random.key(2), (4, 8))
  results = []
  for lib in (nnx, fnnx):
    model = _mlp(lib, 2, 8)
    optimizer = lib.Optimizer(model, optax.adam(1e-2), wrt=lib.Param)

    @lib.jit(donate_argnums=(0, 1))
    def step(model, optimizer, x, y, lib=lib):
      loss, grads = lib.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
      optimizer.update(model, grads)
      return loss

    kernel_before = model.blocks[0].linear.kernel.value
    losses = [float(step(model, optimizer, x, y)) for _ in range(3)]
    assert kernel_before.is_deleted()  # donated
    results.append((losses, np.asarray(model.blocks[1].linear.kernel.value),
                    np.asarray(model.blocks[1].bn.var.value)))
  (losses, kernel, var), (ref_losses, ref_kernel, ref_var) = results
  assert losses == ref_losses
  np.testing.assert_array_equal(kernel, ref_kernel)
  np.testing.assert_array_equal(var, ref_var)


# -- optax state as State: partition, multi_transform, lbfgs (as in flax.nnx) -------------
def _labels(params):
  """'frozen' for the bias, 'trained' for the kernel: a State like the params."""
  return jax.tree.map_with_path(lambda p, _: 'frozen' if p[0].key == 'bias' else 'trained',
                                params)


@pytest.mark.parametrize('make_tx', [
  lambda: optax.multi_transform({'trained': optax.adam(1e-2), 'frozen': optax.set_to_zero()},
                                _labels),
  lambda: optax.partition({'trained': optax.adam(1e-2), 'frozen': optax.set_to_zero()},
                          _labels),
], ids=['multi_transform', 'partition'])
def test_labelled_transforms_see_a_state_and_match_flax(make_tx):
  x, y = x34(), y42()
  results = []
  for lib in (nnx, fnnx):
    model = lib.Linear(3, 2, rngs=lib.Rngs(0))
    optimizer = lib.Optimizer(model, make_tx(), wrt=lib.Param)
    bias0 = np.asarray(model.bias[...])
    for _ in range(2):
      optimizer.update(model, lib.grad(linear_loss)(model, x, y))
    np.testing.assert_array_equal(model.bias[...], bias0)  # the 'frozen' label held
    results.append(model)
  np.testing.assert_array_equal(results[0].kernel[...], results[1].kernel[...])
  assert not np.array_equal(results[0].kernel[...], nnx.Linear(3, 2, rngs=nnx.Rngs(0)).kernel[...])


def test_lbfgs_gets_value_grad_and_value_fn_and_matches_flax():
  x, y = x34(), y42()
  runs = []
  for lib in (nnx, fnnx):
    model = lib.Linear(3, 2, rngs=lib.Rngs(0))
    optimizer = lib.Optimizer(model, optax.lbfgs(), wrt=lib.Param)
    graphdef, _ = lib.split(model)

    def value_fn(params, lib=lib, graphdef=graphdef):
      return linear_loss(lib.merge(graphdef, params), x, y)

    @lib.jit
    def step(model, optimizer, lib=lib, value_fn=value_fn):
      value, grads = lib.value_and_grad(linear_loss)(model, x, y)
      optimizer.update(model, grads, grad=grads, value=value, value_fn=value_fn)
      return value

    runs.append(([float(step(model, optimizer)) for _ in range(3)], model))
  (losses, model), (ref_losses, ref) = runs
  assert losses == ref_losses and losses[-1] < losses[0] / 4
  np.testing.assert_array_equal(model.kernel[...], ref.kernel[...])


# -- parameter metadata (sharding) kept in the optimizer state ----------------------------
class Sharded:
  """A model whose Params carry out_sharding (built per library)."""

  @staticmethod
  def make(lib):
    class Model(lib.Module):
      def __init__(self, rngs):
        init = lib.with_partitioning(lib.initializers.lecun_normal(), ('a', 'b'))
        self.w = lib.Param(init(rngs.params(), (4, 8)))
        self.b = lib.Param(jnp.zeros(8), optimizer_sharding=('b',))

      def __call__(self, x):
        return x @ self.w + self.b
    return Model(lib.Rngs(0))


def test_moments_keep_the_params_partition_spec_like_flax():
  mesh = jax.make_mesh((2, 4), ('a', 'b'))
  specs = []
  with jax.set_mesh(mesh):
    for lib in (nnx, fnnx):
      model = Sharded.make(lib)
      optimizer = lib.Optimizer(model, optax.adam(1e-2), wrt=lib.Param)
      spec = lib.get_partition_spec(lib.state(optimizer))
      specs.append(spec)
      mu = spec['opt_state'][0]['mu']
      assert mu['w'].get_value() == lib.get_partition_spec(lib.state(model))['w'].get_value()
      assert mu['w'].get_value() == jax.P('a', 'b')
      # optimizer_sharding is the moments' out_sharding
      assert mu['b'].get_value() == jax.P('b')
      assert type(optimizer.opt_state[0].mu['w']).__name__ == 'OptVariable'
  ours, theirs = (jax.tree.leaves(s, is_leaf=lambda v: isinstance(v, jax.P)) for s in specs)
  assert ours == theirs


def test_model_and_optimizer_and_missing_arguments_like_flax():
  x, y = x34(), y42()
  models = []
  for lib in (nnx, fnnx):
    state = lib.ModelAndOptimizer(lib.Linear(3, 2, rngs=lib.Rngs(0)), optax.adam(1e-2))
    state.update(lib.grad(linear_loss)(state.model, x, y))
    assert int(state.step[...]) == 1
    models.append(state.model)
    optimizer = lib.Optimizer(state.model, optax.sgd(0.1), wrt=lib.Param)
    with pytest.raises(AttributeError, match='ModelAndOptimizer'):
      _ = optimizer.model
    with pytest.raises(TypeError, match='wrt'):
      lib.Optimizer(state.model, optax.sgd(0.1))
  np.testing.assert_array_equal(models[0].kernel[...], models[1].kernel[...])
  for name in ('Optimizer', 'ModelAndOptimizer'):
    for method in ('__init__', 'update'):
      ours = inspect.signature(getattr(getattr(nnx, name), method))
      theirs = inspect.signature(getattr(getattr(fnnx, name), method))
      assert _described(ours) == _described(theirs), (name, method)


def _described(signature):
  """Names, kinds and defaults (a class default by its name: ours is bridge's Param)."""
  return [(p.name, p.kind, getattr(p.default, '__name__', p.default))
          for p in signature.parameters.values()]


def tree_mode_train_step(lib, x):
  @jax.jit
  def step(model, opt):
    grads = lib.grad(lambda m: (m(x) ** 2).mean(), graph=False)(model)
    assert isinstance(grads, lib.Linear)  # tree mode: a Module of gradients
    opt.update(model, grads)
    return model, opt
  return step


def test_update_takes_the_module_of_gradients_tree_mode_grad_returns_as_flax_nnx():
  x = jnp.linspace(0.0, 1.0, 8).reshape(4, 2)
  results = []
  for lib in (fnnx, nnx):
    model = lib.Linear(2, 1, rngs=lib.Rngs(0))
    opt = lib.Optimizer(model, optax.sgd(0.1), wrt=lib.Param)
    model, opt = tree_mode_train_step(lib, x)(model, opt)
    results.append(model.kernel[...])
  np.testing.assert_array_equal(results[1], results[0])
