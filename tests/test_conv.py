"""Conv and ConvTranspose: parity with flax.linen given the same parameters, flax.nnx's
initial parameters from the same seed, and clear errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from jax import lax

import bridge as nnx

F32, F16, BF16 = jnp.float32, jnp.float16, jnp.bfloat16
HIGHEST = lax.Precision.HIGHEST


def _inputs(shape, dtype, seed=1):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32).astype(dtype)


def _np_init(key, shape, dtype):
  """Deterministic non-trivial values from NumPy: parity tests need equal parameters on both
  sides, not random ones, and this compiles no random kernel per shape (keeps tests fast)."""
  return jnp.asarray(np.random.default_rng(sum(shape)).standard_normal(shape), dtype)


def _params(layer):
  params = {'kernel': layer.kernel[...]}
  if layer.bias is not None:
    params['bias'] = layer.bias[...]
  return {'params': params}


def _assert_same(actual, expected):
  assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  np.testing.assert_array_equal(np.asarray(actual, np.float32), np.asarray(expected, np.float32))


# (in_features, out_features, kernel_size, constructor options, input shape, input dtype):
# each option of Conv appears in some case, and each case mixes a few of them.
CONV_CASES = [
  pytest.param(3, 4, (3,), {}, (2, 9, 3), F32, id='1d-defaults'),
  pytest.param(3, 4, (3, 3), {'strides': 2}, (2, 9, 8, 3), F32, id='2d-same-stride2'),
  pytest.param(2, 3, (2, 3, 2), {'padding': 'VALID', 'strides': (1, 2, 1)}, (2, 5, 6, 4, 2), F32,
               id='3d-valid-strides'),
  pytest.param(3, 4, (3, 2), {'padding': 'SAME_LOWER', 'strides': (2, 1)}, (1, 8, 7, 3), F32,
               id='2d-same-lower'),
  pytest.param(3, 4, (3, 3), {'padding': 'CIRCULAR', 'strides': 2, 'kernel_dilation': 2},
               (2, 9, 9, 3), F32, id='2d-circular-dilated-stride2'),
  pytest.param(3, 4, (4,), {'padding': 'CIRCULAR'}, (2, 8, 3), F32, id='1d-circular-even-kernel'),
  pytest.param(3, 4, (3, 4), {'padding': 'REFLECT'}, (2, 7, 8, 3), F32, id='2d-reflect'),
  pytest.param(3, 4, (3,), {'padding': 'CAUSAL', 'kernel_dilation': 2}, (2, 10, 3), F32,
               id='1d-causal-dilated'),
  pytest.param(3, 4, (3,), {'padding': 'valid'}, (2, 6, 3), F32, id='1d-lowercase-valid'),
  pytest.param(3, 4, (3, 3), {'padding': 2}, (2, 6, 7, 3), F32, id='2d-int-padding'),
  pytest.param(3, 4, (3, 3), {'padding': [1, 0]}, (2, 6, 7, 3), F32, id='2d-int-per-dim'),
  pytest.param(3, 4, (2, 2, 2), {'padding': [(1, 0), (2, 3), (0, 1)]}, (1, 4, 5, 3, 3), F32,
               id='3d-pairs'),
  pytest.param(3, 4, (3, 3), {'padding': [(1, 2), 1], 'strides': (2, 3)}, (2, 9, 9, 3), F32,
               id='2d-pair-and-int'),
  pytest.param(3, 4, (3, 3), {'input_dilation': 2, 'kernel_dilation': (1, 2), 'padding': 1},
               (2, 5, 6, 3), F32, id='2d-input-and-kernel-dilation'),
  pytest.param(3, 4, (3,), {'input_dilation': (3,), 'padding': [(0, 2)], 'strides': 2},
               (2, 5, 3), F32, id='1d-input-dilation-pairs'),
  pytest.param(4, 6, (3, 3), {'feature_group_count': 2}, (2, 6, 6, 4), F32, id='2d-groups'),
  pytest.param(4, 8, (3,), {'feature_group_count': 4, 'padding': 'CIRCULAR'}, (2, 7, 4), F32,
               id='1d-depthwise-circular'),
  pytest.param(3, 4, (3, 3), {'mask': jnp.tril(jnp.ones((3, 3, 3, 4)))}, (2, 5, 5, 3), F32,
               id='2d-mask'),
  pytest.param(4, 6, (3,), {'mask': (jnp.arange(3 * 2 * 6).reshape(3, 2, 6) % 3 > 0),
                            'feature_group_count': 2}, (2, 7, 4), F32, id='1d-bool-mask-groups'),
  pytest.param(3, 4, (3, 3), {'use_bias': False, 'strides': 2}, (2, 7, 7, 3), F32, id='no-bias'),
  pytest.param(3, 4, (3, 3), {'dtype': F16}, (2, 6, 6, 3), F32, id='dtype-f16'),
  pytest.param(3, 4, (3, 3), {'dtype': BF16, 'param_dtype': BF16}, (2, 6, 6, 3), F32,
               id='dtype-bf16-param-bf16'),
  pytest.param(3, 4, (3,), {'param_dtype': F16}, (2, 8, 3), F16, id='param-f16-inputs-f16'),
  pytest.param(3, 4, (3,), {'param_dtype': BF16}, (2, 8, 3), F32, id='param-bf16-inputs-f32'),
  pytest.param(3, 4, (3, 3), {}, (2, 6, 6, 3), BF16, id='inputs-bf16-params-f32'),
  pytest.param(3, 4, (3, 3), {'dtype': F32, 'param_dtype': F16}, (2, 6, 6, 3), BF16,
               id='dtype-f32-over-mixed'),
  pytest.param(3, 4, (3, 3), {'precision': HIGHEST}, (2, 6, 6, 3), F32, id='precision-highest'),
  pytest.param(3, 4, (3,), {'precision': 'high', 'dtype': BF16}, (2, 8, 3), F32,
               id='precision-str-bf16'),
  pytest.param(3, 4, (3,), {'precision': (lax.Precision.DEFAULT, HIGHEST)}, (2, 8, 3), F32,
               id='precision-pair'),
  pytest.param(3, 4, (3, 3), {'strides': 2, 'padding': 'CIRCULAR'}, (6, 6, 3), F32,
               id='unbatched-circular'),
  pytest.param(3, 4, (3,), {'padding': 'CAUSAL'}, (8, 3), F32, id='unbatched-causal'),
  pytest.param(3, 4, (3, 3), {'feature_group_count': 1, 'padding': 1}, (2, 3, 5, 5, 3), F32,
               id='two-batch-dims'),
  pytest.param(2, 4, (2, 2, 2), {'padding': 'REFLECT', 'feature_group_count': 2},
               (2, 1, 2, 4, 4, 3, 2), F32, id='3d-three-batch-dims-reflect'),
]


@pytest.mark.parametrize('in_f, out_f, kernel_size, kw, shape, in_dtype', CONV_CASES)
def test_conv_matches_linen(in_f, out_f, kernel_size, kw, shape, in_dtype):
  layer = nnx.Conv(in_f, out_f, kernel_size, kernel_init=_np_init, bias_init=_np_init,
                   rngs=nnx.Rngs(0), **kw)
  x = _inputs(shape, in_dtype)
  expected = nn.Conv(out_f, kernel_size, **kw).apply(_params(layer), x)
  _assert_same(layer(x), expected)


TRANSPOSE_CASES = [
  pytest.param(3, 4, (3,), {}, (2, 9, 3), F32, id='1d-defaults'),
  pytest.param(3, 4, (3, 3), {'strides': 2, 'padding': 'VALID'}, (2, 5, 4, 3), F32,
               id='2d-valid-stride2'),
  pytest.param(2, 3, (2, 3, 2), {'strides': (2, 1, 3)}, (2, 3, 4, 2, 2), F32, id='3d-same'),
  pytest.param(3, 4, (2, 3), {'padding': 'SAME_LOWER'}, (1, 5, 4, 3), F32, id='2d-same-lower'),
  pytest.param(3, 4, (6, 6), {'strides': (2, 2), 'padding': 'CIRCULAR'}, (1, 7, 6, 3), F32,
               id='2d-circular'),
  pytest.param(3, 4, (6, 6), {'strides': (2, 2), 'padding': 'CIRCULAR', 'transpose_kernel': True},
               (1, 7, 6, 3), F32, id='2d-circular-transpose-kernel'),
  pytest.param(3, 4, (3,), {'strides': 3, 'padding': 'CIRCULAR', 'kernel_dilation': 2},
               (2, 5, 3), F32, id='1d-circular-dilated'),
  pytest.param(2, 3, (3, 2, 2), {'strides': 2, 'padding': 'CIRCULAR'}, (1, 3, 3, 2, 2), F32,
               id='3d-circular'),
  pytest.param(3, 4, (3, 3), {'padding': 1, 'strides': 2}, (2, 4, 5, 3), F32, id='2d-int-padding'),
  pytest.param(3, 4, (3, 3), {'padding': [0, 2]}, (2, 4, 5, 3), F32, id='2d-int-per-dim'),
  pytest.param(3, 4, (3, 3), {'padding': [(2, 0), (1, 3)], 'strides': (1, 2)}, (2, 4, 5, 3), F32,
               id='2d-pairs'),
  pytest.param(3, 4, (3, 3), {'kernel_dilation': (2, 1), 'transpose_kernel': True},
               (2, 5, 5, 3), F32, id='2d-dilated-transpose-kernel'),
  pytest.param(3, 4, (3, 3), {'mask': jnp.triu(jnp.ones((3, 3, 3, 4)))}, (2, 5, 5, 3), F32,
               id='2d-mask'),
  pytest.param(3, 4, (3,), {'mask': jnp.tril(jnp.ones((3, 4, 3))), 'transpose_kernel': True},
               (2, 5, 3), F32, id='1d-mask-transpose-kernel'),
  pytest.param(3, 4, (3, 3), {'use_bias': False, 'strides': 2}, (2, 4, 4, 3), F32, id='no-bias'),
  pytest.param(3, 4, (3, 3), {'dtype': F16}, (2, 5, 5, 3), F32, id='dtype-f16'),
  pytest.param(3, 4, (3,), {'dtype': BF16, 'param_dtype': BF16, 'strides': 2}, (2, 6, 3), F32,
               id='dtype-bf16-param-bf16'),
  pytest.param(3, 4, (3,), {'param_dtype': F16}, (2, 6, 3), F16, id='param-f16-inputs-f16'),
  pytest.param(3, 4, (3, 3), {}, (2, 5, 5, 3), BF16, id='inputs-bf16-params-f32'),
  pytest.param(3, 4, (3,), {'dtype': BF16, 'preferred_element_type': F32}, (2, 6, 3), F32,
               id='preferred-element-type'),
  pytest.param(3, 4, (3, 3), {'precision': HIGHEST}, (2, 5, 5, 3), F32, id='precision-highest'),
  pytest.param(3, 4, (3,), {'precision': 'bfloat16', 'strides': 2}, (2, 6, 3), F32,
               id='precision-str'),
  pytest.param(3, 4, (3, 3), {'strides': 2, 'padding': 'CIRCULAR'}, (5, 4, 3), F32,
               id='unbatched-circular'),
  pytest.param(3, 4, (3,), {'strides': 2}, (2, 3, 6, 3), F32, id='two-batch-dims'),
  pytest.param(2, 3, (2, 2, 2), {'padding': 'VALID'}, (2, 1, 2, 3, 3, 2, 2), F32,
               id='3d-three-batch-dims'),
]


@pytest.mark.parametrize('in_f, out_f, kernel_size, kw, shape, in_dtype', TRANSPOSE_CASES)
def test_conv_transpose_matches_linen(in_f, out_f, kernel_size, kw, shape, in_dtype):
  layer = nnx.ConvTranspose(in_f, out_f, kernel_size, kernel_init=_np_init,
                            bias_init=_np_init, rngs=nnx.Rngs(0), **kw)
  x = _inputs(shape, in_dtype)
  expected = nn.ConvTranspose(out_f, kernel_size, **kw).apply(_params(layer), x)
  _assert_same(layer(x), expected)


def _copy_into(flax_layer, layer):
  flax_layer.kernel[...] = layer.kernel[...]
  if layer.bias is not None:
    flax_layer.bias[...] = layer.bias[...]
  return flax_layer


@pytest.mark.parametrize('kw, shape', [
  ({'dtype': BF16, 'preferred_element_type': F32}, (2, 8, 3)),
  ({'preferred_element_type': F32, 'padding': 'CAUSAL'}, (8, 3)),
  ({'padding': 'CIRCULAR', 'strides': 3}, (2, 2, 8, 3)),
])
def test_conv_matches_flax_nnx(kw, shape):
  """Options linen's Conv lacks (``preferred_element_type``), against flax.nnx."""
  layer = nnx.Conv(3, 4, 3, kernel_init=_np_init, bias_init=_np_init, rngs=nnx.Rngs(0),
                   **kw)
  reference = _copy_into(fnnx.Conv(3, 4, 3, kernel_init=_np_init, rngs=fnnx.Rngs(1), **kw),
                         layer)
  x = _inputs(shape, F32)
  _assert_same(layer(x), reference(x))


