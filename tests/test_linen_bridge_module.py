"""``bridge.bridge`` (flax.nnx.bridge): Linen-style bridge Modules side by side with
flax.nnx.bridge 0.12.8 -- same variables from the same seed, same outputs, same errors."""

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx as fnnx

import bridge as nnx

LIBS = [pytest.param(fnnx, id='flax'), pytest.param(nnx, id='bridge')]


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def both(build):
  """``build(lib)`` for flax.nnx and bridge."""
  return build(fnnx), build(nnx)


def dense(lib):
  class Dense(lib.bridge.Module):
    features: int
    use_bias: bool = True

    @lib.bridge.compact
    def __call__(self, x):
      w = self.param('w', lib.initializers.lecun_normal(), (x.shape[-1], self.features))
      y = x @ w
      if self.use_bias:
        y = y + self.param('b', nn.initializers.normal(), (self.features,))
      return y
  return Dense


def mlp(lib):
  Dense = dense(lib)

  class MLP(lib.bridge.Module):
    width: int = 4

    @lib.bridge.compact
    def __call__(self, x):
      self.out = Dense(2)  # named Dense_0 (INIT_PARENT), also reachable as `out`
      count = self.variable('counts', 'n', jnp.zeros, (), jnp.int32)
      count.value += 1
      h = jax.nn.relu(Dense(self.width, name='hidden')(x))
      return self.out(h) + Dense(2, use_bias=False)(h)
  return MLP


def test_compact_init_and_apply_match_flax():
  x = jax.random.normal(jax.random.key(1), (3, 5))
  (flax_y, flax_vars), (y, variables) = both(lambda lib: mlp(lib)().init_with_output(0, x))
  assert_trees_equal(variables, flax_vars)
  np.testing.assert_array_equal(y, flax_y)
  assert sorted(variables['params']) == ['Dense_0', 'Dense_1', 'hidden']
  (flax_y, flax_updates), (y, updates) = both(
    lambda lib: mlp(lib)().apply(flax_vars, 2 * x, mutable=True))
  np.testing.assert_array_equal(y, flax_y)
  assert_trees_equal(updates, flax_updates)
  assert int(updates['counts']['n']) == 2
  flax_y, y = both(lambda lib: mlp(lib)().apply(flax_vars, x))  # mutable=False: output only
  np.testing.assert_array_equal(y, flax_y)


def test_apply_leaves_the_module_unbound_and_empty():
  model = mlp(nnx)()
  variables = model.init(0, jnp.ones((1, 5)))
  model.apply(variables, jnp.ones((1, 5)))
  assert model.scope is None and not hasattr(model, 'out') and model.variables == {}


def test_jit_grad_train_step_matches_flax():
  x, target = jnp.ones((4, 5)), jnp.zeros((4, 2))

  def train(lib):
    model = mlp(lib)()
    variables = model.init(jax.random.key(3), x)

    @jax.jit
    def step(params):
      def loss(params):
        return jnp.mean((model.apply({**variables, 'params': params}, x) - target) ** 2)
      return jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss)(params))

    return step(step(variables['params']))

  flax_params, params = both(train)
  assert_trees_equal(params, flax_params)


def setup_model(lib):
  Dense = dense(lib)

  class Bottom(lib.bridge.Module):
    def setup(self):
      self.layer = Dense(4)

    def __call__(self, x):
      return self.layer(x)

  class Top(lib.bridge.Module):
    def setup(self):
      self.zzz = Bottom()
      self.set_attr_priority('zzz', lib.bridge.AttrPriority.HIGH)
      self.aaa = self.zzz  # two more paths to the same submodules
      self.dense = self.aaa.layer
      self.layers = [Dense(3, name=f'layer_{i}') for i in range(2)]

    def __call__(self, x):
      x = self.aaa(x)
      for layer in self.layers:
        x = layer(x)
      return x
  return Top


def test_setup_shared_modules_take_the_high_priority_path():
  x = jnp.ones((2, 5))
  (flax_y, flax_vars), (y, variables) = both(
    lambda lib: setup_model(lib)().init_with_output(jax.random.key(0), x))
  assert sorted(variables['params']) == ['layer_0', 'layer_1', 'zzz']
  assert_trees_equal(variables, flax_vars)
  np.testing.assert_array_equal(y, flax_y)
  flax_y, y = both(lambda lib: setup_model(lib)().apply(flax_vars, x + 1))
  np.testing.assert_array_equal(y, flax_y)


def test_module_stack_and_context():
  seen = []

  class Foo(nnx.bridge.Module):
    def setup(self):
      seen.append(('setup', nnx.bridge.current_module() is self,
                   nnx.bridge.current_context().in_compact))

    @nnx.bridge.compact
    def __call__(self):
      seen.append(('call', nnx.bridge.current_module() is self,
                   nnx.bridge.current_context().in_compact))

  Foo().apply({})
  assert seen == [('setup', True, False), ('call', True, True)]
  assert nnx.bridge.current_context() is None and nnx.bridge.current_module() is None


