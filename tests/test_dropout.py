"""Dropout: masks equal flax.nnx's from the same ``Rngs`` and flax.linen's from the same
key, a fresh key each call (also through ``bridge.jit``), ``deterministic`` at construction,
at the call and by ``train()``/``eval()``, and the errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx


def ones(shape, dtype=jnp.float32):
  return jnp.ones(shape, dtype)


def normal(seed, shape, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def assert_same(a, b):
  assert a.dtype == b.dtype, (a.dtype, b.dtype)
  np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


# -- parity ------------------------------------------------------------------------------------
@pytest.mark.parametrize('seeds', [dict(default=0), dict(dropout=3), dict(params=0, dropout=5)])
@pytest.mark.parametrize('rate, broadcast_dims', [(0.5, ()), (0.1, (0,)), (0.9, (0, 2))])
def test_masks_equal_flax_nnx_from_the_same_rngs(seeds, rate, broadcast_dims):
  x = normal(0, (4, 3, 5))
  ours = nnx.Dropout(rate, broadcast_dims=broadcast_dims, rngs=nnx.Rngs(**seeds))
  theirs = fnnx.Dropout(rate, broadcast_dims=broadcast_dims, rngs=fnnx.Rngs(**seeds))
  for _ in range(3):
    assert_same(ours(x), theirs(x))
  assert int(ours.rngs.count.value) == int(theirs.rngs.count[...]) == 3


def test_model_with_dropout_equals_flax_nnx():
  """Linear and Dropout sharing one ``Rngs``: the same weights and masks as flax.nnx."""
  def make(lib):
    class MLP(lib.Module):
      def __init__(self, rngs):
        self.linear = lib.Linear(3, 8, rngs=rngs)
        self.dropout = lib.Dropout(0.5, rngs=rngs)

      def __call__(self, x):
        return self.dropout(self.linear(x))
    return MLP(lib.Rngs(0))

  ours, theirs = make(nnx), make(fnnx)
  x = normal(1, (2, 3))
  for _ in range(2):
    assert_same(ours(x), theirs(x))
  ours.eval()
  theirs.eval()
  assert_same(ours(x), theirs(x))


def test_rngs_given_at_the_call_equal_flax_nnx():
  x = normal(0, (6, 4))
  ours, theirs = nnx.Dropout(0.3), fnnx.Dropout(0.3)
  # an Rngs (its dropout stream is used, and advanced)
  r_ours, r_theirs = nnx.Rngs(dropout=7), fnnx.Rngs(dropout=7)
  for _ in range(2):
    assert_same(ours(x, rngs=r_ours), theirs(x, rngs=r_theirs))
  # a stream
  assert_same(ours(x, rngs=nnx.Rngs(9).default), theirs(x, rngs=fnnx.Rngs(9).default))
  # a key
  key = jax.random.key(4)
  assert_same(ours(x, rngs=key), theirs(x, rngs=key))
  # the call's rngs win over the layer's own
  layer = nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=1))
  assert_same(layer(x, rngs=key), ours(x, rngs=key))
  assert int(layer.rngs.count.value) == 0


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize('rate, broadcast_dims', [(0.5, ()), (0.25, (1,)), (0.75, (0, 2))])
def test_equals_linen_with_the_same_key(dtype, rate, broadcast_dims):
  x = normal(2, (3, 4, 5), dtype)
  key = jax.random.key(11)
  ours = nnx.Dropout(rate, broadcast_dims=broadcast_dims)(x, deterministic=False, rngs=key)
  linen = nn.Dropout(rate, broadcast_dims=broadcast_dims).apply(
    {}, x, deterministic=False, rng=key)
  assert_same(ours, linen)
  assert ours.dtype == dtype


def test_legacy_uint32_key():
  x = ones((10,))
  key = jax.random.PRNGKey(0)
  linen = nn.Dropout(0.5).apply({}, x, deterministic=False, rng=key)
  assert_same(nnx.Dropout(0.5)(x, rngs=key), linen)


# -- behaviour ---------------------------------------------------------------------------------
def test_fresh_mask_each_call_and_scaling():
  layer = nnx.Dropout(0.25, rngs=nnx.Rngs(dropout=0))
  x = ones((4000,))
  a, b = layer(x), layer(x)
  assert not np.array_equal(a, b)
  assert set(np.unique(a).tolist()) == {0.0, float(np.float32(1) / np.float32(0.75))}
  np.testing.assert_allclose(float((a == 0).mean()), 0.25, atol=0.03)


def test_broadcast_dims_share_the_mask():
  y = nnx.Dropout(0.5, broadcast_dims=(0,), rngs=nnx.Rngs(0))(ones((5, 64)))
  assert (y == y[0]).all()
  assert 0 < float((y[0] == 0).mean()) < 1


def test_deterministic_at_construction_call_and_by_train_eval():
  x = normal(0, (3, 8))
  layer = nnx.Dropout(0.5, deterministic=True, rngs=nnx.Rngs(0))
  assert layer(x) is x  # the identity: the input itself
  assert not np.array_equal(layer(x, deterministic=False), x)
  layer.deterministic = False
  assert layer(x, deterministic=True) is x

  model = nnx.Sequential(nnx.Linear(8, 8, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(0)))
  dropout = model.layers[1]
  model.eval()
  assert dropout.deterministic is True
  assert_same(model(x), model.layers[0](x))
  model.train()
  assert dropout.deterministic is False
  assert not np.array_equal(model(x), model.layers[0](x))


def test_rate_zero_and_one():
  x = normal(0, (3, 4))
  assert nnx.Dropout(0.0)(x) is x  # no keys needed
  assert_same(nnx.Dropout(1.0)(x), jnp.zeros_like(x))
  grad = jax.grad(lambda x: nnx.Dropout(1.0)(x).sum())(x)
  assert not np.isnan(grad).any()


def test_gradient_is_the_scaled_mask():
  x = normal(0, (20,))
  key = jax.random.key(3)
  layer = nnx.Dropout(0.4)
  grad = jax.grad(lambda x: layer(x, rngs=key).sum())(x)
  mask = layer(jnp.ones_like(x), rngs=key)
  np.testing.assert_array_equal(grad, mask)


def test_keys_advance_through_bridge_jit_like_flax_nnx():
  ours = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=2))
  theirs = fnnx.Dropout(0.5, rngs=fnnx.Rngs(dropout=2))
  x = normal(0, (4, 6))
  step = nnx.jit(lambda layer, x: layer(x))
  fstep = fnnx.jit(lambda layer, x: layer(x))
  outs = [step(ours, x) for _ in range(3)]
  for y in outs:
    assert_same(y, fstep(theirs, x))
  assert not np.array_equal(outs[0], outs[1])
  assert int(ours.rngs.count.value) == 3


def test_dropout_state_is_a_forked_stream():
  rngs = nnx.Rngs(dropout=0)
  layer = nnx.Dropout(0.5, rngs=rngs)
  state = nnx.state(layer)
  assert set(state['rngs'].keys()) == {'key', 'count'}
  assert isinstance(state['rngs']['key'], nnx.RngKey)
  assert int(rngs.dropout.count.value) == 1  # the fork drew one key
  stream = nnx.Rngs(dropout=0).dropout
  assert nnx.Dropout(0.5, rngs=stream).rngs.tag == 'dropout'


def test_custom_rng_collection():
  x = ones((50,))
  ours = nnx.Dropout(0.5, rng_collection='noise', rngs=nnx.Rngs(noise=1, dropout=2))
  theirs = fnnx.Dropout(0.5, rng_collection='noise', rngs=fnnx.Rngs(noise=1, dropout=2))
  assert_same(ours(x), theirs(x))
  assert_same(nnx.Dropout(0.5, rng_collection='noise')(x, rngs=nnx.Rngs(noise=3)),
              fnnx.Dropout(0.5, rng_collection='noise')(x, rngs=fnnx.Rngs(noise=3)))


# -- errors ------------------------------------------------------------------------------------
def test_missing_stream_names_it():
  with pytest.raises(KeyError, match="'dropout' stream.*nnx.Rngs\\(dropout=0\\)"):
    nnx.Dropout(0.5, rngs=nnx.Rngs(params=0))
  with pytest.raises(KeyError, match="'noise' stream"):
    nnx.Dropout(0.5, rng_collection='noise', rngs=nnx.Rngs(params=0))
  with pytest.raises(KeyError, match="'dropout' stream"):
    nnx.Dropout(0.5)(ones((3,)), rngs=nnx.Rngs(params=0))


def test_no_rngs_when_not_deterministic_names_the_stream():
  layer = nnx.Dropout(0.5)
  with pytest.raises(ValueError, match="no random keys.*'dropout' stream"):
    layer(ones((3,)))
  layer.eval()
  assert_same(layer(ones((3,))), ones((3,)))  # deterministic: no keys needed


def test_deterministic_must_be_given():
  layer = nnx.Dropout(0.5, deterministic=None, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='no `deterministic` was given'):
    layer(ones((3,)))
  assert layer(ones((3,)), deterministic=True).shape == (3,)


def test_bad_arguments():
  with pytest.raises(ValueError, match=r'rate=1.5 is not a probability'):
    nnx.Dropout(1.5)
  with pytest.raises(TypeError, match='rngs must be an Rngs, an RngStream or None, got int'):
    nnx.Dropout(0.5, rngs=0)
  with pytest.raises(TypeError, match='rngs must be an Rngs, an RngStream or a key, got int'):
    nnx.Dropout(0.5)(ones((3,)), rngs=0)
