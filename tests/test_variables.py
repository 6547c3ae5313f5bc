"""Tests for bridge/variables.py: Variable, its subclasses, metadata, hooks, the registry.

flax.nnx 0.12 is the behaviour reference where the two overlap.
"""

import copy
import operator
import pickle
import uuid

import flax.nnx as fnnx
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge
import bridge.variables as bv
from bridge.filters import to_predicate

# flax 0.12 warns that hooks are deprecated; bridge supports them.
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::UserWarning')


def unique(prefix: str) -> str:
  """A collection name no other test (or earlier run in this process) has registered."""
  return f'{prefix}_{uuid.uuid4().hex[:8]}'


def strip_flax_defaults(metadata: dict) -> dict:
  """flax 0.12 adds bookkeeping keys to every Variable's metadata; bridge does not."""
  return {k: v for k, v in metadata.items() if k not in ('hijax', 'ref', 'eager_sharding')}


# ---------------------------------------------------------------------------------------
# construction and metadata
# ---------------------------------------------------------------------------------------
def test_value_and_metadata_as_attributes():
  x = jnp.arange(6.0).reshape(2, 3)
  p = bridge.Param(x, sharding=('in', 'out'), foo=1, note='hi')
  np.testing.assert_array_equal(p.value, x)
  assert p.sharding == ('in', 'out')
  assert p.foo == 1 and p.note == 'hi'
  assert p.get_metadata() == {'sharding': ('in', 'out'), 'foo': 1, 'note': 'hi'}
  assert p.type is bridge.Param
  assert isinstance(p, bridge.Variable)


def test_get_metadata_parity_with_flax():
  x = jnp.ones((2, 3))
  ours = bridge.Param(x, foo=1, bar=(2, 'b'))
  theirs = fnnx.Param(x, foo=1, bar=(2, 'b'))
  assert ours.get_metadata()['foo'] == theirs.get_metadata()['foo'] == 1
  assert ours.get_metadata() == strip_flax_defaults(theirs.get_metadata())
  assert ours.get_metadata('bar') == theirs.get_metadata('bar')
  assert ours.foo == theirs.foo


def test_get_metadata_one_entry_default_and_missing():
  p = bridge.Param(1.0, a=1)
  assert p.get_metadata('a') == 1
  assert p.get_metadata('zz', 7) == 7
  assert p.get_metadata('zz', None) is None
  with pytest.raises(KeyError, match="'zz'"):
    p.get_metadata('zz')


def test_get_metadata_returns_a_copy():
  p = bridge.Param(1.0, a=1)
  p.get_metadata()['a'] = 99
  assert p.a == 1


def test_set_metadata_forms():
  p = bridge.Param(1.0, a=1, b=2)
  p.set_metadata('a', 10)
  assert p.get_metadata() == {'a': 10, 'b': 2}
  p.set_metadata(c=3)
  assert p.get_metadata() == {'a': 10, 'b': 2, 'c': 3}
  p.set_metadata({'z': 0})  # a dict replaces all metadata, as in flax
  assert p.get_metadata() == {'z': 0}
  with pytest.raises(AttributeError):
    _ = p.a


def test_set_metadata_dict_parity_with_flax():
  ours, theirs = bridge.Param(1.0, a=1), fnnx.Param(1.0, a=1)
  for v in (ours, theirs):
    v.set_metadata('a', 5)
    v.set_metadata(b=6)
  assert ours.get_metadata() == strip_flax_defaults(theirs.get_metadata()) == {'a': 5, 'b': 6}


def test_assigning_existing_metadata_attribute_updates_it():
  p = bridge.Param(jnp.ones(2), sharding=('a',))
  p.sharding = ('b',)
  assert p.get_metadata('sharding') == ('b',)
  # the update survives a pytree round trip
  assert jax.tree.map(lambda x: x, p).sharding == ('b',)


@pytest.mark.parametrize('make', [
  lambda: bridge.Param(jnp.ones(2)),
  lambda: type('UserVar', (bridge.Variable,), {})(jnp.ones(2)),  # has a __dict__
])
def test_assigning_unknown_attribute_is_a_clear_error(make):
  v = make()
  with pytest.raises(AttributeError, match='set_metadata'):
    v.bar = 1
  assert 'bar' not in v.get_metadata()


def test_assigning_unknown_attribute_parity_with_flax():
  class FlaxVar(fnnx.Variable):
    pass

  with pytest.raises(AttributeError):
    FlaxVar(jnp.ones(2)).bar = 1


def test_user_subclass_property_setter_still_works():
  class Scaled(bridge.Variable):
    @property
    def doubled(self):
      return self.value * 2

    @doubled.setter
    def doubled(self, x):
      self.value = x / 2

  s = Scaled(jnp.ones(2))
  s.doubled = jnp.full(2, 8.0)
  np.testing.assert_array_equal(s.value, jnp.full(2, 4.0))


def test_sharding_falls_back_to_out_sharding():
  p = bridge.Param(jnp.ones(2), out_sharding=('x',))
  assert p.sharding == ('x',)


def test_unknown_attribute_falls_through_to_the_value():
  x = jnp.arange(6.0).reshape(2, 3)
  p = bridge.Param(x)
  assert p.shape == (2, 3) and p.dtype == jnp.float32 and p.ndim == 2 and p.size == 6
  np.testing.assert_array_equal(p.T, x.T)
  np.testing.assert_array_equal(p.sum(), x.sum())
  with pytest.raises(AttributeError):
    _ = p.no_such_attribute


