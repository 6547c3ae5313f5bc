"""``ToLinen`` and ``to_linen``: a bridge Module run as a Linen module.

The reference is ``flax.nnx.bridge.ToLinen`` wrapping the same Module written with
``flax.nnx``: the same seeds give the same variables, outputs and updated collections,
exactly. Beyond flax: ``apply`` does not run the Module's initializers again.
"""

import re
import uuid

import flax.errors
import flax.linen as nn
import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bridge
from bridge.interop import to_linen as to_linen_module

# flax.nnx 0.12 deprecates sow outside nnx.capture; the flax twin of Block sows on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)':DeprecationWarning")

X = jax.random.normal(jax.random.key(42), (4, 3))
INIT_RNGS = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}


def assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a),
                                                           jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def block_class(nnx):
  """One Module, written for ``bridge`` or for ``flax.nnx`` (``nnx`` is either)."""
  class Block(nnx.Module):
    def __init__(self, din, dout, *, rngs):
      self.linear = nnx.Linear(din, dout, rngs=rngs)
      self.mean = nnx.BatchStat(jnp.zeros(dout))
      self.count = nnx.BatchStat(jnp.zeros((), jnp.int32))
      self.dropout = rngs.dropout.fork()  # a stream kept by the Module, as nnx.Dropout does

    def __call__(self, x, train=True):
      y = self.linear(x)
      if train:
        self.mean[...] = 0.9 * self.mean[...] + 0.1 * y.mean(0)
        self.count[...] += 1
        y = y * jax.random.bernoulli(self.dropout(), 0.5, y.shape) / 0.5
      self.sow(nnx.Intermediate, 'out', y)
      return y

    def project_back(self, y):
      return y @ self.linear.kernel[...].T

  return Block


Block, FlaxBlock = block_class(bridge), block_class(fnnx)


def parent_class(to_linen, block):
  class Parent(nn.Module):
    """A Linen model with the wrapped Module in ``setup``, calling two of its methods."""
    def setup(self):
      self.block = to_linen(block, 3, 5)
      self.head = nn.Dense(2)

    def __call__(self, x, train=True):
      y = self.block(x, train=train)
      return self.head(y) + self.block.project_back(y).sum()

  return Parent


Parent, FlaxParent = parent_class(bridge.to_linen, Block), parent_class(fnnx.bridge.to_linen,
                                                                         FlaxBlock)


# -- init / apply as any Linen module, parity with flax -----------------------------------
def test_init_and_apply_of_a_linear_match_flax():
  ours = bridge.ToLinen(bridge.Linear, args=(3, 4))
  theirs = fnnx.bridge.ToLinen(fnnx.Linear, args=(3, 4))
  y, variables = ours.init_with_output(jax.random.key(0), X)
  y_ref, expected = theirs.init_with_output(jax.random.key(0), X)
  assert_tree_equal(variables, expected)
  np.testing.assert_array_equal(y, y_ref)
  assert_tree_equal(ours.init(jax.random.key(0), X), expected)
  np.testing.assert_array_equal(ours.apply(variables, 2 * X), theirs.apply(expected, 2 * X))
  assert_tree_equal(bridge.to_linen(bridge.Linear, 3, 4).init(jax.random.key(0), X), expected)


def test_variables_rngs_and_collections_match_flax():
  ours, theirs = bridge.to_linen(Block, 3, 5), fnnx.bridge.to_linen(FlaxBlock, 3, 5)
  variables = ours.init(INIT_RNGS, X)
  expected = theirs.init(INIT_RNGS, X)
  assert_tree_equal(variables, expected)
  assert sorted(variables) == ['batch_stats', 'params']  # no RNG state, nothing sown
  assert int(variables['batch_stats']['count']) == 0  # init keeps the values before the call
  for seed in (2, 3):
    rngs = {'dropout': jax.random.key(seed)}
    y, updates = ours.apply(variables, X, rngs=rngs, mutable=['batch_stats', 'intermediates'])
    y_ref, updates_ref = theirs.apply(expected, X, rngs=rngs,
                                      mutable=['batch_stats', 'intermediates'])
    np.testing.assert_array_equal(y, y_ref)  # the same dropout mask as flax
    assert_tree_equal(updates, updates_ref)
    variables = {**variables, 'batch_stats': updates['batch_stats']}
    expected = {**expected, 'batch_stats': updates_ref['batch_stats']}
  assert int(variables['batch_stats']['count']) == 2


