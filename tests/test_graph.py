"""The graph API: split/merge/state/update/graphdef/clone/pop/iter_graph/flatten/unflatten,
sharing, GraphDef equality, containers, errors, parity with flax.nnx and property tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bridge as nnx
from bridge.state import State


class Custom(nnx.Variable):
  """A user-defined Variable type."""


class Block(nnx.Module):
  def __init__(self, n, rngs):
    self.linear = nnx.Linear(n, n, rngs=rngs)
    self.mean = nnx.BatchStat(jnp.zeros(n))
    self.count = Custom(jnp.array(0, jnp.int32), note='steps')
    self.n = n


class Model(nnx.Module):
  def __init__(self, rngs):
    self.a = Block(2, rngs)
    self.b = self.a  # shared submodule
    self.blocks = nnx.List([Block(3, rngs), Block(3, rngs)])
    self.heads = nnx.Dict(x=nnx.Linear(3, 1, rngs=rngs))
    self.tied = self.blocks[0].linear.kernel  # shared Variable
    self.raw = jnp.arange(4.0)  # a raw array attribute
    self.name = 'model'


def get_path(node, path):
  for key in path:
    if isinstance(node, (nnx.List, nnx.Dict, list, tuple, dict)):
      node = node[key]
    else:
      node = getattr(node, key)
  return node


def variables_of(node):
  return [x for _, x in nnx.iter_graph(node) if isinstance(x, nnx.Variable)]


# -- split / merge ----------------------------------------------------------------------------
def test_split_every_variable_once_at_its_first_path():
  m = Model(nnx.Rngs(0))
  graphdef, state = nnx.split(m)
  assert isinstance(graphdef, nnx.GraphDef) and isinstance(state, State)
  paths = state.flat_state().paths
  assert ('a', 'linear', 'kernel') in paths
  assert not any(p[0] in ('b', 'tied') for p in paths)  # aliases are not repeated
  assert ('raw',) in paths and ('blocks', 1, 'count') in paths and ('heads', 'x', 'bias') in paths
  assert state.a.linear.kernel is m.a.linear.kernel  # not copied
  assert state.raw is m.raw
  var_ids = {id(v) for v in variables_of(m)}
  leaf_ids = [id(v) for v in state.flat_state().leaves if isinstance(v, nnx.Variable)]
  assert sorted(leaf_ids) == sorted(var_ids) and len(set(leaf_ids)) == len(leaf_ids)


def test_merge_rebuilds_the_graph_with_the_states_variables():
  m = Model(nnx.Rngs(0))
  graphdef, state = nnx.split(m)
  m2 = nnx.merge(graphdef, state)
  assert type(m2) is Model and m2 is not m
  assert m2.b is m2.a and m2.tied is m2.blocks[0].linear.kernel
  assert m2.a.linear.kernel is state.a.linear.kernel
  assert type(m2.blocks) is nnx.List and type(m2.heads) is nnx.Dict
  assert m2.name == 'model' and m2.a.n == 2
  assert m2.a.count.note == 'steps' and type(m2.a.count) is Custom
  np.testing.assert_array_equal(m2.raw, np.arange(4.0))
  x = jnp.ones((1, 3))
  np.testing.assert_array_equal(m2.blocks[1].linear(x), m.blocks[1].linear(x))
  m3 = graphdef.merge(state)
  assert m3.b is m3.a


def test_split_with_filters_partitions_exhaustively():
  m = Model(nnx.Rngs(0))
  graphdef, params, stats, rest = nnx.split(m, nnx.Param, nnx.BatchStat, ...)
  assert all(type(v) is nnx.Param for v in params.flat_state().leaves)
  assert all(type(v) is nnx.BatchStat for v in stats.flat_state().leaves)
  assert {type(v).__name__ for v in rest.flat_state().leaves} == {'Custom', 'ArrayImpl'}
  total = sum(len(s.flat_state()) for s in (params, stats, rest))
  assert total == len(nnx.state(m).flat_state())
  m2 = nnx.merge(graphdef, params, stats, rest)
  assert m2.b is m2.a and m2.blocks[1].mean is stats.blocks[1].mean
  assert graphdef == nnx.graphdef(m)


def test_split_leftover_without_catch_all_is_a_clear_error():
  m = Model(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"BatchStat at 'a/mean' matches none.*`\.\.\.`"):
    nnx.split(m, nnx.Param, Custom)


def test_state_with_filters():
  m = Model(nnx.Rngs(0))
  params = nnx.state(m, nnx.Param)
  assert isinstance(params, State)
  assert set(params) == {'a', 'blocks', 'heads'}
  custom, stats = nnx.state(m, Custom, nnx.BatchStat)
  assert custom.flat_state().paths == (('a', 'count'), ('blocks', 0, 'count'),
                                       ('blocks', 1, 'count'))
  assert len(stats.flat_state()) == 3
  assert nnx.state(m).flat_state().paths == nnx.split(m)[1].flat_state().paths


def test_split_merge_through_jit_with_graphdef_static():
  m = Model(nnx.Rngs(0))
  graphdef, state = nnx.split(m)

  @jax.jit
  def step(state):
    model = nnx.merge(graphdef, state)
    model.a.mean.value = model.a.mean.value + 1
    model.a.count.value += 1
    return nnx.state(model)

  new = step(state)
  nnx.update(m, new)
  np.testing.assert_array_equal(m.a.mean.value, np.ones(2))
  assert int(m.b.count.value) == 1 and m.a.count.value.dtype == jnp.int32

  calls = []

  @jax.jit(static_argnums=0)
  def apply(graphdef, state, x):
    calls.append(1)
    return nnx.merge(graphdef, state).heads.x(x)

  x = jnp.ones((2, 3))
  apply(graphdef, state, x)
  apply(nnx.graphdef(nnx.merge(graphdef, state)), state, x)  # an equal GraphDef: cache hit
  assert len(calls) == 1


# -- merge errors -----------------------------------------------------------------------------
def test_merge_missing_path_is_a_clear_error():
  graphdef, state = nnx.split(Model(nnx.Rngs(0)))
  del state['a']['mean']
  with pytest.raises(ValueError, match="no BatchStat at 'a/mean'"):
    nnx.merge(graphdef, state)
  graphdef, state = nnx.split(Model(nnx.Rngs(0)))
  del state['raw']
  with pytest.raises(ValueError, match="no array at 'raw'"):
    nnx.merge(graphdef, state)


def test_merge_extra_path_is_a_clear_error():
  graphdef, state = nnx.split(Model(nnx.Rngs(0)))
  state['a']['extra'] = nnx.Param(jnp.ones(1))
  with pytest.raises(ValueError, match=r"nothing at 'a/extra' \(1 unexpected"):
    nnx.merge(graphdef, state)


def test_merge_wrong_variable_type_is_a_clear_error():
  graphdef, state = nnx.split(Model(nnx.Rngs(0)))
  state['blocks'][1]['mean'] = nnx.Param(jnp.zeros(3))
  with pytest.raises(ValueError, match="at 'blocks/1/mean': expected a BatchStat, got a Param"):
    nnx.merge(graphdef, state)


def test_merge_wraps_raw_values_in_the_recorded_variable_type():
  m = Model(nnx.Rngs(0))
  graphdef, state = nnx.split(m)
  pure = state.to_pure_dict()
  m2 = nnx.merge(graphdef, State(pure))
  assert type(m2.a.count) is Custom and m2.a.count.note == 'steps'
  assert m2.b is m2.a and m2.tied is m2.blocks[0].linear.kernel
  np.testing.assert_array_equal(m2.heads.x.kernel.value, m.heads.x.kernel.value)


# -- GraphDef ---------------------------------------------------------------------------------
class Static(nnx.Module):
  def __init__(self, k=1, var_type=nnx.Param, **metadata):
    self.w = var_type(jnp.ones(2), **metadata)
    self.k = k


def test_graphdef_equal_and_hashable_for_equal_structures():
  a, b = nnx.graphdef(Model(nnx.Rngs(0))), nnx.graphdef(Model(nnx.Rngs(1)))
  assert a == b and hash(a) == hash(b) and len({a, b}) == 1
  assert nnx.graphdef(Static(m={'x': 1, 'y': 2})) == nnx.graphdef(Static(m={'y': 2, 'x': 1}))
  assert nnx.graphdef(Static(m=[1, 2])) == nnx.graphdef(Static(m=[1, 2]))
  assert 'Static' in repr(a) or 'Model' in repr(a)


@pytest.mark.parametrize('base, other', [
  (dict(), dict(k=2)),  # a static attribute
  (dict(), dict(k='1')),
  (dict(), dict(var_type=nnx.BatchStat)),  # a Variable type
  (dict(), dict(var_type=Custom)),
  (dict(), dict(note='x')),  # metadata
  (dict(note='x'), dict(note='y')),
  (dict(m=[1, 2]), dict(m=[1, 3])),
  (dict(m=[1, 2]), dict(m=(1, 2))),
])
def test_graphdef_differs_when_structure_differs(base, other):
  a, b = nnx.graphdef(Static(**base)), nnx.graphdef(Static(**other))
  assert a != b
  assert a == nnx.graphdef(Static(**base))


def test_graphdef_differs_for_extra_attribute_and_sharing():
  m1, m2 = Static(), Static()
  m2.extra = nnx.Param(jnp.ones(1))
  assert nnx.graphdef(m1) != nnx.graphdef(m2)
  shared, unshared = Static(), Static()
  shared.v = shared.w
  unshared.v = nnx.Param(jnp.ones(2))
  assert nnx.graphdef(shared) != nnx.graphdef(unshared)


# -- containers -------------------------------------------------------------------------------
class Containers(nnx.Module):
  def __init__(self):
    self.plain_list = [nnx.Param(jnp.ones(1)), Static(), 3]
    self.plain_tuple = (nnx.BatchStat(jnp.zeros(1)), 'x')
    self.plain_dict = {'m': Static(), 'v': Custom(jnp.ones(2))}
    self.arrays = [jnp.ones(1), np.zeros(2, np.float32)]
    self.static_list = [1, 2, 3]


def test_plain_containers_round_trip():
  c = Containers()
  graphdef, state = nnx.split(c)
  assert set(state.flat_state().paths) == {
    ('plain_list', 0), ('plain_list', 1, 'w'), ('plain_tuple', 0), ('plain_dict', 'm', 'w'),
    ('plain_dict', 'v'), ('arrays', 0), ('arrays', 1)}
  c2 = nnx.merge(graphdef, state)
  assert type(c2.plain_list) is list and type(c2.plain_tuple) is tuple
  assert c2.plain_list[2] == 3 and c2.plain_tuple[1] == 'x' and c2.static_list == [1, 2, 3]
  assert c2.plain_dict['v'] is state.plain_dict.v and type(c2.plain_dict['m']) is Static
  assert isinstance(c2.arrays[1], np.ndarray)
  np.testing.assert_array_equal(c2.arrays[1], np.zeros(2))


def test_shared_plain_list_and_nested_shared_module_stay_shared():
  m = nnx.Module()
  inner = Static()
  m.xs = [inner, nnx.Param(jnp.ones(1))]
  m.ys = m.xs
  m.z = {'deep': [inner]}
  m2 = nnx.merge(*nnx.split(m))
  assert m2.ys is m2.xs and m2.z['deep'][0] is m2.xs[0]


def test_cycles_round_trip():
  m = Static()
  m.parent = nnx.Module()
  m.parent.child = m
  graphdef, state = nnx.split(m)
  assert state.flat_state().paths == (('w',),)
  m2 = nnx.merge(graphdef, state)
  assert m2.parent.child is m2


# -- update -----------------------------------------------------------------------------------
def test_update_in_place_keeps_variable_objects():
  m = Model(nnx.Rngs(0))
  kernel = m.a.linear.kernel
  new = jax.tree.map(lambda x: x * 0 + 5, nnx.state(m))
  nnx.update(m, new)
  assert m.a.linear.kernel is kernel
  np.testing.assert_array_equal(kernel.value, np.full((2, 2), 5.0))
  np.testing.assert_array_equal(m.tied.value, np.full((3, 3), 5.0))
  np.testing.assert_array_equal(m.raw, np.full(4, 5.0))
  assert m.a.count.value.dtype == jnp.int32


def test_update_with_several_states_and_pure_values():
  m = Model(nnx.Rngs(0))
  params, rest = nnx.state(m, nnx.Param, ...)
  nnx.update(m, jax.tree.map(jnp.zeros_like, params), rest)
  assert all(not v.value.any() for v in variables_of(m) if type(v) is nnx.Param)
  nnx.update(m, State({'a': {'mean': jnp.full(2, 3.0)}}))  # a raw value for a Variable
  assert type(m.a.mean) is nnx.BatchStat
  np.testing.assert_array_equal(m.b.mean.value, np.full(2, 3.0))


def test_update_adds_new_variable_attributes():
  m = Model(nnx.Rngs(0))
  nnx.update(m, State({'a': {'extra': nnx.Intermediate(jnp.ones(3))},
                       'top': Custom(jnp.zeros(1))}))
  assert type(m.a.extra) is nnx.Intermediate and type(m.top) is Custom
  assert ('a', 'extra') in nnx.state(m).flat_state().paths
  nnx.update(m.blocks, State({0: {'new': nnx.Param(jnp.ones(1))}}))
  assert type(m.blocks[0].new) is nnx.Param


def test_update_raw_arrays_in_list_and_dict_containers():
  lst = nnx.List([jnp.ones(2), nnx.Param(jnp.ones(1))])
  nnx.update(lst, State({0: jnp.zeros(2)}))
  np.testing.assert_array_equal(lst[0], np.zeros(2))
  d = nnx.Dict(a=jnp.ones(2))
  nnx.update(d, State({'a': jnp.full(2, 2.0)}))
  np.testing.assert_array_equal(d['a'], np.full(2, 2.0))


def test_update_through_a_missing_node_is_a_clear_error():
  m = Model(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"nothing at 'nope' on the way to 'nope/x/w'"):
    nnx.update(m, State({'nope': {'x': {'w': nnx.Param(jnp.ones(1))}}}))


# -- clone ------------------------------------------------------------------------------------
def test_clone_new_variables_same_values_sharing_preserved():
  m = Model(nnx.Rngs(0))
  m.a.linear.kernel.set_metadata(tag2='t')
  c = nnx.clone(m)
  assert c is not m and c.a is not m.a and c.b is c.a
  assert c.tied is c.blocks[0].linear.kernel and c.tied is not m.tied
  assert c.a.linear.kernel.tag2 == 't'
  for (p1, v1), (p2, v2) in zip(nnx.state(m).flat_state(), nnx.state(c).flat_state(),
                                strict=True):
    assert p1 == p2 and type(v1) is type(v2)
    if isinstance(v1, nnx.Variable):
      assert v1 is not v2
      np.testing.assert_array_equal(v1.value, v2.value)
  c.a.mean.value = jnp.full(2, 7.0)
  np.testing.assert_array_equal(m.a.mean.value, np.zeros(2))
  assert nnx.graphdef(c) == nnx.graphdef(m)


# -- pop --------------------------------------------------------------------------------------
class Sower(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.ones(2))
    self.child = nnx.Module()

  def __call__(self, x):
    self.sow(nnx.Intermediate, 'y', x * 2)
    self.child.sow(nnx.Intermediate, 'z', x)
    return x


def test_pop_removes_and_returns():
  m = Sower()
  m(jnp.ones(1))
  popped = nnx.pop(m, nnx.Intermediate)
  assert popped.flat_state().paths == (('child', 'z'), ('y',))
  np.testing.assert_array_equal(popped.y.value[0], np.full(1, 2.0))
  assert not hasattr(m, 'y') and not hasattr(m.child, 'z')
  assert nnx.state(m).flat_state().paths == (('w',),)
  m(jnp.ones(1))
  inter, params = nnx.pop(m, nnx.Intermediate, nnx.Param)
  assert len(inter.flat_state()) == 2 and params.flat_state().paths == (('w',),)
  assert len(nnx.state(m).flat_state()) == 0
  with pytest.raises(TypeError, match='at least one filter'):
    nnx.pop(m)


def test_pop_from_list_and_dict_containers():
  d = nnx.Dict(a=nnx.Intermediate(jnp.ones(1)), b=nnx.Param(jnp.ones(1)))
  assert nnx.pop(d, nnx.Intermediate).flat_state().paths == (('a',),)
  assert list(d) == ['b']
  lst = nnx.List([nnx.Intermediate(jnp.zeros(1)), nnx.Intermediate(jnp.ones(1)),
                  nnx.Param(jnp.full(1, 2.0))])
  popped = nnx.pop(lst, nnx.Intermediate)
  assert popped.flat_state().paths == ((0,), (1,))
  assert len(lst) == 1 and type(lst[0]) is nnx.Param
  plain = nnx.Module()
  plain.xs = [nnx.Param(jnp.ones(1)), nnx.Intermediate(jnp.ones(1))]
  nnx.pop(plain, nnx.Intermediate)
  assert len(plain.xs) == 1


# -- iter_graph -------------------------------------------------------------------------------
def test_iter_graph_children_before_parents_shared_once():
  m = Model(nnx.Rngs(0))
  items = list(nnx.iter_graph(m))
  paths = [p for p, _ in items]
  assert paths[-1] == () and items[-1][1] is m
  ids = [id(x) for _, x in items if isinstance(x, (nnx.Module, nnx.Variable, nnx.List))]
  assert len(ids) == len(set(ids))
  position = {p: i for i, p in enumerate(paths)}
  for p in paths:
    for k in range(len(p)):
      assert position[p[:k]] > position[p]  # every ancestor comes later
  assert ('b',) not in position and ('tied',) not in position  # aliases skipped
  assert ('a', 'linear', 'kernel') in position and ('blocks', 1) in position


# -- flatten / unflatten ----------------------------------------------------------------------
def test_flatten_unflatten():
  m = Model(nnx.Rngs(0))
  graphdef, leaves = nnx.flatten(m)
  assert graphdef == nnx.graphdef(m)
  assert [p for p, _ in leaves] != [] and len({p for p, _ in leaves}) == len(leaves)
  assert {p for p, _ in leaves} == set(nnx.state(m).flat_state().paths)
  m2 = nnx.unflatten(graphdef, [v for _, v in leaves])
  assert m2.a.linear.kernel is m.a.linear.kernel and m2.b is m2.a
  raw = [v.value if isinstance(v, nnx.Variable) else v for _, v in leaves]
  m3 = nnx.unflatten(graphdef, raw)
  assert type(m3.a.count) is Custom and m3.a.count.note == 'steps'
  assert m3.a.count is not m.a.count
  np.testing.assert_array_equal(m3.blocks[1].linear.kernel.value,
                                m.blocks[1].linear.kernel.value)


# -- parity with flax.nnx ---------------------------------------------------------------------
def make_pair(lib):
  class FCustom(lib.Variable):
    pass

  class Inner(lib.Module):
    def __init__(self, rngs):
      self.linear = lib.Linear(3, 4, rngs=rngs)
      self.stat = lib.BatchStat(jnp.arange(4.0))
      self.custom = FCustom(jnp.array([1, 2], jnp.int32))

  class Outer(lib.Module):
    def __init__(self, rngs):
      self.inner = Inner(rngs)
      self.layers = lib.List([lib.Linear(4, 4, rngs=rngs), lib.Linear(4, 2, use_bias=False,
                                                                          rngs=rngs)])
      self.heads = lib.Dict(b=lib.Linear(2, 1, rngs=rngs), a=lib.Linear(2, 2, rngs=rngs))
      self.alias = self.inner
      self.raw = jnp.linspace(0, 1, 3)

  return Outer(lib.Rngs(0)), FCustom


def assert_pure_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def test_parity_linear_weights_and_pure_dict():
  ours = nnx.Linear(3, 5, rngs=nnx.Rngs(0))
  theirs = fnx.Linear(3, 5, rngs=fnx.Rngs(0))
  assert_pure_equal(nnx.state(ours).to_pure_dict(), fnx.state(theirs).to_pure_dict())


def test_parity_module_pure_dict_and_filter_groups():
  ours, our_custom = make_pair(nnx)
  theirs, their_custom = make_pair(fnx)
  assert_pure_equal(nnx.state(ours).to_pure_dict(), fnx.state(theirs).to_pure_dict())
  for make in [lambda lib, c: (lib.Param, ...), lambda lib, c: (c, lib.BatchStat, ...),
               lambda lib, c: (lib.PathContains('layers'), lib.Param, ...),
               lambda lib, c: (lib.Not(lib.Param), ...)]:
    got = nnx.split(ours, *make(nnx, our_custom))[1:]
    want = fnx.split(theirs, *make(fnx, their_custom))[1:]
    assert [g.flat_state().paths for g in got] == [
      tuple(p for p, _ in w.flat_state()) for w in want]
    for g, w in zip(got, want, strict=True):
      assert_pure_equal(g.to_pure_dict(), w.to_pure_dict())


def test_parity_iter_graph_variable_paths():
  ours, _ = make_pair(nnx)
  theirs, _ = make_pair(fnx)
  mine = [p for p, x in nnx.iter_graph(ours) if isinstance(x, nnx.Variable)]
  flax = [p for p, x in fnx.iter_graph(theirs) if isinstance(x, fnx.Variable)]
  assert mine == flax


# -- property tests ---------------------------------------------------------------------------
VAR_TYPES = (nnx.Param, nnx.BatchStat, nnx.Cache, nnx.Intermediate, Custom)
DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16, jnp.int32)
metadata_values = st.one_of(st.integers(-3, 3), st.text('abc', max_size=3),
                            st.tuples(st.sampled_from(['x', 'y', None]),
                                      st.sampled_from(['x', 'y', None])))
metadata_dicts = st.dictionaries(st.sampled_from(['m_axes', 'm_note', 'm_n', 'm_tag']),
                                 metadata_values, max_size=3)


@st.composite
def graphs(draw):
  made_vars: list = []
  made_modules: list = []
  counter = [0]

  def new_variable():
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    dtype = draw(st.sampled_from(DTYPES))
    counter[0] += 1
    values = (np.arange(int(np.prod(shape))) + counter[0]).reshape(shape)
    var = draw(st.sampled_from(VAR_TYPES))(jnp.asarray(values, dtype), **draw(metadata_dicts))
    made_vars.append(var)
    return var

  def value(depth):
    choices = ['var', 'var', 'static', 'raw']
    if made_vars:
      choices.append('shared_var')
    if made_modules:
      choices.append('shared_module')
    if depth > 0:
      choices += ['module', 'module', 'list', 'dict', 'nnx_list', 'nnx_dict']
    kind = draw(st.sampled_from(choices))
    if kind == 'var':
      return new_variable()
    if kind == 'static':
      return draw(st.one_of(st.integers(), st.text(max_size=3), st.none()))
    if kind == 'raw':
      counter[0] += 1
      return jnp.full((2,), counter[0], draw(st.sampled_from(DTYPES)))
    if kind == 'shared_var':
      return draw(st.sampled_from(made_vars))
    if kind == 'shared_module':
      return draw(st.sampled_from(made_modules))
    if kind == 'module':
      return module(depth - 1)
    children = [value(depth - 1) for _ in range(draw(st.integers(0, 3)))]
    if kind == 'list':
      return children
    if kind == 'nnx_list':
      return nnx.List(children)
    keys = draw(st.lists(st.sampled_from(['k', 'p', 'q', 'r']), min_size=len(children),
                         max_size=len(children), unique=True))
    return dict(zip(keys, children, strict=True)) if kind == 'dict' else nnx.Dict(
      zip(keys, children, strict=True))

  def module(depth):
    m = nnx.Module()
    for i in range(draw(st.integers(0, 4))):
      setattr(m, f'attr{i}', value(depth))
    made_modules.append(m)
    return m

  return module(draw(st.integers(0, 3)))


def all_paths(node, path=()):
  """Every (path, object) reachable, aliases included (graphs here are acyclic)."""
  yield path, node
  if isinstance(node, nnx.Dict):  # merge orders a Dict's keys, as flax.nnx does
    items = sorted(node.items())
  elif isinstance(node, nnx.List):
    items = enumerate(node)
  elif isinstance(node, nnx.Module):
    items = vars(node).items()
  elif isinstance(node, (list, tuple)):
    items = enumerate(node)
  elif isinstance(node, dict):
    items = node.items()
  else:
    return
  for k, v in items:
    yield from all_paths(v, (*path, k))


def assert_same_graph(a, b, same_variables: bool):
  """b mirrors a: the same paths, types, values, dtypes, metadata, and the same sharing."""
  pa, pb = list(all_paths(a)), list(all_paths(b))
  assert [p for p, _ in pa] == [p for p, _ in pb]
  a_to_b: dict = {}
  b_to_a: dict = {}
  for (path, x), (_, y) in zip(pa, pb, strict=True):
    assert type(x) is type(y), path
    if isinstance(x, (nnx.Object, nnx.Variable, list, dict)):
      assert a_to_b.setdefault(id(x), id(y)) == id(y), f'sharing lost at {path}'
      assert b_to_a.setdefault(id(y), id(x)) == id(x), f'sharing added at {path}'
    if isinstance(x, nnx.Variable):
      assert (x is y) == same_variables, path
      assert x.get_metadata() == y.get_metadata(), path
      x, y = x.raw_value, y.raw_value
    if isinstance(x, jax.Array):
      assert x.dtype == y.dtype and x.shape == y.shape, path
      np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))
    elif not isinstance(x, (nnx.Object, list, tuple, dict)):
      assert x == y, path


PROPERTY_SETTINGS = settings(max_examples=40, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.data_too_large])


@PROPERTY_SETTINGS
@given(graphs())
def test_property_split_merge_round_trip(m):
  graphdef, state = nnx.split(m)
  leaves = state.flat_state().leaves
  unique = {id(v): v for v in variables_of(m)}
  state_vars = [v for v in leaves if isinstance(v, nnx.Variable)]
  assert len(state_vars) == len(unique) and {id(v) for v in state_vars} == set(unique)
  merged = nnx.merge(graphdef, state)
  assert_same_graph(m, merged, same_variables=True)
  for path, leaf in state.flat_state():
    assert get_path(merged, path) is leaf, path
  assert nnx.graphdef(merged) == graphdef and hash(nnx.graphdef(merged)) == hash(graphdef)


@PROPERTY_SETTINGS
@given(graphs())
def test_property_split_with_filters_each_variable_once(m):
  graphdef, *states = nnx.split(m, nnx.Param, (Custom, nnx.Cache), ...)
  seen = [id(v) for s in states for v in s.flat_state().leaves]
  assert len(seen) == len(set(seen)) == len(nnx.state(m).flat_state())
  assert all(type(v) is nnx.Param for v in states[0].flat_state().leaves)
  assert all(type(v) in (Custom, nnx.Cache) for v in states[1].flat_state().leaves)
  assert_same_graph(m, nnx.merge(graphdef, *states), same_variables=True)


@PROPERTY_SETTINGS
@given(graphs())
def test_property_clone_copies_variables_keeps_structure(m):
  assert_same_graph(m, nnx.clone(m), same_variables=False)


@PROPERTY_SETTINGS
@given(graphs())
def test_property_pure_dict_checkpoint_round_trip(m):
  original = jax.tree.map(np.asarray, nnx.state(m).to_pure_dict())
  # as a checkpoint stores it: integer keys as strings
  stringify = lambda d: {str(k): stringify(v) if isinstance(v, dict) else v
                         for k, v in d.items()}
  checkpoint = stringify(original)
  # scramble the model, then restore it from the checkpoint
  nnx.update(m, jax.tree.map(lambda x: jnp.zeros_like(x) + 1, nnx.state(m)))
  state = nnx.state(m)
  state.replace_by_pure_dict(checkpoint)
  nnx.update(m, state)
  restored = nnx.state(m).to_pure_dict()
  assert jax.tree.structure(restored) == jax.tree.structure(original)
  for x, y in zip(jax.tree.leaves(original), jax.tree.leaves(restored), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x.astype(np.float32), np.asarray(y, np.float32))


def test_update_descends_into_pytree_containers_like_optax_states():
  import optax
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  first = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
  second = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
  second.opt_state[0].mu['kernel'].value = jnp.ones((2, 2))
  nnx.update(first, nnx.state(second))
  np.testing.assert_array_equal(first.opt_state[0].mu['kernel'].value, jnp.ones((2, 2)))
