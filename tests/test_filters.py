"""Tests for bridge/filters.py: the filter language, against flax.nnx.filterlib."""

import flax.nnx as fnnx
import jax.numpy as jnp
import pytest
from flax.nnx import filterlib as flax_filters
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge
from bridge import filters
from bridge.filters import (
  All,
  Any,
  Everything,
  Not,
  Nothing,
  OfType,
  PathContains,
  PathIn,
  WithTag,
  filters_to_predicates,
  to_predicate,
)

# (path, type name, tag or None): the same cases built with bridge and with flax Variables.
CASES = [
  (('linear', 'kernel'), 'Param', None),
  (('linear', 'bias'), 'Param', None),
  (('bn', 'mean'), 'BatchStat', None),
  (('attn', 'cached_key'), 'Cache', None),
  (('i',), 'Intermediate', None),
  (('rngs', 'default', 'key'), 'Variable', 'default'),
  (('rngs', 'dropout', 'count'), 'Variable', 'dropout'),
  (('layers', 0, 'kernel'), 'Param', None),
  (('layers', 1, 'bias'), 'Param', 'odd'),
  ((), 'BatchStat', None),
]


def make_value(ns, type_name, tag):
  metadata = {} if tag is None else {'tag': tag}
  return getattr(ns, type_name)(jnp.ones(1), **metadata)


# Each entry builds the same filter in either namespace (bridge or flax.nnx/filterlib).
FILTERS = {
  'Param': lambda ns, fl: ns.Param,
  'Variable': lambda ns, fl: ns.Variable,
  'tuple': lambda ns, fl: (ns.BatchStat, ns.Cache),
  'list': lambda ns, fl: [ns.Cache, fl.PathContains('bias')],
  'empty tuple': lambda ns, fl: (),
  'ellipsis': lambda ns, fl: ...,
  'True': lambda ns, fl: True,
  'None': lambda ns, fl: None,
  'False': lambda ns, fl: False,
  'Not Param': lambda ns, fl: fl.Not(ns.Param),
  'All': lambda ns, fl: fl.All(ns.Param, fl.PathContains('kernel')),
  'Any': lambda ns, fl: fl.Any(ns.BatchStat, fl.PathContains(0)),
  'nested': lambda ns, fl: fl.Not(fl.All(ns.Param, fl.Not(fl.PathContains('layers')))),
  'PathContains exact': lambda ns, fl: fl.PathContains('kernel'),
  'PathContains int': lambda ns, fl: fl.PathContains(1),
  'PathContains substring': lambda ns, fl: fl.PathContains('cache', exact=False),
  'PathContains int substring': lambda ns, fl: fl.PathContains(0, exact=False),
  'PathContains exact no substring': lambda ns, fl: fl.PathContains('cache'),
  'OfType': lambda ns, fl: fl.OfType(ns.BatchStat),
  'WithTag': lambda ns, fl: fl.WithTag('dropout'),
  'PathIn': lambda ns, fl: fl.PathIn(('linear', 'bias'), ('bn', 'mean')),
  # strings agree with flax's tag-only filter when no path part equals the string
  'string tag': lambda ns, fl: 'dropout',
  'string odd': lambda ns, fl: 'odd',
  'Not string': lambda ns, fl: fl.Not('default'),
  'callable': lambda ns, fl: (lambda path, x: len(path) == 2),
}


@pytest.mark.parametrize('filter_name', list(FILTERS))
def test_parity_with_flax(filter_name):
  ours = to_predicate(FILTERS[filter_name](bridge, filters))
  theirs = flax_filters.to_predicate(FILTERS[filter_name](fnnx, flax_filters))
  got, expected = [], []
  for path, type_name, tag in CASES:
    got.append(bool(ours(path, make_value(bridge, type_name, tag))))
    expected.append(bool(theirs(path, make_value(fnnx, type_name, tag))))
  assert got == expected
  constant = ('ellipsis', 'True', 'None', 'False', 'empty tuple', 'Variable',
              'PathContains exact no substring')
  if filter_name not in constant:
    assert 0 < sum(got) < len(got), 'a parity case that does not discriminate proves little'


