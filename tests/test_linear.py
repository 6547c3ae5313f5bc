"""Linear, LinearGeneral, Einsum and Embed: the same parameters give exactly flax.linen's
outputs (Dense, DenseGeneral, Einsum, Embed); the same seed gives exactly flax.nnx's initial
parameters; seed page 001's examples; clear errors."""

import importlib.util
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')

F32, F16, BF16 = jnp.float32, jnp.float16, jnp.bfloat16


def arrays(state) -> dict:
  """``{path: array}`` of the Variables of a bridge or flax.nnx State."""
  return {tuple(p): np.asarray(v.get_value()) for p, v in state.flat_state()}


def assert_same_arrays(ours: dict, theirs: dict):
  assert ours.keys() == theirs.keys()
  for k in ours:
    assert ours[k].dtype == theirs[k].dtype, k
    np.testing.assert_array_equal(ours[k], theirs[k], err_msg=str(k))


def assert_exactly_equal(ours, theirs):
  assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
  np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))


def random_input(shape, dtype=F32, seed=1):
  # NumPy's generator: nothing to compile per shape, which keeps the tests fast
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def np_init(key, shape, dtype=F32):
  """Random values from NumPy: nothing to compile per shape, for the tests that compare
  computations, not initial values (those draw with the real initializers)."""
  rng = np.random.default_rng(len(shape) + sum(shape))
  return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)


NP_INIT = {'kernel_init': np_init, 'bias_init': np_init}


def linen_params(layer, names=('kernel', 'bias')) -> dict:
  """The bridge layer's parameters as a Linen variables dict."""
  return {'params': {n: getattr(layer, n)[...] for n in names
                     if getattr(layer, n, None) is not None}}


# -- the same seed gives flax.nnx's initial parameters ------------------------------------
INIT_CASES = {
  'linear': lambda m: m.Linear(3, 4, rngs=m.Rngs(0)),
  'linear_no_bias': lambda m: m.Linear(3, 4, use_bias=False,
                                       kernel_init=m.initializers.uniform(), rngs=m.Rngs(5)),
  'linear_bf16_normal_bias': lambda m: m.Linear(
    6, 2, param_dtype=BF16, bias_init=m.initializers.normal(), rngs=m.Rngs(params=7)),
  'general_tuple_out': lambda m: m.LinearGeneral(3, (4, 5), rngs=m.Rngs(0)),
  'general_two_axes': lambda m: m.LinearGeneral((3, 7), (4, 5), axis=(1, -1),
                                                rngs=m.Rngs(1)),
  'general_batch_axis': lambda m: m.LinearGeneral(
    3, (4, 5), batch_axis={0: 2}, bias_init=m.initializers.normal(), rngs=m.Rngs(2)),
  'general_f16': lambda m: m.LinearGeneral((2, 3), 4, axis=(-2, -1), param_dtype=F16,
                                           rngs=m.Rngs(4)),
  'einsum': lambda m: m.Einsum('nta,hab->nthb', (8, 2, 4), (8, 4),
                               bias_init=m.initializers.normal(), rngs=m.Rngs(0)),
  'einsum_no_bias': lambda m: m.Einsum('ab,bc->ac', (5, 6), rngs=m.Rngs(9)),
  'embed': lambda m: m.Embed(5, 3, rngs=m.Rngs(0)),
  'embed_bf16': lambda m: m.Embed(11, 4, param_dtype=BF16, rngs=m.Rngs(params=2)),
}


@pytest.mark.parametrize('case', sorted(INIT_CASES))
def test_same_seed_same_parameters_as_flax_nnx(case):
  make = INIT_CASES[case]
  ours, theirs = make(nnx), make(fnnx)
  assert_same_arrays(arrays(nnx.state(ours)), arrays(fnnx.state(theirs)))


