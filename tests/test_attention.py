"""Tests for ``bridge.nn.attention``: parity with flax.linen's ``MultiHeadDotProductAttention``
(given the same parameters) and flax.nnx's ``MultiHeadAttention`` (from the same seed), the
decode cache, the attention functions and mask helpers, and the errors.

Comparisons are exact (``==``) unless a tolerance is stated with its reason.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx
from bridge.nn import attention

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning',
                                        'ignore:.*outside of .nnx.capture')


def normal(seed, shape):
  """Test data from NumPy (``jax.random`` would compile a sampler for every shape)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def params_of(layer):
  """The layer's parameters as Linen's ``{'params': ...}`` (the same nesting and shapes)."""
  return {'params': nnx.state(layer, nnx.Param).to_pure_dict()}


def flat_values(state):
  return {tuple(map(str, path)): np.asarray(v.get_value()) for path, v in state.flat_state()}


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


# Most tests use one shape family (2 heads of 4 features over 4 input features, inputs
# (2, 5, 4), cross-attention keys (2, 7, 6)), so that eager ops compile once for all.
def layer_pair(*args, **kwargs):
  """The same layer built by bridge and by flax.nnx from ``Rngs(0)``."""
  return (nnx.MultiHeadAttention(*args, **kwargs, rngs=nnx.Rngs(0)),
          fnnx.MultiHeadAttention(*args, **kwargs, rngs=fnnx.Rngs(0)))


# -- initialization: the same seed gives flax.nnx's parameters -----------------------------
INIT_CONFIGS = {
  'default': dict(),
  'cross_gqa_normalize_qk': dict(num_heads=4, out_features=3, num_kv_heads=2,
                                 in_kv_features=6, normalize_qk=True),
  'inits_no_bias_bf16': dict(kernel_init=jax.nn.initializers.normal(0.5),
                             out_kernel_init=jax.nn.initializers.ones, use_bias=False,
                             param_dtype=jnp.bfloat16),
  'bias_inits': dict(bias_init=jax.nn.initializers.normal(),
                     out_bias_init=jax.nn.initializers.ones),
}


@pytest.mark.parametrize('config', INIT_CONFIGS.values(), ids=INIT_CONFIGS.keys())
def test_same_seed_gives_flax_nnx_params(config):
  config = {'num_heads': 2, 'in_features': 4, 'qkv_features': 8, **config}
  ours, theirs = layer_pair(**config)
  a, b = flat_values(nnx.state(ours, nnx.Param)), flat_values(fnnx.state(theirs, fnnx.Param))
  assert a.keys() == b.keys()
  for path in a:
    assert a[path].dtype == b[path].dtype, path
    np.testing.assert_array_equal(a[path], b[path], err_msg=str(path))


def test_seed_streams_params_and_dropout():
  """With separate streams, parameters come from ``params`` and the kept dropout stream is
  forked from ``dropout`` after them, as in flax.nnx: the dropped-out outputs agree too."""
  kwargs = dict(dropout_rate=0.5, deterministic=False, decode=False)
  ours = nnx.MultiHeadAttention(2, 4, 8, **kwargs, rngs=nnx.Rngs(params=1, dropout=2))
  theirs = fnnx.MultiHeadAttention(2, 4, 8, **kwargs, rngs=fnnx.Rngs(params=1, dropout=2))
  x = normal(0, (2, 5, 4))
  for _ in range(2):  # fresh keys each call, the same ones as flax's
    np.testing.assert_array_equal(ours(x), theirs(x))


