"""Normalization layers: initial parameters equal flax.nnx's, outputs equal flax.nnx's and
flax.linen's given the same parameters, BatchNorm's running statistics over train/eval
steps, ``axis_name`` under ``bridge.vmap`` and ``jax.shard_map``, and the errors.

Exactness: bridge does what flax.nnx does, so outputs equal flax.nnx's bit for bit for every
option. flax.linen does the same math except that flax.nnx (and bridge) first cast the input,
the parameters and (in BatchNorm) the running statistics to ``dtype``; so linen parity is
exact whenever that cast loses nothing: ``dtype`` ``None``/float32, or inputs and parameters
on a grid of values every half type holds exactly (``grid`` below).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import bridge as nnx

DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)
LAYERS = ('BatchNorm', 'LayerNorm', 'RMSNorm', 'GroupNorm', 'InstanceNorm')


def grid(seed, shape, dtype=jnp.float32):
  """Values k/64 with |k| < 256: exact in float32, float16 and bfloat16."""
  k = np.random.default_rng(seed).integers(-255, 256, shape)
  return jnp.asarray(k / 64, dtype)


def normal(seed, shape, scale=1.0, shift=0.0):
  """Normal float32 values (made by NumPy: no compilation per shape)."""
  x = np.random.default_rng(seed).standard_normal(shape) * scale + shift
  return jnp.asarray(x, jnp.float32)


def params_of(layer):
  """A layer's ``scale``/``bias`` values by name (the Linen ``params`` collection)."""
  return {name: getattr(layer, name).value for name in ('scale', 'bias')
          if getattr(layer, name, None) is not None}


def set_params(layer, params):
  for name, value in params.items():
    getattr(layer, name).value = value


def random_params(layer, seed, dtype):
  """Gives ``layer`` non-trivial grid-valued parameters (so scale and bias matter)."""
  params = {name: grid(seed + i, v.shape, dtype)
            for i, (name, v) in enumerate(params_of(layer).items())}
  set_params(layer, params)
  return params


def as_linen(params, linen, x):
  """``params`` reshaped to the Linen module's shapes (one axis per feature axis)."""
  shapes = jax.eval_shape(linen.init, jax.random.key(0), x).get('params', {})
  return {k: v.reshape(shapes[k].shape) for k, v in params.items()}


def assert_same(a, b):
  assert a.dtype == b.dtype, (a.dtype, b.dtype)
  np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


# -- initial parameters --------------------------------------------------------------------
INIT_CASES = [
  ('BatchNorm', {}), ('BatchNorm', dict(use_bias=False, param_dtype=jnp.bfloat16)),
  ('LayerNorm', {}), ('LayerNorm', dict(use_scale=False)),
  ('RMSNorm', {}), ('RMSNorm', dict(use_scale=False)),
  ('GroupNorm', dict(num_groups=3)), ('GroupNorm', dict(num_groups=None, group_size=2)),
  ('InstanceNorm', {}), ('InstanceNorm', dict(use_bias=False, use_scale=False)),
]


@pytest.mark.parametrize('name, kwargs', INIT_CASES)
def test_init_equals_flax_nnx(name, kwargs):
  random_init = dict(scale_init=nnx.initializers.normal(), param_dtype=jnp.float16)
  if name != 'RMSNorm':
    random_init['bias_init'] = nnx.initializers.uniform()
  for kw in (kwargs, {**kwargs, **random_init}):  # random inits check the key order
    ours = nnx.state(getattr(nnx, name)(6, rngs=nnx.Rngs(3), **kw))
    theirs = fnnx.state(getattr(fnnx, name)(6, rngs=fnnx.Rngs(3), **kw))
    ours, theirs = nnx.to_flat_state(ours), fnnx.to_flat_state(theirs)
    assert [p for p, _ in ours] == [p for p, _ in theirs]
    for (_, a), (_, b) in zip(ours, theirs, strict=True):
      assert type(a).__name__ == type(b).__name__
      assert_same(a.value, b[...])


def test_batchnorm_state_types_match_seed_page():
  layer = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
  state = nnx.state(layer)
  assert {k: type(v) for k, v in state.items()} == {
    'bias': nnx.Param, 'mean': nnx.BatchStat, 'scale': nnx.Param, 'var': nnx.BatchStat}
  assert jax.tree.map(jnp.shape, nnx.state(layer, nnx.BatchStat))['mean'].value == (3,)