def test_rng_streams_advance_like_flax_nnx():
  # several layers from one Rngs: each draws the same keys in the same order as flax.nnx
  def build(m):
    rngs = m.Rngs(0)
    return [m.Linear(2, 3, rngs=rngs), m.LinearGeneral(3, (2, 2), rngs=rngs),
            m.Embed(4, 2, rngs=rngs), m.Einsum('ab,bc->ac', (3, 3), (3,), rngs=rngs)]
  for a, b in zip(build(nnx), build(fnnx), strict=True):
    assert_same_arrays(arrays(nnx.state(a)), arrays(fnnx.state(b)))


# -- Linear vs nn.Dense -------------------------------------------------------------------
DTYPES = [None, F32, F16, BF16]
PARAM_DTYPES = [F32, F16, BF16]


@pytest.mark.parametrize('dtype,param_dtype', list(itertools.product(DTYPES, PARAM_DTYPES)))
@pytest.mark.parametrize('precision', [None, 'highest'])
def test_linear_matches_dense(dtype, param_dtype, precision):
  layer = nnx.Linear(5, 3, dtype=dtype, param_dtype=param_dtype, precision=precision,
                     **NP_INIT, rngs=nnx.Rngs(0))
  x = random_input((2, 4, 5), param_dtype)
  dense = nn.Dense(3, dtype=dtype, param_dtype=param_dtype, precision=precision)
  assert_exactly_equal(layer(x), dense.apply(linen_params(layer), x))


@pytest.mark.parametrize('batch_shape', [(), (7,), (2, 3, 1)])
@pytest.mark.parametrize('use_bias', [True, False])
def test_linear_batch_shapes_and_bias(batch_shape, use_bias):
  layer = nnx.Linear(4, 6, use_bias=use_bias, **NP_INIT, rngs=nnx.Rngs(1))
  assert (layer.bias is None) == (not use_bias)
  x = random_input((*batch_shape, 4))
  out = layer(x)
  assert out.shape == (*batch_shape, 6)
  assert_exactly_equal(out, nn.Dense(6, use_bias=use_bias).apply(linen_params(layer), x))


def test_linear_mixed_input_dtype_and_preferred_element_type():
  layer = nnx.Linear(5, 3, param_dtype=BF16, **NP_INIT, rngs=nnx.Rngs(0))
  x = random_input((4, 5), F16)  # f16 x bf16 promotes to f32, as in Linen
  assert_exactly_equal(layer(x), nn.Dense(3, param_dtype=BF16).apply(linen_params(layer), x))
  wide = nnx.Linear(5, 3, dtype=BF16, preferred_element_type=F32, rngs=nnx.Rngs(0))
  assert wide(x).dtype == F32
  ref = fnnx.Linear(5, 3, dtype=BF16, preferred_element_type=F32, rngs=fnnx.Rngs(0))
  assert_exactly_equal(wide(x), ref(x))


def test_linear_custom_dot_general_and_metadata():
  calls = []

  def dot_general(*args, **kwargs):
    calls.append(kwargs)
    return jax.lax.dot_general(*args, **kwargs)

  layer = nnx.Linear(3, 2, dot_general=dot_general, rngs=nnx.Rngs(0),
                     kernel_metadata={'sharding': ('in', 'out')},
                     bias_metadata={'sharding': ('out',)})
  layer(jnp.ones((1, 3)))
  assert calls == [{'precision': None}]  # optional keywords only when set
  assert layer.kernel.sharding == ('in', 'out') and layer.bias.sharding == ('out',)


def test_linear_under_jit_and_grad():
  layer = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x = random_input((4, 3))
  assert_exactly_equal(nnx.jit(lambda m, x: m(x))(layer, x), layer(x))
  grads = nnx.grad(lambda m: m(x).sum())(layer)
  np.testing.assert_allclose(grads['bias'][...], jnp.full((2,), 4.0))


