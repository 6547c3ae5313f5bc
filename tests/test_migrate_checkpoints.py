"""bridge.migrate checkpoints: orbax save/restore of bridge models, Linen-loop checkpoints
restored into a ported model, and interrupted saves."""

import os
import typing as tp

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state

import bridge as nnx
from bridge.migrate import (
  VariableMatchError,
  restore_checkpoint,
  restore_linen_checkpoint,
  save_checkpoint,
)

X = jax.random.normal(jax.random.key(3), (6, 4))


class Model(nnx.Module):
  """Every kind of leaf a checkpoint must keep: bf16 and int32 values, a List, batch stats,
  RNG state, sharding metadata."""

  def __init__(self, rngs):
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, 'model'))
    self.layers = nnx.List([nnx.Linear(4, 8, kernel_init=init, rngs=rngs),
                            nnx.Linear(8, 8, param_dtype=jnp.bfloat16, rngs=rngs)])
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.steps = nnx.Variable(jnp.array(7, jnp.int32))

  def __call__(self, x):
    x = self.bn(self.layers[0](x))
    return self.layers[1](self.dropout(x))


def stored(x):
  x = x.raw_value
  return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def assert_same_state(a, b):
  fa, fb = nnx.state(a).flat_state(), nnx.state(b).flat_state()
  assert fa.paths == fb.paths
  for (path, x), (_, y) in zip(fa, fb, strict=True):
    assert type(x) is type(y), path
    assert x.get_metadata() == y.get_metadata(), path
    assert x.raw_value.dtype == y.raw_value.dtype, path
    np.testing.assert_array_equal(stored(x), stored(y), err_msg=str(path))


def trained(seed=0):
  """A model whose values differ from a fresh one's (batch stats and steps moved)."""
  model = Model(nnx.Rngs(seed))
  model(X)
  model.steps.value += 1
  return model


# -- bridge models ------------------------------------------------------------------------
def test_round_trip_is_exact_into_an_abstract_model(tmp_path):
  model = trained()
  assert save_checkpoint(tmp_path, model) == 0
  fresh = nnx.eval_shape(lambda: Model(nnx.Rngs(1)))
  assert restore_checkpoint(tmp_path, fresh) is fresh
  assert_same_state(fresh, model)
  assert fresh.layers[0].kernel.out_sharding == (None, 'model')  # the model's metadata
  assert fresh.layers[1].kernel.dtype == jnp.bfloat16
  # RNG state is restored: both draw the same dropout masks from here on.
  np.testing.assert_array_equal(fresh(X), model(X))


def test_round_trip_into_a_state_then_merge(tmp_path):
  model = trained()
  save_checkpoint(tmp_path, nnx.state(model))
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Model(nnx.Rngs(1))))
  restore_checkpoint(tmp_path, state)
  assert_same_state(nnx.merge(graphdef, state), model)


def test_the_flax_nnx_orbax_recipe_runs_on_bridge(tmp_path):
  """flax.nnx's checkpointing guide, with ``import bridge as nnx``."""
  model = trained()
  _, state = nnx.split(model)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'state', state)
  checkpointer.save(tmp_path / 'pure', nnx.to_pure_dict(state))
  checkpointer.wait_until_finished()
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: Model(nnx.Rngs(1))))
  assert_same_state(nnx.merge(graphdef, checkpointer.restore(tmp_path / 'state',
                                                             abstract_state)), model)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: Model(nnx.Rngs(1))))
  nnx.replace_by_pure_dict(abstract_state, checkpointer.restore(tmp_path / 'pure'))
  restored = nnx.merge(graphdef, abstract_state)
  np.testing.assert_array_equal(restored.layers[1].kernel.value, model.layers[1].kernel.value)


def test_tonnx_wrapped_model_round_trip(tmp_path):
  net = LinenNet()
  model = nnx.ToNNX(net, rngs=nnx.Rngs(0)).lazy_init(X, train=False)
  model(X, train=True)  # batch stats move
  save_checkpoint(tmp_path, model)
  other = nnx.ToNNX(net, rngs=nnx.Rngs(1)).lazy_init(X, train=False)
  restore_checkpoint(tmp_path, other)
  assert_same_state(other, model)
  np.testing.assert_array_equal(other(X, train=False), model(X, train=False))


def test_model_and_optimizer_in_one_checkpoint_continue_training_identically(tmp_path):
  def loss(model):
    return jnp.mean(model(X) ** 2)

  def setup(seed):
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(seed))
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  model, optimizer = setup(0)
  optimizer.update(model, nnx.grad(loss)(model))
  save_checkpoint(tmp_path, {'model': model, 'optimizer': optimizer})
  model2, optimizer2 = setup(1)
  restore_checkpoint(tmp_path, {'model': model2, 'optimizer': optimizer2})
  assert int(optimizer2.step.value) == 1
  for _ in range(2):
    optimizer.update(model, nnx.grad(loss)(model))
    optimizer2.update(model2, nnx.grad(loss)(model2))
  np.testing.assert_array_equal(model2.kernel.value, model.kernel.value)