# -- forward parity ------------------------------------------------------------------------
def test_matches_flax_nnx_on_every_path():
  """The fused path (no dropout, no sow), the explicit-weights path (sow), dropout; grouped
  heads with normalize_qk; cross-attention with a mask: all exactly equal to flax.nnx."""
  x, kv = normal(0, (2, 5, 4)), normal(1, (2, 7, 6))
  mask = nnx.make_attention_mask(jnp.ones((2, 5)), jnp.arange(7) < jnp.array([[7], [4]]))
  for config in (dict(num_heads=4, num_kv_heads=2, normalize_qk=True, dropout_rate=0.3),
                 dict(num_heads=2, dropout_rate=0.3)):
    ours, theirs = layer_pair(in_features=4, qkv_features=8, in_kv_features=6, **config)
    for kwargs in (dict(deterministic=True), dict(deterministic=True, sow_weights=True),
                   dict(deterministic=False)):
      a = ours(x, kv, mask=mask, decode=False, **kwargs)
      b = theirs(x, kv, mask=mask, decode=False, **kwargs)
      np.testing.assert_array_equal(a, b, err_msg=f'{config} {kwargs}')


def linen_layer(layer, **overrides):
  kwargs = dict(num_heads=layer.num_heads, qkv_features=layer.qkv_features,
                out_features=layer.out_features, dropout_rate=layer.dropout_rate,
                normalize_qk=layer.normalize_qk, use_bias=layer.use_bias, dtype=layer.dtype)
  return nn.MultiHeadDotProductAttention(**{**kwargs, **overrides})


LINEN_CASES = {
  'self': dict(),
  'self_bf16': dict(dtype=jnp.bfloat16),
  'normalize_qk_no_bias': dict(normalize_qk=True, use_bias=False),
  'cross': dict(in_kv_features=6, out_features=3),
}


@pytest.mark.parametrize('case', LINEN_CASES.values(), ids=LINEN_CASES.keys())
def test_matches_linen_given_the_same_params(case):
  ours = nnx.MultiHeadAttention(2, 4, 8, **case, rngs=nnx.Rngs(0))
  theirs = linen_layer(ours)
  x = normal(0, (2, 5, 4))
  cross = ours.in_kv_features != ours.in_features
  kv = normal(1, (2, 7, ours.in_kv_features)) if cross else x
  lengths = jnp.array([[kv.shape[1]], [3]])
  padding = nn.make_attention_mask(jnp.ones((2, 5)), jnp.arange(kv.shape[1]) < lengths)
  masks = [None, padding]
  if not cross:
    masks.append(nn.combine_masks(nn.make_causal_mask(jnp.ones((2, 5))), padding))
  for mask in masks:
    theirs_y = theirs.apply(params_of(ours), x, kv, mask=mask)
    # the explicit-weights path (sow_weights) computes what Linen computes
    ours_y = ours(x, kv, mask=mask, decode=False, sow_weights=True)
    assert ours_y.dtype == theirs_y.dtype
    np.testing.assert_array_equal(ours_y, theirs_y)
    # the fused path (jax.nn.dot_product_attention, as flax.nnx): the same in float32 when
    # 1/sqrt(head_dim) is a power of two (here head_dim=4; see the rounding test below);
    # in bfloat16 it takes logits and softmax in float32 where Linen rounds them to
    # bfloat16, so they agree to a few bfloat16 ulps (2**-7 relative)
    ours_y = ours(x, kv, mask=mask, decode=False)
    if ours.dtype == jnp.bfloat16:
      np.testing.assert_allclose(ours_y.astype(np.float32), theirs_y.astype(np.float32),
                                 rtol=3e-2, atol=3e-2)
    else:
      np.testing.assert_array_equal(ours_y, theirs_y)