# -- LinearGeneral vs nn.DenseGeneral -----------------------------------------------------
GENERAL_CASES = [
  # (in_features, out_features, axis, batch_axis, input shape, use_bias)
  (3, 4, -1, {}, (2, 3), True),
  (3, (4, 5), -1, {}, (1, 3), True),
  (3, (4, 5), -1, {}, (1, 3), False),
  ((3, 7), (4, 5), (1, -1), {}, (1, 3, 6, 7), True),
  ((3, 7), (4, 5), (-1, 1), {}, (1, 3, 6, 7), False),  # in_features follow sorted axes
  ((6, 7), 2, (-2, -1), {}, (2, 3, 6, 7), True),
  (2, (3,), 0, {}, (2, 5), True),
  (3, (4, 5), -1, {0: 2}, (2, 6, 3), True),
  ((6, 3), 4, (-2, -1), {0: 2, 1: 5}, (2, 5, 6, 3), True),
  ((6, 3), 4, (-2, -1), {0: 2, 1: 5}, (2, 5, 6, 3), False),
]


@pytest.mark.parametrize('in_features,out_features,axis,batch_axis,shape,use_bias',
                         GENERAL_CASES)
def test_linear_general_matches_dense_general(in_features, out_features, axis, batch_axis,
                                              shape, use_bias):
  layer = nnx.LinearGeneral(in_features, out_features, axis=axis, batch_axis=batch_axis,
                            use_bias=use_bias, **NP_INIT, rngs=nnx.Rngs(0))
  x = random_input(shape)
  dense = nn.DenseGeneral(out_features, axis=axis, batch_dims=tuple(batch_axis),
                          use_bias=use_bias, **NP_INIT)
  ref_params = dense.init(jax.random.key(0), x)['params']
  assert {k: v.shape for k, v in ref_params.items()} == {
    k: getattr(layer, k).shape for k in ref_params}
  assert_exactly_equal(layer(x), dense.apply(linen_params(layer), x))


@pytest.mark.parametrize('dtype,param_dtype', [(None, F16), (None, BF16), (F16, F32),
                                               (F32, BF16)])
@pytest.mark.parametrize('precision', [None, 'highest'])
def test_linear_general_dtypes_match_dense_general(dtype, param_dtype, precision):
  layer = nnx.LinearGeneral((3, 7), (4, 5), axis=(1, -1), dtype=dtype, param_dtype=param_dtype,
                            precision=precision, **NP_INIT, rngs=nnx.Rngs(0))
  x = random_input((2, 3, 6, 7), param_dtype)
  dense = nn.DenseGeneral((4, 5), axis=(1, -1), dtype=dtype, param_dtype=param_dtype,
                          precision=precision)
  assert_exactly_equal(layer(x), dense.apply(linen_params(layer), x))


def test_linear_general_equals_linear_and_flax_nnx():
  general = nnx.LinearGeneral(3, 4, rngs=nnx.Rngs(0))
  linear = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  x = random_input((2, 3))
  assert_exactly_equal(general(x), linear(x))
  ref = fnnx.LinearGeneral((3, 7), (4, 5), axis=(1, -1), rngs=fnnx.Rngs(0))
  ours = nnx.LinearGeneral((3, 7), (4, 5), axis=(1, -1), rngs=nnx.Rngs(0))
  x = random_input((2, 3, 6, 7))
  assert_exactly_equal(ours(x), ref(x))


def test_linear_general_init_is_flattened_and_keeps_metadata():
  init = nnx.with_metadata(nnx.initializers.lecun_normal(), sharding=('a', 'b', 'c'))
  layer = nnx.LinearGeneral(3, (4, 5), kernel_init=init, rngs=nnx.Rngs(0))
  assert layer.kernel.shape == (3, 4, 5) and layer.kernel.sharding == ('a', 'b', 'c')
  flat = nnx.initializers.lecun_normal()(nnx.Rngs(0).params(), (3, 20), F32)
  np.testing.assert_array_equal(layer.kernel[...], flat.reshape(3, 4, 5))


