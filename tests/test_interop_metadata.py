"""Linen metadata boxes <-> Variable metadata, in both directions, and sharding.

``nn.Partitioned`` becomes ``out_sharding`` (+ ``mesh``), ``nn.LogicallyPartitioned`` adds
``sharding_rules``, any other ``AxisMetadata`` box is kept whole and rebuilt around the
current value. Variables with metadata go to Linen as the box they came from or as
``NNXMeta``; plain ones as raw arrays. State built through ``ToNNX`` can be sharded on a
mesh of the 8 CPU devices (tests/conftest.py).
"""

import typing as tp

import flax.linen as nn
import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from flax.core import meta
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import bridge
from bridge.interop.collections import linen_to_tree, tree_to_linen
from bridge.interop.metadata import to_linen_var, to_nnx_var

X = jax.random.normal(jax.random.key(42), (8, 16))
MESH = jax.make_mesh((2, 4), ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
RULES = (('embed', 'data'), ('hidden', 'model'))


def assert_tree_equal(a, b):
  """Same structure (box types and their static fields included) and equal leaves."""
  assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a),
                                                           jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert jnp.asarray(x).dtype == jnp.asarray(y).dtype
    np.testing.assert_array_equal(x, y)


class Tagged(struct.PyTreeNode, meta.AxisMetadata):
  """A user's own box: anything bridge does not know must come back unchanged."""
  value: tp.Any
  tag: str = struct.field(pytree_node=False)

  def unbox(self):
    return self.value

  def replace_boxed(self, val):
    return self.replace(value=val)

  def add_axis(self, index, params):
    return self.replace(tag=f'{self.tag}+{index}')

  def remove_axis(self, index, params):
    return self.replace(tag=self.tag.rsplit('+', 1)[0])


class Annotated(meta.Partitioned):
  """A Partitioned subclass with a field of its own."""
  note: str = struct.field(pytree_node=False, default='')


class Boxes(nn.Module):
  """One variable per kind of box (and a plain one), in two collections."""
  @nn.compact
  def __call__(self, x):
    lecun = nn.initializers.lecun_normal()
    w1 = self.param('w1', nn.with_partitioning(lecun, (None, 'model'), mesh=MESH), (16, 32))
    w2 = self.param('w2', nn.with_logical_partitioning(lecun, ('hidden', 'embed'), rules=RULES),
                    (32, 16))
    tagged = self.param('tagged', lambda k, s: Tagged(jax.random.normal(k, s), 'mine'), (16,))
    noted = self.param('noted', lambda k, s: Annotated(jnp.ones(s), ('embed',), note='n'),
                       (16,))
    plain = self.param('plain', nn.initializers.zeros, (16,))
    stat = self.variable('batch_stats', 'stat',
                         lambda: nn.Partitioned(jnp.zeros(16), ('model',)))
    if not self.is_initializing():
      stat.value = stat.value + 1.0
    return (x @ w1 @ w2) * tagged + noted + plain + stat.value


class Sharded(nn.Module):
  """Every name resolves on MESH (directly, or through the rules)."""
  @nn.compact
  def __call__(self, x):
    lecun, zeros = nn.initializers.lecun_normal(), nn.initializers.zeros
    h = nn.Dense(32, kernel_init=nn.with_partitioning(lecun, (None, 'model'), mesh=MESH),
                 bias_init=nn.with_partitioning(zeros, ('model',), mesh=MESH))(x)
    y = nn.Dense(16, kernel_init=nn.with_logical_partitioning(lecun, ('hidden', 'embed'),
                                                              rules=RULES))(h)
    stat = self.variable('batch_stats', 'stat',
                         lambda: nn.Partitioned(jnp.zeros(16), ('data',), mesh=MESH))
    if not self.is_initializing():
      stat.value = stat.value + y.mean(0)
    return y


def flax_to_nnx(module):
  with jax.set_mesh(MESH):  # flax.nnx shards Variables with out_sharding eagerly
    return fnnx.bridge.lazy_init(fnnx.bridge.ToNNX(module, rngs=fnnx.Rngs(0)), X)


