"""The RNN family side by side with flax.nnx and flax.linen.

* flax.nnx: same signatures; from the same seed the same state (paths, Variable types,
  values, RNG counters), and the same outputs bit for bit (the same ops in the same order).
* flax.linen: the same weights copied into Linen's parameter layout give the same cell
  steps and RNN/Bidirectional outputs. Exact where Linen does the same matmuls; where
  bridge (like flax.nnx) fuses the gates into one matmul and Linen does one per gate
  (GRUCell), the sums are the same but may be reassociated, so a 1e-6 tolerance.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from flax_parity import assert_same_signature, jitted

import bridge as nnx

CELLS = ('SimpleCell', 'LSTMCell', 'OptimizedLSTMCell', 'GRUCell')
B, T, I, H = 2, 5, 3, 4  # noqa: E741 (batch, time, in, hidden)


def data(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def flat(state, to_flat):
  return {tuple(p): (type(v).__name__, v[...]) for p, v in to_flat(state)}


def assert_same_state(ours, theirs):
  a = flat(nnx.state(ours), nnx.to_flat_state)
  b = flat(fnnx.state(theirs), fnnx.to_flat_state)
  assert a.keys() == b.keys()
  for k in a:
    assert a[k][0] == b[k][0], k
    if jnp.issubdtype(a[k][1].dtype, jax.dtypes.prng_key):
      np.testing.assert_array_equal(jax.random.key_data(a[k][1]),
                                    jax.random.key_data(b[k][1]))
    else:
      np.testing.assert_array_equal(a[k][1], b[k][1], err_msg=str(k))


def make(name, lib, seed=0, **kw):
  return getattr(lib, name)(I, H, rngs=lib.Rngs(seed), **kw)


def linen_params(cell):
  """A bridge cell's weights in the Linen cell's ``params`` layout."""
  def d(layer, bias=True):
    p = {'kernel': layer.kernel[...]}
    if bias and layer.bias is not None:
      p['bias'] = layer.bias[...]
    return p

  name = type(cell).__name__
  if name == 'SimpleCell':
    return {'i': d(cell.dense_i), 'h': d(cell.dense_h)}
  if name == 'LSTMCell':
    return {k: d(getattr(cell, a)) for k, a in
            (('ii', 'ii'), ('if', 'if_'), ('ig', 'ig'), ('io', 'io'),
             ('hi', 'hi'), ('hf', 'hf'), ('hg', 'hg'), ('ho', 'ho'))}
  if name == 'OptimizedLSTMCell':
    ki = jnp.split(cell.dense_i.kernel[...], 4, -1)
    kh = jnp.split(cell.dense_h.kernel[...], 4, -1)
    bh = jnp.split(cell.dense_h.bias[...], 4, -1)
    return {**{f'i{g}': {'kernel': k} for g, k in zip('ifgo', ki, strict=True)},
            **{f'h{g}': {'kernel': k, 'bias': b} for g, k, b in zip('ifgo', kh, bh, strict=True)}}
  ki = jnp.split(cell.dense_i.kernel[...], 3, -1)
  bi = jnp.split(cell.dense_i.bias[...], 3, -1)
  kh = jnp.split(cell.dense_h.kernel[...], 3, -1)
  return {**{f'i{g}': {'kernel': k, 'bias': b} for g, k, b in zip('rzn', ki, bi, strict=True)},
          'hr': {'kernel': kh[0]}, 'hz': {'kernel': kh[1]},
          'hn': {'kernel': kh[2], 'bias': jnp.zeros(H)}}


def randomize(cell, seed=7):
  """Gives every parameter (zero biases included) random values, the same in any run."""
  for i, (_, v) in enumerate(sorted(nnx.to_flat_state(nnx.state(cell, nnx.Param)),
                                    key=lambda kv: str(kv[0]))):
    v[...] = data(seed + i, v.shape)


def copy_into(ours, theirs):
  """Copies bridge's parameter values into the flax.nnx module of the same structure."""
  fnnx.update(theirs, fnnx.from_flat_state(
    {p: v[...] for p, v in nnx.to_flat_state(nnx.state(ours, nnx.Param))}))


def linen_assert(name, a, b):
  if name == 'GRUCell':  # fused vs per-gate matmuls: reassociated sums
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  else:
    np.testing.assert_array_equal(a, b)