def test_variable_as_value_is_rejected():
  with pytest.raises(TypeError, match='replace'):
    bridge.Param(bridge.BatchStat(jnp.ones(2)))


# ---------------------------------------------------------------------------------------
# reading and writing the value
# ---------------------------------------------------------------------------------------
def test_value_get_and_set_paths():
  x = jnp.arange(6.0).reshape(2, 3)
  p = bridge.Param(x)
  np.testing.assert_array_equal(p[...], x)
  np.testing.assert_array_equal(p.get_value(), x)
  np.testing.assert_array_equal(p[0], x[0])
  np.testing.assert_array_equal(p[:, 1], x[:, 1])
  np.testing.assert_array_equal(p.get_value(index=(1, 2)), x[1, 2])
  p.value = x + 1
  np.testing.assert_array_equal(p.raw_value, x + 1)
  p.set_value(x * 3)
  np.testing.assert_array_equal(p.value, x * 3)
  p[...] = jnp.zeros((2, 3))
  np.testing.assert_array_equal(p.value, jnp.zeros((2, 3)))
  p[1] = jnp.array([1.0, 2.0, 3.0])
  np.testing.assert_array_equal(p.value, jnp.array([[0.0, 0, 0], [1, 2, 3]]))
  p.set_value(7.0, index=(0, 0))
  assert float(p.value[0, 0]) == 7.0
  p[...] += 1  # the flax 0.12 spelling of an in-place update
  assert float(p.value[0, 0]) == 8.0


def test_setitem_parity_with_flax():
  x = jnp.arange(12.0).reshape(3, 4)
  ours, theirs = bridge.Param(x), fnnx.Param(x)
  for v in (ours, theirs):
    v[1:, ::2] = -1.0
    v[0] = jnp.arange(4.0) * 10
    v[...] = v[...] * 2
  np.testing.assert_array_equal(ours.value, theirs.value)


@pytest.mark.parametrize('value, index, new, expected', [
  (np.zeros(3, np.float32), 0, 1.0, np.array([1.0, 0, 0], np.float32)),
  ([1, 2], 0, 5, [5, 2]),
  ((1, 2), 1, 9, (1, 9)),
  ({'a': 1}, 'a', 2, {'a': 2}),
])
def test_setitem_on_non_jax_values(value, index, new, expected):
  v = bridge.Variable(value)
  v[index] = new
  got = v.value
  assert type(got) is type(expected)
  np.testing.assert_array_equal(np.asarray(got) if isinstance(got, np.ndarray) else got,
                                expected)


def test_set_value_takes_a_variables_value():
  p = bridge.Param(jnp.zeros(2))
  p.set_value(bridge.BatchStat(jnp.ones(2)))
  assert type(p.raw_value) is not bridge.BatchStat
  np.testing.assert_array_equal(p.raw_value, jnp.ones(2))


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from([np.float32, np.int32, np.uint8, np.bool_, np.float16]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)))
def test_set_get_round_trip(x):
  p = bridge.Param(jnp.zeros(x.shape, x.dtype))
  p.set_value(jnp.asarray(x))
  np.testing.assert_array_equal(p.get_value(), x)
  np.testing.assert_array_equal(p[...], x)
  assert p.shape == x.shape and p.dtype == x.dtype
  q = bridge.BatchStat(jnp.zeros(x.shape, x.dtype))
  q[...] = jnp.asarray(x)
  np.testing.assert_array_equal(q.value, x)
  # pytree round trip keeps value, type and metadata
  r = jax.tree.map(lambda a: a, bridge.Cache(jnp.asarray(x), tag='t'))
  assert type(r) is bridge.Cache and r.tag == 't'
  np.testing.assert_array_equal(r.value, x)


@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=5),
                  elements=st.floats(-10, 10, width=32)), st.data())
def test_indexed_write_matches_numpy(x, data):
  i = data.draw(st.integers(0, x.shape[0] - 1))
  row = data.draw(hnp.arrays(np.float32, x.shape[1:], elements=st.floats(-10, 10, width=32)))
  p = bridge.Param(jnp.asarray(x))
  p[i] = jnp.asarray(row)
  expected = x.copy()
  expected[i] = row
  np.testing.assert_array_equal(p.value, expected)
  np.testing.assert_array_equal(p[i], row)


# ---------------------------------------------------------------------------------------
# replace, copy, pickling
# ---------------------------------------------------------------------------------------
def test_replace():
  p = bridge.Param(jnp.ones(3), foo=1, bar=2)
  q = p.replace(jnp.zeros(2), foo=5)
  assert type(q) is bridge.Param and q is not p
  assert q.get_metadata() == {'foo': 5, 'bar': 2}
  np.testing.assert_array_equal(q.value, jnp.zeros(2))
  assert p.foo == 1  # original untouched
  np.testing.assert_array_equal(p.value, jnp.ones(3))
  r = p.replace(baz=3)
  np.testing.assert_array_equal(r.value, p.value)
  assert r.baz == 3
  assert p.copy(jnp.zeros(1)).foo == 1