# -- Linen boxes -> Variable metadata -----------------------------------------------------
def test_partitioned_becomes_out_sharding_and_mesh():
  model = bridge.ToNNX(Boxes(), rngs=bridge.Rngs(0)).lazy_init(X)
  assert type(model.w1) is bridge.Param
  assert model.w1.out_sharding == (None, 'model') and model.w1.mesh is MESH
  assert model.w1.sharding == (None, 'model')
  assert type(model.stat) is bridge.BatchStat and model.stat.out_sharding == ('model',)
  ours = bridge.ToNNX(Sharded(), rngs=bridge.Rngs(0)).lazy_init(X)
  theirs = flax_to_nnx(Sharded())
  for name in ('kernel', 'bias'):
    assert ours.Dense_0[name].out_sharding == theirs.Dense_0[name].get_metadata()['out_sharding']
    assert ours.Dense_0[name].mesh is MESH
    np.testing.assert_array_equal(ours.Dense_0[name][...], theirs.Dense_0[name][...])


def test_logically_partitioned_becomes_out_sharding_and_sharding_rules():
  model = bridge.ToNNX(Boxes(), rngs=bridge.Rngs(0)).lazy_init(X)
  assert model.w2.out_sharding == ('hidden', 'embed')
  assert model.w2.sharding_rules == RULES


def test_other_boxes_are_kept_whole():
  model = bridge.ToNNX(Boxes(), rngs=bridge.Rngs(0)).lazy_init(X)
  assert model.tagged.linen_box == Tagged(None, 'mine')
  assert model.noted.out_sharding == ('embed',) and model.noted.note == 'n'
  assert type(model.plain) is bridge.Param and model.plain.get_metadata() == {}


def test_every_box_comes_back_unchanged():
  variables = Boxes().init(jax.random.key(0), X)
  assert_tree_equal(tree_to_linen(linen_to_tree(variables)), variables)
  model = bridge.ToNNX(Boxes(), rngs=bridge.Rngs(0)).lazy_init(X)
  key = bridge.Rngs(0).fork().default()
  assert_tree_equal(tree_to_linen(model._variables_tree()),
                    Boxes().init({'params': key}, X))


def test_boxes_survive_calls_and_come_back_through_to_linen():
  """Linen -> bridge -> Linen: the outer Linen variables hold the very boxes."""
  model = bridge.ToNNX(Boxes(), rngs=bridge.Rngs(0)).lazy_init(X)
  variables = tree_to_linen(model._variables_tree())
  y, updates = Boxes().apply(variables, X, mutable=['batch_stats'])
  np.testing.assert_array_equal(model(X), y)
  assert_tree_equal(tree_to_linen(model._variables_tree()), {**variables, **updates})

  class Holder(bridge.Module):
    def __init__(self, *, rngs):
      self.inner = bridge.ToNNX(Boxes(), rngs=rngs)

    def __call__(self, x):
      return self.inner(x)

  outer = bridge.to_linen(Holder).init(jax.random.key(0), X)
  inner = outer['params']['inner']
  assert inner['tagged'] == Tagged(inner['tagged'].value, 'mine')
  assert type(inner['w1']) is nn.Partitioned and inner['w1'].mesh is MESH
  assert type(inner['w2']) is nn.LogicallyPartitioned and inner['w2'].rules == RULES
  assert type(inner['noted']) is Annotated and inner['noted'].note == 'n'
  assert type(outer['batch_stats']['inner']['stat']) is nn.Partitioned


BOXES = {
  'raw': lambda v: v,
  'partitioned': lambda v: nn.Partitioned(v, ('model',) + (None,) * (v.ndim - 1)),
  'logical': lambda v: nn.LogicallyPartitioned(v, ('embed',) * v.ndim, rules=RULES),
  'tagged': lambda v: Tagged(v, 'x'),
  'annotated': lambda v: Annotated(v, (None,) * v.ndim, note='n'),
  'nnxmeta': lambda v: bridge.NNXMeta(bridge.Param, v, {'note': 1}),
}


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(
  st.tuples(st.sampled_from('abc'), st.sampled_from('xyz')),
  st.tuples(st.sampled_from(['params', 'batch_stats', 'cache', 'round_trip_extra']),
            st.sampled_from(sorted(BOXES)), st.integers(1, 3)),
  max_size=6))