def test_seed_page_001_linear_general_examples():
  # the page's Linen example, with bridge's signature: features (4, 5) on inputs (1, 3) ...
  layer = nnx.LinearGeneral(3, (4, 5), **NP_INIT, rngs=nnx.Rngs(0))
  shapes = jax.tree.map(jnp.shape, nn.DenseGeneral((4, 5), **NP_INIT).init(
    jax.random.key(0), jnp.ones((1, 3))))
  assert shapes == {'params': {'bias': (4, 5), 'kernel': (3, 4, 5)}}
  assert (layer.kernel.shape, layer.bias.shape) == ((3, 4, 5), (4, 5))
  assert layer(jnp.ones((1, 3))).shape == (1, 4, 5)
  # ... and on the second and last axes of inputs (1, 3, 6, 7)
  layer = nnx.LinearGeneral((3, 7), (4, 5), axis=(1, -1), **NP_INIT, rngs=nnx.Rngs(0))
  shapes = jax.tree.map(jnp.shape, nn.DenseGeneral((4, 5), axis=(1, -1), **NP_INIT).init(
    jax.random.key(0), jnp.ones((1, 3, 6, 7))))
  assert shapes == {'params': {'bias': (4, 5), 'kernel': (3, 7, 4, 5)}}
  assert (layer.kernel.shape, layer.bias.shape) == ((3, 7, 4, 5), (4, 5))
  assert layer(jnp.ones((1, 3, 6, 7))).shape == (1, 6, 4, 5)


# -- Einsum vs nn.Einsum ------------------------------------------------------------------
EINSUM_CASES = [
  # (einsum_str, kernel_shape, bias_shape, input shape)
  ('nta,hab->nthb', (8, 2, 4), (8, 4), (3, 5, 2)),
  ('abc,cde->abde', (5, 6, 7), (6, 7), (3, 4, 5)),
  ('ab,bc->ac', (5, 6), (6,), (3, 5)),
  ('ab,bc->ca', (5, 6), (6,), (3, 5)),
  ('...a,ab->...b', (4, 3), (3,), (2, 3, 4)),
  ('a...c,bc->a...b', (3, 4), (3,), (2, 5, 4)),
  ('ab,...bc->...ac', (2, 4, 3), (2, 3), (5, 4)),
  ('ab, bc -> ac', (5, 6), None, (3, 5)),
]


@pytest.mark.parametrize('einsum_str,kernel_shape,bias_shape,shape', EINSUM_CASES)
def test_einsum_matches_linen_einsum(einsum_str, kernel_shape, bias_shape, shape):
  layer = nnx.Einsum(einsum_str, kernel_shape, bias_shape, **NP_INIT, rngs=nnx.Rngs(0))
  x = random_input(shape)
  ref = nn.Einsum(kernel_shape, einsum_str, use_bias=bias_shape is not None, **NP_INIT)
  ref_params = ref.init(jax.random.key(0), x)['params']
  if bias_shape is not None:
    assert ref_params['bias'].shape == tuple(bias_shape)
  assert_exactly_equal(layer(x), ref.apply(linen_params(layer), x))


@pytest.mark.parametrize('dtype,param_dtype', [(None, F16), (None, BF16), (BF16, F32),
                                               (F32, F16)])
@pytest.mark.parametrize('precision', [None, 'highest'])
def test_einsum_dtypes_match_linen(dtype, param_dtype, precision):
  layer = nnx.Einsum('nta,hab->nthb', (8, 2, 4), (8, 4), dtype=dtype, param_dtype=param_dtype,
                     precision=precision, **NP_INIT, rngs=nnx.Rngs(0))
  x = random_input((3, 5, 2), param_dtype)
  ref = nn.Einsum((8, 2, 4), 'nta,hab->nthb', dtype=dtype, param_dtype=param_dtype,
                  precision=precision)
  assert_exactly_equal(layer(x), ref.apply(linen_params(layer), x))


def test_einsum_str_at_call_time_and_einsum_op():
  x = random_input((3, 5))
  late = nnx.Einsum(None, (5, 6), (6,), **NP_INIT, rngs=nnx.Rngs(0))
  early = nnx.Einsum('ab,bc->ac', (5, 6), (6,), **NP_INIT, rngs=nnx.Rngs(0))
  assert_exactly_equal(late(x, 'ab,bc->ac'), early(x))
  ref = fnnx.Einsum('ab,bc->ac', (5, 6), (6,), **NP_INIT, rngs=fnnx.Rngs(0))
  assert_exactly_equal(early(x), ref(x))
  seen = []
  op = lambda eq, *args, **kw: seen.append(eq) or jnp.einsum(eq, *args, **kw)
  nnx.Einsum('ab,bc->ac', (5, 6), einsum_op=op, rngs=nnx.Rngs(0))(x)
  assert seen == ['ab,bc->ac']