def test_replace_parity_with_flax():
  ours = bridge.Param(jnp.ones(3), foo=1).replace(jnp.zeros(2), foo=2)
  theirs = fnnx.Param(jnp.ones(3), foo=1).replace(jnp.zeros(2), foo=2)
  assert ours.foo == theirs.foo == 2
  np.testing.assert_array_equal(ours.value, theirs.value)


def test_replace_does_not_rerun_hooks():
  calls = []
  p = bridge.Param(jnp.ones(2), on_set_value=lambda v, x: calls.append('s') or x,
                   on_create_value=lambda v, x: calls.append('c') or x)
  assert calls == ['c']
  q = p.replace(jnp.full(2, 5.0))
  assert calls == ['c']
  np.testing.assert_array_equal(q.raw_value, jnp.full(2, 5.0))
  q.value = jnp.zeros(2)  # but the replaced Variable keeps them
  assert calls == ['c', 's']


def test_update_from_state():
  p = bridge.Param(jnp.ones(2), a=1)
  p.update_from_state(bridge.Param(jnp.zeros(2), a=2, b=3))
  np.testing.assert_array_equal(p.value, jnp.zeros(2))
  assert p.get_metadata() == {'a': 2, 'b': 3}


def test_copy_deepcopy_pickle():
  p = bridge.Param(np.ones(2), foo=[1])
  shallow = copy.copy(p)
  assert type(shallow) is bridge.Param and shallow is not p and shallow.foo is p.foo
  deep = copy.deepcopy(p)
  deep.foo.append(2)
  assert p.foo == [1] and deep.foo == [1, 2]
  loaded = pickle.loads(pickle.dumps(p))
  assert type(loaded) is bridge.Param and loaded.foo == [1]
  np.testing.assert_array_equal(loaded.value, np.ones(2))


# ---------------------------------------------------------------------------------------
# behaving like the array
# ---------------------------------------------------------------------------------------
FLOAT_OPS = [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
             operator.mod, operator.pow, operator.eq, operator.ne, operator.lt, operator.le,
             operator.gt, operator.ge]
INT_OPS = [operator.and_, operator.or_, operator.xor, operator.lshift, operator.rshift]


def _check_binary(op, a, b):
  expected = op(a, b)
  for var_a, var_b in [(bridge.Param(a), b), (a, bridge.Param(b)),
                       (bridge.Param(a), bridge.BatchStat(b))]:
    got = op(var_a, var_b)
    assert not isinstance(got, bridge.Variable)
    np.testing.assert_array_equal(got, expected)
  if op in (operator.ne, operator.lt, operator.le, operator.gt, operator.ge):
    return  # flax 0.12 has no ordering operators, and its `!=` fails on arrays
  flax_got = op(fnnx.Param(a), b)
  np.testing.assert_array_equal(op(bridge.Param(a), b), flax_got)
  flax_got = op(a, fnnx.Param(b))
  np.testing.assert_array_equal(op(a, bridge.Param(b)), flax_got)


@pytest.mark.parametrize('op', FLOAT_OPS, ids=lambda o: o.__name__)
def test_binary_float_ops_match_the_array_and_flax(op):
  a = jnp.array([1.5, -2.0, 3.0, 4.0])
  b = jnp.array([2.0, 3.0, -1.5, 4.0])
  _check_binary(op, a, b)
  _check_binary(op, a, 2.0)
  _check_binary(op, 3.0, b)


@pytest.mark.parametrize('op', INT_OPS, ids=lambda o: o.__name__)
def test_binary_int_ops_match_the_array_and_flax(op):
  a = jnp.array([6, 3, 12, 1])
  b = jnp.array([1, 2, 3, 0])
  _check_binary(op, a, b)
  _check_binary(op, a, 1)
  _check_binary(op, 5, b)


def test_matmul_both_sides():
  x = jnp.arange(6.0).reshape(2, 3)
  w = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(x @ bridge.Param(w), x @ w)
  np.testing.assert_array_equal(bridge.Param(x) @ w, x @ w)
  np.testing.assert_array_equal(bridge.Param(x) @ bridge.Param(w), x @ w)
  np.testing.assert_array_equal(x @ bridge.Param(w), x @ fnnx.Param(w))


def test_divmod_and_unary():
  a = jnp.array([7.0, -3.0, 2.5])
  q, r = divmod(bridge.Param(a), 2.0)
  eq, er = divmod(a, 2.0)
  np.testing.assert_array_equal(q, eq)
  np.testing.assert_array_equal(r, er)
  q, r = divmod(5.0, bridge.Param(a))
  eq, er = divmod(5.0, a)
  np.testing.assert_array_equal(q, eq)
  np.testing.assert_array_equal(r, er)
  np.testing.assert_array_equal(-bridge.Param(a), -a)
  np.testing.assert_array_equal(+bridge.Param(a), a)
  np.testing.assert_array_equal(abs(bridge.Param(a)), jnp.abs(a))
  i = jnp.array([0, 5, -2])
  np.testing.assert_array_equal(~bridge.Param(i), ~i)
  np.testing.assert_array_equal(~bridge.Param(i), ~fnnx.Param(i))
  np.testing.assert_array_equal(-bridge.Param(a), -fnnx.Param(a))


