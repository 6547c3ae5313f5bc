"""SpectralNorm and WeightNorm side by side with flax.nnx, wrapping the same layers built from
the same seed: the same signatures, the same state (``batch_stats`` paths and ``u`` vectors,
``scales``), and after every call the same outputs, normalized weights and power-iteration
statistics bit for bit (the same ops in the same order)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from flax_parity import assert_same_signature, jitted

import bridge as nnx


def data(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def flat(state, to_flat):
  return {tuple(p): (type(v).__name__ if hasattr(v, 'get_metadata') else 'Array',
                     np.asarray(v[...])) for p, v in to_flat(state)}


def assert_same_state(ours, theirs):
  a = flat(nnx.state(ours), nnx.to_flat_state)
  b = flat(fnnx.state(theirs), fnnx.to_flat_state)
  assert a.keys() == b.keys()
  for k in a:
    assert a[k][0] == b[k][0], k
    np.testing.assert_array_equal(a[k][1], b[k][1], err_msg=str(k))


def conv(lib, seed=0):
  return lib.Conv(3, 4, kernel_size=(2, 2), rngs=lib.Rngs(seed))


def linear(lib, seed=0):
  return lib.Linear(6, 5, rngs=lib.Rngs(seed))


@pytest.mark.parametrize('name', ['SpectralNorm', 'WeightNorm'])
def test_signatures_match_flax(name):
  from flax.nnx.nn import normalization as flax_module

  from bridge.nn import normalization
  # flax.nnx's module path works too
  assert getattr(normalization, name) is getattr(nnx, name)
  assert getattr(flax_module, name) is getattr(fnnx, name)
  for method in ('__init__', '__call__'):
    assert_same_signature(getattr(getattr(nnx, name), method),
                          getattr(getattr(fnnx, name), method))


# -- SpectralNorm ---------------------------------------------------------------------------
@pytest.mark.parametrize('make,shape,kw,modes', [
  (linear, (3, 6), dict(), (True, False)),
  (conv, (2, 5, 5, 3), dict(n_steps=3), (True,)),  # a 4-D kernel, flattened to (12, 4)
])
def test_spectral_norm_equals_flax_over_calls(make, shape, kw, modes):
  ours = nnx.SpectralNorm(make(nnx), rngs=nnx.Rngs(1), **kw)
  theirs = fnnx.SpectralNorm(make(fnnx), rngs=fnnx.Rngs(1), **kw)
  assert_same_state(ours, theirs)
  x = data(0, shape)
  for update_stats in modes:
    np.testing.assert_array_equal(jitted(nnx, ours, x, update_stats=update_stats),
                                  jitted(fnnx, theirs, x, update_stats=update_stats))
    assert_same_state(ours, theirs)


def test_spectral_norm_normalizes_the_largest_singular_value_and_stats_follow_mode():
  layer = nnx.SpectralNorm(linear(nnx), n_steps=20, rngs=nnx.Rngs(1))
  u0 = layer.batch_stats[('kernel', 'u')][...]
  layer.eval()
  layer(jnp.ones((1, 6)))
  np.testing.assert_array_equal(layer.batch_stats[('kernel', 'u')][...], u0)
  layer.train()
  layer(jnp.ones((1, 6)))
  assert not np.array_equal(layer.batch_stats[('kernel', 'u')][...], u0)
  top = np.linalg.svd(np.asarray(layer.layer_instance.kernel[...]), compute_uv=False)[0]
  # power iteration estimates sigma from below (20 steps here): close to, not exactly, 1
  np.testing.assert_allclose(top, 1.0, rtol=1e-3)
  assert set(nnx.state(layer, nnx.BatchStat).keys()) == {'batch_stats'}


def test_spectral_norm_errors():
  with pytest.raises(ValueError, match='4D but error_on_non_matrix'):
    nnx.SpectralNorm(conv(nnx), error_on_non_matrix=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError):
    fnnx.SpectralNorm(conv(fnnx), error_on_non_matrix=True, rngs=fnnx.Rngs(0))
  layer = nnx.SpectralNorm(linear(nnx), rngs=nnx.Rngs(0))
  layer.layer_instance.extra = nnx.Param(jnp.ones((2, 2)))
  with pytest.raises(RuntimeError, match="extra"):
    layer(jnp.ones((1, 6)))


# -- WeightNorm -----------------------------------------------------------------------------
@pytest.mark.parametrize('make,shape,kw', [
  (linear, (3, 6), dict()),
  (conv, (2, 5, 5, 3), dict(feature_axes=(0, -1))),
  (conv, (2, 5, 5, 3), dict(feature_axes=None)),
  (linear, (3, 6), dict(use_scale=False)),
  (linear, (3, 6), dict(variable_filter=nnx.PathContains('bias'), epsilon=1e-3)),
])
def test_weight_norm_equals_flax(make, shape, kw):
  fkw = dict(kw)
  if 'variable_filter' in kw:
    fkw['variable_filter'] = fnnx.PathContains('bias')
  ours = nnx.WeightNorm(make(nnx), rngs=nnx.Rngs(1), **kw)
  theirs = fnnx.WeightNorm(make(fnnx), rngs=fnnx.Rngs(1), **fkw)
  if 'variable_filter' in kw:   # a non-zero bias to normalize
    for m in (ours, theirs):
      m.layer_instance.bias[...] = data(9, m.layer_instance.bias.shape)
  assert_same_state(ours, theirs)
  x = data(0, shape)
  for _ in range(2):
    np.testing.assert_array_equal(jitted(nnx, ours, x), jitted(fnnx, theirs, x))
    assert_same_state(ours, theirs)


def test_weight_norm_gives_unit_norm_columns_times_scale():
  layer = nnx.WeightNorm(linear(nnx), rngs=nnx.Rngs(1))
  layer.scales[('kernel',)] = jnp.arange(1., 6.)
  layer(data(3, (4, 6)))
  norms = jnp.linalg.norm(layer.layer_instance.kernel[...], axis=0)
  np.testing.assert_allclose(norms, np.arange(1., 6.), rtol=1e-6)   # norm vs rsqrt rounding


def test_weight_norm_dtype_and_other_scale_init():
  layer = nnx.WeightNorm(linear(nnx), dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
  ftheirs = fnnx.WeightNorm(linear(fnnx), dtype=jnp.bfloat16, rngs=fnnx.Rngs(1))
  x = data(4, (2, 6))
  np.testing.assert_array_equal(layer(x), ftheirs(x))
  assert layer.layer_instance.kernel.dtype == jnp.bfloat16
  # flax.nnx passes its RngStream as the key (only initializers that ignore it work);
  # bridge draws a key for any initializer other than ones
  normal = nnx.WeightNorm(linear(nnx), scale_init=nnx.initializers.normal(), rngs=nnx.Rngs(1))
  expected = nnx.initializers.normal()(nnx.Rngs(1).params(), (5,), jnp.float32)
  np.testing.assert_array_equal(normal.scales[('kernel',)], expected)
  with pytest.raises(TypeError):
    fnnx.WeightNorm(linear(fnnx), scale_init=fnnx.initializers.normal(), rngs=fnnx.Rngs(1))


def test_weight_norm_missing_scale_is_a_runtime_error():
  layer = nnx.WeightNorm(linear(nnx), rngs=nnx.Rngs(0))
  layer.layer_instance.kernel2 = nnx.Param(jnp.ones((6, 5)))
  layer.variable_filter = nnx.filters.to_predicate(nnx.PathContains('kernel2'))
  with pytest.raises(RuntimeError, match='kernel2'):
    layer(jnp.ones((1, 6)))
