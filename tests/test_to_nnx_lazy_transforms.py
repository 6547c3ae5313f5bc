"""ToNNX initialized lazily inside transforms (``lazy_init(outer, x)`` where the wrapper runs
under ``vmap`` with ``split_rngs``, or under ``jit``), side by side with flax.nnx.bridge."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx as fnnx

import bridge as nnx


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def pure(lib, model):
  state = lib.state(model).to_pure_dict()
  return jax.tree.map(lambda x: jax.random.key_data(x)
                      if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, state)


def vmapped_outer(lib):
  class Outer(lib.Module):
    def __init__(self, rngs):
      self.inner = lib.bridge.ToNNX(nn.Dense(3), rngs=rngs)
      self.rngs = rngs

    def __call__(self, x):
      @lib.split_rngs(splits=5)
      @lib.vmap(in_axes=(0, None), axis_size=5)
      def ensemble(inner, x):
        return inner(x)
      return ensemble(self.inner, x)
  return Outer(lib.Rngs(0))


def jitted_outer(lib):
  class Outer(lib.Module):
    def __init__(self, rngs):
      self.inner = lib.bridge.ToNNX(nn.Dropout(0.5, deterministic=False), rngs=rngs)
      self.dense = lib.bridge.ToNNX(nn.Dense(3), rngs=rngs)

    def __call__(self, x):
      return lib.jit(lambda m, x: m.inner(m.dense(x)))(self, x)
  return Outer(lib.Rngs(0, dropout=1))


@pytest.mark.parametrize('build', [vmapped_outer, jitted_outer], ids=['vmap', 'jit'])
def test_lazy_init_inside_a_transform_matches_flax(build):
  x = jax.random.normal(jax.random.key(0), (2, 4))
  models = {}
  for lib in (fnnx, nnx):
    models[lib] = build(lib)
    lib.bridge.lazy_init(models[lib], x)
  assert_trees_equal(pure(nnx, models[nnx]), pure(fnnx, models[fnnx]))
  np.testing.assert_array_equal(models[nnx](x), models[fnnx](x))
  assert_trees_equal(pure(nnx, models[nnx]), pure(fnnx, models[fnnx]))  # RNG counts too


def test_vmapped_weights_are_stacked_and_distinct():
  model = vmapped_outer(nnx)
  nnx.lazy_init(model, jnp.ones((2, 4)))
  kernel = model.inner.kernel.value
  assert kernel.shape == (5, 4, 3) and model.inner.bias.shape == (5, 3)
  assert len({float(k.sum()) for k in kernel}) == 5  # split_rngs: one key per member
  assert 'to_nnx__initializing' not in vars(model.inner)  # the mark is gone afterwards


def test_call_before_lazy_init_inside_vmap_says_what_to_do():
  with pytest.raises(ValueError, match='lazy_init'):
    vmapped_outer(nnx)(jnp.ones((2, 4)))