def test_a_linen_parent_calling_two_methods_matches_flax():
  variables = Parent().init(INIT_RNGS, X)
  rngs = {'dropout': jax.random.key(7)}
  y, updates = Parent().apply(variables, X, rngs=rngs, mutable=['batch_stats'])
  y_ref, updates_ref = FlaxParent().apply(variables, X, rngs=rngs, mutable=['batch_stats'])
  np.testing.assert_array_equal(y, y_ref)
  assert_tree_equal(updates, updates_ref)
  np.testing.assert_array_equal(Parent().apply(variables, X, train=False),
                                FlaxParent().apply(variables, X, train=False))


def test_a_second_call_during_init_uses_the_first_calls_variables():
  """Beyond flax (whose second call builds the Module again and stores new weights, not
  the ones the first call computed with): as a Linen submodule called twice."""
  y, variables = Parent().init_with_output(INIT_RNGS, X, train=False)
  np.testing.assert_array_equal(Parent().apply(variables, X, train=False), y)
  assert int(variables['batch_stats']['block']['count']) == 0  # init does not update


def test_under_jax_jit_matches_flax_under_jax_jit():
  ours, theirs = bridge.to_linen(Block, 3, 5), fnnx.bridge.to_linen(FlaxBlock, 3, 5)
  variables = ours.init(INIT_RNGS, X)
  rngs = {'dropout': jax.random.key(5)}
  run = lambda model: jax.jit(lambda v, x: model.apply(v, x, rngs=rngs, mutable=True))
  out, updates = run(ours)(variables, X)
  out_ref, updates_ref = run(theirs)(variables, X)
  np.testing.assert_array_equal(out, out_ref)
  assert_tree_equal(updates, updates_ref)


# -- methods ------------------------------------------------------------------------------
def test_nnx_method_by_name_function_or_attribute():
  model = bridge.to_linen(Block, 3, 5)
  variables = model.init(INIT_RNGS, X)
  y = jnp.ones((2, 5))
  expected = y @ variables['params']['linear']['kernel'].T
  np.testing.assert_array_equal(model.apply(variables, y, nnx_method='project_back'), expected)
  np.testing.assert_array_equal(model.apply(variables, y, nnx_method=Block.project_back),
                                expected)
  np.testing.assert_array_equal(
    model.apply(variables, y, method=lambda m, y: m.project_back(y)), expected)


def test_attribute_access_like_an_embedding_attend():
  class Embedding(bridge.Module):
    def __init__(self, n, d, *, rngs):
      self.embedding = bridge.Param(jax.random.normal(rngs.params(), (n, d)))

    def __call__(self, ids):
      return self.embedding[ids]

    def attend(self, query):
      return query @ self.embedding[...].T

  class LanguageModel(nn.Module):
    @nn.compact
    def __call__(self, ids):
      embedding = bridge.ToLinen(Embedding, args=(7, 4), name='embedding')
      z = nn.Dense(4)(embedding(ids))
      return embedding.attend(z)

  ids = jnp.array([[1, 2, 3]])
  variables = LanguageModel().init(jax.random.key(0), ids)
  logits = LanguageModel().apply(variables, ids)
  table = variables['params']['embedding']['embedding']
  z = nn.Dense(4).apply({'params': variables['params']['Dense_0']}, table[ids])
  np.testing.assert_array_equal(logits, z @ table.T)
  assert logits.shape == (1, 3, 7)


def test_kwargs_are_attributes_of_the_wrapper():
  model = bridge.ToLinen(bridge.Linear, args=(3, 4), kwargs={'use_bias': False})
  assert model.use_bias is False
  assert sorted(model.init(jax.random.key(0), X)['params']) == ['kernel']


# -- collections and mutable --------------------------------------------------------------
@bridge.register_variable_name('to_linen_test_tallies')
class Tally(bridge.Variable):
  pass


class Unregistered(bridge.Variable):
  pass