def test_python_scalar_conversions():
  assert float(bridge.Param(jnp.array(2.5))) == 2.5
  assert int(bridge.Param(jnp.array(3))) == 3
  assert bool(bridge.Param(jnp.array(1))) is True
  assert bool(bridge.Param(jnp.array(0))) is False
  assert list(range(10))[bridge.Param(jnp.array(4))] == 4  # __index__
  assert operator.index(bridge.Param(jnp.array(7))) == 7


def test_len_iter_and_array_conversion():
  x = jnp.arange(6).reshape(3, 2)
  p = bridge.Param(x)
  assert len(p) == 3
  rows = list(p)
  assert len(rows) == 3
  for row, expected in zip(rows, x, strict=True):
    np.testing.assert_array_equal(row, expected)
  arr = jnp.asarray(p)
  assert isinstance(arr, jax.Array)
  np.testing.assert_array_equal(arr, x)
  np.testing.assert_array_equal(np.asarray(p), np.asarray(x))
  assert np.asarray(p, dtype=np.float32).dtype == np.float32
  np.testing.assert_array_equal(jnp.sum(p, axis=0), x.sum(0))
  np.testing.assert_array_equal(jnp.dot(p, jnp.ones(2, jnp.int32)), x.sum(1))


def test_jnp_asarray_goes_through_get_hooks():
  p = bridge.Param(jnp.ones(2), on_get_value=lambda v, x: x * 3)
  np.testing.assert_array_equal(jnp.asarray(p), jnp.full(2, 3.0))
  np.testing.assert_array_equal(p + 0, jnp.full(2, 3.0))


@pytest.mark.parametrize('op', ['+=', '-=', '*=', '/=', '@=', '**=', '//=', '%=', '|=', '&=',
                                '^=', '<<=', '>>='])
def test_inplace_operators_raise_like_flax(op):
  """``var += 1`` would silently turn the Variable into an array; flax 0.12 refuses too."""
  for make in (lambda: bridge.Param(jnp.ones(2, jnp.int32)),
               lambda: fnnx.Param(jnp.ones(2, jnp.int32))):
    v = make()
    with pytest.raises(NotImplementedError):
      exec(f'v {op} other', {}, {'v': v, 'other': jnp.ones(2, jnp.int32)})
  p = bridge.Param(jnp.ones(2, jnp.int32))
  with pytest.raises(NotImplementedError, match=r'var\[\.\.\.\]'):
    exec(f'p {op} 1', {}, {'p': p})
  np.testing.assert_array_equal(p.value, jnp.ones(2, jnp.int32))


def test_comparisons_return_arrays_and_hash_by_identity():
  p = bridge.Param(jnp.array([1.0, 2.0]))
  np.testing.assert_array_equal(p == jnp.array([1.0, 0.0]), [True, False])
  np.testing.assert_array_equal(p != 1.0, [False, True])
  q = bridge.Param(jnp.array([1.0, 2.0]))
  assert len({p, q, p}) == 2


# ---------------------------------------------------------------------------------------
# pytree
# ---------------------------------------------------------------------------------------
def test_leaves_is_the_array():
  x = jnp.arange(3.0)
  leaves = jax.tree.leaves(bridge.Param(x, foo=1))
  assert len(leaves) == 1 and leaves[0] is x
  assert jax.tree.leaves(bridge.Param(x)) == jax.tree.leaves(fnnx.Param(x))


def test_flatten_with_path_key_matches_flax():
  x = jnp.arange(3.0)
  [(ours, _)], _ = jax.tree_util.tree_flatten_with_path(bridge.Param(x))
  [(theirs, _)], _ = jax.tree_util.tree_flatten_with_path(fnnx.Param(x))
  assert ours == theirs == (jax.tree_util.GetAttrKey('value'),)


def test_tree_map_shape_keeps_the_variable():
  p = bridge.Param(jnp.ones((2, 3)), sharding=('a', 'b'))
  shapes = jax.tree.map(jnp.shape, p)
  assert type(shapes) is bridge.Param
  assert shapes.value == (2, 3)
  assert shapes.sharding == ('a', 'b')
  theirs = jax.tree.map(jnp.shape, fnnx.Param(jnp.ones((2, 3)), foo=1))
  assert jax.tree.map(jnp.shape, bridge.Param(jnp.ones((2, 3)), foo=1)).value == theirs.value


def test_tree_map_shape_on_a_nested_state():
  state = bridge.State({'a': {'w': bridge.Param(jnp.ones((2, 3)))},
                        'b': bridge.BatchStat(jnp.zeros(4))})
  shapes = jax.tree.map(jnp.shape, state)
  assert type(shapes['a']['w']) is bridge.Param and shapes['a']['w'].value == (2, 3)
  assert type(shapes['b']) is bridge.BatchStat and shapes['b'].value == (4,)


def test_treedef_depends_on_type_and_metadata_not_value():
  def structure(v):
    return jax.tree_util.tree_structure(v)

  assert structure(bridge.Param(1.0, a=1)) == structure(bridge.Param(2.0, a=1))
  assert structure(bridge.Param(1.0, a=1)) != structure(bridge.Param(1.0, a=2))
  assert structure(bridge.Param(1.0)) != structure(bridge.BatchStat(1.0))
  assert structure(bridge.Param(1.0, a=[1, 2])) == structure(bridge.Param(5.0, a=[1, 2]))


