"""``ToNNX`` and ``lazy_init``: a Linen module run as a bridge Module.

Reference behaviour is Linen's own ``init``/``apply`` with the keys the wrapper's ``Rngs``
hands out, and ``flax.nnx.bridge.ToNNX`` where the two overlap. Equality is exact
throughout: the wrapper runs the very same Linen computation.
"""

import uuid

import flax.errors
import flax.linen as nn
import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bridge
from bridge.interop.collections import tree_to_linen


def assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a),
                                                           jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def values(tree):
  """Nested dicts of arrays from a (nested dict / State of) Variables."""
  return jax.tree.map(lambda v: v.get_value(), dict(tree),
                      is_leaf=lambda v: isinstance(v, bridge.Variable))


def linen_vars(model):
  """The wrapped module's variables as Linen sees them (``{collection: tree}``)."""
  return tree_to_linen(model._variables_tree())


X = jax.random.normal(jax.random.key(42), (4, 3))


class MLP(nn.Module):
  """Dense -> BatchNorm -> relu (sown) -> Dropout -> Dense."""
  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Dense(8)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    self.sow('intermediates', 'hidden', x)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(2)(x)


class DropNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dropout(0.5, deterministic=False)(nn.Dense(6)(x))


class AutoEncoder(nn.Module):
  def setup(self):
    self.enc = nn.Dense(2)
    self.dec = nn.Dense(3)

  def encode(self, x):
    return self.enc(x)

  def decode(self, z):
    return self.dec(z)

  def __call__(self, x):
    return self.decode(self.encode(x))


# -- lazy_init is init, a call is apply ---------------------------------------------------
def test_lazy_init_is_init_with_the_wrappers_keys():
  model = bridge.ToNNX(nn.Dense(4), rngs=bridge.Rngs(0)).lazy_init(X)
  key = bridge.Rngs(0).fork().default()  # the wrapper forks its Rngs; default -> params
  expected = nn.Dense(4).init({'params': key}, X)
  assert_tree_equal(linen_vars(model), expected)
  assert type(model.kernel) is bridge.Param and type(model.bias) is bridge.Param
  assert model.kernel.shape == (3, 4)


def test_lazy_init_matches_flax_nnx_bridge():
  ours = bridge.ToNNX(MLP(), rngs=bridge.Rngs(params=0, dropout=1))
  bridge.lazy_init(ours, X)
  theirs = fnnx.bridge.ToNNX(MLP(), rngs=fnnx.Rngs(params=0, dropout=1))
  fnnx.bridge.lazy_init(theirs, X)
  assert_tree_equal(bridge.state(ours, bridge.Not(bridge.RngState)).to_pure_dict(),
                    fnnx.to_pure_dict(fnnx.state(theirs, fnnx.Not(fnnx.RngState))))
  assert type(ours.BatchNorm_0['mean']) is bridge.BatchStat


def test_call_is_apply():
  model = bridge.ToNNX(nn.Dense(4), rngs=bridge.Rngs(0)).lazy_init(X)
  np.testing.assert_array_equal(model(X), nn.Dense(4).apply(linen_vars(model), X))


