"""Initializers and activations under flax.nnx's names: the same names as flax.nnx exports,
and the same outputs."""

import flax.linen as nn
import flax.nnx.nn.activations as flax_activations
import flax.nnx.nn.initializers as flax_initializers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx
from bridge.nn import activations, initializers

F32, F16, BF16 = jnp.float32, jnp.float16, jnp.bfloat16
TYPING_HELPERS = {'tp', 'DtypeLikeInexact'}  # names flax's module imports for annotations


def public_names(module) -> set[str]:
  return {n for n in dir(module) if not n.startswith('_')} - TYPING_HELPERS


def test_initializer_names_are_flax_names():
  assert public_names(flax_initializers) <= public_names(initializers)
  assert nnx.initializers is initializers


# (name, factory arguments, shape)
INITIALIZERS = [
  ('lecun_normal', (), (3, 4)),
  ('lecun_uniform', (), (3, 4)),
  ('zeros_init', (), (2, 3)),
  ('ones_init', (), (2, 3)),
  ('normal', (0.5,), (3, 4)),
  ('truncated_normal', (0.1,), (3, 4)),
  ('uniform', (2.0,), (3, 4)),
  ('constant', (0.25,), (2, 2)),
  ('variance_scaling', (1.0, 'fan_in', 'normal'), (3, 4)),
  ('variance_scaling', (2.0, 'fan_avg', 'uniform'), (3, 4, 2)),
  ('variance_scaling', (1.0, 'fan_in', 'normal', 0, 1), (3, 4)),
  ('xavier_normal', (), (3, 4)),
  ('xavier_uniform', (), (3, 4)),
  ('he_normal', (), (3, 4)),
  ('he_uniform', (), (3, 4)),
  ('orthogonal', (1.5,), (3, 4)),
  ('delta_orthogonal', (), (3, 4, 4)),
]


# and a few in bf16
INITIALIZER_CASES = [(*case, F32) for case in INITIALIZERS] + [
  (*case, BF16) for case in INITIALIZERS
  if case[0] in ('lecun_normal', 'uniform', 'ones_init')]


@pytest.mark.parametrize('name,args,shape,dtype', INITIALIZER_CASES)
def test_initializers_equal_flax(name, args, shape, dtype):
  key = jax.random.key(7)
  ours = getattr(initializers, name)(*args)(key, shape, dtype)
  theirs = getattr(flax_initializers, name)(*args)(key, shape, dtype)
  assert ours.dtype == theirs.dtype == dtype and ours.shape == shape
  np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))


def test_zeros_and_ones_init():
  key = jax.random.key(0)
  np.testing.assert_array_equal(initializers.zeros_init()(key, (2, 3), F32), np.zeros((2, 3)))
  np.testing.assert_array_equal(initializers.ones_init()(key, (3,), F16), np.ones(3))


# -- activations ---------------------------------------------------------------------------
def test_activation_names_are_exported_as_flax_nnx_exports_them():
  names = set(flax_activations.__all__)
  assert all(hasattr(fnnx, n) for n in names)  # what flax.nnx re-exports at top level
  missing = {n for n in names if not hasattr(nnx, n) or not hasattr(activations, n)}
  assert not missing, f'not exported by bridge: {sorted(missing)}'


X = jnp.array([[-2.5, -1.0, -0.25, 0.0], [0.5, 1.0, 3.0, 7.0]])
ACTIVATION_INPUTS = {'one_hot': (jnp.array([0, 2, 1]), 3)}


@pytest.mark.parametrize('name', sorted(set(flax_activations.__all__) - {'PReLU'}))
def test_activations_equal_flax(name):
  args = ACTIVATION_INPUTS.get(name, (X,))
  np.testing.assert_array_equal(getattr(nnx, name)(*args), getattr(fnnx, name)(*args))


@pytest.mark.parametrize('dtype,param_dtype,x_dtype', [(None, F32, F32), (None, F32, BF16),
                                                       (F16, F32, F32), (None, BF16, F16)])
def test_prelu_matches_flax_nnx_and_linen(dtype, param_dtype, x_dtype):
  ours = nnx.PReLU(0.2, dtype=dtype, param_dtype=param_dtype)
  theirs = fnnx.PReLU(0.2, dtype=dtype, param_dtype=param_dtype)
  assert ours.negative_slope[...].dtype == theirs.negative_slope[...].dtype == param_dtype
  x = X.astype(x_dtype)
  out = ours(x)
  np.testing.assert_array_equal(out, theirs(x))
  assert out.dtype == theirs(x).dtype
  if dtype is None:  # Linen's PReLU has no dtype argument
    ref = nn.PReLU(param_dtype=param_dtype, negative_slope_init=0.2)
    np.testing.assert_array_equal(out, ref.apply({'params': {
      'negative_slope': ours.negative_slope[...]}}, x))
  assert list(nnx.state(ours).keys()) == ['negative_slope']
