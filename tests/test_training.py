"""Training utilities side by side with flax.nnx: ``EMA``, ``TrainState``, the ``Rngs``
random/initializer methods, and the ``training``/``helpers`` module layout. The arithmetic
is the same on both sides, so values are compared exactly."""

import inspect

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bridge as nnx


def x34():
  return jnp.arange(12.0).reshape(4, 3) / 7.0 - 0.5


def y42():
  return jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)


def loss_fn(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


class WithStats:
  """A Linear plus a BatchNorm, built per library (Params and BatchStats)."""

  @staticmethod
  def make(lib):
    class Model(lib.Module):
      def __init__(self, rngs):
        self.linear = lib.Linear(3, 2, rngs=rngs)
        self.bn = lib.BatchNorm(2, rngs=rngs)

      def __call__(self, x):
        return self.bn(self.linear(x))
    return Model(lib.Rngs(0))


# -- EMA ----------------------------------------------------------------------------------
def _ema_run(lib, only):
  model = WithStats.make(lib)
  optimizer = lib.Optimizer(model, optax.sgd(0.1), wrt=lib.Param)
  ema = lib.EMA(model, decay=0.9, only=only)
  ema_model = ema.apply_to(model)

  @lib.jit
  def train_step(model, optimizer, ema):
    optimizer.update(model, lib.grad(loss_fn)(model, x34(), y42()))
    ema.update(model)

  for _ in range(3):
    train_step(model, optimizer, ema)
  return model, ema, ema_model


@pytest.mark.parametrize('only', ['param', 'all'])
def test_ema_matches_flax_under_jit(only):
  runs = [_ema_run(lib, lib.Param if only == 'param' else ...) for lib in (nnx, fnnx)]
  (model, ema, ema_model), (ref, ref_ema, ref_ema_model) = runs
  ours = [(p, v[...]) for p, v in ema.params.flat_state()]
  theirs = [(p, v[...]) for p, v in fnnx.to_flat_state(ref_ema.params)]
  assert [p for p, _ in ours] == [p for p, _ in theirs]
  for (_, a), (_, b) in zip(ours, theirs, strict=True):
    np.testing.assert_array_equal(a, b)
  # the averages lag the trained values
  assert not np.array_equal(ema.params['linear']['kernel'][...], model.linear.kernel[...])
  # apply_to shares the EMA's Variables, so the view saw every update; untracked state
  # (BatchStats with only=Param) comes from the model
  assert ema_model.linear.kernel is ema.params['linear']['kernel']
  model.eval()
  ema_model.eval()
  ref_ema_model.eval()
  np.testing.assert_array_equal(ema_model(x34()), ref_ema_model(x34()))
  if only == 'param':
    assert ema_model.bn.mean is model.bn.mean


def test_ema_copies_metadata_and_rejects_non_variables_like_flax():
  for lib in (nnx, fnnx):
    with jax.set_mesh(jax.make_mesh((2, 4), ('a', 'b'))):  # flax shards eagerly
      model = lib.Linear(2, 2, rngs=lib.Rngs(0), kernel_metadata={'out_sharding': ('a', None)})
      ema = lib.EMA(model, decay=0.5)
    kernel = ema.params['kernel']
    assert kernel is not model.kernel and type(kernel) is type(model.kernel)
    assert kernel.get_metadata('out_sharding') == ('a', None)
    np.testing.assert_array_equal(kernel[...], model.kernel[...])
  # in graph mode, plain leaves are not state: only the Variables are tracked
  for lib in (nnx, fnnx):
    ema = lib.EMA({'a': 1, 'w': lib.Param(jnp.ones(2))}, decay=0.5)
    assert list(ema.params) == ['w']
  assert list(inspect.signature(nnx.EMA.__init__).parameters) == \
    list(inspect.signature(fnnx.EMA.__init__).parameters)


# -- TrainState ---------------------------------------------------------------------------
def _train_state_run(lib):
  class TrainState(lib.TrainState):
    batch_stats: lib.State

  graphdef, params, batch_stats = lib.split(WithStats.make(lib), lib.Param, lib.BatchStat)
  state = TrainState.create(graphdef, params=params, tx=optax.adam(1e-2),
                            batch_stats=batch_stats)

  @jax.jit
  def step(state):
    def loss(params):
      # fresh Variables in this trace: BatchNorm writes its statistics (in flax too)
      batch_stats = jax.tree.map(jnp.asarray, state.batch_stats)
      y, (_, updates) = state.apply(params, batch_stats)(x34())
      return jnp.mean((y - y42()) ** 2), updates
    (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    _, _, batch_stats = lib.split(lib.merge(state.graphdef, updates), lib.Param, lib.BatchStat)
    return state.apply_gradients(grads, batch_stats=batch_stats), value

  losses = []
  for _ in range(3):
    state, value = step(state)
    losses.append(float(value))
  return state, losses


def test_train_state_matches_flax():
  ours, losses = _train_state_run(nnx)
  theirs, ref_losses = _train_state_run(fnnx)
  assert losses == ref_losses and losses[-1] < losses[0]
  assert int(ours.step) == int(theirs.step) == 3
  for field in ('params', 'batch_stats', 'opt_state'):
    a, b = jax.tree.leaves(getattr(ours, field)), jax.tree.leaves(getattr(theirs, field))
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
      np.testing.assert_array_equal(u, v)
  assert np.any(np.asarray(ours.batch_stats['bn']['mean'][...]) != 0)


def test_train_state_is_a_frozen_pytree_and_apply_reaches_methods():
  graphdef, params = nnx.split(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
  state = nnx.TrainState.create(graphdef, params=params, tx=optax.sgd(0.1), step=5)
  # graphdef and tx are static: the leaves are params, opt_state (none for sgd), step
  assert len(jax.tree.leaves(state)) == 3
  with pytest.raises(AttributeError):
    state.step = 0
  out, (graphdef2, params2) = state.apply('params').__call__(jnp.ones((1, 2)))
  fgraphdef, fparams = fnnx.split(fnnx.Linear(2, 1, rngs=fnnx.Rngs(0)))
  fstate = fnnx.TrainState.create(fgraphdef, params=fparams, tx=optax.sgd(0.1), step=5)
  np.testing.assert_array_equal(out, fstate.apply('params').__call__(jnp.ones((1, 2)))[0])
  assert graphdef2 == graphdef and set(params2) == {'kernel', 'bias'}
  with pytest.raises(TypeError, match='Expected TrainState.tx to be a State'):
    state.apply('tx')
  assert list(inspect.signature(nnx.TrainState.create).parameters) == \
    list(inspect.signature(fnnx.TrainState.create).parameters)


# -- Rngs methods -------------------------------------------------------------------------
def _draws(lib):
  rngs = lib.Rngs(0, params=1)
  init = rngs.lecun_normal(in_axis=0)
  stream_init = rngs.params.variance_scaling(2.0, 'fan_out', 'truncated_normal')
  values = [init((3, 4)), init((3, 4), jnp.float16), stream_init((4, 2)),
            rngs.params.xavier_uniform()((2, 2)), rngs.normal((2,)),
            rngs.params.uniform((3,)), rngs.gumbel((2,))]
  return values, int(rngs.default.count[...]), int(rngs.params.count[...])


def test_rngs_random_and_initializer_methods_match_flax():
  (ours, *our_counts), (theirs, *their_counts) = _draws(nnx), _draws(fnnx)
  for a, b in zip(ours, theirs, strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  # an initializer method takes a key only when it is called, one per call
  assert our_counts == their_counts == [4, 3]
  names = {n for n in dir(fnnx.Rngs) if not n.startswith('_')}
  assert names <= {n for n in dir(nnx.Rngs) if not n.startswith('_')}
  stream_names = {n for n in dir(fnnx.RngStream) if not n.startswith('_')}
  assert stream_names <= {n for n in dir(nnx.RngStream) if not n.startswith('_')}


# -- module layout ------------------------------------------------------------------------
def test_training_and_helpers_modules_mirror_flax():
  assert nnx.training.metrics is nnx.metrics and nnx.training.ema.EMA is nnx.EMA
  assert nnx.training.optimizer.Optimizer is nnx.Optimizer
  for name in ('Dict', 'List', 'Sequential', 'TrainState'):
    assert getattr(nnx.helpers, name) is getattr(nnx, name)
  for name in ('OptState', 'OptArray', 'OptVariable', 'Optimizer', 'ModelAndOptimizer'):
    assert hasattr(nnx.training.optimizer, name) and hasattr(fnnx.training.optimizer, name)
  init: nnx.Initializer = nnx.initializers.lecun_normal()
  assert set(nnx.Initializer.__args__) == set(fnnx.Initializer.__args__)
  assert init(jax.random.key(0), (2, 2)).shape == (2, 2)