def test_linen_variables_round_trip_unchanged(entries):
  """Linen variables -> a tree of Variables -> Linen variables is the identity (boxes, their
  static fields, collections, dtypes)."""
  variables: dict = {}
  for (outer, inner), (collection, kind, ndim) in entries.items():
    if kind == 'nnxmeta' and collection != 'params':
      kind = 'raw'  # an NNXMeta box belongs to the collection of its type
    value = jnp.arange(2 ** ndim, dtype=jnp.int32 if ndim == 2 else jnp.float32)
    leaf = BOXES[kind](value.reshape((2,) * ndim))
    variables.setdefault(collection, {}).setdefault(outer, {})[inner] = leaf
  assert_tree_equal(tree_to_linen(linen_to_tree(variables)), variables)


def test_nnxmeta_of_the_wrong_type_for_its_collection_is_an_error():
  box = bridge.NNXMeta(bridge.BatchStat, jnp.ones(2), {'foo': 1})
  assert type(to_nnx_var('batch_stats', box)) is bridge.BatchStat
  with pytest.raises(ValueError, match=r"NNXMeta holds a BatchStat but collection 'params'"):
    to_nnx_var('params', box)


# -- Variables -> Linen boxes -------------------------------------------------------------
class Annotations(bridge.Module):
  def __init__(self, *, rngs):
    lecun = bridge.initializers.lecun_normal()
    self.part = bridge.Param(bridge.with_partitioning(lecun, ('embed', 'hidden'))(
      rngs.params(), (16, 32)))
    self.meta = bridge.Param(jnp.ones(32), out_sharding=('hidden',), note='kept')
    self.stat = bridge.BatchStat(jnp.zeros(32), out_sharding=(None,))
    self.plain = bridge.Param(jnp.zeros(32))

  def __call__(self, x):
    assert self.meta.note == 'kept'  # the metadata is back on the Variable inside apply
    return x @ self.part + self.meta + self.stat + self.plain


def test_variables_go_to_linen_as_boxes_nnxmeta_or_arrays():
  variables = bridge.to_linen(Annotations).init(jax.random.key(0), X)
  params = variables['params']
  assert type(params['part']) is nn.Partitioned and params['part'].names == ('embed', 'hidden')
  assert type(params['meta']) is bridge.NNXMeta
  assert params['meta'].var_type is bridge.Param
  assert params['meta'].metadata == {'out_sharding': ('hidden',), 'note': 'kept'}
  assert type(variables['batch_stats']['stat']) is bridge.NNXMeta
  assert isinstance(params['plain'], jax.Array)


def test_linen_partition_spec_and_unbox_work_on_the_result():
  variables = bridge.to_linen(Annotations).init(jax.random.key(0), X)
  assert nn.get_partition_spec(variables) == {
    'params': {'part': P('embed', 'hidden'), 'meta': P('hidden'), 'plain': P()},
    'batch_stats': {'stat': P(None)}}
  unboxed = nn.unbox(variables)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(unboxed))
  np.testing.assert_array_equal(unboxed['params']['meta'], jnp.ones(32))
  theirs = fnnx.bridge.to_linen(lambda rngs: fnnx.Linear(
    16, 32, kernel_init=fnnx.bridge.with_partitioning(fnnx.initializers.lecun_normal(),
                                               ('data', 'model')), rngs=rngs))
  ours = bridge.to_linen(lambda rngs: bridge.Linear(
    16, 32, kernel_init=bridge.with_partitioning(bridge.initializers.lecun_normal(),
                                                 ('data', 'model')), rngs=rngs))
  with jax.set_mesh(MESH):  # flax.nnx shards Variables with out_sharding eagerly
    expected = theirs.init(jax.random.key(0), X)
  got = ours.init(jax.random.key(0), X)
  assert nn.get_partition_spec(got) == nn.get_partition_spec(expected)
  assert_tree_equal(got, expected)


def test_nnxmeta_methods():
  box = bridge.NNXMeta(bridge.Param, jnp.ones((2, 3)), {'out_sharding': ('a', None)})
  assert box.get_partition_spec() == P('a', None)
  np.testing.assert_array_equal(box.unbox(), jnp.ones((2, 3)))
  assert box.replace_boxed(jnp.zeros(1)).metadata == box.metadata
  var = box.to_nnx_variable()
  assert type(var) is bridge.Param and var.out_sharding == ('a', None)
  assert to_linen_var(var) == box
  assert bridge.NNXMeta(bridge.Param, jnp.ones(2), {'note': 1}).get_partition_spec() == P()
  rules = bridge.NNXMeta(bridge.Param, jnp.ones((2, 3)),
                         {'out_sharding': ('embed', 'hidden'), 'sharding_rules': RULES})
  assert rules.get_partition_spec() == P('data', 'model')