# -- signatures and initial state ---------------------------------------------------------
@pytest.mark.parametrize('name', (*CELLS, 'RNN', 'Bidirectional', 'RNNCellBase'))
def test_signatures_match_flax(name):
  ours, theirs = getattr(nnx, name), getattr(fnnx, name)
  for method in ('__init__', '__call__', 'initialize_carry'):
    if hasattr(theirs, method):
      assert_same_signature(getattr(ours, method), getattr(theirs, method))


@pytest.mark.parametrize('name', CELLS)
def test_cell_same_state_as_flax_and_num_feature_axes(name):
  ours, theirs = make(name, nnx), make(name, fnnx)
  assert_same_state(ours, theirs)
  assert ours.num_feature_axes == theirs.num_feature_axes == 1
  rnn, frnn = nnx.RNN(ours), fnnx.RNN(theirs)
  assert_same_state(rnn, frnn)
  assert_same_state(nnx.RNN(ours, rngs=nnx.Rngs(carry=3)),
                    fnnx.RNN(theirs, rngs=fnnx.Rngs(carry=3)))


def test_rnn_cell_base_is_abstract():
  base = nnx.RNNCellBase()
  with pytest.raises(NotImplementedError):
    base.initialize_carry((1, 2))
  with pytest.raises(NotImplementedError):
    _ = base.num_feature_axes


# -- cells ----------------------------------------------------------------------------------
@pytest.mark.parametrize('name', CELLS)
def test_cell_step_equals_flax_nnx_and_linen(name):
  ours, theirs = make(name, nnx), make(name, fnnx)
  randomize(ours)
  copy_into(ours, theirs)
  x = data(1, (B, I))
  carry = ours.initialize_carry((B, I), nnx.Rngs(0))
  fcarry = theirs.initialize_carry((B, I), fnnx.Rngs(0))
  jax.tree.map(np.testing.assert_array_equal, carry, fcarry)
  carry = jax.tree.map(lambda c: c + data(2, c.shape), carry)   # a non-zero carry
  (new, y), (fnew, fy) = jitted(nnx, ours, carry, x), jitted(fnnx, theirs, carry, x)
  jax.tree.map(np.testing.assert_array_equal, (new, y), (fnew, fy))
  assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, carry)

  linen_cell = getattr(nn, name)(H)
  lnew, ly = jax.jit(linen_cell.apply)({'params': linen_params(ours)}, carry, x)
  jax.tree.map(lambda a, b: linen_assert(name, a, b), (new, y), (lnew, ly))