# ---------------------------------------------------------------------------------------
# each kind of filter
# ---------------------------------------------------------------------------------------
def test_type_filter():
  pred = to_predicate(bridge.Param)
  assert pred == OfType(bridge.Param)
  assert pred(('w',), bridge.Param(1.0))
  assert not pred(('w',), bridge.BatchStat(1.0))
  assert not pred(('w',), 1.0)

  class MyParam(bridge.Param):
    pass

  assert pred(('w',), MyParam(1.0))
  assert not to_predicate(MyParam)(('w',), bridge.Param(1.0))
  assert to_predicate(bridge.Variable)(('c',), bridge.Cache(1.0))


def test_string_filter_matches_tag():
  pred = to_predicate('dropout')
  assert pred(('rngs', 'x', 'key'), bridge.Variable(1.0, tag='dropout'))
  assert not pred(('rngs', 'x', 'key'), bridge.Variable(1.0, tag='params'))
  assert not pred(('rngs', 'x', 'key'), bridge.Variable(1.0))


def test_string_filter_matches_path_part_exactly():
  """Our extra behaviour: flax's string filter is tag-only."""
  pred = to_predicate('bias')
  assert pred(('linear', 'bias'), bridge.Param(1.0))
  assert pred(('bias',), bridge.Param(1.0))
  assert not pred(('linear', 'biases'), bridge.Param(1.0))  # a part, not a substring
  assert not pred(('linear', 'kernel'), bridge.Param(1.0))
  assert not flax_filters.to_predicate('bias')(('linear', 'bias'), fnnx.Param(1.0))


def test_string_filter_on_a_module_state():
  model = bridge.Linear(2, 3, rngs=bridge.Rngs(0))
  biases = bridge.state(model, 'bias')
  assert list(biases.to_pure_dict()) == ['bias']
  rest = bridge.state(model, bridge.Not('bias'))
  assert list(rest.to_pure_dict()) == ['kernel']


def test_with_tag():
  pred = WithTag('a')
  assert pred((), bridge.Variable(1.0, tag='a'))
  assert not pred((), bridge.Variable(1.0, tag='b'))
  assert not pred((), bridge.Variable(1.0))

  class Tagged:
    tag = 'a'

  assert pred((), Tagged())
  assert not pred((), object())
  assert not pred(('a',), 1.0)  # a path does not make a tag
  stream = bridge.Rngs(dropout=0)['dropout']
  assert pred != WithTag('dropout')
  assert WithTag('dropout')(('dropout', 'key'), stream.key)
  assert WithTag('dropout')(('dropout',), stream)


@pytest.mark.parametrize('ctor, truthy', [(Everything, True), (Nothing, False)])
def test_everything_and_nothing(ctor, truthy):
  pred = ctor()
  for path, value in [((), 1.0), (('a', 0), bridge.Param(1.0)), (('x',), None)]:
    assert pred(path, value) is truthy


@pytest.mark.parametrize('f', [..., True])
def test_ellipsis_and_true_are_everything(f):
  assert to_predicate(f) == Everything()


@pytest.mark.parametrize('f', [None, False])
def test_none_and_false_are_nothing(f):
  assert to_predicate(f) == Nothing()


def test_not_all_any():
  p, b = bridge.Param(1.0), bridge.BatchStat(1.0)
  assert Not(bridge.Param)(('w',), b) and not Not(bridge.Param)(('w',), p)
  both = All(bridge.Param, PathContains('kernel'))
  assert both(('l', 'kernel'), p)
  assert not both(('l', 'bias'), p)
  assert not both(('l', 'kernel'), b)
  either = Any(bridge.BatchStat, PathContains('kernel'))
  assert either(('l', 'kernel'), p) and either(('bn', 'mean'), b)
  assert not either(('l', 'bias'), p)
  assert All()(('x',), p) and not Any()(('x',), p)  # empty all/any, as Python's all/any
  assert Not(Not(bridge.Param))(('w',), p)


def test_tuple_and_list_mean_any():
  assert to_predicate((bridge.Param, 'mean')) == Any(bridge.Param, 'mean')
  pred = to_predicate([bridge.BatchStat, PathContains('kernel')])
  assert isinstance(pred, Any)
  assert pred(('l', 'kernel'), bridge.Param(1.0))
  assert pred(('s',), bridge.BatchStat(1.0))
  assert not pred(('l', 'bias'), bridge.Param(1.0))
  assert not to_predicate(())(('x',), bridge.Param(1.0))