@pytest.mark.parametrize('lib', LIBS)
def test_name_and_parent_keywords(lib):
  class Foo(lib.bridge.Module):
    name: str

  class Leaf(lib.bridge.Module):
    pass

  class Bar(lib.bridge.Module):
    @lib.bridge.compact
    def __call__(self):
      f = Foo(name='f')
      assert f.name == 'f' and self.f is f  # `name` is a field here: kept and attached
      return Leaf().scope, Leaf(parent=None).scope, self.Leaf_0

  scope, detached, leaf = Bar().apply({}, rngs=1)
  assert detached is None and leaf.scope is None  # unbound again after apply
  assert scope.rngs.default.key.value == jax.random.key(1)
  assert int(scope.rngs.default.count.value) == 0


@pytest.mark.parametrize('lib', LIBS)
def test_errors_keep_flax_types(lib):
  Dense = dense(lib)

  class Parented(lib.bridge.Module):
    @lib.bridge.compact
    def __call__(self):
      Dense(2, parent=self)

  class BadName(lib.bridge.Module):
    @lib.bridge.compact
    def __call__(self):
      Dense(2, name=3)

  class Preset(lib.bridge.Module):
    def setup(self):
      self.w = jnp.ones((3, 3))

    def __call__(self, x):
      return x @ self.param('w', nn.initializers.ones, (x.shape[-1], 2))

  with pytest.raises(ValueError, match='parent'):
    Parented().init(0)
  with pytest.raises(ValueError, match="'name' must be a 'str'"):
    BadName().init(0)
  with pytest.raises(ValueError, match='setup|compact'):
    Dense(2)(jnp.ones((1, 2)))  # unbound: no scope to draw parameters from
  with pytest.raises(flax.errors.ScopeParamShapeError):
    Preset().init(0, jnp.ones((1, 3)))
  with pytest.raises(flax.errors.ApplyModuleInvalidMethodError):
    Dense(2).apply({}, method=lambda: None)
  with pytest.raises(AssertionError):
    lib.bridge.nnx_in_bridge_mdl(lambda rngs: lib.Linear(2, 2, rngs=rngs))


def test_metadata_becomes_linen_partitioned_boxes():
  def build(lib):
    class Linear(lib.bridge.Module):
      @lib.bridge.compact
      def __call__(self, x):
        init = lib.bridge.with_partitioning(lib.initializers.uniform(), ('in', 'out'))
        return x @ self.param('w', init, (x.shape[-1], 3))
    return Linear().init(0, jnp.ones((2, 4)))

  with fnnx.use_eager_sharding(False):  # flax would need a mesh to place the weight
    flax_vars = build(fnnx)
  variables = build(nnx)
  w = variables['params']['w']
  assert isinstance(w, nn.Partitioned) and w.names == ('in', 'out')
  np.testing.assert_array_equal(w.value, flax_vars['params']['w'].value)
  assert nn.get_partition_spec(variables) == nn.get_partition_spec(flax_vars)


class NNXLayerFactory:
  """An NNX layer (Linear, Dropout, a counting Intermediate) for either library."""

  def __init__(self, lib):
    class NNXLayer(lib.Module):
      def __init__(self, dim, rate, rngs):
        self.linear = lib.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.dropout = lib.Dropout(rate, rngs=rngs)
        self.count = lib.Intermediate(jnp.array([0.]))

      def __call__(self, x):
        if not lib.bridge.current_module().is_initializing():
          self.count.value = self.count.value + 1
        return self.dropout(self.linear(x))
    self.cls = NNXLayer


def nnx_in_bridge(lib, style):
  layer = NNXLayerFactory(lib).cls

  class Compact(lib.bridge.Module):
    @lib.bridge.compact
    def __call__(self, x):
      x = lib.bridge.nnx_in_bridge_mdl(lambda r: layer(8, 0.3, rngs=r))(x)
      return lib.bridge.nnx_in_bridge_mdl(lambda r: layer(8, 0.3, rngs=r), name='another')(x)

  class Setup(lib.bridge.Module):
    def setup(self):
      self.layer = lib.bridge.nnx_in_bridge_mdl(lambda r: layer(8, 0.3, rngs=r))

    def __call__(self, x):
      return self.layer(x)
  return (Compact, Setup)[style]()


@pytest.mark.parametrize('style', [0, 1], ids=['compact', 'setup'])
def test_nnx_in_bridge_mdl_matches_flax(style):
  x = jax.random.normal(jax.random.key(0), (4, 8))
  flax_vars, variables = both(lambda lib: nnx_in_bridge(lib, style).init(jax.random.key(1), x))
  assert sorted(variables['params']) == [['NNXLayer_0', 'another'], ['layer']][style]
  assert_trees_equal(variables, flax_vars)
  k1, k2 = jax.random.split(jax.random.key(0))
  rngs = {'params': k1, 'dropout': k2}
  (flax_y, flax_updates), (y, updates) = both(
    lambda lib: nnx_in_bridge(lib, style).apply(flax_vars, x, rngs=rngs, mutable=True))
  np.testing.assert_array_equal(y, flax_y)  # same dropout keys
  assert_trees_equal(updates, flax_updates)
  first = ['NNXLayer_0', 'layer'][style]
  assert float(updates['intermediates'][first]['count'][0]) == 1