def test_call_with_dropout_and_batch_stats_is_apply_with_the_next_keys():
  model = bridge.ToNNX(MLP(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  rngs = bridge.Rngs(params=0, dropout=1).fork()
  variables = MLP().init({'params': rngs.params(), 'dropout': rngs.dropout()}, X)
  assert_tree_equal(linen_vars(model), variables)
  for _ in range(2):
    keys = {'params': rngs.params(), 'dropout': rngs.dropout()}
    y, updates = MLP().apply(variables, X, rngs=keys, mutable=['batch_stats'])
    variables = {**variables, **updates}
    np.testing.assert_array_equal(model(X), y)
    assert_tree_equal(linen_vars(model), variables)


def test_call_matches_flax_nnx_bridge_with_the_same_mutable():
  ours = bridge.ToNNX(MLP(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  theirs = fnnx.bridge.ToNNX(MLP(), rngs=fnnx.Rngs(params=0, dropout=1))
  fnnx.bridge.lazy_init(theirs, X)
  for _ in range(2):
    np.testing.assert_array_equal(ours(X, mutable=['batch_stats']),
                                  theirs(X, mutable=['batch_stats']))
  np.testing.assert_array_equal(ours.BatchNorm_0['mean'][...],
                                theirs.BatchNorm_0['mean'][...])
  # evaluation mode: no dropout, running averages
  np.testing.assert_array_equal(ours(X, train=False), theirs(X, train=False))


# -- methods ------------------------------------------------------------------------------
def test_linen_methods_are_attributes():
  model = bridge.ToNNX(AutoEncoder(), rngs=bridge.Rngs(0)).lazy_init(X)
  variables = linen_vars(model)
  z = model.encode(X)
  np.testing.assert_array_equal(z, AutoEncoder().apply(variables, X, method='encode'))
  np.testing.assert_array_equal(model.decode(z),
                                AutoEncoder().apply(variables, z, method='decode'))
  np.testing.assert_array_equal(model(X, method='encode'), z)


def test_lazy_init_of_a_method_creates_only_what_it_uses():
  model = bridge.ToNNX(AutoEncoder(), rngs=bridge.Rngs(0))
  encode = model.encode
  assert bridge.lazy_init(encode, X) is encode
  assert sorted(linen_vars(model)['params']) == ['enc']
  key = bridge.Rngs(0).fork().default()
  expected = AutoEncoder().init({'params': key}, X, method='encode')
  assert_tree_equal(linen_vars(model), expected)
  with pytest.raises(ValueError, match=r'(?s)decode.*kernel.*/dec.*lazy_init\(model\.decode'):
    model.decode(jnp.ones((4, 2)))
  # initializing the other method adds its variables and keeps the first ones
  kernel = model.enc['kernel']
  bridge.lazy_init(model.decode, jnp.ones((4, 2)))
  assert sorted(linen_vars(model)['params']) == ['dec', 'enc']
  assert model.enc['kernel'] is kernel
  np.testing.assert_array_equal(model(X), AutoEncoder().apply(linen_vars(model), X))


def test_lazy_init_of_a_method_matches_flax():
  ours = bridge.ToNNX(AutoEncoder(), rngs=bridge.Rngs(3))
  bridge.lazy_init(ours.encode, X)
  theirs = fnnx.bridge.ToNNX(AutoEncoder(), rngs=fnnx.Rngs(3))
  fnnx.bridge.lazy_init(theirs.encode, X)
  assert_tree_equal(bridge.state(ours, bridge.Param).to_pure_dict(),
                    fnnx.to_pure_dict(fnnx.state(theirs, fnnx.Param)))


def test_lazy_init_through_a_parent_module():
  class Head(bridge.Module):
    def __init__(self, rngs):
      self.body = bridge.ToNNX(nn.Dense(5), rngs=rngs)
      self.head = bridge.Linear(5, 1, rngs=rngs)

    def __call__(self, x):
      return self.head(self.body(x))

  model = Head(bridge.Rngs(0))
  assert bridge.lazy_init(model, X) is model
  assert model.body.kernel.shape == (3, 5)
  assert model(X).shape == (4, 1)


# -- collections <-> Variable types -------------------------------------------------------
@bridge.register_variable_name('interop_test_counts')
class Counts(bridge.Variable):
  pass


def test_every_collection_maps_to_its_variable_type():
  fresh = f'fresh_{uuid.uuid4().hex[:8]}'

  class AllKinds(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param('w', nn.initializers.ones, (3,))
      mean = self.variable('batch_stats', 'mean', jnp.zeros, (3,))
      index = self.variable('cache', 'index', lambda: jnp.array(0))
      count = self.variable('interop_test_counts', 'count', lambda: jnp.array(0))
      other = self.variable(fresh, 'z', lambda: jnp.full((3,), 2.0))
      self.sow('intermediates', 'seen', x)
      if not self.is_initializing():
        mean.value = mean.value + x.mean(0)
        index.value += 1
        count.value += 1
      return x * w + other.value

  model = bridge.ToNNX(AllKinds(), rngs=bridge.Rngs(0)).lazy_init(X)
  assert type(model.w) is bridge.Param
  assert type(model.mean) is bridge.BatchStat
  assert type(model.index) is bridge.Cache
  assert type(model.count) is Counts
  new_type = type(model.z)
  assert new_type.__name__ == fresh and issubclass(new_type, bridge.Variable)
  assert bridge.variable_type_from_name(fresh, allow_register=False) is new_type
  assert bridge.variable_name_from_type(new_type) == fresh
  assert not hasattr(model, 'seen')  # like init, intermediates are not kept

  y = model(X, mutable=True)
  np.testing.assert_array_equal(y, X + 2.0)
  assert type(model.seen) is bridge.Intermediate  # created during the call
  np.testing.assert_array_equal(model.seen[...][0], X)
  assert int(model.index[...]) == 1 and int(model.count[...]) == 1
  # and back: the same collections, the same tree Linen produced
  assert sorted(linen_vars(model)) == sorted(['params', 'batch_stats', 'cache',
                                              'interop_test_counts', fresh, 'intermediates'])
  variables = AllKinds().init(jax.random.key(0), X)
  _, expected = AllKinds().apply(variables, X, mutable=True)
  assert_tree_equal(linen_vars(model), expected)


def test_the_same_name_in_two_collections_is_an_error():
  class Clash(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param('w', nn.initializers.ones, (3,))
      s = self.variable('stats', 'w', jnp.zeros, (3,))
      return x * w + s.value

  with pytest.raises(ValueError, match=r"'w' is in both collections 'params' and 'stats'"):
    bridge.ToNNX(Clash(), rngs=bridge.Rngs(0)).lazy_init(X)


# -- mutable= -----------------------------------------------------------------------------
@pytest.mark.parametrize('mutable', [True, 'batch_stats', ['batch_stats'], bridge.BatchStat,
                                     [bridge.BatchStat, bridge.Intermediate]],
                         ids=['True', 'name', 'names', 'type', 'types'])
def test_mutable_writes_the_collections_back(mutable):
  model = bridge.ToNNX(MLP(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  variables = linen_vars(model)
  mean = model.BatchNorm_0['mean']
  y = model(X, mutable=mutable)
  keys = bridge.Rngs(params=0, dropout=1).fork()
  keys.params(), keys.dropout()  # used by lazy_init
  y_ref, updates = MLP().apply(variables, X, mutable=['batch_stats'],
                               rngs={'params': keys.params(), 'dropout': keys.dropout()})
  np.testing.assert_array_equal(y, y_ref)
  assert model.BatchNorm_0['mean'] is mean  # updated in place
  np.testing.assert_array_equal(mean[...], updates['batch_stats']['BatchNorm_0']['mean'])
  sown = mutable is True or isinstance(mutable, list) and bridge.Intermediate in mutable
  assert hasattr(model, 'hidden') == sown


def test_mutable_false_changes_nothing():
  model = bridge.ToNNX(MLP(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  before = linen_vars(model)
  model(X, train=False, mutable=False)
  assert_tree_equal(linen_vars(model), before)
  with pytest.raises(flax.errors.ModifyScopeVariableError, match='batch_stats'):
    model(X, mutable=False)  # training updates batch_stats: Linen refuses


def test_mutable_intermediates_only_leaves_batch_stats_alone():
  model = bridge.ToNNX(MLP(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  before = linen_vars(model)['batch_stats']
  model(X, train=False, mutable='intermediates')
  assert_tree_equal(linen_vars(model)['batch_stats'], before)
  assert type(model.hidden) is bridge.Intermediate
  assert model.hidden[...][0].shape == (4, 8)


def test_by_default_every_collection_but_params_changes_on_each_call():
  """Beyond flax (whose default outside Linen is ``mutable=False``): a bare call updates
  BatchNorm statistics, as a stateful bridge module would."""
  model = bridge.ToNNX(MLP(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  variables = linen_vars(model)
  params = model.Dense_0['kernel'][...]
  for step in range(3):
    x = X * (step + 1)
    model(x)
    _, updates = MLP().apply(variables, x, mutable=['batch_stats'],
                             rngs={'dropout': jax.random.key(0)})
    variables = {**variables, **updates}
    assert_tree_equal(values(model.BatchNorm_0), {
      **variables['params']['BatchNorm_0'], **variables['batch_stats']['BatchNorm_0']})
  np.testing.assert_array_equal(model.Dense_0['kernel'][...], params)
  assert not hasattr(model, 'hidden')  # intermediates did not exist: not made mutable


def test_new_cache_variables_appear_as_attributes():
  class Decoder(nn.Module):
    @nn.compact
    def __call__(self, x, decode=False):
      y = nn.Dense(3)(x)
      if decode:
        index = self.variable('cache', 'index', lambda: jnp.array(0, jnp.int32))
        keys = self.variable('cache', 'keys', jnp.zeros, (2, 4, 3))
        keys.value = keys.value.at[index.value].set(y)
        index.value += 1
      return y

  model = bridge.ToNNX(Decoder(), rngs=bridge.Rngs(0)).lazy_init(X)
  assert not hasattr(model, 'index')
  with pytest.raises(ValueError, match=r"(?s)\"index\".*\"cache\".*mutable=\['cache'\]"):
    model(X, decode=True)  # no cache yet and the collection is not mutable
  y = model(X, decode=True, mutable='cache')
  assert type(model.index) is bridge.Cache and int(model.index[...]) == 1
  np.testing.assert_array_equal(model.keys[0], y)
  model(2 * X, decode=True)  # the cache exists now: updated by default
  assert int(model.index[...]) == 2
  np.testing.assert_array_equal(model.keys[1], 2 * y)


# -- randomness ---------------------------------------------------------------------------
def test_rng_streams_are_fresh_every_call_and_reseed_reproduces():
  model = bridge.ToNNX(DropNet(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  y1, y2 = model(X), model(X)
  assert not np.array_equal(y1, y2)
  bridge.reseed(model, dropout=7)
  y3 = model(X)
  bridge.reseed(model, dropout=7)
  np.testing.assert_array_equal(model(X), y3)
  # the key is the stream's next key: fold_in(key(7) drawn from Rngs(dropout=7), 0)
  key = bridge.Rngs(dropout=7).dropout()
  expected = DropNet().apply(linen_vars(model), X,
                             rngs={'dropout': jax.random.fold_in(key, 0)})
  np.testing.assert_array_equal(y3, expected)


def test_dropout_matches_flax_call_after_call():
  ours = bridge.ToNNX(DropNet(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  theirs = fnnx.bridge.ToNNX(DropNet(), rngs=fnnx.Rngs(params=0, dropout=1))
  fnnx.bridge.lazy_init(theirs, X)
  for _ in range(3):
    np.testing.assert_array_equal(ours(X), theirs(X))


def test_rngs_given_to_the_call_replace_the_wrappers():
  model = bridge.ToNNX(DropNet(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  count = int(model.to_nnx__rngs.dropout.count[...])
  y = model(X, rngs=bridge.Rngs(dropout=5))
  expected = DropNet().apply(linen_vars(model), X,
                             rngs={'dropout': bridge.Rngs(dropout=5).dropout()})
  np.testing.assert_array_equal(y, expected)
  assert int(model.to_nnx__rngs.dropout.count[...]) == count  # the wrapper's untouched


# -- transforms and the optimizer ---------------------------------------------------------
def loss_fn(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


def test_under_jit_state_is_written_back_and_keys_advance():
  model = bridge.ToNNX(MLP(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  variables = linen_vars(model)
  step = bridge.jit(lambda m, x: m(x))
  apply = jax.jit(lambda v, x, keys: MLP().apply(v, x, rngs=keys, mutable=['batch_stats']))
  rngs = bridge.Rngs(params=0, dropout=1).fork()
  rngs.params(), rngs.dropout()  # used by lazy_init
  outputs = []
  for _ in range(2):
    outputs.append(step(model, X))
    y, updates = apply(variables, X, {'params': rngs.params(), 'dropout': rngs.dropout()})
    variables = {**variables, **updates}
    np.testing.assert_array_equal(outputs[-1], y)
    assert_tree_equal(linen_vars(model), variables)
  assert not np.array_equal(*outputs)  # new dropout keys each call
  assert int(model.to_nnx__rngs.dropout.count[...]) == 3


def test_grad_equals_jax_grad_of_apply():
  model = bridge.ToNNX(nn.Dense(2), rngs=bridge.Rngs(0)).lazy_init(X)
  y = jnp.ones((4, 2))
  grads = bridge.grad(loss_fn)(model, X, y)
  params = linen_vars(model)['params']
  expected = jax.grad(lambda p: jnp.mean((nn.Dense(2).apply({'params': p}, X) - y) ** 2))(
    params)
  assert_tree_equal(values(grads), expected)
  assert type(grads['kernel']) is bridge.Param


def test_optimizer_step_under_jit_equals_a_linen_step():
  model = bridge.ToNNX(MLP(), rngs=bridge.Rngs(params=0, dropout=1)).lazy_init(X)
  variables = linen_vars(model)
  y = jnp.ones((4, 2))
  optimizer = bridge.Optimizer(model, optax.adam(1e-2), wrt=bridge.Param)

  @bridge.jit
  def train_step(model, optimizer, x, y):
    loss, grads = bridge.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss

  tx = optax.adam(1e-2)
  params, batch_stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)

  @jax.jit
  def linen_step(params, batch_stats, opt_state, x, y, keys):
    def loss(p):
      out, updates = MLP().apply({'params': p, 'batch_stats': batch_stats}, x, rngs=keys,
                                 mutable=['batch_stats'])
      return jnp.mean((out - y) ** 2), updates['batch_stats']
    (value, batch_stats), g = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return value, optax.apply_updates(params, updates), batch_stats, opt_state

  rngs = bridge.Rngs(params=0, dropout=1).fork()
  rngs.params(), rngs.dropout()  # used by lazy_init
  for _ in range(2):
    loss = train_step(model, optimizer, X, y)
    keys = {'params': rngs.params(), 'dropout': rngs.dropout()}
    l_ref, params, batch_stats, opt_state = linen_step(params, batch_stats, opt_state, X, y,
                                                       keys)
    np.testing.assert_array_equal(loss, l_ref)
  assert_tree_equal(linen_vars(model), {'params': params, 'batch_stats': batch_stats})


def test_eager_optimizer_step_is_exact():
  model = bridge.ToNNX(nn.Dense(2), rngs=bridge.Rngs(0)).lazy_init(X)
  params = linen_vars(model)['params']
  y = jnp.ones((4, 2))
  optimizer = bridge.Optimizer(model, optax.sgd(0.1), wrt=bridge.Param)
  optimizer.update(model, bridge.grad(loss_fn)(model, X, y))
  g = jax.grad(lambda p: jnp.mean((nn.Dense(2).apply({'params': p}, X) - y) ** 2))(params)
  expected = optax.apply_updates(params, jax.tree.map(lambda g: -0.1 * g, g))
  assert_tree_equal(linen_vars(model)['params'], expected)


# -- errors -------------------------------------------------------------------------------
def test_calling_before_lazy_init_is_an_error():
  model = bridge.ToNNX(nn.Dense(4), rngs=bridge.Rngs(0))
  with pytest.raises(ValueError, match=r'before it is initialized.*lazy_init'):
    model(X)
  with pytest.raises(ValueError, match=r'lazy_init\(model\.encode'):
    bridge.ToNNX(AutoEncoder(), rngs=bridge.Rngs(0)).encode(X)


def test_rngs_and_module_of_the_wrong_type_are_errors_naming_them():
  with pytest.raises(TypeError, match=r"ToNNX\(Dense\): rngs must be a bridge.Rngs, a JAX key "
                                      r"or None, got str 'x'"):
    bridge.ToNNX(nn.Dense(4), rngs='x')
  with pytest.raises(TypeError, match=r'ToNNX: module must be a flax.linen Module, got Linear'):
    bridge.ToNNX(bridge.Linear(2, 3, rngs=bridge.Rngs(0)), rngs=bridge.Rngs(0))
  for rngs in (None, jax.random.key(0), bridge.Rngs(0)):  # what flax accepts
    bridge.ToNNX(nn.Dense(4), rngs=rngs)


def test_a_call_that_creates_params_outside_init_is_an_error():
  class Grows(nn.Module):
    @nn.compact
    def __call__(self, x, extra=False):
      y = nn.Dense(3)(x)
      return nn.Dense(3, name='extra')(y) if extra else y

  model = bridge.ToNNX(Grows(), rngs=bridge.Rngs(0)).lazy_init(X)
  with pytest.raises(ValueError, match=r'(?s)Grows.*kernel.*/extra.*lazy_init'):
    model(X, extra=True)


def test_unknown_attribute_is_an_attribute_error():
  model = bridge.ToNNX(nn.Dense(4), rngs=bridge.Rngs(0))
  with pytest.raises(AttributeError, match='no attribute'):
    model.encode  # noqa: B018


def test_a_non_variable_attribute_cannot_map_to_a_collection():
  model = bridge.ToNNX(nn.Dense(4), rngs=bridge.Rngs(0)).lazy_init(X)
  model.scale = jnp.ones(4)
  with pytest.raises(ValueError, match=r"Cannot map 'scale' to a Linen collection"):
    model(X)


def test_a_variable_type_whose_name_is_taken_is_an_error_naming_the_path():
  """Unregistered Variable types get their class name as collection name (as in flax);
  a second, different type with the same class name cannot."""
  model = bridge.ToNNX(nn.Dense(4), rngs=bridge.Rngs(0)).lazy_init(X)

  name = f'Twin{uuid.uuid4().hex[:8]}'  # two classes, one name (unique to this run)
  first, second = (type(name, (bridge.Variable,), {}) for _ in range(2))
  model.extra = first(jnp.zeros(()))
  model(X)  # first sight: registered under its class name
  assert bridge.variable_name_from_type(first) == name
  model.extra = second(jnp.zeros(()))
  with pytest.raises(ValueError, match=rf"(?s)'extra'.*'{name}'.*register_variable_name"):
    model(X)