def test_param_metadata_is_kept():
  layer = nnx.LayerNorm(4, rngs=nnx.Rngs(0), scale_metadata={'sharding': ('embed',)},
                        bias_metadata={'sharding': ('embed',)})
  assert layer.scale.sharding == ('embed',) and layer.bias.sharding == ('embed',)
  rms = nnx.RMSNorm(4, rngs=nnx.Rngs(0), scale_metadata={'sharding': ('embed',)})
  assert rms.scale.sharding == ('embed',)


def test_signatures_match_flax_nnx():
  import inspect
  for name in (*LAYERS, 'Dropout'):
    ours = inspect.signature(getattr(nnx, name).__init__).parameters
    theirs = inspect.signature(getattr(fnnx, name).__init__).parameters
    assert list(ours) == list(theirs), name
    for p in theirs.values():
      if p.default is not inspect.Parameter.empty and not callable(p.default):
        assert ours[p.name].default == p.default, (name, p.name)
      assert ours[p.name].kind == p.kind, (name, p.name)
    call = list(inspect.signature(getattr(nnx, name).__call__).parameters)
    assert call == list(inspect.signature(getattr(fnnx, name).__call__).parameters), name


# -- outputs: layer configurations ----------------------------------------------------------
# (name, kwargs for bridge, flax.nnx and flax.linen (less num_features), input shape)
CONFIGS = [
  ('LayerNorm', {}, (4, 3, 6)),
  ('LayerNorm', dict(epsilon=1e-2, use_bias=False, use_fast_variance=False), (4, 3, 6)),
  ('LayerNorm', dict(use_scale=False, reduction_axes=(1, 2)), (4, 3, 6)),
  ('LayerNorm', dict(num_features=18, reduction_axes=(-2, -1), feature_axes=(-2, -1)),
   (4, 3, 6)),
  ('RMSNorm', {}, (4, 3, 6)),
  ('RMSNorm', dict(epsilon=1e-3, use_fast_variance=False, reduction_axes=(1, 2)),
   (4, 3, 6)),
  ('RMSNorm', dict(use_scale=False), (4, 3, 6)),
  ('GroupNorm', dict(num_groups=3), (4, 3, 6)),
  ('GroupNorm', dict(num_groups=1, epsilon=1e-3, use_bias=False), (2, 2, 3, 6)),
  ('GroupNorm', dict(num_groups=None, group_size=3, use_fast_variance=False), (2, 2, 3, 6)),
  ('GroupNorm', dict(num_groups=6), (4, 6)),
  ('InstanceNorm', {}, (2, 2, 3, 6)),
  ('InstanceNorm', dict(use_scale=False, use_fast_variance=False, epsilon=1e-3), (4, 3, 6)),
  ('InstanceNorm', dict(num_features=3, feature_axes=1), (2, 3, 2, 6)),
]


def build(name, kwargs, lib, **extra):
  kwargs = {'num_features': 6, **kwargs, **extra}
  if lib is nn:
    return getattr(nn, name)(**{k: v for k, v in kwargs.items() if k != 'num_features'})
  rngs = nnx.Rngs(0) if lib is nnx else fnnx.Rngs(0)
  return getattr(lib, name)(rngs=rngs, **kwargs)


# (x dtype, layer dtype, param dtype): inferred and forced dtypes, half inputs and params
DTYPE_CASES = [
  (jnp.float32, None, jnp.float32), (jnp.bfloat16, None, jnp.float32),
  (jnp.float16, None, jnp.bfloat16), (jnp.float32, jnp.bfloat16, jnp.bfloat16),
  (jnp.bfloat16, jnp.float16, jnp.float32),
]


@pytest.mark.parametrize('name, kwargs, shape', CONFIGS,
                         ids=[f'{c[0]}-{i}' for i, c in enumerate(CONFIGS)])
def test_stateless_layers_equal_flax_nnx_and_linen(name, kwargs, shape):
  for x_dtype, dtype, param_dtype in DTYPE_CASES:
    x = grid(1, shape, x_dtype)
    ours = build(name, kwargs, nnx, dtype=dtype, param_dtype=param_dtype)
    params = random_params(ours, 7, param_dtype)
    theirs = build(name, kwargs, fnnx, dtype=dtype, param_dtype=param_dtype)
    for k, v in params.items():
      getattr(theirs, k)[...] = v
    y = ours(x)
    assert y.shape == x.shape
    assert_same(y, theirs(x))
    linen = build(name, kwargs, nn, dtype=dtype, param_dtype=param_dtype)
    assert_same(y, linen.apply({'params': as_linen(params, linen, x)}, x))