class Kinds(bridge.Module):
  def __init__(self, *, rngs):
    self.w = bridge.Param(jax.random.normal(rngs.params(), (3,)))
    self.stat = bridge.BatchStat(jnp.zeros(3))
    self.cache = bridge.Cache(jnp.zeros((), jnp.int32))
    self.tally = Tally(jnp.zeros((), jnp.int32))
    self.other = Unregistered(jnp.ones(3))
    self.rngs = rngs

  def __call__(self, x):
    self.stat[...] += x.mean(0)
    self.cache[...] += 1
    self.tally[...] += 2
    self.sow(bridge.Intermediate, 'seen', x.sum())
    return x * self.w + self.other[...]


def test_variable_types_become_collections_through_the_registry():
  model = bridge.to_linen(Kinds)
  variables = model.init(jax.random.key(0), X)
  assert sorted(variables) == ['Unregistered', 'batch_stats', 'cache', 'params',
                               'to_linen_test_tallies']
  assert bridge.variable_type_from_name('Unregistered') is Unregistered
  y, updates = model.apply(variables, X, mutable=True)
  assert sorted(updates) == sorted([*variables, 'intermediates'])  # no RNG state
  np.testing.assert_array_equal(updates['batch_stats']['stat'], X.mean(0))
  assert int(updates['cache']['cache']) == 1 and int(updates['to_linen_test_tallies']['tally']) == 2
  np.testing.assert_array_equal(updates['intermediates']['seen'][0], X.sum())
  np.testing.assert_array_equal(y, X * variables['params']['w'] + 1.0)


def test_mutable_returns_only_the_named_collections():
  model = bridge.to_linen(Kinds)
  variables = model.init(jax.random.key(0), X)
  _, updates = model.apply(variables, X, mutable=['cache'])
  assert list(updates) == ['cache']
  assert not isinstance(model.apply(variables, X), tuple)


def test_sown_values_passed_back_are_kept_and_appended_to():
  model = bridge.to_linen(Kinds)
  variables = model.init(jax.random.key(0), X)
  _, updates = model.apply(variables, X, mutable=True)
  _, updates = model.apply(updates, 2 * X, mutable=True)
  seen = updates['intermediates']['seen']
  assert len(seen) == 2
  np.testing.assert_array_equal(seen[1], 2 * X.sum())
  assert int(updates['cache']['cache']) == 2


def test_two_calls_in_one_mutable_apply():
  """The second call sees what the first one sowed (it is in the scope by then)."""
  variables = Parent().init(INIT_RNGS, X)
  _, updates = Parent().apply(variables, X, rngs={'dropout': jax.random.key(0)}, mutable=True)
  assert len(updates['intermediates']['block']['out']) == 1
  assert int(updates['batch_stats']['block']['count']) == 1


def test_skip_rng():
  class Scale(bridge.Module):
    def __init__(self, n):
      self.w = bridge.Param(jnp.full((n,), 2.0))

    def __call__(self, x):
      return x * self.w

  model = bridge.to_linen(Scale, 3, skip_rng=True)
  variables = model.init(jax.random.key(0), X)
  np.testing.assert_array_equal(model.apply(variables, X), 2 * X)


# -- apply does not run the initializers again --------------------------------------------
def counted(calls):
  def init(key, shape, dtype=jnp.float32):
    calls.append('traced' if isinstance(key, jax.core.Tracer) else 'run')
    return jax.random.normal(key, shape, dtype)
  return init


def test_apply_does_not_rerun_initializers():
  calls = []
  model = bridge.to_linen(bridge.Linear, 3, 4, kernel_init=counted(calls))
  variables = model.init(jax.random.key(0), X)
  assert calls == ['run']
  y = model.apply(variables, X)
  for _ in range(3):
    np.testing.assert_array_equal(model.apply(variables, X), y)
  # Linen's rngs differ from init's (none here): the structure is built once, abstractly
  assert calls == ['run', 'traced']