def test_path_contains():
  assert PathContains('kernel')(('a', 'kernel'), None)
  assert not PathContains('kern')(('a', 'kernel'), None)
  assert PathContains('kern', exact=False)(('a', 'kernel'), None)
  assert PathContains(0)(('layers', 0, 'w'), None)
  assert not PathContains('0')(('layers', 0, 'w'), None)
  assert PathContains('0', exact=False)(('layers', 10, 'w'), None)
  assert PathContains(1, exact=False)(('layers', 'w1'), None)
  assert not PathContains('x')((), None)


def test_path_in():
  pred = PathIn(('a', 'b'), ['c', 0])  # a list path counts as the tuple
  assert pred(('a', 'b'), None)
  assert pred(('c', 0), None)
  assert not pred(('a',), None)
  assert not pred(('a', 'b', 'c'), None)
  assert not PathIn()(('a',), None)
  assert PathIn(('a', 'b'), ('c', 0)) == pred
  assert hash(PathIn(('a', 'b'), ('c', 0))) == hash(pred)
  assert PathIn(('a',)) != PathIn(('b',))
  assert 'PathIn(' in repr(pred)


def test_callable_is_used_as_is():
  def f(path, x):
    return path[-1] == 'w'

  assert to_predicate(f) is f
  assert Not(f)(('a', 'v'), None) and not Not(f)(('a', 'w'), None)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('bad', [1, 0, 2.5, object(), {'a': 1}, b'params', {1, 2}])
def test_unknown_filter_is_a_type_error(bad):
  with pytest.raises(TypeError, match='Invalid filter'):
    to_predicate(bad)


def test_unknown_filter_inside_a_combinator_is_a_type_error():
  with pytest.raises(TypeError, match='Invalid filter'):
    Not(3)
  with pytest.raises(TypeError, match='Invalid filter'):
    Any(bridge.Param, object())
  with pytest.raises(TypeError, match='Invalid filter'):
    to_predicate((bridge.Param, 7))


def test_unknown_filter_error_names_the_filter_and_what_is_allowed():
  with pytest.raises(TypeError) as info:
    to_predicate(42)
  assert '42' in str(info.value) and 'int' in str(info.value)
  assert 'callable' in str(info.value)


@pytest.mark.parametrize('bad', [(..., bridge.Param), (True, bridge.Param),
                                 (bridge.Param, ..., bridge.BatchStat),
                                 (..., bridge.Param, ...), [True, 'x']])
def test_filters_to_predicates_rejects_catch_all_before_the_end(bad):
  with pytest.raises(ValueError, match='last'):
    filters_to_predicates(bad)
  with pytest.raises(ValueError):  # flax agrees
    flax_filters.filters_to_predicates(bad)


@pytest.mark.parametrize('ok', [(bridge.Param, ...), (bridge.Param, True), (...,), (),
                                (bridge.Param, ..., ...), (bridge.Param, True, ...),
                                ['x', bridge.BatchStat]])
def test_filters_to_predicates_accepts(ok):
  preds = filters_to_predicates(ok)
  assert preds == tuple(map(to_predicate, ok))
  flax_filters.filters_to_predicates(ok)  # flax accepts the same lists


# ---------------------------------------------------------------------------------------
# equality and hashing by value
# ---------------------------------------------------------------------------------------
def _equal_pairs():
  return [
    (to_predicate('a'), to_predicate('a')),
    (to_predicate(bridge.Param), OfType(bridge.Param)),
    (Not(bridge.Param), Not(bridge.Param)),
    (All(bridge.Param, 'x'), All(bridge.Param, 'x')),
    (Any(bridge.Param, 'x'), to_predicate((bridge.Param, 'x'))),
    (PathContains('a'), PathContains('a', exact=True)),
    (WithTag('t'), WithTag('t')),
    (Everything(), to_predicate(...)),
    (Nothing(), to_predicate(None)),
    (PathIn(('a',)), PathIn(('a',))),
    (Not(Any('a', All(bridge.Cache, PathIn(('p', 0))))),
     Not(Any('a', All(bridge.Cache, PathIn(('p', 0)))))),
  ]


@pytest.mark.parametrize('a, b', _equal_pairs())
def test_equal_filters_are_equal_and_hash_equal(a, b):
  assert a == b and hash(a) == hash(b)
  assert len({a, b}) == 1