def test_groupnorm_reduction_axes_without_the_batch_axis_follow_linen():
  """Statistics per example, group and leading spatial row: flax.nnx 0.12 repeats the
  group statistics along axis 1, which is wrong when axis 1 is not reduced (its output is
  not normalized); bridge repeats along the group axis, as flax.linen does."""
  x = normal(0, (2, 2, 3, 6))
  ours = nnx.GroupNorm(6, num_groups=2, reduction_axes=(2, 3), rngs=nnx.Rngs(0))
  y = ours(x)
  linen = nn.GroupNorm(num_groups=2, reduction_axes=(2, 3))
  assert_same(y, linen.apply({'params': params_of(ours)}, x))
  groups = y.reshape(2, 2, 3, 2, 3)
  np.testing.assert_allclose(groups.mean((2, 4)), 0.0, atol=1e-5)
  np.testing.assert_allclose(groups.var((2, 4)), 1.0, rtol=1e-4)


@pytest.mark.parametrize('name', ['LayerNorm', 'RMSNorm', 'InstanceNorm', 'GroupNorm'])
def test_random_inputs_equal_linen(name):
  kwargs = dict(num_groups=3) if name == 'GroupNorm' else {}
  x = normal(0, (4, 3, 6), 3, 1)
  ours = build(name, kwargs, nnx)
  for k, v in params_of(ours).items():
    getattr(ours, k).value = v + normal(len(k), v.shape)
  assert_same(ours(x), build(name, kwargs, nn).apply({'params': params_of(ours)}, x))


@pytest.mark.parametrize('name', ['LayerNorm', 'RMSNorm', 'InstanceNorm', 'GroupNorm'])
def test_mask_equals_linen(name):
  kwargs = dict(num_groups=3) if name == 'GroupNorm' else {}
  x = normal(0, (4, 3, 6))
  mask = np.random.default_rng(1).random(x.shape) < 0.7
  ours = build(name, kwargs, nnx)
  y = ours(x, mask=mask)
  assert_same(y, build(name, kwargs, nn).apply({'params': params_of(ours)}, x, mask=mask))
  assert not np.array_equal(y, ours(x))


def test_layernorm_normalizes_each_example():
  x = normal(0, (4, 6), 5, 2)
  y = nnx.LayerNorm(6, rngs=nnx.Rngs(0))(x)
  np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-4)


# -- BatchNorm ------------------------------------------------------------------------------
BATCHNORM_CASES = [
  (dict(), (4, 6)),
  (dict(momentum=0.9, epsilon=1e-3), (4, 3, 6)),
  (dict(use_fast_variance=False, use_bias=False), (4, 3, 6)),
  (dict(use_scale=False), (4, 3, 6)),
  (dict(axis=1, num_features=3), (4, 3, 6)),
  (dict(axis=(1, 2), num_features=18), (4, 3, 6)),
]


def linen_batchnorm(kwargs, **extra):
  kwargs = {k: v for k, v in {**kwargs, **extra}.items() if k != 'num_features'}
  return nn.BatchNorm(**kwargs)


def linen_stats(layer, feature_shape):
  return {'mean': layer.mean.value.reshape(feature_shape),
          'var': layer.var.value.reshape(feature_shape)}


