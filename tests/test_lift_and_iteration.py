"""eval_shape, remat, cond, switch, fori_loop, while_loop, vmap, scan, and tracer escapes."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx


class Counter(nnx.Module):
  def __init__(self):
    self.n = nnx.BatchStat(jnp.array(0))


def test_eval_shape_builds_abstract_module():
  model = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  assert isinstance(model.kernel.value, jax.ShapeDtypeStruct)
  assert model.kernel.value.shape == (2, 3) and model.bias.value.shape == (3,)


def test_remat_gradients_equal_plain_gradients():
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  x = jnp.arange(4.0).reshape(2, 2)
  plain = nnx.grad(lambda m: jnp.sin(m(x)).sum())(model)
  rematted = nnx.grad(nnx.remat(lambda m: jnp.sin(m(x)).sum()))(model)
  np.testing.assert_array_equal(plain['kernel'].value, rematted['kernel'].value)


@pytest.mark.parametrize('pred, expected', [(True, 1), (False, -1)])
def test_cond_mutates_caller_module(pred, expected):
  c = Counter()

  def up(c):
    c.n.value += 1

  def down(c):
    c.n.value -= 1
  nnx.jit(lambda c, p: nnx.cond(p, up, down, c))(c, pred)
  assert int(c.n.value) == expected


def test_switch_picks_branch():
  c = Counter()
  out = nnx.switch(2, [lambda c: c.n.value, lambda c: c.n.value + 1, lambda c: c.n.value + 2],
                   c)
  assert int(out) == 2


def test_fori_and_while_loops_update_in_place():
  c = Counter()

  def body(i, c):
    c.n.value += i
    return c
  assert nnx.fori_loop(0, 5, body, c) is c
  assert int(c.n.value) == 10

  def step(c):
    c.n.value += 3
    return c
  nnx.while_loop(lambda c: c.n.value < 20, step, c)
  assert int(c.n.value) == 22


def test_loop_body_that_changes_structure_is_an_error():
  c = Counter()

  def body(i, c):
    c.extra = nnx.BatchStat(jnp.array(1))
    return c
  with pytest.raises(ValueError, match='changed the structure'):
    nnx.fori_loop(0, 2, body, c)


def _stack(lib, n):
  @lib.split_rngs(splits=n)
  @lib.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return lib.Linear(3, 3, rngs=rngs)
  return create(lib.Rngs(0))


def test_layer_stacking_idiom_matches_flax_nnx():
  ours, theirs = _stack(nnx, 5), _stack(fnnx, 5)
  assert ours.kernel.value.shape == (5, 3, 3)
  np.testing.assert_array_equal(ours.kernel.value, theirs.kernel[...])

  def run(lib, layers):
    @lib.scan(in_axes=(lib.Carry, 0), out_axes=lib.Carry)
    def forward(x, layer):
      return layer(x)
    return forward(jnp.ones((2, 3)), layers)
  np.testing.assert_array_equal(run(nnx, ours), run(fnnx, theirs))


def test_vmap_broadcast_module_over_batch():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x = jnp.arange(12.0).reshape(4, 3)
  y = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(model, x)
  np.testing.assert_array_equal(y, model(x))


def test_vmap_state_axes_and_axis_hooks():
  seen = []

  def on_remove(var, axis, name):
    seen.append(('remove', axis, name))

  def on_add(var, axis, name):
    seen.append(('add', axis, name))

  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones((4, 2)), on_remove_axis=on_remove, on_add_axis=on_add)
      self.s = nnx.BatchStat(jnp.zeros(2))

  m = M()
  axes = nnx.StateAxes({nnx.Param: 0, nnx.BatchStat: None})

  def f(m):
    m.s.value = m.s.value + jax.lax.psum(m.w.value, 'b')  # the same in every mapped copy
  nnx.vmap(f, in_axes=axes, axis_name='b')(m)
  assert seen == [('remove', 0, 'b'), ('add', 0, 'b')]
  np.testing.assert_array_equal(m.s.value, jnp.full(2, 4.0))

  def leaky(m):  # a broadcast Variable given a per-copy value: an error, not a silent pick
    m.s.value = m.s.value + m.w.value
  with pytest.raises(ValueError, match='out_axes is None'):
    nnx.vmap(leaky, in_axes=axes, axis_name='b')(m)


def test_scan_batchnorm_stats_per_layer():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 3, rngs=rngs)
      self.bn = nnx.BatchNorm(3, rngs=rngs)

    def __call__(self, x):
      return nnx.relu(self.bn(self.linear(x)))

  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return Block(rngs)
  blocks = create(nnx.Rngs(0))
  x = jnp.arange(12.0).reshape(4, 3)

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  def forward(x, block):
    return block(x)
  y = forward(x, blocks)
  expected = x
  for i in range(3):
    block = Block(nnx.Rngs(0))
    block.linear.kernel.value = blocks.linear.kernel.value[i]
    block.linear.bias.value = blocks.linear.bias.value[i]
    block.bn.scale.value, block.bn.bias.value = blocks.bn.scale.value[i], blocks.bn.bias.value[i]
    expected = block(expected)
    # scan body vs unrolled layers: XLA fuses differently, so last bits differ
    np.testing.assert_allclose(blocks.bn.mean.value[i], block.bn.mean.value, rtol=1e-5,
                               atol=1e-7)
  np.testing.assert_allclose(y, expected, rtol=1e-5)  # scan body vs unrolled: fusion order


def test_tracer_escaping_into_closed_over_variable_is_a_clear_error():
  c = Counter()

  @jax.jit
  def leak(x):
    c.n.value = x
    return x
  with pytest.raises(nnx.variables.TraceContextError, match="BatchStat at 'c/n'"):
    leak(jnp.array(1))
  assert int(c.n.value) == 0


def test_tracer_escape_error_names_the_path_from_the_writing_module():
  class Holder(nnx.Module):
    def __init__(self):
      self.counter = Counter()

    def bump(self, x):
      self.counter.n.value = x

  holder = Holder()
  with pytest.raises(nnx.variables.TraceContextError, match="at 'Holder/counter/n'"):
    jax.jit(lambda x: holder.bump(x))(jnp.array(1))


def test_no_warnings_from_bridge_transforms():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    c = Counter()
    nnx.jit(lambda c: c.n.value)(c)


def test_vmap_transform_metadata_moves_partition_names():
  seen = []

  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={'partition_name': 'layers'})
  def create(rngs):
    layer = nnx.Linear(2, 4, rngs=rngs)
    layer.kernel.set_metadata(sharding=('in', 'out'))
    return layer

  layers = create(nnx.Rngs(0))
  assert layers.kernel.sharding == ('layers', 'in', 'out')

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
            transform_metadata={'partition_name': 'layers'})
  def forward(x, layer):
    seen.append(layer.kernel.sharding)
    return x

  forward(jnp.ones((1, 2)), layers)
  assert seen == [('in', 'out')]
  assert layers.kernel.sharding == ('layers', 'in', 'out')


def test_scan_out_axes_stack_outputs_and_broadcast_args():
  layers = _stack(nnx, 4)
  scale = jnp.array(2.0)

  @nnx.scan(in_axes=(nnx.Carry, 0, None), out_axes=(nnx.Carry, 0))
  def forward(x, layer, s):
    y = layer(x) * s
    return y, y.sum()

  x = jnp.ones((2, 3))
  y, sums = forward(x, layers, scale)
  assert sums.shape == (4,)
  expected = x
  for i in range(4):
    expected = (expected @ layers.kernel.value[i] + layers.bias.value[i]) * scale
  np.testing.assert_array_equal(y, expected)


def test_state_axes_with_unmatched_variable_names_it():
  m = Counter()
  with pytest.raises(ValueError, match="'n'"):
    nnx.vmap(lambda m: None, in_axes=nnx.StateAxes({nnx.Param: 0}), axis_size=2)(m)


@pytest.mark.parametrize('mode', ['carry', 'broadcast'])
def test_scan_body_creating_variables_fails_as_in_flax(mode):
  def run(lib):
    m = lib.Module()
    m.w = lib.Param(jnp.ones(()))

    def grow(m):
      if not hasattr(m, 'b'):
        m.b = lib.Param(jnp.full((), 2.0))
      return m.w[...] * m.b[...]
    if mode == 'carry':
      def body(m, x):
        return m, x * grow(m)
      return lib.scan(body, in_axes=(lib.Carry, 0), out_axes=(lib.Carry, 0))(
        m, jnp.arange(3.0))
    def body(m, c, x):
      return c + x * grow(m), x
    return lib.scan(body, in_axes=(None, lib.Carry, 0), out_axes=(lib.Carry, 0))(
      m, 0.0, jnp.arange(3.0))
  with pytest.raises(Exception) as theirs:  # flax: TypeError (carry), ValueError (broadcast)
    run(fnnx)
  with pytest.raises(type(theirs.value), match="new Variables: 'b'; removed: none"):
    run(nnx)