@pytest.mark.parametrize('a, b', [
  (to_predicate('a'), to_predicate('b')),
  (OfType(bridge.Param), OfType(bridge.BatchStat)),
  (Not(bridge.Param), Not(bridge.BatchStat)),
  (All(bridge.Param, 'x'), Any(bridge.Param, 'x')),
  (All(bridge.Param, 'x'), All('x', bridge.Param)),
  (PathContains('a'), PathContains('a', exact=False)),
  (WithTag('a'), to_predicate('a')),  # the string filter also matches paths
  (Everything(), Nothing()),
  (PathIn(('a',)), PathIn(('a',), ('b',))),
  (Not(bridge.Param), Any(bridge.Param)),
])
def test_different_filters_are_not_equal(a, b):
  assert a != b


def test_filters_work_as_dict_keys():
  table = {Not(bridge.Param): 1, PathContains('a'): 2, All(bridge.Param, 'x'): 3}
  assert table[Not(bridge.Param)] == 1
  assert table[PathContains('a')] == 2
  assert table[All(bridge.Param, 'x')] == 3


def test_reprs():
  assert repr(Not(bridge.Param)).startswith('Not(')
  assert 'Param' in repr(Not(bridge.Param))
  assert repr(Everything()) == 'Everything()' and repr(Nothing()) == 'Nothing()'
  assert 'kernel' in repr(PathContains('kernel'))


# ---------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------
KEYS = st.sampled_from(['kernel', 'bias', 'mean', 'layers', 'rngs', 0, 1, 12])
PATHS = st.lists(KEYS, max_size=4).map(tuple)
TYPES = st.sampled_from(['Param', 'BatchStat', 'Cache', 'Intermediate', 'Variable'])
TAGS = st.sampled_from([None, 'default', 'dropout'])

LEAF_FILTERS = st.one_of(
  st.sampled_from(['Param', 'BatchStat', 'Cache', 'Variable']).map(
    lambda n: (lambda ns, fl: getattr(ns, n))),
  KEYS.map(lambda k: (lambda ns, fl: fl.PathContains(k))),
  KEYS.map(lambda k: (lambda ns, fl: fl.PathContains(k, exact=False))),
  TAGS.filter(bool).map(lambda t: (lambda ns, fl: fl.WithTag(t))),
  st.sampled_from([..., None, True, False]).map(lambda c: (lambda ns, fl: c)),
)


def _combine(children):
  return st.one_of(
    children.map(lambda f: (lambda ns, fl: fl.Not(f(ns, fl)))),
    st.lists(children, max_size=3).map(
      lambda fs: (lambda ns, fl: fl.All(*(f(ns, fl) for f in fs)))),
    st.lists(children, max_size=3).map(
      lambda fs: (lambda ns, fl: fl.Any(*(f(ns, fl) for f in fs)))),
    st.lists(children, max_size=3).map(lambda fs: (lambda ns, fl: tuple(f(ns, fl) for f in fs))),
  )


FILTER_BUILDERS = st.recursive(LEAF_FILTERS, _combine, max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(FILTER_BUILDERS, PATHS, TYPES, TAGS)
def test_random_filters_agree_with_flax(build, path, type_name, tag):
  ours = to_predicate(build(bridge, filters))
  theirs = flax_filters.to_predicate(build(fnnx, flax_filters))
  assert bool(ours(path, make_value(bridge, type_name, tag))) == bool(
    theirs(path, make_value(fnnx, type_name, tag)))


@settings(max_examples=100, deadline=None)
@given(FILTER_BUILDERS, FILTER_BUILDERS, PATHS, TYPES, TAGS)
def test_combinators_are_boolean_algebra(build_f, build_g, path, type_name, tag):
  f, g = build_f(bridge, filters), build_g(bridge, filters)
  pf, pg = to_predicate(f), to_predicate(g)
  x = make_value(bridge, type_name, tag)
  a, b = bool(pf(path, x)), bool(pg(path, x))
  assert bool(Not(f)(path, x)) == (not a)
  assert bool(All(f, g)(path, x)) == (a and b)
  assert bool(Any(f, g)(path, x)) == (a or b)
  assert bool(to_predicate((f, g))(path, x)) == (a or b)
  assert build_f(bridge, filters) == f  # rebuilt filters are equal by value
  assert hash(to_predicate(build_f(bridge, filters))) == hash(pf)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=6), PATHS, TAGS)
def test_string_filter_is_tag_or_path(name, path, tag):
  x = make_value(bridge, 'Param', tag)
  assert to_predicate(name)(path, x) == (name in path or tag == name)