def test_fused_path_is_linen_up_to_rounding():
  """With head_dim=3 the fused path scales the logits q.k by 1/sqrt(3) where Linen scales q
  first: the same math rounded differently, so allclose at float32 precision (1e-6); the
  explicit-weights path stays exact."""
  ours = nnx.MultiHeadAttention(2, 4, 6, rngs=nnx.Rngs(0))
  x = normal(0, (2, 5, 4))
  theirs_y = linen_layer(ours).apply(params_of(ours), x)
  np.testing.assert_allclose(ours(x, decode=False), theirs_y, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(ours(x, decode=False, sow_weights=True), theirs_y)


def test_inputs_v_defaults_to_inputs_k_and_three_inputs_match_linen():
  ours = nnx.MultiHeadAttention(2, 4, 8, rngs=nnx.Rngs(0))
  q, k, v = normal(0, (5, 4)), normal(1, (7, 4)), normal(2, (7, 4))  # no batch dimensions
  np.testing.assert_array_equal(ours(q, k, v, decode=False),
                                linen_layer(ours).apply(params_of(ours), q, k, v))
  np.testing.assert_array_equal(ours(q, k, decode=False), ours(q, k, k, decode=False))
  np.testing.assert_array_equal(ours(q, decode=False), ours(q, q, q, decode=False))


def test_dropout_matches_linen_with_the_same_key():
  for broadcast in (True, False):
    ours = nnx.MultiHeadAttention(2, 4, 8, dropout_rate=0.4, broadcast_dropout=broadcast,
                                  keep_rngs=False, rngs=nnx.Rngs(0))
    theirs = linen_layer(ours, broadcast_dropout=broadcast)
    x = normal(0, (2, 5, 4))
    key = jax.random.fold_in(jax.random.key(7), 0)  # the first key of Rngs(dropout=7)
    ours_y = ours(x, decode=False, deterministic=False, rngs=nnx.Rngs(dropout=7))
    theirs_y = theirs.apply(params_of(ours), x, deterministic=False, dropout_rng=key)
    np.testing.assert_array_equal(ours_y, theirs_y)
    assert not np.array_equal(ours_y, ours(x, decode=False, deterministic=True))


def test_sow_weights_matches_linen_intermediates():
  ours = nnx.MultiHeadAttention(2, 4, 8, rngs=nnx.Rngs(0))
  x = normal(0, (2, 5, 4))
  mask = nn.make_causal_mask(jnp.ones((2, 5)))
  ours(x, mask=mask, decode=False)
  assert not nnx.state(ours, nnx.Intermediate).flat_state()  # only on request
  for _ in range(2):
    ours(x, mask=mask, decode=False, sow_weights=True)
  _, theirs = linen_layer(ours).apply(params_of(ours), x, mask=mask, sow_weights=True,
                                      mutable=['intermediates'])
  weights = theirs['intermediates']['attention_weights']
  assert type(ours.attention_weights) is nnx.Intermediate
  assert_trees_equal(ours.attention_weights.value, weights * 2)  # sown twice: a 2-tuple
  assert ours.attention_weights.value[0].shape == (2, 2, 5, 5)


# -- the decode cache ----------------------------------------------------------------------
def test_init_cache_structure_is_seed_page_000():
  layer = nnx.MultiHeadAttention(num_heads=2, in_features=3, qkv_features=6, out_features=6,
                                 decode=True, rngs=nnx.Rngs(0))
  layer.init_cache((1, 3))
  shapes = jax.tree.map(jnp.shape, nnx.state(layer, nnx.Cache))
  described = {'/'.join(map(str, p)): (type(v).__name__, v.get_value())
               for p, v in shapes.flat_state()}
  assert described == {'cache_index': ('Cache', ()), 'cached_key': ('Cache', (1, 2, 3)),
                       'cached_value': ('Cache', (1, 2, 3))}
  theirs = fnnx.MultiHeadAttention(num_heads=2, in_features=3, qkv_features=6,
                                   out_features=6, decode=True, rngs=fnnx.Rngs(0))
  theirs.init_cache((1, 3))
  for path, v in nnx.state(layer, nnx.Cache).flat_state():
    flax_value = fnnx.state(theirs, fnnx.Cache)[path[0]].get_value()
    assert v.value.dtype == flax_value.dtype and v.value.shape == flax_value.shape
  assert layer.cache_index.value.dtype == jnp.int32
  layer.init_cache((4, 3), dtype=jnp.bfloat16)
  assert layer.cached_key.value.dtype == jnp.bfloat16


def test_decode_matches_linen_step_by_step():
  ours = nnx.MultiHeadAttention(2, 4, 8, decode=True, rngs=nnx.Rngs(0))
  theirs = linen_layer(ours, decode=True)
  seq = normal(0, (2, 16, 4))
  ours.init_cache(seq.shape)
  cache = theirs.init(jax.random.key(0), seq)['cache']
  mask = nn.make_attention_mask(jnp.ones((2, 1)), jnp.arange(16) < jnp.array([[16], [4]]))
  for t in range(6):
    x = seq[:, t:t + 1]
    ours_y = ours(x, mask=mask)
    theirs_y, updated = theirs.apply({**params_of(ours), 'cache': cache}, x, mask=mask,
                                     mutable=['cache'])
    cache = updated['cache']
    np.testing.assert_array_equal(ours_y, theirs_y)
  assert_trees_equal(nnx.state(ours, nnx.Cache).to_pure_dict(), dict(cache))


@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'jit'])
def test_decoding_16_steps_equals_the_causal_forward_pass(jit):
  """Tolerance 1e-6: each decode step is a 1-row attention over the cache (zeros beyond the
  written positions, masked out) while the full pass is one causally-masked 16-row
  attention; XLA may order the sums differently."""
  length = 16
  layer = nnx.MultiHeadAttention(2, 4, 8, rngs=nnx.Rngs(0))
  seq = normal(0, (2, length, 4))
  full = layer(seq, mask=nnx.make_causal_mask(jnp.ones((2, length))), decode=False)
  layer.init_cache(seq.shape)
  step = nnx.jit(lambda m, x: m(x, decode=True)) if jit else (lambda m, x: m(x, decode=True))
  steps = [step(layer, seq[:, t:t + 1]) for t in range(length)]
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-6, atol=1e-6)
  assert int(layer.cache_index.value) == length
  # the cache holds every position's key: a new init_cache starts over
  layer.init_cache(seq.shape)
  np.testing.assert_array_equal(step(layer, seq[:, :1]), steps[0])