def test_padding_strings_are_case_insensitive():
  # flax passes lower-case 'same'/'valid' to lax, which reads them case-insensitively, except
  # that lax.conv_transpose only recognises upper case; here both layers upper-case them.
  x = _inputs((2, 5, 3), F32)
  for cls in (nnx.Conv, nnx.ConvTranspose):
    for padding in ('same', 'valid', 'Circular'):
      lower = cls(3, 4, 3, strides=2, padding=padding, kernel_init=_np_init, rngs=nnx.Rngs(0))
      upper = cls(3, 4, 3, strides=2, padding=padding.upper(), kernel_init=_np_init,
                  rngs=nnx.Rngs(0))
      _assert_same(lower(x), upper(x))


def test_conv_uses_the_given_conv_general_dilated():
  calls = []

  def conv_general_dilated(*args, **kwargs):
    calls.append(kwargs)
    return lax.conv_general_dilated(*args, **kwargs)

  layer = nnx.Conv(3, 4, (3, 3), conv_general_dilated=conv_general_dilated,
                   kernel_init=_np_init, rngs=nnx.Rngs(0))
  x = _inputs((2, 5, 5, 3), F32)
  expected = nn.Conv(4, (3, 3)).apply(_params(layer), x)
  _assert_same(layer(x), expected)
  assert len(calls) == 1 and 'preferred_element_type' not in calls[0]