def test_apply_with_an_initializer_that_raises_after_init():
  armed = []

  def kernel_init(key, shape, dtype=jnp.float32):
    if armed:
      raise AssertionError('the initializer ran during apply')
    return jax.random.normal(key, shape, dtype)

  model = bridge.to_linen(bridge.Linear, 3, 4, kernel_init=kernel_init)
  rngs = {'params': jax.random.key(0)}
  variables = model.init(rngs, X)
  armed.append(True)
  y = model.apply(variables, X, rngs=rngs)  # the same rng names as init: the template of init
  np.testing.assert_array_equal(y, X @ variables['params']['kernel'] + variables['params']['bias'])


def test_modules_that_keep_streams_trace_their_constructor_once():
  calls = []

  class Noisy(bridge.Module):
    def __init__(self, *, rngs):
      self.w = bridge.Param(counted(calls)(rngs.params(), (3, 3)))
      self.noise = rngs.dropout.fork()

    def __call__(self, x):
      return x @ self.w + jax.random.normal(self.noise(), x.shape)

  model = bridge.to_linen(Noisy)
  variables = model.init(INIT_RNGS, X)
  outs = [model.apply(variables, X, rngs={'dropout': jax.random.key(i)}) for i in range(3)]
  assert not np.array_equal(outs[0], outs[1])
  np.testing.assert_array_equal(model.apply(variables, X, rngs={'dropout': jax.random.key(0)}),
                                outs[0])
  assert calls.count('run') == 1  # init only
  assert calls.count('traced') == 2  # the abstract structure, the compiled RNG state


def test_apply_on_a_fresh_template_cache():
  model = bridge.to_linen(Block, 3, 5)
  variables = model.init(INIT_RNGS, X)
  rngs = {'dropout': jax.random.key(3)}
  y, updates = model.apply(variables, X, rngs=rngs, mutable=True)
  to_linen_module._TEMPLATES.clear()  # as in a new process that restored a checkpoint
  y2, updates2 = model.apply(variables, X, rngs=rngs, mutable=True)
  np.testing.assert_array_equal(y2, y)
  assert_tree_equal(updates2, updates)
  variables = Parent().init(INIT_RNGS, X)
  to_linen_module._TEMPLATES.clear()
  np.testing.assert_array_equal(Parent().apply(variables, X, train=False),
                                FlaxParent().apply(variables, X, train=False))


# -- errors -------------------------------------------------------------------------------
def test_unknown_incoming_paths_are_an_error():
  model = bridge.to_linen(Block, 3, 5)
  variables = model.init(INIT_RNGS, X)
  bad = {**variables, 'params': {**variables['params'], 'extra': jnp.ones(3)}}
  with pytest.raises(ValueError, match=r"(?s)Block.*does not have.*\['extra'\]"):
    model.apply(bad, X, rngs=INIT_RNGS)
  bad = {**variables, 'batch_stats': {**variables['batch_stats'], 'ghost': {'x': jnp.ones(3)}}}
  with pytest.raises(ValueError, match=r"does not have.*\['ghost/x'\]"):
    model.apply(bad, X, rngs=INIT_RNGS)


def test_missing_incoming_paths_are_an_error():
  model = bridge.to_linen(Block, 3, 5)
  variables = model.init(INIT_RNGS, X)
  params = {'linear': {'kernel': variables['params']['linear']['kernel']}}
  with pytest.raises(ValueError, match=r"no variable 'linear/bias' in collection 'params'"):
    model.apply({**variables, 'params': params}, X, rngs=INIT_RNGS)
  with pytest.raises(ValueError, match=r"no variable 'count' in collection 'batch_stats'"):
    model.apply({'params': variables['params']}, X, rngs=INIT_RNGS)


def test_a_raw_array_attribute_is_an_error():
  class Raw(bridge.Module):
    def __init__(self, *, rngs):
      self.w = jnp.ones(3)

    def __call__(self, x):
      return x * self.w

  with pytest.raises(ValueError, match=r"raw array at 'w'.*bridge.Variable"):
    bridge.to_linen(Raw).init(jax.random.key(0), X)