def test_decode_with_grouped_heads_matches_flax_nnx():
  ours, theirs = layer_pair(4, 4, 8, num_kv_heads=2, decode=True)
  seq = normal(0, (2, 16, 4))
  ours.init_cache(seq.shape)
  theirs.init_cache(seq.shape)
  assert ours.cached_key.value.shape == (2, 16, 2, 2)
  for t in range(5):
    np.testing.assert_array_equal(ours(seq[:, t:t + 1]), theirs(seq[:, t:t + 1]))


# -- functions and masks -------------------------------------------------------------------
def test_dot_product_attention_matches_flax_nnx():
  flax_weights = fnnx.nn.attention.dot_product_attention_weights
  # grouped heads (4 query heads over 2 key heads) with bias, masks, dropout; then dropout
  # not broadcast, two batch dimensions (folded into one for jax.nn.dot_product_attention)
  # and none
  q, k, v = normal(0, (2, 5, 4, 4)), normal(1, (2, 7, 2, 4)), normal(2, (2, 7, 2, 4))
  mask = normal(3, (2, 1, 5, 7)) > 0
  key = jax.random.key(5)
  x = normal(4, (2, 5, 2, 4))
  x5 = normal(5, (3, 2, 5, 2, 4))
  cases = [
    ((q, k, v), dict(bias=normal(4, (2, 4, 5, 7)), mask=mask)),
    ((q, k, v), dict(is_causal=True, mask=mask)),
    ((q, k, v), dict(dropout_rng=key, dropout_rate=0.5, is_causal=True)),
    ((x, x, x), dict(dropout_rng=key, dropout_rate=0.5, broadcast_dropout=False)),
    ((x5, x5, x5), dict(mask=normal(6, (3, 2, 1, 5, 5)) > 0)),
    ((x5, x5, x5), dict(is_causal=True)),
    ((x[0], x[0], x[0]), dict(is_causal=True)),
  ]
  for (q, k, v), kwargs in cases:
    np.testing.assert_array_equal(nnx.dot_product_attention(q, k, v, **kwargs),
                                  fnnx.dot_product_attention(q, k, v, **kwargs))
    np.testing.assert_array_equal(nnx.dot_product_attention_weights(q, k, **kwargs),
                                  flax_weights(q, k, **kwargs))