def test_jit_and_grad_match_eager():
  layer = nnx.Conv(3, 4, 3, strides=2, padding='CIRCULAR', kernel_init=_np_init,
                   rngs=nnx.Rngs(0))
  up = nnx.ConvTranspose(4, 3, 4, strides=2, padding='CIRCULAR', kernel_init=_np_init,
                         rngs=nnx.Rngs(1))
  x = _inputs((2, 8, 3), F32)
  model = nnx.Sequential(layer, up)
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x), model(x), rtol=1e-6)
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
  assert grads['layers'][0]['kernel'].shape == (3, 3, 4)
  assert grads['layers'][1]['kernel'].shape == (4, 4, 3)


# -- initial parameters: the same seed gives flax.nnx's ---------------------------------------

SEED = lambda mod: mod.Rngs(0)
PARAMS_STREAM = lambda mod: mod.Rngs(params=7, dropout=1)
INIT_CASES = [
  ('Conv', (3, 4, 3), {}, SEED),
  ('Conv', (4, 6, (3, 2)), {'feature_group_count': 2, 'bias_init': 'normal'}, PARAMS_STREAM),
  ('Conv', (3, 4, (2, 2, 2)), {'use_bias': False, 'param_dtype': BF16}, SEED),
  ('Conv', (3, 5, (3, 3)), {'kernel_init': 'uniform', 'bias_init': 'normal',
                            'param_dtype': F16}, SEED),
  ('ConvTranspose', (3, 4, 3), {'bias_init': 'normal'}, SEED),
  ('ConvTranspose', (3, 4, (3, 3)), {'transpose_kernel': True, 'bias_init': 'normal'},
   PARAMS_STREAM),
  ('ConvTranspose', (3, 4, (2, 2, 2)), {'use_bias': False, 'param_dtype': BF16}, SEED),
]


