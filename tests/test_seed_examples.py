"""The examples of seed page 000 (the Variable types' API docs), run with bridge.

Each test reproduces the State the page shows, as ``jax.tree.map(jnp.shape, nnx.state(...))``
(the page prints it in the old ``VariableState(type=..., value=shape)`` layout; here each
expectation is ``{path: (type name, shape)}``), and compares with flax.nnx where flax has the
same code. BatchNorm and MultiHeadAttention are not in bridge yet: small test modules create
the same Variables, and their structure is compared with flax's real layers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning',
                                        'ignore:.*outside of .nnx.capture')


def described(state):
  """``{path: (type name, shape)}`` of ``jax.tree.map(jnp.shape, state)``, as the page
  shows it."""
  shaped = jax.tree.map(jnp.shape, state)
  return {tuple(path): (type(v).__name__, v.get_value()) for path, v in shaped.flat_state()}


def details(state):
  """``{path: (type name, shape, dtype)}`` of the Variables of ``state``."""
  out = {}
  for path, v in state.flat_state():
    value = jnp.asarray(v.get_value())
    out[tuple(path)] = (type(v).__name__, value.shape, value.dtype)
  return out


def assert_same_values(ours, theirs):
  a, b = dict(ours.flat_state()), {tuple(p): v for p, v in theirs.flat_state()}
  assert set(a) == set(b)
  for path, v in a.items():
    np.testing.assert_array_equal(np.asarray(v.get_value()), np.asarray(b[path].get_value()))


# -- Param --------------------------------------------------------------------------------
def test_param_on_linear():
  layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  assert described(nnx.state(layer)) == {('bias',): ('Param', (3,)),
                                         ('kernel',): ('Param', (2, 3))}
  theirs = fnnx.Linear(2, 3, rngs=fnnx.Rngs(0))
  assert described(nnx.state(layer)) == described(fnnx.state(theirs))
  assert repr(jax.tree.map(jnp.shape, nnx.state(layer))) == \
    repr(jax.tree.map(jnp.shape, fnnx.state(theirs)))
  assert_same_values(nnx.state(layer), fnnx.state(theirs))


# -- a custom Variable --------------------------------------------------------------------
def custom_variable_model(lib):
  class CustomVariable(lib.Variable):
    pass

  class Model(lib.Module):
    def __init__(self, rngs):
      self.linear = lib.Linear(2, 3, rngs=rngs)
      self.custom_variable = CustomVariable(jnp.ones((1, 3)))

    def __call__(self, x):
      return self.linear(x) + self.custom_variable

  return CustomVariable, Model


def test_custom_variable_beside_linear():
  CustomVariable, Model = custom_variable_model(nnx)
  model = Model(rngs=nnx.Rngs(0))
  assert described(nnx.state(model, nnx.Param)) == {
    ('linear', 'bias'): ('Param', (3,)),
    ('linear', 'kernel'): ('Param', (2, 3)),
  }
  assert described(nnx.state(model, CustomVariable)) == {
    ('custom_variable',): ('CustomVariable', (1, 3)),
  }
  assert described(nnx.state(model)) == {
    ('custom_variable',): ('CustomVariable', (1, 3)),
    ('linear', 'bias'): ('Param', (3,)),
    ('linear', 'kernel'): ('Param', (2, 3)),
  }
  assert list(nnx.state(model).keys()) == ['custom_variable', 'linear']

  FCustom, FModel = custom_variable_model(fnnx)
  theirs = FModel(rngs=fnnx.Rngs(0))
  for ours_filter, theirs_filter in ((nnx.Param, fnnx.Param), (CustomVariable, FCustom)):
    assert described(nnx.state(model, ours_filter)) == \
      described(fnnx.state(theirs, theirs_filter))
  assert repr(jax.tree.map(jnp.shape, nnx.state(model))) == \
    repr(jax.tree.map(jnp.shape, fnnx.state(theirs)))
  assert_same_values(nnx.state(model), fnnx.state(theirs))
  x = jnp.array([[0.5, -1.0]])
  np.testing.assert_array_equal(model(x), theirs(x))


# -- Intermediate via sow -----------------------------------------------------------------
def intermediate_model(lib):
  class Model(lib.Module):
    def __init__(self, rngs):
      self.linear1 = lib.Linear(2, 3, rngs=rngs)
      self.linear2 = lib.Linear(3, 4, rngs=rngs)

    def __call__(self, x):
      x = self.linear1(x)
      self.sow(lib.Intermediate, 'i', x)
      x = self.linear2(x)
      return x

  return Model


def test_intermediate_via_sow():
  model = intermediate_model(nnx)(rngs=nnx.Rngs(0))
  x = jnp.ones((1, 2))
  y = model(x)
  assert y.shape == (1, 4)
  assert described(nnx.state(model, nnx.Intermediate)) == {('i',): ('Intermediate', ((1, 3),))}
  np.testing.assert_array_equal(model.i.value[0], model.linear1(x))

  theirs = intermediate_model(fnnx)(rngs=fnnx.Rngs(0))
  np.testing.assert_array_equal(y, theirs(x))
  assert described(nnx.state(model, nnx.Intermediate)) == \
    described(fnnx.state(theirs, fnnx.Intermediate))
  a = nnx.state(model, nnx.Intermediate).to_pure_dict()
  b = fnnx.state(theirs, fnnx.Intermediate).to_pure_dict()
  np.testing.assert_array_equal(a['i'][0], b['i'][0])
  # a second call appends
  model(x)
  assert described(nnx.state(model, nnx.Intermediate)) == {
    ('i',): ('Intermediate', ((1, 3), (1, 3)))}


# -- BatchStat ----------------------------------------------------------------------------
class TinyBatchNorm(nnx.Module):
  """The Variables of flax.nnx.BatchNorm(3): Params scale/bias, BatchStats mean/var."""

  def __init__(self, num_features, *, momentum=0.99, rngs):
    del rngs  # the initializers are constants, as in BatchNorm
    self.scale = nnx.Param(jnp.ones((num_features,)))
    self.bias = nnx.Param(jnp.zeros((num_features,)))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,)))
    self.var = nnx.BatchStat(jnp.ones((num_features,)))
    self.momentum = momentum
    self.use_running_average = False

  def __call__(self, x):
    if self.use_running_average:
      mean, var = self.mean.value, self.var.value
    else:
      mean, var = x.mean(0), x.var(0)
      self.mean.value = self.momentum * self.mean.value + (1 - self.momentum) * mean
      self.var.value = self.momentum * self.var.value + (1 - self.momentum) * var
    return (x - mean) / jnp.sqrt(var + 1e-5) * self.scale + self.bias


def test_batch_stat_structure():
  layer = TinyBatchNorm(3, rngs=nnx.Rngs(0))
  assert described(nnx.state(layer)) == {
    ('bias',): ('Param', (3,)),
    ('mean',): ('BatchStat', (3,)),
    ('scale',): ('Param', (3,)),
    ('var',): ('BatchStat', (3,)),
  }
  assert list(nnx.state(layer).keys()) == ['bias', 'mean', 'scale', 'var']
  theirs = fnnx.BatchNorm(3, rngs=fnnx.Rngs(0))
  assert details(nnx.state(layer)) == details(fnnx.state(theirs))
  assert repr(jax.tree.map(jnp.shape, nnx.state(layer))) == \
    repr(jax.tree.map(jnp.shape, fnnx.state(theirs)))
  assert_same_values(nnx.state(layer), fnnx.state(theirs))
  assert described(nnx.state(layer, nnx.BatchStat)) == \
    described(fnnx.state(theirs, fnnx.BatchStat))


def test_batch_stats_follow_train_and_eval():
  layer = TinyBatchNorm(3, rngs=nnx.Rngs(0))
  x = jnp.arange(6.0).reshape(2, 3)
  layer(x)
  np.testing.assert_allclose(layer.mean.value, 0.01 * x.mean(0), rtol=1e-6)
  layer.eval()
  assert layer.use_running_average is True
  frozen = layer.mean.value
  layer(x)
  np.testing.assert_array_equal(layer.mean.value, frozen)
  layer.train()
  assert layer.use_running_average is False


# -- Cache ----------------------------------------------------------------------------------
class TinyCache(nnx.Module):
  """The Cache Variables of flax.nnx.MultiHeadAttention(num_heads=2, qkv_features=6,
  decode=True) after ``init_cache((1, 3))``."""

  def __init__(self, num_heads, qkv_features, *, rngs):
    self.query = nnx.Linear(3, qkv_features, rngs=rngs)
    self.num_heads = num_heads
    self.head_dim = qkv_features // num_heads

  def init_cache(self, input_shape, dtype=jnp.float32):
    shape = (*input_shape[:-1], self.num_heads, self.head_dim)
    self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
    self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
    self.cache_index = nnx.Cache(jnp.array(0, dtype=jnp.int32))


def test_cache_structure():
  layer = TinyCache(2, 6, rngs=nnx.Rngs(0))
  assert described(nnx.state(layer, nnx.Cache)) == {}
  layer.init_cache((1, 3))
  assert described(nnx.state(layer, nnx.Cache)) == {
    ('cache_index',): ('Cache', ()),
    ('cached_key',): ('Cache', (1, 2, 3)),
    ('cached_value',): ('Cache', (1, 2, 3)),
  }
  theirs = fnnx.MultiHeadAttention(num_heads=2, in_features=3, qkv_features=6, out_features=6,
                                   decode=True, rngs=fnnx.Rngs(0))
  theirs.init_cache((1, 3))
  assert details(nnx.state(layer, nnx.Cache)) == details(fnnx.state(theirs, fnnx.Cache))
  assert repr(jax.tree.map(jnp.shape, nnx.state(layer, nnx.Cache))) == \
    repr(jax.tree.map(jnp.shape, fnnx.state(theirs, fnnx.Cache)))
  # the cache is separate from the params and survives split / merge
  graphdef, params, cache = nnx.split(layer, nnx.Param, nnx.Cache)
  assert set(params.to_pure_dict()) == {'query'}
  back = nnx.merge(graphdef, params, cache)
  assert described(nnx.state(back, nnx.Cache)) == described(nnx.state(layer, nnx.Cache))
