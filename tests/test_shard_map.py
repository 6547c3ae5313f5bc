"""``shard_map`` and ``StateSharding`` on the 8 forced CPU devices, side by side with
flax.nnx 0.12.8: data parallel, tensor parallel with per-filter and per-path specs,
sharded parameters coming back sharded, writes inside, errors."""

import inspect

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import bridge as nnx


def mesh(name):
  return jax.sharding.Mesh(np.array(jax.devices()), (name,))


def make_mlp(lib):
  class MLP(lib.Module):
    def __init__(self):
      rngs = lib.Rngs(0)  # the same weights in both libraries
      self.linear1 = lib.Linear(2, 16, use_bias=False, rngs=rngs)
      self.linear2 = lib.Linear(16, 3, use_bias=False, rngs=rngs)
      self.calls = lib.BatchStat(jnp.zeros(()))

    def __call__(self, x):
      self.calls[...] += 1.0
      return self.linear2(jax.nn.relu(self.linear1(x)))
  return MLP()


def x82():
  return jnp.linspace(-1.0, 1.0, 16).reshape(8, 2)


def test_data_parallel_matches_flax_and_the_unsharded_call():
  m, fm = nnx.Linear(2, 3, rngs=nnx.Rngs(0)), fnnx.Linear(2, 3, rngs=fnnx.Rngs(0))
  x = jnp.arange(32.0).reshape(16, 2) / 10
  kw = dict(mesh=mesh('data'), in_specs=(P(None), P('data')), out_specs=P('data'))
  y = nnx.shard_map(lambda m, x: m(x), **kw)(m, x)
  e = fnnx.shard_map(lambda m, x: m(x), **kw)(fm, x)
  np.testing.assert_array_equal(y, e)
  np.testing.assert_array_equal(y, m(x))  # each row's dot product is computed alike
  assert y.sharding.spec == e.sharding.spec == P('data')


def tensor_parallel(lib, model_spec):
  def f(m, x):
    return jax.lax.psum(m(x), 'model')
  m = make_mlp(lib)
  y = lib.shard_map(f, mesh=mesh('model'), in_specs=(model_spec, P(None)),
                    out_specs=P(None))(m, x82())
  return m, y


def ends_with(*suffix):
  return lambda path, value: tuple(path[-len(suffix):]) == suffix


@pytest.mark.parametrize('kind', ['filters', 'state'])
def test_tensor_parallel_with_state_sharding_matches_flax(kind):
  def spec(lib):
    if kind == 'filters':
      return lib.StateSharding({ends_with('linear1', 'kernel'): P(None, 'model'),
                                ends_with('linear2', 'kernel'): P('model', None), ...: P()})
    return lib.StateSharding(lib.State({'linear1': {'kernel': P(None, 'model')},
                                        'linear2': {'kernel': P('model', None)},
                                        'calls': P()}))
  m, y = tensor_parallel(nnx, spec(nnx))
  fm, e = tensor_parallel(fnnx, spec(fnnx))
  np.testing.assert_array_equal(y, e)  # both sum the same 8 partial products with psum
  # the parameters come back sharded as their spec says, as in flax
  for name, expected in (('linear1', P(None, 'model')), ('linear2', P('model', None))):
    ours, theirs = getattr(m, name).kernel.value, getattr(fm, name).kernel.value
    np.testing.assert_array_equal(ours, theirs)
    assert ours.sharding.spec == theirs.sharding.spec == expected
  # the write inside reached the caller's Module
  assert float(m.calls.value) == float(fm.calls.value) == 1.0
  # and the result equals the unsharded forward up to summation order
  np.testing.assert_allclose(y, make_mlp(nnx)(x82()), rtol=1e-6, atol=1e-6)


def test_state_sharding_that_misses_a_leaf_is_a_value_error_naming_it():
  spec = nnx.StateSharding({ends_with('linear1', 'kernel'): P(None, 'model')})
  with pytest.raises(ValueError, match="BatchStat at 'calls' matches none of the filters"):
    tensor_parallel(nnx, spec)
  with pytest.raises(ValueError):
    tensor_parallel(fnnx, fnnx.StateSharding({ends_with('linear1', 'kernel'):
                                              P(None, 'model')}))


def test_adding_a_variable_inside_is_an_error():
  def f(m, x):
    m.extra = nnx.Param(jnp.zeros(()))
    return m(x)
  with pytest.raises(ValueError, match='changed the structure'):
    nnx.shard_map(f, mesh=mesh('data'), in_specs=(P(), P('data')), out_specs=P('data'))(
      nnx.Linear(2, 3, rngs=nnx.Rngs(0)), x82())


def test_state_sharding_on_a_plain_argument_is_an_error():
  with pytest.raises(ValueError, match='not a Module'):
    nnx.shard_map(lambda x: x, mesh=mesh('data'), in_specs=(nnx.StateSharding({...: P()}),),
                  out_specs=P())(x82())


@pytest.mark.parametrize('name', ['shard_map', 'StateSharding'])
def test_signatures_match_flax(name):
  ours = inspect.signature(getattr(nnx, name)).parameters
  theirs = inspect.signature(getattr(fnnx, name)).parameters
  assert list(ours) == list(theirs)
  assert all(ours[k].default == theirs[k].default for k in list(ours)[1:])


def test_state_sharding_in_jit_in_shardings():
  from jax.sharding import NamedSharding
  m8 = mesh('model')
  def run(lib):
    m = lib.Linear(2, 16, rngs=lib.Rngs(0))
    spec = lib.StateSharding({'kernel': NamedSharding(m8, P(None, 'model')),
                              ...: NamedSharding(m8, P())})

    @lib.jit(in_shardings=(spec, None))
    def f(m, x):
      m.kernel.value = m.kernel.value * 2.0
      return m(x)
    return m, f(m, x82())
  (m, y), (fm, e) = run(nnx), run(fnnx)
  np.testing.assert_array_equal(y, e)
  np.testing.assert_array_equal(m.kernel.value, fm.kernel.value)
  # the kernel entered (and, written, left) sharded as the StateSharding says
  assert m.kernel.value.sharding.spec == P(None, 'model')