@pytest.mark.parametrize('kwargs, shape, x_dtype, dtype, param_dtype', [
  *[(kwargs, shape, jnp.float32, None, jnp.float32) for kwargs, shape in BATCHNORM_CASES],
  *[(BATCHNORM_CASES[1][0], BATCHNORM_CASES[1][1], *dtypes) for dtypes in [
    (jnp.bfloat16, None, jnp.float32), (jnp.float16, None, jnp.bfloat16),
    (jnp.float32, jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.bfloat16, jnp.float32),
    (jnp.float16, jnp.float16, jnp.float16)]],
])
def test_batchnorm_train_then_eval_equals_linen_and_flax_nnx(kwargs, shape, x_dtype, dtype,
                                                             param_dtype):
  """Three training steps (stats updated) then two evaluation steps (stats used, kept)."""
  kwargs = {'num_features': 6, **kwargs}
  ours = nnx.BatchNorm(rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype, **kwargs)
  params = random_params(ours, 3, param_dtype)
  # flax.nnx's BatchNorm takes one feature axis; several (as in Linen) are compared to Linen
  theirs = fnnx.BatchNorm(rngs=fnnx.Rngs(0), dtype=dtype, param_dtype=param_dtype, **kwargs) \
    if isinstance(kwargs.get('axis', -1), int) else None
  for k, v in params.items():
    if theirs is not None:
      getattr(theirs, k)[...] = v
  feature_axes = (kwargs.get('axis', -1),) if isinstance(kwargs.get('axis', -1), int) \
    else kwargs['axis']
  feature_shape = tuple(shape[a] for a in feature_axes)
  linen = linen_batchnorm(kwargs, dtype=dtype, param_dtype=param_dtype)
  linen_params = {k: v.reshape(feature_shape) for k, v in params.items()}
  stats = linen_stats(ours, feature_shape)

  ours.train()
  for step in range(3):
    x = grid(step, shape, x_dtype) + step
    y = ours(x)
    if theirs is not None:
      assert_same(y, theirs(x))
    y_linen, updates = linen.apply({'params': linen_params, 'batch_stats': stats}, x,
                                   use_running_average=False, mutable=['batch_stats'])
    stats = updates['batch_stats']
    assert_same(as_linen_dtype(y, y_linen, dtype), y_linen)
    for k in ('mean', 'var'):
      assert getattr(ours, k).value.dtype == jnp.float32
      if theirs is not None:
        assert_same(getattr(ours, k).value, getattr(theirs, k)[...])
      assert_same(getattr(ours, k).value.reshape(feature_shape), stats[k])

  ours.eval()
  frozen = nnx.clone(nnx.state(ours, nnx.BatchStat))
  for step in range(2):
    x = grid(10 + step, shape, x_dtype)
    y = ours(x)
    if theirs is not None:
      assert_same(y, theirs(x, use_running_average=True))
    y_linen = linen.apply({'params': linen_params, 'batch_stats': stats}, x,
                          use_running_average=True)
    if dtype in (None, jnp.float32):
      assert_same(as_linen_dtype(y, y_linen, dtype), y_linen)
    else:  # flax.nnx casts the running statistics to ``dtype``; linen does not
      tol = 8 * float(jnp.finfo(dtype).eps)  # a few units in the last place of ``dtype``
      np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_linen, np.float32),
                                 rtol=tol, atol=tol)
  after = nnx.state(ours, nnx.BatchStat)
  for k in ('mean', 'var'):
    assert_same(after[k].value, frozen[k].value)


def as_linen_dtype(y, y_linen, dtype):
  """With ``dtype=None``, flax.nnx (and bridge) infer the output dtype from the input, the
  parameters *and* the float32 running statistics, so it is float32 where Linen's, from
  the input and parameters alone, may be a half type; the values, computed in float32 by
  both, then agree once cast to Linen's dtype."""
  if dtype is None and y.dtype != y_linen.dtype:
    assert y.dtype == jnp.float32
    return y.astype(y_linen.dtype)
  return y


def test_batchnorm_random_inputs_equal_linen():
  x = normal(0, (16, 6), 3, 1)
  ours = nnx.BatchNorm(6, momentum=0.8, rngs=nnx.Rngs(0))
  stats = linen_stats(ours, (6,))
  for _ in range(3):
    y = ours(x)
    y_linen, updates = nn.BatchNorm(use_running_average=False, momentum=0.8).apply(
      {'params': params_of(ours), 'batch_stats': stats}, x, mutable=['batch_stats'])
    stats = updates['batch_stats']
    assert_same(y, y_linen)
    assert_same(ours.mean.value, stats['mean'])
    assert_same(ours.var.value, stats['var'])


def test_batchnorm_mask_equals_linen():
  x = normal(0, (8, 6))
  mask = np.random.default_rng(1).random(x.shape) < 0.6
  ours = nnx.BatchNorm(6, rngs=nnx.Rngs(0))
  stats = linen_stats(ours, (6,))
  y = ours(x, mask=mask)
  y_linen, updates = nn.BatchNorm(use_running_average=False).apply(
    {'params': params_of(ours), 'batch_stats': stats}, x, mask=mask, mutable=['batch_stats'])
  assert_same(y, y_linen)
  assert_same(ours.mean.value, updates['batch_stats']['mean'])


