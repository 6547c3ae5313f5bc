"""Pooling: ``pool``/``avg_pool``/``max_pool``/``min_pool`` equal flax.linen's (which flax.nnx
re-exports) bit for bit: the same ``reduce_window`` with the same window, strides and padding,
and the same division for averages. Covers padding strings and pairs, strides,
``count_include_pad``, batch-less and multi-batch inputs, integer inputs, and the errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from flax.linen import pooling as linen_pooling
from jax import lax

import bridge as nnx
from bridge.nn import pooling


def data(seed, shape, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


CASES = [  # (input shape, window, strides, padding)
  ((2, 5, 6, 3), (2, 3), None, 'VALID'),
  ((2, 5, 6, 3), (3, 2), (2, 1), 'SAME'),
  ((2, 5, 6, 3), (2, 2), (2, 2), ((1, 0), (2, 1))),
  ((5, 6, 3), (2, 2), (1, 2), 'SAME'),          # no batch axis
  ((2, 3, 7, 2), (3,), (2,), 'SAME'),            # two batch axes, 1-D window
  ((3, 7, 2), (3,), (2,), [(1, 2)]),             # list padding
  ((1, 4, 4, 4, 2), (2, 2, 2), None, 'SAME'),    # 3-D window
]


def all_pools(lib, min_pool, x, window, strides, padding):
  """Every pooling function of ``lib`` (bridge or flax.linen) on ``x``."""
  return (lib.max_pool(x, window, strides, padding), min_pool(x, window, strides, padding),
          lib.avg_pool(x, window, strides, padding, count_include_pad=True),
          lib.avg_pool(x, window, strides, padding, count_include_pad=False),
          lib.pool(x, 0., lax.add, window, strides, padding))


@pytest.mark.parametrize('shape,window,strides,padding', CASES)
def test_equal_to_linen(shape, window, strides, padding):
  # one jitted program per side (the same ops either way), not one compilation per op
  x = data(0, shape)
  ours = jax.jit(lambda x: all_pools(nnx, nnx.min_pool, x, window, strides, padding))(x)
  theirs = jax.jit(lambda x: all_pools(nn, linen_pooling.min_pool, x, window, strides,
                                       padding))(x)
  for a, b in zip(ours, theirs, strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(nnx.max_pool(x, window, strides, padding), ours[0])  # eager


def test_explicit_padding_with_two_batch_axes_pools_each_example():
  # flax.linen pads only one batch axis here (reduce_window then fails); bridge pads all
  # of them, which equals linen on the batch axes merged into one
  x = data(2, (2, 3, 7, 2))
  for include in (True, False):
    ours = nnx.avg_pool(x, (3,), (2,), ((1, 2),), count_include_pad=include)
    theirs = nn.avg_pool(x.reshape(6, 7, 2), (3,), (2,), ((1, 2),),
                         count_include_pad=include)
    np.testing.assert_array_equal(ours, theirs.reshape(2, 3, 4, 2))


def test_count_include_pad_changes_border_windows_only():
  x = jnp.ones((1, 3, 3, 1))
  with_pad = nnx.avg_pool(x, (2, 2), padding='SAME')[0, :, :, 0]
  without = nnx.avg_pool(x, (2, 2), padding='SAME', count_include_pad=False)[0, :, :, 0]
  np.testing.assert_array_equal(without, np.ones((3, 3)))
  np.testing.assert_array_equal(with_pad, [[1, 1, .5], [1, 1, .5], [.5, .5, .25]])
  np.testing.assert_array_equal(with_pad, nn.avg_pool(x, (2, 2), padding='SAME')[0, :, :, 0])
  np.testing.assert_array_equal(
    without, nn.avg_pool(x, (2, 2), padding='SAME', count_include_pad=False)[0, :, :, 0])


def test_integer_and_half_inputs_keep_linen_dtypes():
  xi = jnp.arange(32, dtype=jnp.int32).reshape(2, 4, 4, 1)
  xh = data(1, (2, 4, 4, 1), jnp.bfloat16)
  for x in (xi, xh):
    for ours, theirs in ((nnx.max_pool, nn.max_pool), (nnx.avg_pool, nn.avg_pool)):
      a, b = ours(x, (2, 2), padding='SAME'), theirs(x, (2, 2), padding='SAME')
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(a, b)


def test_flax_nnx_names_are_linen_functions_with_our_signatures():
  import inspect
  for name in ('pool', 'avg_pool', 'max_pool', 'min_pool'):
    assert inspect.signature(getattr(nnx, name)) == inspect.signature(getattr(fnnx, name))


@pytest.mark.parametrize('kwargs,match', [
  (dict(window_shape=(2, 2), strides=(1,)), 'strides'),
  (dict(window_shape=(2, 2), padding=((1, 1),)), 'padding'),
  (dict(window_shape=(2, 2), padding=((1, 1, 1), (0, 0))), 'padding'),
  (dict(window_shape=(2, 2, 2)), 'too small'),
])
def test_bad_arguments_raise_value_and_assertion_errors(kwargs, match):
  x = jnp.ones((4, 4, 1))
  with pytest.raises(ValueError, match=match):
    nnx.max_pool(x, **kwargs)
  with pytest.raises(AssertionError):  # what flax.linen raises
    nn.max_pool(x, **kwargs)
  assert issubclass(pooling.PoolingArgumentError, AssertionError)