def test_applying_returns_the_same_boxes():
  model = bridge.to_linen(Annotations)
  variables = model.init(jax.random.key(0), X)
  _, updates = model.apply(variables, X, mutable=True)
  assert_tree_equal(updates, variables)


# -- sharding -----------------------------------------------------------------------------
def test_get_partition_spec_applies_sharding_rules_as_flax_does():
  ours = bridge.ToNNX(Sharded(), rngs=bridge.Rngs(0)).lazy_init(X)
  theirs = flax_to_nnx(Sharded())
  specs = bridge.get_partition_spec(bridge.state(ours, bridge.Not(bridge.RngState)))
  expected = fnnx.get_partition_spec(fnnx.state(theirs, fnnx.Not(fnnx.RngState)))
  assert specs.to_pure_dict() == fnnx.to_pure_dict(expected)
  assert specs['Dense_1']['kernel'].get_value() == P('model', 'data')
  boxes = bridge.ToNNX(Boxes(), rngs=bridge.Rngs(0)).lazy_init(X)
  assert bridge.get_partition_spec(bridge.state(boxes))['noted'].get_value() == P('embed')
  with nn.logical_axis_rules((('embed', 'data'),)):  # context rules compose with local ones
    specs = bridge.get_partition_spec(bridge.state(boxes))
  assert specs['noted'].get_value() == P('data')
  assert specs['w2'].get_value() == P('model', 'data')


def test_state_through_to_nnx_lands_on_the_annotated_layout_under_jit():
  @bridge.jit
  def create_sharded():
    model = bridge.ToNNX(Sharded(), rngs=bridge.Rngs(0)).lazy_init(X)
    state = bridge.state(model)
    state = jax.lax.with_sharding_constraint(state, bridge.get_named_sharding(state, MESH))
    bridge.update(model, state)
    return model

  model = create_sharded()
  expected = {('Dense_0', 'kernel'): P(None, 'model'), ('Dense_0', 'bias'): P('model'),
              ('Dense_1', 'kernel'): P('model', 'data'), ('Dense_1', 'bias'): P(),
              ('stat',): P('data')}
  state = bridge.state(model, bridge.Not(bridge.RngState))
  assert sorted(p for p, _ in state.flat_state()) == sorted(expected)
  for path, var in state.flat_state():
    sharding = var.get_value().sharding
    assert sharding.is_equivalent_to(NamedSharding(MESH, expected[path]), var.ndim), path
  assert model.Dense_0['kernel'].get_value().addressable_shards[0].data.shape == (16, 8)
  assert model.Dense_1['kernel'].get_value().addressable_shards[0].data.shape == (8, 8)
  eager = bridge.ToNNX(Sharded(), rngs=bridge.Rngs(0)).lazy_init(X)
  assert_tree_equal(state.to_pure_dict(),  # the same values, laid out on the mesh
                    bridge.state(eager, bridge.Not(bridge.RngState)).to_pure_dict())
  # the sharded model runs under jit on sharded inputs (tolerance: sums split over devices)
  x = jax.device_put(X, NamedSharding(MESH, P('data', None)))
  y = bridge.jit(lambda m, x: m(x))(model, x)
  np.testing.assert_allclose(y, eager(X), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model.stat[...], eager.stat[...], rtol=1e-5, atol=1e-5)


def test_partition_specs_with_a_mesh_context():
  model = bridge.ToNNX(Sharded(), rngs=bridge.Rngs(0)).lazy_init(X)
  graphdef, state = bridge.split(model)
  with jax.set_mesh(MESH):
    sharded = jax.jit(lambda s: jax.lax.with_sharding_constraint(
      s, bridge.get_partition_spec(s)))(state)
  assert tuple(sharded['Dense_1']['kernel'].get_value().sharding.spec) == ('model', 'data')
  assert bridge.merge(graphdef, sharded)(X).shape == (8, 16)
