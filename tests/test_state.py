"""State: nested mapping, flat views, filtering, pure dicts, pytree, repr; parity with flax."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnx

import bridge as nnx
from bridge.state import FlatState, State


def make_state():
  return nnx.State({
    'linear': {'kernel': nnx.Param(jnp.arange(6.0).reshape(2, 3)),
               'bias': nnx.Param(jnp.zeros(3))},
    'bn': {'mean': nnx.BatchStat(jnp.ones(3)), 'scale': nnx.Param(jnp.full(3, 2.0))},
    'layers': {0: {'w': nnx.Param(jnp.ones(2))}, 1: {'w': nnx.Param(jnp.full(2, 3.0))}},
    'count': nnx.Intermediate(jnp.array(7, jnp.int32)),
  })


# -- mapping --------------------------------------------------------------------------------
def test_attribute_and_item_access_return_the_same_objects():
  s = make_state()
  assert s.linear.kernel is s['linear']['kernel']
  assert s.layers[1]['w'] is s['layers'][1].w
  assert isinstance(s.linear, State) and isinstance(s['layers'][0], State)
  np.testing.assert_array_equal(s.linear.kernel.value, np.arange(6.0).reshape(2, 3))


def test_nested_plain_dicts_become_states_on_init_and_setitem():
  s = nnx.State({'a': {'b': {'c': nnx.Param(jnp.ones(1))}}})
  assert type(s['a']) is State and type(s['a']['b']) is State
  s['x'] = {'y': nnx.Param(jnp.zeros(1))}
  assert type(s['x']) is State
  s.z = {'q': nnx.Param(jnp.zeros(1))}
  assert type(s['z']) is State and 'z' in s


def test_mapping_protocol():
  s = make_state()
  assert set(s) == {'linear', 'bn', 'layers', 'count'}
  assert len(s) == 4 and len(s.layers) == 2
  del s['count']
  assert 'count' not in s and len(s) == 3
  s.new = nnx.Param(jnp.ones(1))
  assert s['new'].value.tolist() == [1.0]
  s2 = nnx.State([('a', nnx.Param(jnp.ones(1)))])  # an iterable of pairs
  assert list(s2) == ['a']


def test_missing_attribute_error_lists_keys():
  s = make_state()
  with pytest.raises(AttributeError, match="no key 'nope'.*linear"):
    _ = s.nope
  with pytest.raises(KeyError):
    _ = s['nope']
  assert not hasattr(s, '__nope__')


def test_deepcopy_and_pickle_keep_structure_and_values():
  s = make_state()
  for other in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
    assert isinstance(other, State) and isinstance(other.linear, State)
    assert other.flat_state().paths == s.flat_state().paths
    assert other.linear.kernel is not s.linear.kernel
    assert type(other.bn.mean) is nnx.BatchStat
    np.testing.assert_array_equal(other.linear.kernel.value, s.linear.kernel.value)


# -- flat views -----------------------------------------------------------------------------
def test_flat_state_is_sorted_with_ints_before_strings():
  flat = make_state().flat_state()
  assert isinstance(flat, FlatState)
  assert flat.paths == (
    ('bn', 'mean'), ('bn', 'scale'), ('count',), ('layers', 0, 'w'), ('layers', 1, 'w'),
    ('linear', 'bias'), ('linear', 'kernel'))
  assert len(flat) == 7 and flat[0][0] == ('bn', 'mean')
  assert all(isinstance(v, nnx.Variable) for v in flat.leaves)
  s = make_state()
  assert s.flat_state().leaves[-1] is s.linear.kernel  # the very Variables, not copies


def test_flat_state_round_trip():
  s = make_state()
  flat = nnx.to_flat_state(s)
  back = nnx.from_flat_state(flat)
  assert back.flat_state().paths == flat.paths
  assert all(a is b for a, b in zip(back.flat_state().leaves, flat.leaves, strict=True))
  assert flat.to_nested_state().flat_state().paths == flat.paths
  # from any iterable of pairs, unsorted
  pairs = list(reversed(list(flat)))
  assert nnx.from_flat_state(pairs).flat_state().paths == flat.paths
  assert nnx.to_flat_state({'a': {'b': 1}}).paths == (('a', 'b'),)  # plain dicts accepted


def test_from_flat_path_through_a_leaf_is_an_error():
  with pytest.raises(ValueError, match='goes through a leaf'):
    State.from_flat_path([(('a',), nnx.Param(1.0)), (('a', 'b'), nnx.Param(2.0))])


def test_flat_state_filter():
  flat = make_state().flat_state()
  params = flat.filter(nnx.Param)
  assert isinstance(params, FlatState)
  assert all(type(v) is nnx.Param for v in params.leaves) and len(params) == 5
  stats, inter = flat.filter(nnx.BatchStat, nnx.Intermediate)
  assert stats.paths == (('bn', 'mean'),) and inter.paths == (('count',),)


# -- filter / split ---------------------------------------------------------------------------
def test_filter_single_and_multiple():
  s = make_state()
  params = s.filter(nnx.Param)
  assert isinstance(params, State)
  assert params.flat_state().paths == (
    ('bn', 'scale'), ('layers', 0, 'w'), ('layers', 1, 'w'), ('linear', 'bias'),
    ('linear', 'kernel'))
  assert params.linear.kernel is s.linear.kernel
  stats, rest = s.filter(nnx.BatchStat, ...)
  assert stats.flat_state().paths == (('bn', 'mean'),)
  assert len(rest.flat_state()) == 6
  # filter is not exhaustive: leftovers are dropped silently
  assert nnx.filter_state(s, nnx.BatchStat).flat_state().paths == (('bn', 'mean'),)
  assert s.filter('layers').flat_state().paths == (('layers', 0, 'w'), ('layers', 1, 'w'))
  with pytest.raises(TypeError):
    s.filter()


def test_split_first_match_wins_and_is_exhaustive():
  s = make_state()
  kernel, params, rest = s.split(nnx.PathContains('kernel'), nnx.Param, ...)
  assert kernel.flat_state().paths == (('linear', 'kernel'),)
  assert ('linear', 'kernel') not in params.flat_state().paths
  assert len(params.flat_state()) == 4
  assert rest.flat_state().paths == (('bn', 'mean'), ('count',))
  total = sum(len(x.flat_state()) for x in (kernel, params, rest))
  assert total == len(s.flat_state())
  assert s.split() is s
  assert nnx.split_state(s, ...).flat_state().paths == s.flat_state().paths


def test_split_leftover_without_catch_all_is_a_clear_error():
  s = make_state()
  with pytest.raises(ValueError, match=r"BatchStat at 'bn/mean' matches none.*`\.\.\.`"):
    s.split(nnx.Param, nnx.Intermediate)
  with pytest.raises(ValueError, match='last filter'):
    s.split(..., nnx.Param)


def test_unknown_filter_is_a_clear_error():
  with pytest.raises(TypeError, match='Invalid filter'):
    make_state().filter(3.5)


# -- merge ----------------------------------------------------------------------------------
def test_merge_state_later_wins():
  s = make_state()
  params, rest = s.split(nnx.Param, ...)
  merged = nnx.merge_state(params, rest)
  assert merged.flat_state().paths == s.flat_state().paths
  assert all(a is b for a, b in zip(merged.flat_state().leaves, s.flat_state().leaves,
                                    strict=True))
  override = nnx.State({'linear': {'bias': nnx.Param(jnp.full(3, 9.0))}})
  merged = State.merge(s, override)
  np.testing.assert_array_equal(merged.linear.bias.value, np.full(3, 9.0))
  assert merged.linear.kernel is s.linear.kernel
  merged = State.merge(override, s)
  assert merged.linear.bias is s.linear.bias


# -- pure dicts -----------------------------------------------------------------------------
def test_to_pure_dict_has_plain_dicts_and_arrays():
  s = make_state()
  pure = s.to_pure_dict()
  assert type(pure) is dict and type(pure['layers'][0]) is dict
  assert list(pure) == ['bn', 'count', 'layers', 'linear']  # sorted, as flat_state
  assert nnx.State({'a': {}, 'b': nnx.Param(1.0)}).to_pure_dict() == {'b': 1.0}
  assert set(pure['layers']) == {0, 1}
  assert not any(isinstance(x, nnx.Variable) for x in jax.tree.leaves(pure))
  np.testing.assert_array_equal(pure['linear']['kernel'], np.arange(6.0).reshape(2, 3))
  assert pure['count'].dtype == jnp.int32
  assert nnx.to_pure_dict(s, lambda v: type(v).__name__)['bn'] == {
    'mean': 'BatchStat', 'scale': 'Param'}


def test_to_pure_dict_applies_get_hooks():
  s = nnx.State({'w': nnx.Param(jnp.ones(2), on_get_value=lambda v, x: x * 10)})
  np.testing.assert_array_equal(s.to_pure_dict()['w'], np.full(2, 10.0))


def test_replace_by_pure_dict_round_trip_keeps_types_and_metadata():
  s = make_state()
  s.linear.kernel.set_metadata(sharding=('in', 'out'))
  old_kernel = s.linear.kernel
  pure = jax.tree.map(lambda x: x + 1, s.to_pure_dict())
  s.replace_by_pure_dict(pure)
  assert s.linear.kernel is not old_kernel  # a new Variable ...
  assert type(s.linear.kernel) is nnx.Param and s.linear.kernel.sharding == ('in', 'out')
  np.testing.assert_array_equal(s.linear.kernel.value, np.arange(6.0).reshape(2, 3) + 1)
  np.testing.assert_array_equal(old_kernel.value, np.arange(6.0).reshape(2, 3))  # untouched
  assert type(s.bn.mean) is nnx.BatchStat and s.count.value.dtype == jnp.int32
  assert int(s.count.value) == 8


def test_replace_by_pure_dict_partial_and_digit_string_keys():
  s = make_state()
  s.replace_by_pure_dict({'layers': {'1': {'w': jnp.full(2, 5.0)}}})  # as checkpoints store
  np.testing.assert_array_equal(s.layers[1].w.value, np.full(2, 5.0))
  np.testing.assert_array_equal(s.layers[0].w.value, np.ones(2))
  assert '1' not in s.layers
  nnx.replace_by_pure_dict(s, {'layers': {0: {'w': jnp.full(2, 4.0)}}})
  np.testing.assert_array_equal(s.layers[0].w.value, np.full(2, 4.0))


def test_replace_by_pure_dict_custom_replace_fn():
  s = nnx.State({'a': nnx.Param(jnp.ones(2))})
  s.replace_by_pure_dict({'a': 3}, replace_fn=lambda var, v: var.replace(jnp.full(2, v)))
  np.testing.assert_array_equal(s.a.value, np.full(2, 3.0))


@pytest.mark.parametrize('pure, match', [
  ({'linear': {'weight': jnp.zeros((2, 3))}}, r"no 'linear/weight'.*'weight'"),
  ({'layers': {'2': {'w': jnp.zeros(2)}}}, r"no 'layers/2/w'"),
  ({'extra': jnp.zeros(1)}, r"no 'extra'"),
  ({'linear': {'kernel': jnp.zeros((3, 2))}}, r"'linear/kernel' has shape \(2, 3\).*\(3, 2\)"),
  ({'linear': {'kernel': jnp.zeros((2, 3), jnp.int32)}},
   r"'linear/kernel' has dtype float32.*int32"),
  ({'count': np.array(1, np.int64)}, r"'count' has dtype int32"),
  ({'linear': {'kernel': {'x': jnp.zeros(1)}}}, r"'linear/kernel/x' goes through a leaf"),
  ({'linear': jnp.zeros(3)}, r"'linear' holds a sub-State"),
])
def test_replace_by_pure_dict_errors_name_the_path(pure, match):
  s = make_state()
  before = s.flat_state().leaves
  with pytest.raises(ValueError, match=match):
    s.replace_by_pure_dict(pure)
  assert s.flat_state().leaves == before  # nothing replaced before the bad path


def test_restore_int_paths():
  pure = {'layers': {'0': {'w': 1}, '12': {'w': 2}}, 'name': {'a1': 3}}
  assert nnx.restore_int_paths(pure) == {'layers': {0: {'w': 1}, 12: {'w': 2}},
                                         'name': {'a1': 3}}
  s = make_state()
  restored = nnx.restore_int_paths(jax.tree.map(lambda x: x, {
    'layers': {'0': {'w': jnp.full(2, 6.0)}}}))
  s.replace_by_pure_dict(restored)
  np.testing.assert_array_equal(s.layers[0].w.value, np.full(2, 6.0))


# -- map ------------------------------------------------------------------------------------
def test_map_state_sees_paths_and_leaves():
  s = make_state()
  seen = []

  def f(path, v):
    seen.append(path)
    return v.replace(v.value * 2) if 'linear' in path else v

  out = nnx.map_state(f, s)
  assert tuple(seen) == s.flat_state().paths
  np.testing.assert_array_equal(out.linear.kernel.value, 2 * np.arange(6.0).reshape(2, 3))
  assert out.bn.mean is s.bn.mean
  np.testing.assert_array_equal(s.linear.kernel.value, np.arange(6.0).reshape(2, 3))


# -- pytree ---------------------------------------------------------------------------------
def test_pytree_leaves_are_the_arrays():
  s = make_state()
  leaves = jax.tree.leaves(s)
  assert len(leaves) == 7
  assert all(isinstance(x, jax.Array) for x in leaves)
  assert leaves[0] is s.bn.mean.raw_value  # sorted path order
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(s)]
  assert paths[0] == "['bn']['mean'].value"
  assert paths[3] == "['layers'][0]['w'].value"


def test_tree_map_keeps_types_metadata_and_structure():
  s = make_state()
  s.bn.mean.set_metadata(note='running')
  out = jax.tree.map(lambda x: x * 2, s)
  assert isinstance(out, State) and isinstance(out.layers, State)
  assert out.flat_state().paths == s.flat_state().paths
  assert type(out.bn.mean) is nnx.BatchStat and out.bn.mean.note == 'running'
  np.testing.assert_array_equal(out.bn.scale.value, np.full(3, 4.0))
  assert out.count.value.dtype == jnp.int32
  assert jax.tree.structure(out) == jax.tree.structure(s)


def test_state_through_jit():
  s = make_state()

  @jax.jit
  def step(state):
    return jax.tree.map(lambda x: x + 1, state), state.linear.kernel.value.sum()

  out, total = step(s)
  assert isinstance(out, State) and type(out.linear.kernel) is nnx.Param
  np.testing.assert_array_equal(out.linear.kernel.value, np.arange(6.0).reshape(2, 3) + 1)
  assert float(total) == 15.0
  assert int(out.count.value) == 8


def test_state_with_raw_array_leaves_is_a_pytree():
  s = nnx.State({'a': jnp.ones(2), 'b': {'c': jnp.zeros(1)}})
  assert len(jax.tree.leaves(s)) == 2
  out = jax.jit(lambda t: jax.tree.map(jnp.negative, t))(s)
  np.testing.assert_array_equal(out.a, -np.ones(2))


# -- repr -----------------------------------------------------------------------------------
def test_repr_layout():
  s = nnx.State({'b': {'k': nnx.Param(jnp.ones(2), foo=1)}, 'a': nnx.BatchStat(jnp.zeros(()))})
  assert repr(s) == (
    "State({\n"
    "  'b': {\n"
    "    'k': Param( # 2 (8 B)\n"
    "      value=Array([1., 1.], dtype=float32),\n"
    "      foo=1\n"
    "    )\n"
    "  },\n"
    "  'a': BatchStat( # 1 (4 B)\n"
    "    value=Array(0., dtype=float32)\n"
    "  )\n"
    "})")
  assert repr(nnx.State({})) == 'State({})'


def test_repr_of_multiline_array_matches_flax():
  ours = nnx.State({'k': nnx.Param(jnp.arange(6.0).reshape(2, 3))})
  theirs = fnx.State({'k': fnx.Param(jnp.arange(6.0).reshape(2, 3))})
  assert repr(ours) == repr(theirs)


def build_pair(lib):
  return lib.State({
    'linear': {'kernel': lib.Param(jnp.arange(6.0), note='k'),
               'bias': lib.Param(jnp.zeros(3))},
    'layers': {0: {'mean': lib.BatchStat(jnp.ones(2))}},
    'empty': {},
    'count': lib.Intermediate(jnp.array(3, jnp.int32)),
  })


def test_repr_matches_flax():
  assert repr(build_pair(nnx)) == repr(build_pair(fnx))
  shapes = [jax.tree.map(jnp.shape, build_pair(lib)) for lib in (nnx, fnx)]
  assert repr(shapes[0]) == repr(shapes[1])


# -- parity with flax.nnx -------------------------------------------------------------------
def assert_pure_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def test_parity_pure_dict_flat_paths_and_filters():
  ours, theirs = build_pair(nnx), build_pair(fnx)
  assert_pure_equal(ours.to_pure_dict(), theirs.to_pure_dict())
  assert ours.flat_state().paths == tuple(p for p, _ in theirs.flat_state())
  for make in [lambda lib: (lib.Param, ...), lambda lib: (lib.BatchStat, lib.Param, ...),
               lambda lib: (lib.PathContains('linear'), ...),
               lambda lib: (lib.Not(lib.Param), lib.Any(lib.Param))]:
    got = ours.split(*make(nnx))
    want = theirs.split(*make(fnx))
    assert [g.flat_state().paths for g in got] == [
      tuple(p for p, _ in w.flat_state()) for w in want]
  pure = {'linear': {'kernel': jnp.ones(6)}, 'layers': {'0': {'mean': jnp.zeros(2)}}}
  ours.replace_by_pure_dict(pure)
  theirs.replace_by_pure_dict(pure)
  assert_pure_equal(ours.to_pure_dict(), theirs.to_pure_dict())
  assert nnx.restore_int_paths({'0': {'1': 2}}) == fnx.restore_int_paths({'0': {'1': 2}})


def test_from_flat_path_refuses_a_leaf_over_a_subtree():
  with pytest.raises(ValueError, match='subtree'):
    nnx.State.from_flat_path([(('a', 'b'), 1), (('a',), 2)])