def test_initialize_carry_uses_given_rngs_or_kept_ones_and_carry_init():
  cell = nnx.LSTMCell(I, H, rngs=nnx.Rngs(0))
  fcell = fnnx.LSTMCell(I, H, rngs=fnnx.Rngs(0))
  init = nnx.initializers.normal()
  c, h = cell.initialize_carry((B, I), nnx.Rngs(carry=5), carry_init=init)
  fc, fh = fcell.initialize_carry((B, I), fnnx.Rngs(carry=5), carry_init=init)
  np.testing.assert_array_equal(c, fc)
  np.testing.assert_array_equal(h, fh)
  assert not np.array_equal(c, h)   # one key each
  with pytest.raises(ValueError, match='RNGs must be provided'):
    cell.initialize_carry((B, I))
  with pytest.warns(UserWarning, match='keep_rngs'):
    kept = nnx.GRUCell(I, H, keep_rngs=True, rngs=nnx.Rngs(0))
  with pytest.warns(UserWarning, match='keep_rngs'):
    fkept = fnnx.GRUCell(I, H, keep_rngs=True, rngs=fnnx.Rngs(0))
  assert_same_state(kept, fkept)
  np.testing.assert_array_equal(kept.initialize_carry((B, I), carry_init=init),
                                fkept.initialize_carry((B, I), carry_init=init))
  with pytest.warns(UserWarning, match='carry_init is provided'):
    ones = nnx.SimpleCell(I, H, carry_init=nnx.initializers.ones, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(ones.initialize_carry((B, I), nnx.Rngs(0)), np.ones((B, H)))


# -- RNN --------------------------------------------------------------------------------------
RNN_OPTIONS = [
  dict(),
  dict(time_major=True, reverse=True, return_carry=True),
  dict(reverse=True, keep_order=True, unroll=2),
]


@pytest.mark.parametrize('options', RNN_OPTIONS, ids=str)
def test_rnn_equals_flax_nnx_and_linen(options):
  name = 'OptimizedLSTMCell'
  ours, theirs = make(name, nnx), make(name, fnnx)
  randomize(ours)
  copy_into(ours, theirs)
  x = data(3, (T, B, I) if options.get('time_major') else (B, T, I))
  rnn, frnn = nnx.RNN(ours, **options), fnnx.RNN(theirs, **options)
  out, fout = jitted(nnx, rnn, x), jitted(fnnx, frnn, x)
  jax.tree.map(np.testing.assert_array_equal, out, fout)
  assert_same_state(rnn, frnn)   # the carry stream's counter moved the same

  lout = jax.jit(nn.RNN(nn.OptimizedLSTMCell(H), **options).apply)(
    {'params': {'cell': linen_params(ours)}}, x)
  jax.tree.map(np.testing.assert_array_equal, out, lout)


def test_rnn_seq_lengths_and_initial_carry_equal_flax_and_linen():
  name = 'GRUCell'
  ours, theirs = make(name, nnx), make(name, fnnx)
  randomize(ours)
  copy_into(ours, theirs)
  x, lengths, h0 = data(4, (B, T, I)), jnp.array([5, 2]), data(5, (B, H))
  kw = dict(seq_lengths=lengths, initial_carry=h0, return_carry=True, reverse=True,
            keep_order=True)
  carry, out = jitted(nnx, nnx.RNN(ours), x, **kw)
  fcarry, fout = jitted(fnnx, fnnx.RNN(theirs), x, **kw)
  np.testing.assert_array_equal(carry, fcarry)
  np.testing.assert_array_equal(out, fout)
  linen = nn.RNN(getattr(nn, name)(H))
  lcarry, lout = jax.jit(lambda v, x: linen.apply(v, x, **kw))(
    {'params': {'cell': linen_params(ours)}}, x)
  linen_assert(name, carry, lcarry)
  linen_assert(name, out, lout)
  # sequence 1 (length 2) ends with the carry of its two steps run back to front
  alone = jitted(nnx, nnx.RNN(ours, return_carry=True, reverse=True), x[1:, :2],
                 initial_carry=h0[1:])
  np.testing.assert_array_equal(carry[1], alone[0][0])


def test_rnn_is_one_scan_over_time():
  rnn = nnx.RNN(nnx.LSTMCell(I, H, rngs=nnx.Rngs(0)), unroll=2)
  graphdef, state = nnx.split(rnn)
  jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.ones((B, T, I)))
  jaxpr = jaxpr.jaxpr
  scans = [e for e in jaxpr.eqns if e.primitive.name == 'scan']
  assert len(scans) == 1 and scans[0].params['length'] == T
  assert scans[0].params['unroll'] == 2


def test_rnn_errors():
  with pytest.raises(ValueError, match='no time axis'):
    nnx.RNN(nnx.GRUCell(I, H, rngs=nnx.Rngs(0)))(jnp.ones((I,)))
  with pytest.raises(ValueError, match='RNGs must be provided'):
    nnx.RNN(nnx.GRUCell(I, H, rngs=nnx.Rngs(0)), rngs=False)(jnp.ones((B, T, I)))
  with pytest.raises(ValueError, match='RNN: rngs must be'):   # flax.nnx: ValueError too
    nnx.RNN(nnx.GRUCell(I, H, rngs=nnx.Rngs(0)), rngs='carry')
  with pytest.raises(ValueError):
    fnnx.RNN(fnnx.GRUCell(I, H, rngs=fnnx.Rngs(0)), rngs='carry')
  with pytest.raises(ValueError, match='in_features=3'):
    nnx.RNN(nnx.GRUCell(I, H, rngs=nnx.Rngs(0)))(jnp.ones((B, T, I + 1)))


def drop_cell(lib):
  """A cell (for bridge or flax.nnx) whose output is its input through Dropout."""
  class DropCell(lib.SimpleCell):
    def __init__(self, rngs):
      super().__init__(I, H, rngs=rngs)
      self.drop = lib.Dropout(0.5, rngs=rngs)

    def __call__(self, carry, x):
      return carry, self.drop(x)

  return DropCell(lib.Rngs(params=0, dropout=1))


def test_rnn_broadcast_rngs_give_every_step_the_same_dropout_mask_as_flax():
  rnn = nnx.RNN(drop_cell(nnx), broadcast_rngs='dropout')
  frnn = fnnx.RNN(drop_cell(fnnx), broadcast_rngs='dropout')
  x = jnp.ones((1, T, 8))
  out, fout = jitted(nnx, rnn, x), jitted(fnnx, frnn, x)
  np.testing.assert_array_equal(out, fout)
  for t in range(1, T):
    np.testing.assert_array_equal(out[:, t], out[:, 0])
  assert not np.array_equal(jitted(nnx, rnn, x), out)   # new masks on the next call
  varied = jitted(nnx, nnx.RNN(drop_cell(nnx)), x)   # without broadcast_rngs: a mask per step
  assert not all(np.array_equal(varied[:, t], varied[:, 0]) for t in range(1, T))