def test_restored_arrays_take_the_models_shardings(tmp_path):
  mesh = jax.make_mesh((8,), ('model',))
  model = trained()
  save_checkpoint(tmp_path, model)
  target = Model(nnx.Rngs(1))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, 'model'))
  target.layers[0].kernel.value = jax.device_put(target.layers[0].kernel.value, sharding)
  restore_checkpoint(tmp_path, target)
  assert target.layers[0].kernel.value.sharding == sharding
  np.testing.assert_array_equal(target.layers[0].kernel.value, model.layers[0].kernel.value)


def test_steps_latest_by_default_and_max_to_keep(tmp_path):
  first, second = trained(0), trained(1)
  assert save_checkpoint(tmp_path, first) == 0
  assert save_checkpoint(tmp_path, second) == 1
  assert_same_state(restore_checkpoint(tmp_path, Model(nnx.Rngs(2))), second)
  assert_same_state(restore_checkpoint(tmp_path, Model(nnx.Rngs(2)), step=0), first)
  assert save_checkpoint(tmp_path, first, step=10, max_to_keep=1) == 10
  assert sorted(os.listdir(tmp_path)) == ['10']
  with pytest.raises(FileNotFoundError, match=r'has no step 0; its steps are \[10\]'):
    restore_checkpoint(tmp_path, Model(nnx.Rngs(2)), step=0)


def test_restoring_into_another_structure_lists_the_paths(tmp_path):
  save_checkpoint(tmp_path, trained())

  class Other(nnx.Module):
    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(4, 9, rngs=rngs)])
      self.steps = nnx.Variable(jnp.array(7.0))

  target = Other(nnx.Rngs(0))
  before = np.asarray(target.layers[0].kernel.value)
  with pytest.raises(VariableMatchError) as e:
    restore_checkpoint(tmp_path, target)
  assert 'layers/1/kernel (8, 8) bfloat16' in e.value.source_only
  assert 'dropout/rngs/key (2,) uint32' in e.value.source_only
  assert e.value.mismatched == ['layers/0/bias (8,) float32 -> layers/0/bias (9,) float32',
                                'layers/0/kernel (4, 8) float32 -> layers/0/kernel (4, 9) float32',
                                'steps () int32 -> steps () float32']
  assert f'checkpoint {tmp_path}/0' in str(e.value)
  np.testing.assert_array_equal(target.layers[0].kernel.value, before)


def test_missing_or_empty_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint directory'):
    restore_checkpoint(tmp_path / 'nope', Model(nnx.Rngs(0)))
  with pytest.raises(FileNotFoundError, match='has no complete checkpoint step'):
    restore_checkpoint(tmp_path, Model(nnx.Rngs(0)))


# -- interrupted saves --------------------------------------------------------------------
async def _fail(*args, **kwargs):
  raise OSError('simulated crash in the middle of a save')


@pytest.mark.parametrize('where', [
  # after the arrays were written, while writing the tree's metadata
  (ocp.BasePyTreeCheckpointHandler, '_write_metadata_file'),
  # with everything written, at the commit (the rename of the temporary directory)
  (ocp.path.atomicity.AtomicRenameTemporaryPath, 'finalize'),
])
def test_an_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch,
                                                                     where):
  first = trained(0)
  save_checkpoint(tmp_path, first)
  with monkeypatch.context() as patch:
    patch.setattr(*where, _fail)
    with pytest.raises(OSError, match='simulated crash'):
      save_checkpoint(tmp_path, trained(1))
  leftovers = [n for n in os.listdir(tmp_path) if n != '0']
  assert leftovers and all('tmp' in n for n in leftovers)  # the unfinished step 1
  assert_same_state(restore_checkpoint(tmp_path, Model(nnx.Rngs(5))), first)
  # The next save goes through and becomes the latest.
  second = trained(2)
  assert save_checkpoint(tmp_path, second) == 1
  assert_same_state(restore_checkpoint(tmp_path, Model(nnx.Rngs(5))), second)


# -- checkpoints of a Linen training loop -------------------------------------------------
class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(16, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(),
                                                      (None, 'model')))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(3)(nn.relu(x))


class Net(nnx.Module):
  """The hand-written port, with its own names."""

  def __init__(self, rngs):
    self.linear1 = nnx.Linear(4, 16, rngs=rngs)
    self.bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
    self.linear2 = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.linear2(nnx.relu(self.bn(self.linear1(x))))


NET_RULES = {'Dense_0': 'linear1', 'BatchNorm_0': 'bn', 'Dense_1': 'linear2'}


class TrainState(train_state.TrainState):
  batch_stats: tp.Any


@pytest.fixture(scope='module')
def linen_run(tmp_path_factory):
  """A Linen training loop: 3 Adam steps, checkpointed every step with a CheckpointManager
  (TrainState with boxed params, batch stats and optimizer state)."""
  directory = tmp_path_factory.mktemp('linen_run')
  net = LinenNet()
  variables = net.init(jax.random.key(0), X, train=False)
  state = TrainState.create(apply_fn=net.apply, params=variables['params'],
                            batch_stats=variables['batch_stats'], tx=optax.adam(1e-2))
  y = jax.random.normal(jax.random.key(1), (6, 3))

  @jax.jit
  def step(state):
    def loss_fn(params):
      out, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats}, X,
                                    train=True, mutable=['batch_stats'])
      return jnp.mean((out - y) ** 2), updates
    grads, updates = jax.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads).replace(batch_stats=updates['batch_stats'])

  with ocp.CheckpointManager(directory) as manager:
    for i in range(3):
      state = step(state)
      manager.save(i, args=ocp.args.StandardSave(state))
  final = {'params': state.params, 'batch_stats': state.batch_stats}
  return directory, net, final


