"""Modules, Rngs, Variables and GraphDef as JAX pytrees, side by side with flax.nnx."""

import copy
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx


def make_model(lib):
  """The same model in ``lib`` (bridge or flax.nnx): Linear, BatchNorm, Dropout with its
  own Rngs, an nnx.List and nnx.Dict, a data scalar, a raw array and static attributes."""
  class Model(lib.Module):
    def __init__(self, rngs):
      self.linear = lib.Linear(2, 3, rngs=rngs)
      self.bn = lib.BatchNorm(3, rngs=rngs)
      self.drop = lib.Dropout(0.5, rngs=rngs)
      self.blocks = lib.List([lib.Linear(3, 3, rngs=rngs), lib.Linear(3, 1, rngs=rngs)])
      self.extras = lib.Dict(b=lib.Param(jnp.ones(2)), a=lib.BatchStat(jnp.zeros(1)))
      self.steps = lib.data(0)
      self.offset = jnp.arange(3.0)
      self.name = 'model'
      self.sizes = (2, 3)

    def __call__(self, x):
      h = self.drop(self.bn(self.linear(x)) + self.offset)
      for block in self.blocks:
        h = block(h)
      return h

  return Model(lib.Rngs(0, dropout=1))


def flat(tree):
  return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def assert_same_leaves(ours, theirs):
  a, b = flat(ours), flat(theirs)
  assert [p for p, _ in a] == [p for p, _ in b]
  for (path, x), (_, y) in zip(a, b, strict=True):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(x, y, err_msg=path)


def test_leaves_and_key_paths_match_flax():
  ours, theirs = make_model(nnx), make_model(fnnx)
  assert_same_leaves(ours, theirs)
  kinds = {type(k) for p, _ in jax.tree_util.tree_flatten_with_path(ours)[0] for k in p}
  assert kinds == {jax.tree_util.GetAttrKey, jax.tree_util.SequenceKey}


def test_rngs_variable_and_graphdef_as_pytrees_match_flax():
  assert_same_leaves(nnx.Rngs(3, dropout=4), fnnx.Rngs(3, dropout=4))
  assert_same_leaves(nnx.Param(jnp.ones(2)), fnnx.Param(jnp.ones(2)))
  assert jax.tree.leaves(nnx.graphdef(make_model(nnx))) == []


def test_plain_jax_jit_and_tree_map_over_a_module():
  ours, theirs = make_model(nnx), make_model(fnnx)
  ours.eval(), theirs.eval()
  x = jnp.ones((4, 2))
  np.testing.assert_array_equal(jax.jit(lambda m, x: m(x))(ours, x),
                                jax.jit(lambda m, x: m(x))(theirs, x))
  def double(v):  # RNG keys and counters are left alone
    return v * 2 if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating) else v
  doubled = jax.tree.map(double, ours)
  assert type(doubled) is type(ours) and doubled is not ours
  assert doubled.name == 'model' and doubled.sizes == (2, 3) and doubled.steps == 0
  np.testing.assert_array_equal(doubled.linear.kernel.value, ours.linear.kernel.value * 2)
  assert_same_leaves(doubled, jax.tree.map(double, theirs))