def test_batchnorm_train_eval_switching_and_call_override():
  x = normal(0, (8, 4))
  model = nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(0)))
  bn = model.layers[1]
  assert bn.use_running_average is False
  model(x)
  moved = bn.mean.value
  assert not np.array_equal(moved, 0.0)

  model.eval()
  assert bn.use_running_average is True
  y_eval = model(x)
  assert_same(bn.mean.value, moved)
  # the call's argument wins over the attribute
  bn(x, use_running_average=False)
  assert not np.array_equal(bn.mean.value, moved)

  model.train()
  assert bn.use_running_average is False
  before = bn.mean.value
  bn(x, use_running_average=True)
  assert_same(bn.mean.value, before)
  assert y_eval.shape == (8, 4)


def test_batchnorm_needs_use_running_average():
  bn = nnx.BatchNorm(3, use_running_average=None, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='use_running_average'):
    bn(jnp.ones((2, 3)))
  bn(jnp.ones((2, 3)), use_running_average=True)
  bn.eval()
  bn(jnp.ones((2, 3)))


def test_batchnorm_stats_get_no_gradient_and_update_under_jit():
  model = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
  x = normal(0, (5, 3))

  @nnx.jit
  def step(model, x):
    def loss(model):
      return (model(x) ** 2).sum()
    return nnx.grad(loss)(model)

  grads = step(model, x)
  assert set(grads.keys()) == {'scale', 'bias'}
  assert not np.array_equal(model.mean.value, 0.0)  # updated in place through jit and grad

  theirs = fnnx.BatchNorm(3, rngs=fnnx.Rngs(0))
  fgrads = fnnx.jit(lambda m, x: fnnx.grad(lambda m: (m(x) ** 2).sum())(m))(theirs, x)
  np.testing.assert_allclose(grads['scale'].value, fgrads['scale'][...], rtol=1e-6)
  np.testing.assert_allclose(model.mean.value, theirs.mean[...], rtol=1e-6)


# -- axis_name: statistics across a mapped axis ----------------------------------------------
def full_batch_reference(x_shards, **kwargs):
  full = nnx.BatchNorm(x_shards.shape[-1], rngs=nnx.Rngs(0), **kwargs)
  y = full(x_shards.reshape(-1, x_shards.shape[-1])).reshape(x_shards.shape)
  return y, full