def test_jit_takes_and_returns_variables():
  calls = []

  @jax.jit
  def f(p, s):
    calls.append(1)
    return p.replace(p.value * 2 + s.value), s * 3

  p = bridge.Param(jnp.ones(2), foo='bar')
  s = bridge.BatchStat(jnp.full(2, 2.0))
  out_p, out_s = f(p, s)
  assert type(out_p) is bridge.Param and out_p.foo == 'bar'
  np.testing.assert_array_equal(out_p.value, jnp.full(2, 4.0))
  np.testing.assert_array_equal(out_s, jnp.full(2, 6.0))
  f(bridge.Param(jnp.zeros(2), foo='bar'), s)
  assert len(calls) == 1  # same structure, same metadata: no retrace
  f(bridge.Param(jnp.zeros(2), foo='baz'), s)
  assert len(calls) == 2  # metadata is static


def test_jit_mutation_inside_is_returned():
  @jax.jit
  def step(p):
    p.value = p.value + 1
    return p

  out = step(bridge.Param(jnp.zeros(3)))
  np.testing.assert_array_equal(out.value, jnp.ones(3))


def test_grad_through_a_variable():
  g = jax.grad(lambda p: jnp.sum(p.value ** 2))(bridge.Param(jnp.array([1.0, -2.0])))
  assert type(g) is bridge.Param
  np.testing.assert_array_equal(g.value, jnp.array([2.0, -4.0]))


def test_user_subclass_is_a_pytree_and_a_filter():
  class Counter(bridge.Variable):
    pass

  class SubParam(bridge.Param):
    pass

  c = Counter(jnp.array(0), note='n')
  assert jax.tree.leaves(c) == [c.value]
  out = jax.jit(lambda c: c.replace(c.value + 1))(c)
  assert type(out) is Counter and int(out.value) == 1 and out.note == 'n'
  assert to_predicate(Counter)(('c',), c)
  assert not to_predicate(bridge.Param)(('c',), c)
  assert to_predicate(bridge.Param)(('s',), SubParam(1.0))
  assert not to_predicate(SubParam)(('p',), bridge.Param(1.0))


@pytest.mark.parametrize('cls', [bridge.Param, bridge.BatchStat, bridge.Cache,
                                 bridge.Intermediate, bridge.Perturbation])
def test_builtin_types(cls):
  assert issubclass(cls, bridge.Variable)
  v = cls(jnp.ones(2), tag='x')
  assert type(jax.tree.map(lambda a: a, v)) is cls
  others = {bridge.Param, bridge.BatchStat, bridge.Cache, bridge.Intermediate} - {cls}
  for other in others:
    if not issubclass(cls, other):
      assert not to_predicate(other)(('v',), v)
  assert issubclass(bridge.Perturbation, bridge.Intermediate)


# ---------------------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------------------
def _logging_hooks(log):
  return dict(
    create=lambda v, x: (log.append(('create', type(v).__name__)), x * 10)[1],
    get=lambda v, x: (log.append(('get', type(v).__name__)), x * 2)[1],
    set=lambda v, x: (log.append(('set', type(v).__name__)), x + 1)[1],
  )


@pytest.mark.parametrize('spelling', ['flax', 'seed'])
def test_value_hooks_run_when_they_should(spelling):
  log = []
  h = _logging_hooks(log)
  if spelling == 'flax':
    kwargs = dict(on_create_value=h['create'], on_get_value=h['get'], on_set_value=h['set'])
  else:
    kwargs = dict(create_value_hooks=h['create'], get_value_hooks=(h['get'],),
                  set_value_hooks=[h['set']])
  p = bridge.Param(jnp.ones(2), **kwargs)
  assert log == [('create', 'Param')]
  np.testing.assert_array_equal(p.raw_value, jnp.full(2, 10.0))  # raw: no get hook
  assert log == [('create', 'Param')]
  np.testing.assert_array_equal(p.value, jnp.full(2, 20.0))
  np.testing.assert_array_equal(p[...], jnp.full(2, 20.0))
  np.testing.assert_array_equal(p.get_value(), jnp.full(2, 20.0))
  np.testing.assert_array_equal(p[0], 20.0)
  assert [e for e, _ in log] == ['create', 'get', 'get', 'get', 'get']
  log.clear()
  p.value = jnp.zeros(2)
  np.testing.assert_array_equal(p.raw_value, jnp.ones(2))
  p.set_value(jnp.full(2, 4.0))
  np.testing.assert_array_equal(p.raw_value, jnp.full(2, 5.0))
  p[...] = jnp.full(2, 6.0)
  np.testing.assert_array_equal(p.raw_value, jnp.full(2, 7.0))
  p[1] = 0.0
  np.testing.assert_array_equal(p.raw_value, jnp.array([7.0, 1.0]))
  assert [e for e, _ in log] == ['set', 'set', 'set', 'set']


def test_value_hooks_parity_with_flax():
  results = {}
  for name, ns in (('bridge', bridge), ('flax', fnnx)):
    log = []
    h = _logging_hooks(log)
    p = ns.Param(jnp.ones(2), on_create_value=h['create'], on_get_value=h['get'],
                 on_set_value=h['set'])
    reads = [np.asarray(p.value), np.asarray(p[...])]
    p.value = jnp.zeros(2)
    reads.append(np.asarray(p.value))
    results[name] = ([e for e, _ in log], reads)
  assert results['bridge'][0] == results['flax'][0]
  for ours, theirs in zip(results['bridge'][1], results['flax'][1], strict=True):
    np.testing.assert_array_equal(ours, theirs)