# -- Bidirectional --------------------------------------------------------------------------
def test_bidirectional_equals_flax_nnx_and_linen():
  cells = [make('LSTMCell', nnx, s) for s in (0, 1)]
  fcells = [make('LSTMCell', fnnx, s) for s in (0, 1)]
  for c, f in zip(cells, fcells, strict=True):
    randomize(c)
    copy_into(c, f)
  merge = jnp.add
  ours = nnx.Bidirectional(nnx.RNN(cells[0]), nnx.RNN(cells[1]), merge_fn=merge,
                           return_carry=True)
  theirs = fnnx.Bidirectional(fnnx.RNN(fcells[0]), fnnx.RNN(fcells[1]), merge_fn=merge,
                              return_carry=True)
  assert_same_state(ours, theirs)
  x, lengths = data(8, (B, T, I)), jnp.array([3, 5])
  carry0 = ((data(10, (B, H)), data(11, (B, H))), (data(12, (B, H)), data(13, (B, H))))
  kw = dict(seq_lengths=lengths, initial_carry=carry0)
  out, fout = jitted(nnx, ours, x, **kw), jitted(fnnx, theirs, x, **kw)
  jax.tree.map(np.testing.assert_array_equal, out, fout)
  assert_same_state(ours, theirs)
  linen = nn.Bidirectional(nn.RNN(nn.LSTMCell(H)), nn.RNN(nn.LSTMCell(H)), merge_fn=merge,
                           return_carry=True)
  lout = jax.jit(lambda v, x: linen.apply(v, x, **kw))(
    {'params': {'forward_rnn': {'cell': linen_params(cells[0])},
                'backward_rnn': {'cell': linen_params(cells[1])}}}, x)
  jax.tree.map(np.testing.assert_array_equal, out, lout)
  with pytest.raises(TypeError, match='Bidirectional: rngs'):   # flax.nnx: TypeError too
    nnx.Bidirectional(ours.forward_rnn, ours.backward_rnn, rngs=1.5)
  with pytest.raises(TypeError):
    fnnx.Bidirectional(theirs.forward_rnn, theirs.backward_rnn, rngs=1.5)


# -- end to end -------------------------------------------------------------------------------
def mixed_model(lib):
  """A model using the layers of this family (RNN, SpectralNorm, LoRALinear, pooling,
  WeightNorm), for bridge or flax.nnx."""
  class Model(lib.Module):
    def __init__(self, rngs):
      self.rnn = lib.RNN(lib.LSTMCell(I, 8, rngs=rngs), rngs=rngs)
      self.sn = lib.SpectralNorm(lib.Linear(8, 8, rngs=rngs), rngs=rngs)
      self.lora = lib.LoRALinear(8, 8, lora_rank=2, rngs=rngs)
      self.wn = lib.WeightNorm(lib.Linear(8, 2, rngs=rngs), rngs=rngs)

    def __call__(self, x):
      h = self.lora(self.sn(self.rnn(x)))
      h = lib.avg_pool(lib.max_pool(h, (2,), strides=(2,)), (2,), padding='SAME')
      return self.wn(h.mean(1))

  return Model(lib.Rngs(0))


def train(lib, steps=2):
  """Losses of ``steps`` jitted Adam steps on the mixed model, and the trained model."""
  import optax
  x, y = data(20, (B, 6, I)), data(21, (B, 2))
  model = mixed_model(lib)
  opt = lib.Optimizer(model, optax.adam(1e-2), wrt=lib.Param)

  @lib.jit
  def step(model, opt):
    loss, grads = lib.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    opt.update(model, grads)
    return loss

  return [step(model, opt) for _ in range(steps)], model


def test_a_model_of_these_layers_trains_exactly_as_in_flax_nnx():
  # jit + grad + optimizer through the scan, the in-place normalizations (their gradients
  # and SpectralNorm's batch_stats) and LoRA: same losses and same final state
  (losses, model), (flosses, fmodel) = train(nnx), train(fnnx)
  np.testing.assert_array_equal(losses, flosses)
  assert_same_state(model, fmodel)