def test_dot_product_attention_matches_linen_with_dtype():
  q, k, v = (normal(i, (2, 5, 2, 8)) for i in range(3))
  mask = nn.make_causal_mask(jnp.ones((2, 5)))
  for dtype in (None, jnp.bfloat16):
    kwargs = dict(mask=mask, dtype=dtype, deterministic=True)
    ours = nnx.dot_product_attention_weights(q, k, **kwargs)
    np.testing.assert_array_equal(ours, nn.dot_product_attention_weights(q, k, **kwargs))
    ours = nnx.dot_product_attention(q, k, v, **kwargs, dropout_rate=0.1)  # weights path
    np.testing.assert_array_equal(ours, nn.dot_product_attention(q, k, v, **kwargs))


def test_mask_helpers_match_flax():
  tokens = jnp.array([[3, 1, 0, 0], [2, 0, 0, 0]])
  keys = jnp.array([[1, 1, 1], [4, 0, 2]])
  for flax_fns in (nn, fnnx):
    pairs = [
      (nnx.make_attention_mask(tokens > 0, keys > 0),
       flax_fns.make_attention_mask(tokens > 0, keys > 0)),
      (nnx.make_attention_mask(tokens, keys[:, :2], jnp.greater, extra_batch_dims=2,
                               dtype=jnp.int32),
       flax_fns.make_attention_mask(tokens, keys[:, :2], jnp.greater, extra_batch_dims=2,
                                    dtype=jnp.int32)),
      (nnx.make_causal_mask(tokens), flax_fns.make_causal_mask(tokens)),
      (nnx.make_causal_mask(tokens, extra_batch_dims=1, dtype=jnp.bool_),
       flax_fns.make_causal_mask(tokens, extra_batch_dims=1, dtype=jnp.bool_)),
    ]
    causal, padding = pairs[2][0], pairs[0][0][..., :3, :3]
    pairs.append((nnx.combine_masks(causal[..., :3, :3], None, padding),
                  flax_fns.combine_masks(causal[..., :3, :3], None, padding)))
    pairs.append((nnx.combine_masks(causal, dtype=jnp.bool_),
                  flax_fns.combine_masks(causal, dtype=jnp.bool_)))
    for ours, theirs in pairs:
      assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
      np.testing.assert_array_equal(ours, theirs)
  assert nnx.combine_masks(None, None) is None
  with pytest.raises(ValueError, match='same rank'):
    nnx.combine_masks(jnp.ones((2, 2)), jnp.ones((1, 2, 2)))


def test_module_path_and_top_level_names():
  assert attention.MultiHeadAttention is nnx.MultiHeadAttention
  for name in ('dot_product_attention', 'dot_product_attention_weights',
               'make_attention_mask', 'make_causal_mask', 'combine_masks'):
    assert getattr(attention, name) is getattr(nnx, name)


# -- modes and errors ----------------------------------------------------------------------
def test_train_and_eval_switch_dropout():
  layer = nnx.MultiHeadAttention(2, 4, 8, dropout_rate=0.5, rngs=nnx.Rngs(0))
  x = normal(0, (2, 5, 4))
  with pytest.raises(ValueError, match='deterministic'):
    layer(x, decode=False)  # neither the constructor nor the call says
  layer.eval()
  np.testing.assert_array_equal(layer(x, decode=False), layer(x, decode=False))
  layer.train()
  assert not np.array_equal(layer(x, decode=False), layer(x, decode=False))