def test_hooks_chain_in_order():
  p = bridge.Param(jnp.array(1.0), on_get_value=(lambda v, x: x + 1, lambda v, x: x * 10))
  assert float(p.value) == 20.0  # (1 + 1) * 10, not 1 * 10 + 1
  p = bridge.Param(jnp.array(1.0), set_value_hooks=[lambda v, x: x * 10, lambda v, x: x + 1])
  p.value = jnp.array(2.0)
  assert float(p.raw_value) == 21.0


def test_hook_receives_the_variable():
  seen = []
  p = bridge.BatchStat(jnp.ones(1), scale=3.0,
                       on_get_value=lambda v, x: (seen.append(v), x * v.scale)[1])
  np.testing.assert_array_equal(p.value, jnp.full(1, 3.0))
  assert seen == [p]
  p.scale = 5.0
  np.testing.assert_array_equal(p.value, jnp.full(1, 5.0))


def test_axis_hooks():
  log = []
  add = lambda v, i, name: log.append(('add', type(v).__name__, i, name))
  rm = lambda v, i, name: log.append(('rm', type(v).__name__, i, name))
  p = bridge.Param(jnp.ones(2), on_add_axis=add, remove_axis_hooks=(rm,))
  assert log == []
  p.add_axis(0, 'batch')
  p.remove_axis(1, 'layers')
  assert log == [('add', 'Param', 0, 'batch'), ('rm', 'Param', 1, 'layers')]
  bridge.Param(jnp.ones(2)).add_axis(0, 'x')  # no hooks: nothing happens, no error


def test_axis_hooks_can_update_metadata():
  def add(v, i, name):
    axes = list(v.axes)
    axes.insert(i, name)
    v.set_metadata(axes=tuple(axes))

  def remove(v, i, name):
    axes = list(v.axes)
    assert axes.pop(i) == name
    v.set_metadata(axes=tuple(axes))

  p = bridge.Param(jnp.ones((2, 3)), axes=('a', 'b'), on_add_axis=add, on_remove_axis=remove)
  p.add_axis(1, 'layers')
  assert p.axes == ('a', 'layers', 'b')
  p.remove_axis(1, 'layers')
  assert p.axes == ('a', 'b')


@pytest.mark.parametrize('flax_name, seed_name', list(zip(bv.HOOK_NAMES, [
  'set_value_hooks', 'get_value_hooks', 'create_value_hooks', 'add_axis_hooks',
  'remove_axis_hooks'], strict=True)))
def test_both_spellings_of_one_hook_is_a_type_error(flax_name, seed_name):
  h = lambda v, x, *rest: x
  with pytest.raises(TypeError, match=f'{flax_name}.*{seed_name}'):
    bridge.Param(jnp.ones(1), **{flax_name: h, seed_name: h})
  with pytest.raises(TypeError, match=f'{flax_name}.*{seed_name}'):
    bridge.VariableMetadata(jnp.ones(1), **{flax_name: h, seed_name: h})
  with pytest.raises(TypeError, match=f'{flax_name}.*{seed_name}'):
    bridge.with_metadata(jnp.ones, **{flax_name: h, seed_name: h})


def test_hooks_as_subclass_methods():
  class Doubled(bridge.Variable):
    def on_get_value(self, value):
      return value * 2

    def on_set_value(self, value):
      return value - 1

    def on_create_value(self, value):
      return value + 100

  d = Doubled(jnp.array(1.0))
  assert float(d.raw_value) == 101.0
  assert float(d.value) == 202.0
  d.value = jnp.array(5.0)
  assert float(d.raw_value) == 4.0
  assert float(d[...]) == 8.0
  # an explicit hook wins over the method
  e = Doubled(jnp.array(1.0), on_get_value=lambda v, x: x)
  assert float(e.value) == 101.0


def test_subclass_method_hook_parity_with_flax():
  class Ours(bridge.Variable):
    def on_get_value(self, value):
      return value * 3

  class Theirs(fnnx.Variable):
    def on_get_value(self, value):
      return value * 3

  np.testing.assert_array_equal(Ours(jnp.ones(2)).value, Theirs(jnp.ones(2)).value)


# ---------------------------------------------------------------------------------------
# VariableMetadata and with_metadata
# ---------------------------------------------------------------------------------------
def test_variable_metadata_fields():
  h1, h2 = (lambda v, x: x), (lambda v, x: x)
  a, r = (lambda v, i, n: None), (lambda v, i, n: None)
  m = bridge.VariableMetadata(jnp.zeros(2), set_value_hooks=(h1,), get_value_hooks=h2,
                              create_value_hooks=(), add_axis_hooks=(a,),
                              remove_axis_hooks=(r,), metadata={'sharding': ('x',)})
  np.testing.assert_array_equal(m.raw_value, jnp.zeros(2))
  assert m.set_value_hooks == m.on_set_value == (h1,)
  assert m.get_value_hooks == m.on_get_value == (h2,)
  assert m.create_value_hooks == m.on_create_value == ()
  assert m.add_axis_hooks == m.on_add_axis == (a,)
  assert m.remove_axis_hooks == m.on_remove_axis == (r,)
  assert m.metadata == {'sharding': ('x',)}
  assert 'VariableMetadata(' in repr(m) and 'sharding' in repr(m)
  assert bridge.VariableMetadata(1.0).metadata == {}