def test_linen_loop_checkpoint_into_the_port_with_rules(linen_run):
  directory, net, final = linen_run
  model = restore_linen_checkpoint(directory, Net(nnx.Rngs(1)), rules=NET_RULES)
  model.eval()
  np.testing.assert_array_equal(model(X), net.apply(final, X, train=False))
  np.testing.assert_array_equal(model.bn.mean.value, final['batch_stats']['BatchNorm_0']['mean'])
  np.testing.assert_array_equal(model.linear1.kernel.value,
                                final['params']['Dense_0']['kernel'].unbox())


def test_linen_loop_checkpoint_into_a_tonnx_wrapper_on_a_mesh(linen_run):
  """The wrapped Linen module needs no rules; arrays land on the model's shardings."""
  directory, net, final = linen_run
  model = nnx.ToNNX(net, rngs=nnx.Rngs(1)).lazy_init(X, train=False)
  mesh = jax.make_mesh((8,), ('model',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, 'model'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  for _, var in nnx.state(model, (nnx.Param, nnx.BatchStat)).flat_state():
    var.value = jax.device_put(var.value, replicated)
  kernel = model.Dense_0['kernel']
  kernel.value = jax.device_put(kernel.value, sharding)
  restore_linen_checkpoint(directory, model)
  assert model.Dense_1['bias'].value.sharding == replicated
  assert kernel.value.sharding == sharding and kernel.out_sharding == (None, 'model')
  np.testing.assert_array_equal(kernel.value, final['params']['Dense_0']['kernel'].unbox())
  # A sharded matmul sums in another order: equal up to float rounding.
  np.testing.assert_allclose(model(X, train=False), net.apply(final, X, train=False),
                             rtol=1e-5, atol=1e-6)


def test_linen_loop_checkpoint_by_structure_and_earlier_step(linen_run):
  directory, net, _ = linen_run
  model = restore_linen_checkpoint(directory, Net(nnx.Rngs(1)), match='structure', step=0)
  raw = ocp.StandardCheckpointer().restore(directory / '0' / 'default')
  np.testing.assert_array_equal(model.linear2.kernel.value, raw['params']['Dense_1']['kernel'])
  np.testing.assert_array_equal(model.linear1.kernel.value,
                                raw['params']['Dense_0']['kernel']['value'])
  for path in (directory / '0', directory / '0' / 'default'):  # a step, an item
    same = restore_linen_checkpoint(path, Net(nnx.Rngs(1)), match='structure')
    np.testing.assert_array_equal(same.linear1.kernel.value, model.linear1.kernel.value)
  latest = restore_linen_checkpoint(directory, Net(nnx.Rngs(1)), match='structure')
  assert not np.array_equal(latest.linear1.kernel.value, model.linear1.kernel.value)


def test_linen_checkpoint_errors_list_the_paths(linen_run):
  directory, _, _ = linen_run
  with pytest.raises(VariableMatchError) as e:
    restore_linen_checkpoint(directory, Net(nnx.Rngs(1)), rules={'Dense_0': 'linear1'})
  assert 'params/BatchNorm_0/scale (16,) float32' in e.value.source_only
  assert 'bn/mean (16,) float32' in e.value.model_only
  assert 'checkpoint ' in str(e.value) and os.fspath(directory) in str(e.value)
  with pytest.raises(ValueError, match="no 'state/params' for collection 'params'"):
    restore_linen_checkpoint(directory, Net(nnx.Rngs(1)), collections={'params': 'state/params'})
  with pytest.raises(FileNotFoundError, match=r'has no step 7; steps: \[0, 1, 2\]'):
    restore_linen_checkpoint(directory, Net(nnx.Rngs(1)), step=7, rules=NET_RULES)


def test_single_directory_params_only_checkpoint(tmp_path):
  net = LinenNet()
  variables = net.init(jax.random.key(0), X, train=False)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'params', nn.unbox(variables['params']))
  checkpointer.wait_until_finished()

  model = Net(nnx.Rngs(1))
  params = nnx.state(model, nnx.Param)  # a State of the model's own Variables
  with pytest.raises(ValueError, match=r"no Linen collection at its top level \(keys: \['Ba"):
    restore_linen_checkpoint(tmp_path / 'params', params, rules=NET_RULES)
  restore_linen_checkpoint(tmp_path / 'params', params, rules=NET_RULES,
                           collections={'params': ''})
  np.testing.assert_array_equal(model.linear2.bias.value, variables['params']['Dense_1']['bias'])
  with pytest.raises(ValueError, match='is a single checkpoint; step=3'):
    restore_linen_checkpoint(tmp_path / 'params', params, step=3)