def test_missing_dropout_stream_is_named():
  x = normal(0, (2, 5, 4))
  with pytest.raises(AttributeError, match="'dropout'"):  # kept at construction
    nnx.MultiHeadAttention(2, 4, 8, dropout_rate=0.5, rngs=nnx.Rngs(params=0))
  layer = nnx.MultiHeadAttention(2, 4, 8, dropout_rate=0.5, keep_rngs=False,
                                 rngs=nnx.Rngs(params=0))
  assert layer.rngs is None
  with pytest.raises(ValueError, match="'dropout' RNG stream"):
    layer(x, decode=False, deterministic=False)
  with pytest.raises(AttributeError, match="'dropout'"):
    layer(x, decode=False, deterministic=False, rngs=nnx.Rngs(params=1))
  layer(x, decode=False, deterministic=True)  # no keys needed
  layer(x, decode=False, deterministic=False, rngs=nnx.Rngs(dropout=1))


def test_decoding_before_init_cache_names_the_fix():
  layer = nnx.MultiHeadAttention(2, 4, 8, decode=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'init_cache\(input_shape\)'):
    layer(jnp.ones((1, 1, 4)))


def test_decoding_past_the_cache_is_an_error_eagerly():
  layer = nnx.MultiHeadAttention(2, 4, 8, decode=True, rngs=nnx.Rngs(0))
  layer.init_cache((2, 16, 4))
  for _ in range(16):
    layer(jnp.ones((2, 1, 4)))
  before = nnx.state(layer, nnx.Cache).to_pure_dict()
  with pytest.raises(ValueError, match=r'cache is full: cache_index=16 .* max_length=16'):
    layer(jnp.ones((2, 1, 4)))
  assert_trees_equal(nnx.state(layer, nnx.Cache).to_pure_dict(), before)  # untouched


def test_decoding_past_the_cache_under_jit_gives_nans_not_a_wrap_around():
  """Under ``jit`` the index is traced: the overflowing call returns NaNs, ``cache_index``
  records the overflow, and the next eager call raises."""
  layer = nnx.MultiHeadAttention(2, 4, 8, decode=True, rngs=nnx.Rngs(0))
  layer.init_cache((1, 2, 4))
  step = nnx.jit(lambda m, x: m(x))
  for _ in range(2):
    assert np.isfinite(step(layer, jnp.ones((1, 1, 4)))).all()
  assert np.isnan(step(layer, jnp.ones((1, 1, 4)))).all()
  assert int(layer.cache_index.value) == 3
  with pytest.raises(ValueError, match='cache is full'):
    layer(jnp.ones((1, 1, 4)))


def test_shape_and_argument_errors():
  layer = nnx.MultiHeadAttention(2, 4, 8, decode=True, rngs=nnx.Rngs(0))
  layer.init_cache((2, 8, 4))
  with pytest.raises(ValueError, match=r'one position at a time.*\(2, 1, 2, 4\)'):
    layer(jnp.ones((2, 3, 4)))
  with pytest.raises(ValueError, match='in_features=4'):
    layer(jnp.ones((2, 1, 5)))
  with pytest.raises(ValueError, match='in_kv_features=4'):
    layer(jnp.ones((2, 1, 4)), jnp.ones((2, 1, 3)))
  with pytest.raises(ValueError, match='inputs_v given without inputs_k'):
    layer(jnp.ones((2, 1, 4)), inputs_v=jnp.ones((2, 1, 4)))
  layer.init_cache((2, 8, 4), dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match=r'init_cache\(\.\.\., dtype=float32\)'):
    layer(jnp.ones((2, 1, 4)))
  with pytest.raises(ValueError, match='divisible by num_heads'):
    nnx.MultiHeadAttention(3, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='divisible by num_kv_heads'):
    nnx.MultiHeadAttention(4, 8, num_kv_heads=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='depths must match'):
    nnx.dot_product_attention_weights(jnp.ones((2, 1, 3)), jnp.ones((2, 1, 4)))
  with pytest.raises(ValueError, match='lengths must match'):
    nnx.dot_product_attention(jnp.ones((2, 1, 3)), jnp.ones((2, 1, 3)), jnp.ones((3, 1, 3)))