def _inits(module, kw):
  names = {'normal': module.initializers.normal(), 'uniform': module.initializers.uniform()}
  return {k: names.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}


@pytest.mark.parametrize('cls, args, kw, make_rngs', INIT_CASES)
def test_same_seed_gives_flax_nnx_parameters(cls, args, kw, make_rngs):
  ours_rngs, theirs_rngs = make_rngs(nnx), make_rngs(fnnx)
  ours = getattr(nnx, cls)(*args, rngs=ours_rngs, **_inits(nnx, kw))
  theirs = getattr(fnnx, cls)(*args, rngs=theirs_rngs, **_inits(fnnx, kw))
  _assert_same(ours.kernel[...], theirs.kernel[...])
  assert ours.kernel_shape == theirs.kernel_shape
  assert (ours.bias is None) == (theirs.bias is None)
  if ours.bias is not None:
    _assert_same(ours.bias[...], theirs.bias[...])
  # The same number of keys was drawn: the next one agrees too.
  np.testing.assert_array_equal(jax.random.key_data(ours_rngs.params()),
                                jax.random.key_data(theirs_rngs.params()))


def test_attributes_and_defaults_match_flax_nnx():
  for cls in ('Conv', 'ConvTranspose'):
    ours = getattr(nnx, cls)(3, 4, 3, rngs=nnx.Rngs(0))
    theirs = getattr(fnnx, cls)(3, 4, 3, rngs=fnnx.Rngs(0))
    for name in ('kernel_size', 'strides', 'padding', 'kernel_dilation', 'use_bias', 'mask',
                 'dtype', 'param_dtype', 'precision', 'promote_dtype', 'preferred_element_type',
                 'in_features', 'out_features'):
      ours_value, theirs_value = getattr(ours, name), getattr(theirs, name)
      if name == 'promote_dtype':
        assert callable(ours_value)
      else:
        assert ours_value == theirs_value, (cls, name, ours_value, theirs_value)
  conv = nnx.Conv(3, 4, 3, rngs=nnx.Rngs(0))
  assert (conv.input_dilation, conv.feature_group_count) == (1, 1)
  assert conv.conv_general_dilated is lax.conv_general_dilated
  assert nnx.ConvTranspose(3, 4, 3, rngs=nnx.Rngs(0)).transpose_kernel is False