def test_a_variable_type_without_a_collection_name_is_an_error():
  name = f'Clashing{uuid.uuid4().hex[:8]}'  # two classes, one name (unique to this run)
  first, second = (type(name, (bridge.Variable,), {}) for _ in range(2))

  class Holds(bridge.Module):
    def __init__(self, var_type, *, rngs):
      self.v = var_type(jnp.zeros(3))

    def __call__(self, x):
      return x + self.v

  bridge.to_linen(Holds, first).init(jax.random.key(0), X)  # named after its class
  with pytest.raises(ValueError, match=rf"(?s)Variable at 'v'.*'{name}'.*register_variable_name"):
    bridge.to_linen(Holds, second).init(jax.random.key(0), X)


def test_init_without_a_params_rng_raises_as_linen_does():
  class Two(nn.Module):
    """Two sibling layers: a fixed fallback key would give them identical weights."""
    @nn.compact
    def __call__(self, x):
      return bridge.to_linen(bridge.Linear, 3, 4)(x) + bridge.to_linen(bridge.Linear, 3, 4)(x)

  for rngs in ({}, {'dropout': jax.random.key(1)}):
    with pytest.raises(flax.errors.InvalidRngError, match='needs PRNG for "params"'):
      nn.Dense(4).init(rngs, X)  # Linen
    with pytest.raises(flax.errors.InvalidRngError,
                       match=r'ToLinen_0 \(ToLinen\(Linear\)\) needs PRNG for "params"'):
      Two().init(rngs, X)
  params = Two().init(jax.random.key(0), X)['params']
  assert not np.array_equal(params['ToLinen_0']['kernel'], params['ToLinen_1']['kernel'])
  # a Module that takes no key from Linen needs no rng
  fixed = bridge.to_linen(bridge.Linear, 3, 4, skip_rng=True, rngs=bridge.Rngs(0))
  np.testing.assert_array_equal(fixed.init({}, X)['params']['kernel'],
                                bridge.Linear(3, 4, rngs=bridge.Rngs(0)).kernel[...])


def test_apply_checks_every_incoming_shape_as_linen_does():
  model = bridge.to_linen(bridge.Linear, 3, 4)
  variables = model.init(jax.random.key(0), X)
  kernel, bias = variables['params']['kernel'], variables['params']['bias']
  cases = [
    ({'kernel': jnp.ones((4, 1)), 'bias': bias}, "'params/kernel' has shape (4, 1), but the "
                                                 'module expects shape (3, 4)'),
    ({'kernel': kernel, 'bias': jnp.ones(1)}, "'params/bias' has shape (1,), but the module "
                                              'expects shape (4,)'),
    ({'kernel': kernel, 'bias': None}, "'params/bias' has no array (None), but the module "
                                       'expects shape (4,)'),
  ]
  for params, message in cases:
    with pytest.raises(flax.errors.ScopeParamShapeError, match=re.escape(message)):
      model.apply({'params': params}, X)
    if params['bias'] is not None:  # the same variables in the Linen layer: the same type
      with pytest.raises(flax.errors.ScopeParamShapeError):
        nn.Dense(4).apply({'params': params}, X)
  # a batch_stats variable is checked too; the right shapes still apply
  block = bridge.to_linen(Block, 3, 5)
  block_vars = block.init(INIT_RNGS, X)
  bad = {**block_vars, 'batch_stats': {**block_vars['batch_stats'], 'mean': jnp.zeros(4)}}
  with pytest.raises(flax.errors.ScopeParamShapeError, match="'batch_stats/mean' has shape"):
    block.apply(bad, X, rngs=INIT_RNGS)
  np.testing.assert_array_equal(model.apply(variables, X), X @ kernel + bias)


def test_linen_inside_checks_its_own_shapes_for_any_input_size():
  """Variables of a ToNNX inside depend on the input: the Linen module checks them."""
  class Wraps(bridge.Module):
    def __init__(self, *, rngs):
      self.dense = bridge.ToNNX(nn.Dense(2), rngs=rngs)

    def __call__(self, x):
      return self.dense(x)

  model = bridge.to_linen(Wraps)
  x5 = jnp.ones((2, 5))
  v3, v5 = model.init(jax.random.key(0), X), model.init(jax.random.key(0), x5)
  np.testing.assert_array_equal(model.apply(v3, X),
                                nn.Dense(2).apply({'params': v3['params']['dense']}, X))
  with pytest.raises(flax.errors.ScopeParamShapeError):
    model.apply(v5, X)