def test_einsum_str_exactly_once():
  x = jnp.ones((3, 5))
  with pytest.raises(ValueError, match=r'Einsum: give einsum_str exactly once.*neither'):
    nnx.Einsum(None, (5, 6), rngs=nnx.Rngs(0))(x)
  with pytest.raises(ValueError, match=r'Einsum: give einsum_str exactly once.*both'):
    nnx.Einsum('ab,bc->ac', (5, 6), rngs=nnx.Rngs(0))(x, 'ab,bc->ac')
  with pytest.raises(ValueError, match='must be explicit'):
    nnx.Einsum('ab,bc', (5, 6), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='exactly two operands'):
    nnx.Einsum('ab,bc,cd->ad', (5, 6), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'Einsum: the bias has shape \(5,\)'):
    nnx.Einsum('ab,bc->ac', (5, 6), (5,), rngs=nnx.Rngs(0))(x)
  with pytest.raises(ValueError, match=r"kernel operand 'bcd'.*\(5, 6\)"):
    nnx.Einsum('ab,bcd->ac', (5, 6), (6,), rngs=nnx.Rngs(0))(x)


def test_seed_page_001_einsum_example_follows_the_signature():
  # the page writes Einsum('abc,cde->abde', (3, 4, 5), (5, 6, 7)) and expects a (5, 6, 7)
  # kernel and a (6, 7) bias: those are kernel_shape=(5, 6, 7), bias_shape=(6, 7)
  layer = nnx.Einsum('abc,cde->abde', (5, 6, 7), (6, 7), **NP_INIT, rngs=nnx.Rngs(0))
  assert (layer.kernel.shape, layer.bias.shape) == ((5, 6, 7), (6, 7))
  assert layer(jnp.ones((3, 4, 5))).shape == (3, 4, 6, 7)
  # the page's literal arguments make a (3, 4, 5) kernel, as flax.nnx does, which does not
  # fit its input
  literal = nnx.Einsum('abc,cde->abde', (3, 4, 5), (5, 6, 7), **NP_INIT, rngs=nnx.Rngs(0))
  assert literal.kernel.shape == fnnx.Einsum('abc,cde->abde', (3, 4, 5), (5, 6, 7), **NP_INIT,
                                             rngs=fnnx.Rngs(0)).kernel.shape == (3, 4, 5)
  with pytest.raises(ValueError, match=r'Einsum: the bias has shape \(5, 6, 7\)'):
    literal(jnp.ones((3, 4, 5)))


# -- Embed vs nn.Embed --------------------------------------------------------------------
@pytest.mark.parametrize('dtype,param_dtype', [(None, F32), (None, BF16), (F16, F32),
                                               (F32, F16)])
def test_embed_matches_linen(dtype, param_dtype):
  layer = nnx.Embed(7, 3, dtype=dtype, param_dtype=param_dtype, embedding_init=np_init,
                    rngs=nnx.Rngs(0))
  ref = nn.Embed(7, 3, dtype=dtype, param_dtype=param_dtype)
  variables = linen_params(layer, ('embedding',))
  idx = jnp.array([[0, 6, -1], [3, 7, -8]])  # 7 and -8 are out of range: NaN
  out = layer(idx)
  assert_exactly_equal(out, ref.apply(variables, idx))
  assert bool(jnp.isnan(out[1, 1]).all()) and bool(jnp.isnan(out[1, 2]).all())
  assert not bool(jnp.isnan(out[0]).any())
  np.testing.assert_array_equal(np.asarray(out[0, 2], np.float32),
                                np.asarray(out[0, 1], np.float32))  # -1 is the last row
  query = random_input((2, 5, 3), param_dtype)
  assert_exactly_equal(layer.attend(query),
                       ref.apply(variables, query, method=nn.Embed.attend))