def test_batchnorm_axis_name_under_bridge_vmap_equals_full_batch():
  xs = normal(0, (4, 8, 5), 2, 1)  # 4 shards of 8 examples
  bn = nnx.BatchNorm(5, axis_name='batch', rngs=nnx.Rngs(0))
  y = nnx.vmap(lambda bn, x: bn(x), in_axes=(None, 0), axis_name='batch')(bn, xs)
  y_full, full = full_batch_reference(xs)
  np.testing.assert_allclose(y, y_full, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bn.mean.value, full.mean.value, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(bn.var.value, full.var.value, rtol=1e-5, atol=1e-7)
  assert bn.mean.value.shape == (5,)

  # exactly what flax.nnx's vmap and linen under jax.vmap compute
  theirs = fnnx.BatchNorm(5, axis_name='batch', rngs=fnnx.Rngs(0))
  y_theirs = fnnx.vmap(lambda bn, x: bn(x), in_axes=(None, 0), axis_name='batch')(theirs, xs)
  assert_same(y, y_theirs)
  assert_same(bn.mean.value, theirs.mean[...])
  linen = nn.BatchNorm(use_running_average=False, axis_name='batch')
  variables = {'params': params_of(nnx.BatchNorm(5, rngs=nnx.Rngs(0))),
               'batch_stats': {'mean': jnp.zeros(5), 'var': jnp.ones(5)}}
  y_linen, updates = jax.vmap(
    lambda x: linen.apply(variables, x, mutable=['batch_stats']), axis_name='batch')(xs)
  assert_same(y, y_linen)
  assert_same(bn.var.value, updates['batch_stats']['var'][0])


def test_batchnorm_axis_index_groups_under_pmap():
  """Statistics shared within groups of devices (vmap and shard_map collectives do not take
  ``axis_index_groups``; pmap does)."""
  xs = normal(0, (4, 6, 3), shift=np.arange(4.0)[:, None, None])
  bn = nnx.BatchNorm(3, axis_name='b', axis_index_groups=[[0, 1], [2, 3]], rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(bn)
  y = jax.pmap(lambda state, x: nnx.merge(graphdef, state)(x), in_axes=(None, 0),
               axis_name='b', devices=jax.devices()[:4])(state, xs)
  for group in ([0, 1], [2, 3]):
    y_group, _ = full_batch_reference(xs[jnp.array(group)])
    np.testing.assert_allclose(y[jnp.array(group)], y_group, rtol=1e-5, atol=1e-5)


def test_batchnorm_axis_name_under_shard_map_on_8_devices():
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  x = normal(0, (32, 4), 3, -1)
  bn = nnx.BatchNorm(4, axis_name='data', momentum=0.9, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(bn)

  @jax.jit
  @jax.shard_map(mesh=mesh, in_specs=(P(), P('data')), out_specs=(P('data'), P()))
  def step(state, x):
    model = nnx.merge(graphdef, state)
    y = model(x)
    return y, nnx.state(model)

  for _ in range(2):
    y, state = step(state, x)
    nnx.update(bn, state)
  full = nnx.BatchNorm(4, momentum=0.9, rngs=nnx.Rngs(0))
  for _ in range(2):
    y_full = full(x)
  np.testing.assert_allclose(y, y_full, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bn.mean.value, full.mean.value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.var.value, full.var.value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['LayerNorm', 'RMSNorm'])
def test_layer_axis_name_shares_stats_across_feature_shards(name):
  """A feature axis split over a mapped axis: ``axis_name`` combines the shards' stats."""
  x = normal(0, (3, 8))
  shards = x.reshape(3, 2, 4).transpose(1, 0, 2)  # 2 shards of 4 features
  layer = getattr(nnx, name)(4, axis_name='f', use_scale=False, rngs=nnx.Rngs(0))
  if name == 'LayerNorm':
    layer.bias = None
  y = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name='f')(layer, shards)
  y_full = getattr(nnx, name)(8, use_scale=False, rngs=nnx.Rngs(0))
  if name == 'LayerNorm':
    y_full.bias = None
  expected = y_full(x).reshape(3, 2, 4).transpose(1, 0, 2)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


# -- errors ----------------------------------------------------------------------------------
def test_wrong_feature_count_is_a_clear_error():
  with pytest.raises(ValueError, match=r'BatchNorm: expected num_features=3.*shape \(2, 4\)'):
    nnx.BatchNorm(3, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))
  with pytest.raises(ValueError, match=r'LayerNorm: expected num_features=3'):
    nnx.LayerNorm(3, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))
  with pytest.raises(ValueError, match=r'RMSNorm: expected num_features=3'):
    nnx.RMSNorm(3, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))
  with pytest.raises(ValueError, match=r'InstanceNorm: expected num_features=3'):
    nnx.InstanceNorm(3, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 4)))
  with pytest.raises(ValueError, match=r'GroupNorm: expected num_features=4 channels'):
    nnx.GroupNorm(4, num_groups=2, rngs=nnx.Rngs(0))(jnp.ones((2, 6)))
  with pytest.raises(ValueError, match='out of range'):
    nnx.LayerNorm(4, reduction_axes=3, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))


def test_parameterless_layers_accept_any_feature_count():
  layer = nnx.LayerNorm(3, use_scale=False, use_bias=False, rngs=nnx.Rngs(0))
  assert layer(jnp.ones((2, 5))).shape == (2, 5)


def test_groupnorm_configuration_errors():
  with pytest.raises(ValueError, match='exactly one of `num_groups` and `group_size`'):
    nnx.GroupNorm(6, num_groups=3, group_size=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='exactly one'):
    nnx.GroupNorm(6, num_groups=None, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='num_groups=4 does not divide num_features=6'):
    nnx.GroupNorm(6, num_groups=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='not a multiple of group_size=4'):
    nnx.GroupNorm(6, num_groups=None, group_size=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='does not divide'):
    nnx.GroupNorm(6, rngs=nnx.Rngs(0))  # the default num_groups=32
  with pytest.raises(ValueError, match='must include the last'):
    nnx.GroupNorm(6, num_groups=2, reduction_axes=(1,), rngs=nnx.Rngs(0))(jnp.ones((2, 3, 6)))
  layer = nnx.GroupNorm(6, num_groups=None, group_size=2, rngs=nnx.Rngs(0))
  assert (layer.num_groups, layer.group_size) == (3, 2)


def test_instancenorm_batch_axis_cannot_be_a_feature_axis():
  with pytest.raises(ValueError, match='leading axis, which is the batch axis'):
    nnx.InstanceNorm(2, feature_axes=0, rngs=nnx.Rngs(0))(jnp.ones((2, 3)))