def test_metadata_and_mask_in_state():
  mask = jnp.ones((3, 3, 4))
  layer = nnx.Conv(3, 4, 3, mask=mask, kernel_metadata={'sharding': (None, None, 'out')},
                   bias_metadata={'sharding': ('out',)}, rngs=nnx.Rngs(0))
  assert layer.kernel.sharding == (None, None, 'out')
  assert layer.bias.sharding == ('out',)
  graphdef, state = nnx.split(layer)
  x = _inputs((2, 6, 3), F32)
  _assert_same(nnx.merge(graphdef, state)(x), layer(x))


# -- errors -----------------------------------------------------------------------------------

def _make(cls, *args, **kw):
  return cls(*args, kernel_init=_np_init, rngs=nnx.Rngs(0), **kw)

def test_wrong_feature_size_names_layer_and_sizes():
  with pytest.raises(ValueError, match=r'Conv: .*in_features=3, got 5'):
    _make(nnx.Conv, 3, 4, 3)(jnp.ones((2, 8, 5)))
  with pytest.raises(ValueError, match=r'ConvTranspose: .*in_features=3, got 2'):
    _make(nnx.ConvTranspose, 3, 4, (3, 3))(jnp.ones((4, 4, 2)))


def test_inputs_without_enough_spatial_dims():
  with pytest.raises(ValueError, match=r'Conv: a 2-D convolution .*got shape \(8, 3\)'):
    _make(nnx.Conv, 3, 4, (3, 3))(jnp.ones((8, 3)))