def test_variable_metadata_flax_spelling_and_positional():
  h = lambda v, x: x + 1
  m = bridge.VariableMetadata(jnp.zeros(1), on_set_value=(h,))
  assert m.set_value_hooks == (h,)
  with pytest.raises(TypeError, match='bogus'):
    bridge.VariableMetadata(1.0, bogus=1)


def test_variable_from_variable_metadata_carries_metadata_and_hooks():
  log = []
  m = bridge.VariableMetadata(
    jnp.ones(2), create_value_hooks=(lambda v, x: (log.append('c'), x * 3)[1],),
    get_value_hooks=(lambda v, x: (log.append('g'), x + 1)[1],),
    add_axis_hooks=(lambda v, i, n: log.append(('a', i, n)),),
    metadata={'sharding': ('x',), 'foo': 1})
  p = bridge.Param(m, foo=2)  # explicit metadata wins
  assert p.sharding == ('x',) and p.foo == 2
  assert log == ['c']
  np.testing.assert_array_equal(p.value, jnp.full(2, 4.0))
  p.add_axis(0, 'b')
  assert log == ['c', 'g', ('a', 0, 'b')]
  assert not isinstance(p.raw_value, bridge.VariableMetadata)


def test_explicit_hook_overrides_variable_metadata_hook():
  m = bridge.VariableMetadata(jnp.ones(1), get_value_hooks=(lambda v, x: x * 100,))
  p = bridge.Param(m, on_get_value=lambda v, x: x * 2)
  np.testing.assert_array_equal(p.value, jnp.full(1, 2.0))


def test_with_metadata():
  init = bridge.initializers.ones_init()
  wrapped = bridge.with_metadata(init, sharding=('a', 'b'), foo=1)
  assert wrapped.__name__ == init.__name__
  out = wrapped(jax.random.key(0), (2, 3))
  assert isinstance(out, bridge.VariableMetadata)
  np.testing.assert_array_equal(out.raw_value, jnp.ones((2, 3)))
  assert out.metadata == {'sharding': ('a', 'b'), 'foo': 1}
  p = bridge.Param(out)
  assert p.sharding == ('a', 'b') and p.foo == 1 and p.shape == (2, 3)


@pytest.mark.parametrize('spelling', ['flax', 'seed'])
def test_with_metadata_hooks(spelling):
  log = []
  get = lambda v, x: (log.append('g'), x * 2)[1]
  create = lambda v, x: (log.append('c'), x + 1)[1]
  if spelling == 'flax':
    wrapped = bridge.with_metadata(jnp.zeros, on_get_value=get, on_create_value=(create,))
  else:
    wrapped = bridge.with_metadata(jnp.zeros, get_value_hooks=get, create_value_hooks=[create])
  out = wrapped((3,))
  assert out.get_value_hooks == (get,) and out.create_value_hooks == (create,)
  assert out.metadata == {}  # hooks are not metadata entries
  p = bridge.Param(out)
  assert log == ['c']
  np.testing.assert_array_equal(p.value, jnp.full(3, 2.0))
  assert log == ['c', 'g']


def test_with_metadata_parity_with_flax():
  ours = bridge.with_metadata(bridge.initializers.lecun_normal(), foo=('x', 'y'))
  theirs = fnnx.with_metadata(fnnx.initializers.lecun_normal(), foo=('x', 'y'))
  key = jax.random.key(3)
  o, t = ours(key, (4, 5)), theirs(key, (4, 5))
  np.testing.assert_array_equal(o.raw_value, t.raw_value)
  assert o.metadata == dict(t.metadata)
  po, pt = bridge.Param(o), fnnx.Param(t)
  assert po.foo == pt.foo
  np.testing.assert_array_equal(po.value, pt.value)


# ---------------------------------------------------------------------------------------
# the collection-name registry
# ---------------------------------------------------------------------------------------
BUILTIN_PAIRS = [('params', 'Param'), ('batch_stats', 'BatchStat'), ('cache', 'Cache'),
                 ('intermediates', 'Intermediate')]


@pytest.mark.parametrize('name, cls_name', BUILTIN_PAIRS)
def test_builtin_pairs_and_parity_with_flax(name, cls_name):
  cls = getattr(bridge, cls_name)
  assert bridge.variable_type_from_name(name) is cls
  assert bridge.variable_type_from_name(name, allow_register=False) is cls
  assert bridge.variable_name_from_type(cls) == name
  flax_cls = fnnx.variablelib.variable_type_from_name(name)
  assert flax_cls.__name__ == cls.__name__ == cls_name
  assert fnnx.variablelib.variable_name_from_type(getattr(fnnx, cls_name)) == name


def test_register_as_decorator_and_function():
  name = unique('counts')

  @bridge.register_variable_name(name)
  class Count(bridge.Variable):
    pass

  assert bridge.variable_type_from_name(name) is Count
  assert bridge.variable_name_from_type(Count) == name
  other = unique('other')

  class Other(bridge.Variable):
    pass

  assert bridge.register_variable_name(other, Other) is Other
  assert bridge.variable_type_from_name(other, allow_register=False) is Other
  assert bridge.register_variable_name(other, Other) is Other  # same pair again: fine