def methods_model(lib):
  class Model(lib.bridge.Module):
    def setup(self):
      self.dense = dense(lib)(3)

    def encode(self, x):
      return self.dense(x) + jax.random.normal(self.make_rng('noise'), (3,))

    def __call__(self, x):
      return self.encode(x) * (2.0 if self.is_initializing() else 1.0)
  return Model()


def test_apply_methods_make_rng_and_is_initializing_match_flax():
  x = jnp.ones((2, 4))
  rngs = {'params': jax.random.key(0), 'noise': jax.random.key(1)}
  (flax_y, flax_vars), (y, variables) = both(
    lambda lib: methods_model(lib).init_with_output(rngs, x))
  np.testing.assert_array_equal(y, flax_y)  # doubled: is_initializing() during init
  assert_trees_equal(variables, flax_vars)
  for method in ('encode', lambda m, x: m.encode(x)):
    flax_y, y = both(lambda lib, method=method: methods_model(lib).apply(
      flax_vars, x, rngs={'noise': jax.random.key(2)}, method=method))
    np.testing.assert_array_equal(y, flax_y)
  with pytest.raises(ValueError, match="can't use RNGs on unbound"):
    methods_model(nnx).make_rng('noise')


def linen_in_bridge(lib):
  class LinenLayer(nn.Module):
    dim: int

    def setup(self):
      self.linear = nn.Dense(self.dim, use_bias=False)
      self.dropout = nn.Dropout(0.3, deterministic=False)

    def __call__(self, x):
      if not self.is_initializing():
        self.sow('intermediates', 'count', 1, init_fn=lambda: 0, reduce_fn=lambda a, b: a + b)
      return self.dropout(self.linear(x))

  class Compact(lib.bridge.Module):
    @lib.bridge.compact
    def __call__(self, x):
      x = lib.bridge.linen_in_bridge_mdl(LinenLayer(8))(x)
      return lib.bridge.linen_in_bridge_mdl(LinenLayer(8), name='another')(x)

  class Setup(lib.bridge.Module):
    def setup(self):
      self.layer = lib.bridge.linen_in_bridge_mdl(LinenLayer(8))

    def __call__(self, x):
      return self.layer(x)
  return Compact, Setup


@pytest.mark.parametrize('style', [0, 1], ids=['compact', 'setup'])
def test_linen_in_bridge_mdl_matches_flax(style):
  x = jax.random.normal(jax.random.key(0), (4, 8))
  flax_vars, variables = both(lambda lib: linen_in_bridge(lib)[style]().init(1, x))
  assert_trees_equal(variables, flax_vars)
  rngs = dict(zip(('params', 'dropout'), jax.random.split(jax.random.key(0)), strict=True))
  (flax_y, flax_updates), (y, updates) = both(
    lambda lib: linen_in_bridge(lib)[style]().apply(flax_vars, x, rngs=rngs, mutable=True))
  np.testing.assert_array_equal(y, flax_y)
  assert_trees_equal(updates, flax_updates)


def test_functional_matches_flax():
  def run(lib):
    layer = lib.bridge.functional(lib.Linear)(2, 3)
    state = layer.init(rngs=lib.Rngs(0))
    y, (graphdef, new_state) = layer.apply(state)(jnp.ones((1, 2)))
    assert graphdef == layer.graphdef and isinstance(layer, lib.bridge.Functional)
    return y, lib.state(lib.merge(graphdef, new_state)).to_pure_dict()

  (flax_y, flax_state), (y, state) = both(run)
  np.testing.assert_array_equal(y, flax_y)
  assert_trees_equal(state, flax_state)
  with pytest.raises(AssertionError, match='init'):
    nnx.bridge.functional(nnx.Linear)(2, 3).apply({})


def test_namespace_matches_flax():
  public = {n for n in dir(fnnx.bridge) if not n.startswith('_')}
  assert public <= set(dir(nnx.bridge))
  assert nnx.wrappers is nnx.bridge.wrappers and fnnx.wrappers is fnnx.bridge.wrappers


def test_nnx_in_bridge_mdl_keeps_real_rng_state_at_apply():
  """At apply the submodule is built abstractly; its (vmapped) RNG state must be real."""
  def run(lib):
    class Stack(lib.Module):
      def __init__(self, key):
        self.rngs = lib.Rngs(jax.random.split(key, 4))

      def __call__(self, x):
        return x @ lib.vmap(lambda r: jax.random.normal(r.default(), (2,)))(self.rngs)

    class Foo(lib.bridge.Module):
      @lib.bridge.compact
      def __call__(self, x):
        return lib.bridge.nnx_in_bridge_mdl(lambda r: Stack(r.default()))(x)

    variables = Foo().init(jax.random.key(1), jnp.ones((1, 4)))
    return variables, Foo().apply(variables, jnp.ones((1, 4)), rngs=jax.random.key(2))

  (flax_vars, flax_y), (variables, y) = both(run)
  assert variables == flax_vars == {}  # RNG state is not a Linen variable
  np.testing.assert_array_equal(y, flax_y)