def test_embed_single_embedding_broadcasts_and_flax_nnx_outputs():
  layer = nnx.Embed(1, 4, rngs=nnx.Rngs(0))
  idx = jnp.array([[0, 3], [5, 0]])
  out = layer(idx)
  assert out.shape == (2, 2, 4)
  np.testing.assert_array_equal(out, jnp.broadcast_to(layer.embedding[...], (2, 2, 4)))
  ours, theirs = nnx.Embed(9, 4, rngs=nnx.Rngs(3)), fnnx.Embed(9, 4, rngs=fnnx.Rngs(3))
  idx = jnp.array([1, 8, 9, -2])
  assert_exactly_equal(ours(idx), theirs(idx))
  assert_exactly_equal(ours.attend(jnp.ones((2, 4))), theirs.attend(jnp.ones((2, 4))))
  assert nnx.jit(lambda m, i: m(i))(ours, idx).shape == (4, 4)


# -- errors and the module path -----------------------------------------------------------
def test_wrong_feature_size_names_layer_and_sizes():
  with pytest.raises(ValueError, match=r'Linear: the last axis of the input has size 5 .*'
                                       r'in_features=3'):
    nnx.Linear(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 5)))
  general = nnx.LinearGeneral((3, 7), (4, 5), axis=(1, -1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'LinearGeneral: the input has sizes \(3, 6\) on the '
                                       r'contracted axes \(1, 3\).*in_features=\(3, 7\)'):
    general(jnp.ones((1, 3, 7, 6)))
  with pytest.raises(ValueError, match=r'LinearGeneral: axis 1 is out of range'):
    general(jnp.ones(()))
  batched = nnx.LinearGeneral(3, 4, batch_axis={0: 2}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'LinearGeneral: .*batch sizes \(2,\)'):
    batched(jnp.ones((5, 3)))
  with pytest.raises(ValueError, match='same length'):
    nnx.LinearGeneral((3, 4), 5, axis=-1, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='consecutive leading axes'):
    nnx.LinearGeneral(3, 5, batch_axis={1: 2}, rngs=nnx.Rngs(0))
  embed = nnx.Embed(5, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='Embed: inputs must be integer indices.*float32'):
    embed(jnp.ones((2,)))
  with pytest.raises(ValueError, match=r'Embed.attend: .*size 4 .*features=3'):
    embed.attend(jnp.ones((2, 4)))


def test_module_path_mirrors_flax():
  import flax.nnx.nn.linear as flax_linear

  import bridge.nn.linear as linear
  names = ['Linear', 'LinearGeneral', 'Einsum', 'Embed', 'default_kernel_init',
           'default_bias_init', 'default_embed_init']
  if importlib.util.find_spec('bridge.nn.conv') is not None:  # built beside this module
    names += ['Conv', 'ConvTranspose']
  for name in names:
    assert hasattr(flax_linear, name) and hasattr(linear, name), name
  assert linear.Embed is nnx.Embed and linear.Linear is nnx.Linear
  assert nnx.nn.linear is linear
  with pytest.raises(AttributeError):
    linear.NotALayer  # noqa: B018


@pytest.mark.parametrize('case', ['general_batch_axis', 'einsum', 'embed', 'linear_no_bias'])
def test_split_merge_and_jit_keep_the_layers(case):
  layer = INIT_CASES[case](nnx)
  x = {'einsum': random_input((3, 5, 2)), 'embed': jnp.array([[0, 4], [2, 9]]),
       'general_batch_axis': random_input((2, 6, 3))}.get(case, random_input((2, 3)))
  graphdef, state = nnx.split(layer)
  assert_exactly_equal(nnx.merge(graphdef, state)(x), layer(x))
  assert graphdef == nnx.graphdef(INIT_CASES[case](nnx))
  assert_exactly_equal(nnx.jit(lambda m, x: m(x))(layer, x), layer(x))