def test_vmap_over_a_stacked_module_matches_flax():
  def stacked(lib):
    layers = [lib.Linear(2, 2, rngs=lib.Rngs(s)) for s in range(3)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  x = jnp.arange(6.0).reshape(3, 2)
  ours = jax.vmap(lambda m, x: m(x))(stacked(nnx), x)
  theirs = jax.vmap(lambda m, x: m(x))(stacked(fnnx), x)
  np.testing.assert_array_equal(ours, theirs)


def test_static_attributes_change_the_tree_structure():
  a = make_model(nnx)
  b = nnx.clone(a)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  b.name = 'other'
  assert jax.tree.structure(a) != jax.tree.structure(b)


@pytest.mark.parametrize('lib', [nnx, fnnx], ids=['bridge', 'flax'])
def test_pytree_false_module_is_a_leaf(lib):
  class Opaque(lib.Module, pytree=False):
    def __init__(self):
      self.w = lib.Param(jnp.ones(1))
  m = Opaque()
  assert jax.tree.leaves(m) == [m]


@pytest.mark.parametrize('value', [1, 'a', None, jnp.ones(1), np.ones(1), np.float32(1),
                                   [jnp.ones(1)], jax.random.key(0), (1, 2)])
def test_is_data_and_has_data_match_flax(value):
  assert nnx.is_data(value) == fnnx.is_data(value)
  ours, theirs = nnx.has_data(value), fnnx.has_data(value)
  assert len(ours) == len(theirs) and all(a is b for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize('lib', [nnx, fnnx], ids=['bridge', 'flax'])
def test_variables_modules_and_registered_types_are_data(lib):
  assert lib.is_data(lib.Param(1)) and lib.is_data(lib.Rngs(0))

  @lib.register_data_type
  class Token:
    pass
  m = lib.Module()
  m.token = Token()
  assert [type(x) for x in jax.tree.leaves(m)] == [Token]


@pytest.mark.parametrize('lib', [nnx, fnnx], ids=['bridge', 'flax'])
def test_data_and_static_markers(lib):
  class M(lib.Module):
    def __init__(self):
      self.count = lib.data(3)
      self.shape = lib.static((2, 2))
      self.table = lib.data({'x': jnp.ones(1)})
  m = M()
  assert [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(m)[0]] \
    == ['.count', ".table['x']"]
  with pytest.raises(ValueError, match="'shape'"):
    m.shape = jnp.ones(2)
  with pytest.raises(ValueError):
    m.other = lib.static(jnp.ones(1))


@pytest.mark.parametrize('lib', [nnx, fnnx], ids=['bridge', 'flax'])
def test_class_annotations_declare_data_and_static(lib):
  class M(lib.Module):
    steps: lib.Data[int]
    size: int = lib.static()

    def __init__(self):
      self.steps = 0
      self.size = 4
  assert jax.tree.leaves(M()) == [0]
  with pytest.raises(ValueError):
    M().size = jnp.ones(1)


def test_markers_survive_split_and_merge():
  m = make_model(nnx)
  copy_ = nnx.merge(*nnx.split(m))
  assert [p for p, _ in flat(copy_)] == [p for p, _ in flat(m)]


def test_dataclass_matches_flax():
  def point(lib):
    @lib.dataclass
    class Point(lib.Pytree):
      xy: jax.Array
      label: str = lib.static(default='p')
      weight: lib.Data[float] = 1.0
    return Point(jnp.zeros(2))
  ours, theirs = point(nnx), point(fnnx)
  assert ours.label == theirs.label == 'p'
  assert_same_leaves(ours, theirs)


@pytest.mark.parametrize('lib', [nnx, fnnx], ids=['bridge', 'flax'])
def test_check_pytree_errors_match_flax(lib):
  with pytest.raises(TypeError):
    lib.check_pytree([1])

  class M(lib.Module):
    size: int = lib.static()
  m = M()
  lib.check_pytree(m)
  vars(m)['size'] = jnp.ones(1)
  with pytest.raises(ValueError):
    lib.check_pytree(m)


def test_find_duplicates_matches_flax():
  def tied(lib):
    class Tied(lib.Module):
      def __init__(self):
        self.v = lib.Param(jnp.ones(1))
        self.w = self.v
        self.sub = lib.Linear(1, 1, rngs=lib.Rngs(0))
        self.sub2 = self.sub
        self.items = lib.List([self.v])
    return Tied()
  ours, theirs = tied(nnx), tied(fnnx)
  assert nnx.find_duplicates(ours) == fnnx.find_duplicates(theirs)
  assert nnx.find_duplicates(ours, only=nnx.Param) == \
    fnnx.find_duplicates(theirs, only=fnnx.Param)
  assert nnx.find_duplicates(make_model(nnx)) == []


def test_pytreelib_module_alias():
  import bridge.pytreelib as pytreelib
  assert nnx.pytreelib is pytreelib and pytreelib.Pytree is nnx.Pytree
  assert pytreelib.data is nnx.data and pytreelib.static is nnx.static


# -- copy.deepcopy ------------------------------------------------------------------------
class WithConfig(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.ones(2))
    self.config = {'sizes': [1, 2]}
    self.history = [1]


def test_deepcopy_does_not_share_mutable_static_attributes():
  m = WithConfig()
  c = copy.deepcopy(m)
  c.config['sizes'].append(3)
  c.history.append(2)
  assert m.config == {'sizes': [1, 2]} and m.history == [1]
  assert c.w is not m.w
  np.testing.assert_array_equal(c.w.value, m.w.value)


def test_deepcopy_honours_the_memo():
  m = WithConfig()
  pair = copy.deepcopy([m, m])
  assert pair[0] is pair[1] and pair[0] is not m
  holder = {'model': m, 'param': m.w}
  copied = copy.deepcopy(holder)
  assert copied['param'] is copied['model'].w


# -- cost: plain jax.jit reuses its trace, bridge.jit's steady call walks nothing ---------
class Counted(nnx.Module):
  """Counts how often its attributes are listed (by a graph walk or a pytree flatten)."""
  listed = 0

  def __init__(self):
    self.w = nnx.Param(jnp.ones(2))
    self.name = 'counted'

  def _graph_children(self):
    Counted.listed += 1
    return super()._graph_children()


def test_plain_jax_jit_traces_once_per_structure():
  traces = []

  @jax.jit
  def f(m):
    traces.append(1)
    return m.w.value.sum()
  m = Counted()
  f(m), f(m), f(nnx.clone(m))
  assert len(traces) == 1
  other = nnx.clone(m)
  other.name = 'renamed'  # a static attribute: a new structure
  f(other)
  assert len(traces) == 2


def test_bridge_jit_steady_call_neither_walks_nor_flattens_the_module():
  step = nnx.jit(lambda m: m.w.value.sum())
  m = Counted()
  step(m)
  before = Counted.listed
  for _ in range(3):
    step(m)
  assert Counted.listed == before


@pytest.mark.parametrize('name', ['data', 'static', 'is_data', 'has_data', 'register_data_type',
                                  'dataclass', 'find_duplicates', 'check_pytree',
                                  'set_graph_mode', 'set_graph_updates'])
def test_signatures_match_flax(name):
  def params(fn):  # defaults compared where they are plain values (not sentinels)
    plain = (bool, int, type(None), type(Ellipsis), inspect.Parameter.empty)
    return [(p.name, p.kind, p.default if isinstance(p.default, plain) or p.default is p.empty
             else 'sentinel') for p in inspect.signature(fn).parameters.values()]
  assert params(getattr(nnx, name)) == params(getattr(fnnx, name))