@pytest.mark.parametrize('padding, match', [
  ('FULL', r"Conv: unknown padding 'FULL'; expected one of 'SAME'"),
  ([(1, 2, 3)], r'Conv: invalid padding \[\(1, 2, 3\)\]'),
  ([1, 2, 3], r'sequence of 1 ints or \(low, high\) pairs'),
  ((1.5,), r'Conv: invalid padding'),
])
def test_invalid_padding(padding, match):
  with pytest.raises(ValueError, match=match):
    _make(nnx.Conv, 3, 4, 3, padding=padding)


def test_string_padding_with_input_dilation_is_lax_error():
  # lax.conv_general_dilated refuses it, as under flax: input dilation needs explicit padding.
  layer = _make(nnx.Conv, 3, 4, 3, input_dilation=2)
  with pytest.raises(ValueError, match=r'String padding is not implemented .* exactly specify'):
    layer(jnp.ones((2, 5, 3)))


def test_causal_padding_is_1d_only():
  with pytest.raises(ValueError, match=r"Conv: padding 'CAUSAL' is only defined for 1-D"):
    _make(nnx.Conv, 3, 4, (3, 3), padding='CAUSAL')


@pytest.mark.parametrize('padding', ['CAUSAL', 'REFLECT', 'full'])
def test_conv_transpose_paddings(padding):
  with pytest.raises(ValueError, match=rf"ConvTranspose: unknown padding '{padding}'"):
    _make(nnx.ConvTranspose, 3, 4, 3, padding=padding)


def test_mask_shape_is_checked_at_construction_and_call():
  with pytest.raises(ValueError, match=r"Conv: mask must have the kernel's shape \(3, 3, 4\)"):
    _make(nnx.Conv, 3, 4, 3, mask=jnp.ones((3, 4)))
  with pytest.raises(ValueError, match=r'ConvTranspose: mask .*\(3, 4, 3\), got \(3, 3, 4\)'):
    _make(nnx.ConvTranspose, 3, 4, 3, mask=jnp.ones((3, 3, 4)), transpose_kernel=True)
  layer = _make(nnx.Conv, 3, 4, 3, mask=jnp.ones((3, 3, 4)))
  layer.mask = jnp.ones((1, 1, 4))  # would broadcast silently
  with pytest.raises(ValueError, match=r'mask must have the kernel'):
    layer(jnp.ones((2, 8, 3)))


@pytest.mark.parametrize('in_f, out_f, groups', [(3, 4, 2), (4, 3, 2), (4, 4, 0)])
def test_feature_group_count_must_divide_features(in_f, out_f, groups):
  with pytest.raises(ValueError, match=rf'feature_group_count={groups} must be a positive int '
                                       rf'dividing both in_features={in_f}'):
    _make(nnx.Conv, in_f, out_f, 3, feature_group_count=groups)


def test_per_dimension_options_have_one_entry_per_spatial_dim():
  with pytest.raises(ValueError, match=r'Conv: strides must be an int or a sequence of 2'):
    _make(nnx.Conv, 3, 4, (3, 3), strides=(1, 2, 1))
  with pytest.raises(ValueError, match=r'ConvTranspose: kernel_dilation must be .* of 1'):
    _make(nnx.ConvTranspose, 3, 4, 3, kernel_dilation=(1, 2))
  with pytest.raises(ValueError, match=r'kernel_size must be a positive int'):
    _make(nnx.Conv, 3, 4, ())