def test_register_taken_name_without_overwrite_is_a_value_error():
  class Mine(bridge.Variable):
    pass

  with pytest.raises(ValueError, match=r"'params'.*Param.*overwrite=True"):
    bridge.register_variable_name('params', Mine)
  assert bridge.variable_type_from_name('params') is bridge.Param
  assert bridge.variable_name_from_type(bridge.Param) == 'params'
  with pytest.raises(ValueError):  # flax refuses too
    fnnx.register_variable_name('params', fnnx.BatchStat)


def test_register_with_overwrite():
  name = unique('ow')

  class First(bridge.Variable):
    pass

  class Second(bridge.Variable):
    pass

  bridge.register_variable_name(name, First)
  bridge.register_variable_name(name, Second, overwrite=True)
  assert bridge.variable_type_from_name(name) is Second
  assert bridge.variable_name_from_type(Second) == name
  with pytest.raises(ValueError):  # First lost its name
    bridge.variable_name_from_type(First)


def test_register_non_variable_is_a_type_error():
  with pytest.raises(TypeError, match='Variable subclass'):
    bridge.register_variable_name(unique('bad'), int)


def test_variable_type_from_unknown_name_makes_a_type():
  name = unique('made')
  cls = bridge.variable_type_from_name(name)
  assert cls.__name__ == name and issubclass(cls, bridge.Variable)
  assert bridge.variable_type_from_name(name) is cls  # cached
  assert bridge.variable_name_from_type(cls) == name
  v = cls(jnp.ones(2))
  assert jax.tree.leaves(v)[0].shape == (2,)  # a pytree
  assert type(jax.tree.map(lambda x: x, v)) is cls


def test_variable_type_from_name_base():
  name = unique('based')
  cls = bridge.variable_type_from_name(name, base=bridge.Param)
  assert issubclass(cls, bridge.Param)
  assert to_predicate(bridge.Param)((), cls(1.0))


def test_variable_type_from_name_without_register_is_a_clear_error():
  name = unique('nope')
  with pytest.raises(ValueError, match=name):
    bridge.variable_type_from_name(name, allow_register=False)
  with pytest.raises(ValueError):  # and nothing got registered
    bridge.variable_type_from_name(name, allow_register=False)


def test_variable_name_from_type():
  class Unnamed(bridge.Variable):
    pass

  with pytest.raises(ValueError, match='Unnamed'):
    bridge.variable_name_from_type(Unnamed)
  assert bridge.variable_name_from_type(Unnamed, allow_register=True) == 'Unnamed'
  assert bridge.variable_type_from_name('Unnamed') is Unnamed
  assert bridge.variable_name_from_type(Unnamed) == 'Unnamed'


# ---------------------------------------------------------------------------------------
# the seed page 000 examples, against flax.nnx
# ---------------------------------------------------------------------------------------
def _seed_model(ns):
  class CustomVariable(ns.Variable):
    pass

  class Model(ns.Module):
    def __init__(self, rngs):
      self.linear = ns.Linear(2, 3, rngs=rngs)
      self.custom_variable = CustomVariable(jnp.ones((1, 3)))

    def __call__(self, x):
      return self.linear(x) + self.custom_variable

  return Model(rngs=ns.Rngs(0)), CustomVariable


def _shapes(ns, model, *filters):
  return jax.tree.map(jnp.shape, ns.state(model, *filters))


def test_seed_custom_variable_example():
  ours, OurCustom = _seed_model(bridge)
  theirs, TheirCustom = _seed_model(fnnx)

  params = _shapes(bridge, ours, bridge.Param)
  assert params.to_pure_dict() == {'linear': {'bias': (3,), 'kernel': (2, 3)}}
  assert type(params['linear']['kernel']) is bridge.Param
  assert params.to_pure_dict() == _shapes(fnnx, theirs, fnnx.Param).to_pure_dict()

  custom = _shapes(bridge, ours, OurCustom)
  assert custom.to_pure_dict() == {'custom_variable': (1, 3)}
  assert type(custom['custom_variable']) is OurCustom
  assert custom.to_pure_dict() == _shapes(fnnx, theirs, TheirCustom).to_pure_dict()

  everything = _shapes(bridge, ours)
  assert everything.to_pure_dict() == _shapes(fnnx, theirs).to_pure_dict() == {
    'custom_variable': (1, 3), 'linear': {'bias': (3,), 'kernel': (2, 3)}}

  x = jnp.arange(4.0).reshape(2, 2)
  np.testing.assert_array_equal(ours(x), theirs(x))
  np.testing.assert_array_equal(ours(x), x @ ours.linear.kernel.value + ours.linear.bias.value
                                + 1.0)


def test_seed_param_linear_example():
  ours = jax.tree.map(jnp.shape, bridge.state(bridge.Linear(2, 3, rngs=bridge.Rngs(0))))
  theirs = jax.tree.map(jnp.shape, fnnx.state(fnnx.Linear(2, 3, rngs=fnnx.Rngs(0))))
  assert ours.to_pure_dict() == theirs.to_pure_dict() == {'bias': (3,), 'kernel': (2, 3)}
  assert all(type(v) is bridge.Param for v in jax.tree.leaves(
    ours, is_leaf=lambda x: isinstance(x, bridge.Variable)))
