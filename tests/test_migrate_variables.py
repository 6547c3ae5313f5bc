"""bridge.migrate: Linen variables <-> State, rename rules, structural matching, errors."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bridge as nnx
from bridge.migrate import (
  VariableMatchError,
  linen_to_state,
  load_linen_variables,
  match_report,
  match_variables,
  rename_path,
  state_to_linen,
  to_linen_variables,
)


# -- helpers ------------------------------------------------------------------------------
def flat_linen(variables):
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict) and not isinstance(v, meta.AxisMetadata):
        walk(v, (*prefix, k))
      else:
        out[(*prefix, k)] = v
  walk(variables, ())
  return out


def assert_same_linen(a, b):
  """Same tree (keys and key types), same box types and box fields, same dtypes and bits."""
  fa, fb = flat_linen(a), flat_linen(b)
  assert list(fa) == list(fb) or sorted(fa) == sorted(fb), (sorted(fa), sorted(fb))
  for path, x in fa.items():
    y = fb[path]
    assert type(x) is type(y), (path, type(x), type(y))
    if isinstance(x, meta.AxisMetadata):
      assert x.replace_boxed(None) == y.replace_boxed(None), path  # names, mesh, rules
      x, y = x.unbox(), y.unbox()
    assert x.dtype == y.dtype, (path, x.dtype, y.dtype)
    assert x.shape == y.shape, path
    np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


# -- round trips (hypothesis) -------------------------------------------------------------
KEYS = ['Dense_0', 'Dense_1', 'Dense_10', 'layers_2', 'kernel', 'bias', 'mean', 'a', '0', '7']
COLLECTIONS = ['params', 'batch_stats', 'cache', 'custom_stats']
DTYPES = [jnp.float32, jnp.bfloat16, jnp.int32]


@st.composite
def leaves(draw):
  shape = tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
  dtype = draw(st.sampled_from(DTYPES))
  seed = draw(st.integers(0, 2**16))
  value = np.random.default_rng(seed).normal(size=shape) * 100
  value = jnp.asarray(value.astype(np.int32) if dtype == jnp.int32 else value, dtype)
  box = draw(st.sampled_from([None, 'partitioned', 'logical']))
  collection = draw(st.sampled_from(COLLECTIONS))
  if box is None:
    return collection, value
  names = tuple(draw(st.lists(st.sampled_from([None, 'data', 'model']),
                              min_size=len(shape), max_size=len(shape))))
  if box == 'partitioned':
    return collection, nn.Partitioned(value, names=names)
  rules = draw(st.sampled_from([None, (('data', 'x'),)]))
  return collection, nn.LogicallyPartitioned(value, names=names, rules=rules)


trees = st.recursive(leaves(), lambda c: st.dictionaries(st.sampled_from(KEYS), c, min_size=1,
                                                         max_size=3), max_leaves=10)


def to_collections(tree):
  """A tree whose leaves are (collection, value) -> Linen variables {collection: tree}."""
  out = {}
  for path, (collection, value) in flat_linen(tree).items():
    node = out.setdefault(collection, {})
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  return out


linen_variables = st.dictionaries(st.sampled_from(KEYS), trees, min_size=1, max_size=3).map(
  to_collections)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(linen_variables)
def test_linen_state_linen_round_trip(variables):
  state = linen_to_state(variables)
  for path, var in state.flat_state():
    linen_path = tuple(map(str, path))
    collection = nnx.variable_name_from_type(type(var))
    original = flat_linen(variables)[(collection, *linen_path)]
    assert var.dtype == (original.unbox() if isinstance(original, meta.AxisMetadata)
                         else original).dtype
  assert_same_linen(state_to_linen(state), variables)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(linen_variables)
def test_round_trip_with_rules_and_through_a_model_state(variables):
  rules = {r'Dense_(\d+)': r'linear_\1', 'kernel': 'w'}
  inverse = {r'linear_(\d+)': r'Dense_\1', 'w': 'kernel'}
  state = linen_to_state(variables, rules=rules)
  assert not any(str(k).startswith('Dense_') or k == 'kernel'
                 for path, _ in state.flat_state() for k in path)
  assert_same_linen(state_to_linen(state, rules=inverse), variables)
  # Loading into an existing State of the same structure writes every value, dtype intact.
  target = linen_to_state(jax.tree.map(jnp.zeros_like, variables), rules=rules)
  load_linen_variables(target, variables, rules=rules)
  assert_same_linen(to_linen_variables(target, rules=inverse), variables)


def test_digit_keys_are_list_indices_in_the_state_and_strings_in_linen():
  variables = {'params': {'layers': {'0': {'kernel': jnp.ones(2)}, '1': {'kernel': jnp.ones(3)}}}}
  state = linen_to_state(variables)
  assert list(state['layers'].keys()) == [0, 1]
  assert list(state_to_linen(state)['params']['layers']) == ['0', '1']


# Any string a Linen dict can hold as a key: digits with and without leading zeros, the
# empty string, '/', '.', non-ASCII digits.
ANY_KEYS = st.one_of(st.from_regex(r'0*[0-9]{1,3}', fullmatch=True), st.text(max_size=4),
                     st.sampled_from(['', '0', '00', '/', 'a/b', '.', '\u0661', '\u00b2']))
any_trees = st.recursive(
  st.one_of(st.just({}), st.integers(0, 99).map(lambda i: jnp.full((2,), i, jnp.int32))),
  lambda c: st.dictionaries(ANY_KEYS, c, min_size=1, max_size=3), max_leaves=8)
any_linen_variables = st.dictionaries(
  st.sampled_from(COLLECTIONS), st.dictionaries(ANY_KEYS, any_trees, min_size=1, max_size=3),
  min_size=1, max_size=1)  # one collection: paths in two collections are an error


def same_tree(a, b) -> bool:
  """Equal keys (types too, in any order: a State sorts them), nesting, empty dicts and
  values."""
  if isinstance(a, dict) or isinstance(b, dict):
    return isinstance(a, dict) and isinstance(b, dict) and \
      sorted((type(k).__name__, k) for k in a) == sorted((type(k).__name__, k) for k in b) \
      and all(same_tree(a[k], b[k]) for k in a)
  return a.dtype == b.dtype and bool((a == b).all())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_linen_variables)
def test_every_linen_key_and_empty_dict_round_trips(variables):
  assert same_tree(state_to_linen(linen_to_state(variables)), variables)


def test_digit_keys_with_leading_zeros_stay_strings():
  variables = {'params': {'01': {'w': jnp.ones(1)}, '1': {'w': jnp.zeros(1)},
                          '007': {'w': jnp.full(2, 7.0)}, 'empty': {}}}
  state = linen_to_state(variables)
  assert sorted(state.keys(), key=str) == ['007', '01', 1, 'empty']
  assert same_tree(state_to_linen(state), variables)


def test_a_key_holding_a_slash_with_rules_is_an_error():
  variables = {'params': {'a/b': {'w': jnp.ones(1)}}}
  assert same_tree(state_to_linen(linen_to_state(variables)), variables)  # no rules: kept
  with pytest.raises(ValueError, match="the key 'a/b' of 'params/a/b/w' would be split"):
    linen_to_state(variables, rules={'w': 'kernel'})


# -- ToNNX --------------------------------------------------------------------------------
class LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(8, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(),
                                                     (None, 'model')))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(3, param_dtype=jnp.bfloat16)(nn.relu(x))


def test_tonnx_model_loads_and_exports_linen_variables_losslessly():
  x = jax.random.normal(jax.random.key(0), (4, 5))
  linen = LinenBlock()
  variables = linen.init(jax.random.key(1), x)
  variables = jax.tree.map(lambda a: a + 1, variables)  # not what ToNNX's init gives
  model = nnx.ToNNX(linen, rngs=nnx.Rngs(7)).lazy_init(x)
  assert load_linen_variables(model, variables) is model
  np.testing.assert_array_equal(model(x), linen.apply(variables, x))
  assert_same_linen(to_linen_variables(model), variables)
  assert model.Dense_1['kernel'].dtype == jnp.bfloat16
  assert model.Dense_0['kernel'].out_sharding == (None, 'model')


# -- hand-ported MLP: rules and structure -------------------------------------------------
class LinenMLP(nn.Module):
  features: tuple = (8, 8, 8, 3)

  @nn.compact
  def __call__(self, x):
    for i, f in enumerate(self.features):
      x = nn.Dense(f)(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


class MLP(nnx.Module):
  """The port: its own names; two layers of the same shape, so order matters."""

  def __init__(self, rngs):
    self.linear1 = nnx.Linear(4, 8, rngs=rngs)
    self.linear2 = nnx.Linear(8, 8, rngs=rngs)
    self.linear3 = nnx.Linear(8, 8, rngs=rngs)
    self.out = nnx.Linear(8, 3, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)  # RNG state: not a Linen variable

  def __call__(self, x):
    for layer in (self.linear1, self.linear2, self.linear3):
      x = nnx.relu(layer(x))
    return self.out(x)


class ListMLP(nnx.Module):
  def __init__(self, sizes, rngs):
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:], strict=True)])

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)


RULES = {'Dense_0': 'linear1', 'Dense_1': 'linear2', 'Dense_2': 'linear3', 'Dense_3': 'out'}
X = jax.random.normal(jax.random.key(3), (5, 4))


@pytest.fixture(scope='module')
def linen_mlp():
  return LinenMLP(), LinenMLP().init(jax.random.key(0), X)


def test_rules_give_exactly_the_linen_outputs(linen_mlp):
  linen, variables = linen_mlp
  model = load_linen_variables(MLP(nnx.Rngs(1)), variables, rules=RULES)
  np.testing.assert_array_equal(model(X), linen.apply(variables, X))
  back = to_linen_variables(model, rules={v: k for k, v in RULES.items()})
  assert_same_linen(back, variables)
  np.testing.assert_array_equal(linen.apply(back, X), linen.apply(variables, X))


def test_structure_gives_exactly_the_linen_outputs(linen_mlp):
  linen, variables = linen_mlp
  model = load_linen_variables(MLP(nnx.Rngs(1)), variables, match='structure')
  np.testing.assert_array_equal(model(X), linen.apply(variables, X))
  mapping = match_variables(variables, MLP(nnx.Rngs(2)), match='structure')
  assert mapping[('params', 'Dense_1', 'kernel')] == ('linear2', 'kernel')
  assert mapping[('params', 'Dense_2', 'kernel')] == ('linear3', 'kernel')
  assert len(mapping) == 8


def test_regex_rule_into_a_list():
  sizes = (4, 8, 3)
  linen = LinenMLP(features=sizes[1:])
  variables = linen.init(jax.random.key(0), X)
  model = load_linen_variables(ListMLP(sizes, nnx.Rngs(1)), variables,
                               rules={r'Dense_(\d+)': r'layers/\1'})
  np.testing.assert_array_equal(model(X), linen.apply(variables, X))


def test_structure_orders_twelve_equal_layers_after_keys_were_sorted():
  """Dense_10 sorts before Dense_2 as a string; module order is by number."""
  sizes = (4,) + (6,) * 12 + (3,)
  linen = LinenMLP(features=sizes[1:])
  variables = jax.tree.map(lambda a: a, linen.init(jax.random.key(0), X))  # sorted keys
  assert list(variables['params'])[:3] == ['Dense_0', 'Dense_1', 'Dense_10']
  model = load_linen_variables(ListMLP(sizes, nnx.Rngs(1)), variables, match='structure')
  np.testing.assert_array_equal(model(X), linen.apply(variables, X))


def test_structure_pairs_explicit_names_in_call_order_not_by_their_digits():
  class Linen(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(8, name='b2')(x))  # applied first, named with a larger number
      return nn.Dense(8, name='b1')(x)

  class Port(nnx.Module):
    def __init__(self, rngs):
      self.first = nnx.Linear(4, 8, rngs=rngs)
      self.second = nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, x):
      return self.second(nnx.relu(self.first(x)))

  x = jnp.ones((2, 4))
  variables = Linen().init(jax.random.key(0), x)
  model = load_linen_variables(Port(nnx.Rngs(1)), variables, match='structure')
  np.testing.assert_array_equal(model(x), Linen().apply(variables, x))
  assert 'params/b2/kernel -> first/kernel: structure (the only modules holding these ' \
    'variables)' in match_report(variables, Port(nnx.Rngs(1)), match='structure')

  class Same(nn.Module):  # equal shapes: only the order tells them apart
    @nn.compact
    def __call__(self, x):
      return nn.Dense(8, name='b1')(nn.relu(nn.Dense(8, name='b2')(x)))

  class SamePort(nnx.Module):
    def __init__(self, rngs):
      self.first = nnx.Linear(8, 8, rngs=rngs)
      self.second = nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, x):
      return self.second(nnx.relu(self.first(x)))

  x8 = jnp.ones((2, 8))
  variables = Same().init(jax.random.key(0), x8)
  assert list(variables['params']) == ['b2', 'b1']  # Linen's creation order
  model = load_linen_variables(SamePort(nnx.Rngs(1)), variables, match='structure')
  np.testing.assert_array_equal(model(x8), Same().apply(variables, x8))
  assert 'params/b2/kernel -> first/kernel: structure (Linen creation order, model attribute ' \
    'order)' in match_report(variables, SamePort(nnx.Rngs(1)), match='structure')


def test_structure_pairs_in_model_attribute_order_and_says_which_rule():
  class Ordered(nnx.Module):
    def __init__(self, rngs):
      self.first = nnx.Linear(4, 8, rngs=rngs)
      self.hidden_b = nnx.Linear(8, 8, rngs=rngs)  # assigned (and called) before hidden_a
      self.hidden_a = nnx.Linear(8, 8, rngs=rngs)
      self.last = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      for layer in (self.first, self.hidden_b, self.hidden_a):
        x = nnx.relu(layer(x))
      return self.last(x)

  linen, variables = LinenMLP(), LinenMLP().init(jax.random.key(0), X)
  model = load_linen_variables(Ordered(nnx.Rngs(1)), variables, match='structure')
  np.testing.assert_array_equal(model(X), linen.apply(variables, X))
  report = match_report(variables, Ordered(nnx.Rngs(1)), match='structure')
  assert 'params/Dense_1/kernel -> hidden_b/kernel: structure (Linen name numbers, model ' \
    'attribute order)' in report
  # a pair that still differs says which rule paired it
  bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), variables)
  with pytest.raises(VariableMatchError, match=r'params/Dense_1/bias \(8,\) bfloat16 -> '
                     r'hidden_b/bias \(8,\) float32 \(paired by structure \(Linen name'):
    load_linen_variables(Ordered(nnx.Rngs(1)), bf16, match='structure')


def test_explicit_names_in_a_checkpoint_are_ambiguous_and_rules_resolve_them(tmp_path):
  """A checkpoint sorts keys, so explicit names there say nothing about order."""
  import orbax.checkpoint as ocp

  from bridge.migrate import restore_linen_checkpoint

  class Named(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(8, name='dec')(nn.Dense(8, name='enc')(x))

  class Port(nnx.Module):
    def __init__(self, rngs):
      self.encoder = nnx.Linear(8, 8, rngs=rngs)
      self.decoder = nnx.Linear(8, 8, rngs=rngs)

  variables = Named().init(jax.random.key(0), jnp.ones((1, 8)))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / 'ckpt', variables)
  with pytest.raises(VariableMatchError) as e:
    restore_linen_checkpoint(tmp_path / 'ckpt', Port(nnx.Rngs(1)), match='structure')
  assert "['dec', 'enc']" in e.value.ambiguous[0] and 'order is unknown' in e.value.ambiguous[0]
  model = restore_linen_checkpoint(tmp_path / 'ckpt', Port(nnx.Rngs(1)), match='structure',
                                   rules={'enc': 'encoder', 'dec': 'decoder'})
  np.testing.assert_array_equal(model.decoder.kernel.value,
                                variables['params']['dec']['kernel'])


# -- errors list the paths ----------------------------------------------------------------
def values_of(model):
  return [np.asarray(v.value) for _, v in nnx.state(model, nnx.Param).flat_state()]


def assert_unchanged(model, before):
  for a, b in zip(values_of(model), before, strict=True):
    np.testing.assert_array_equal(a, b)


def test_unmatched_linen_leaves_are_listed(linen_mlp):
  _, variables = linen_mlp
  model = MLP(nnx.Rngs(1))
  before = values_of(model)
  extra = {'params': {**variables['params'], 'Dense_4': {'kernel': jnp.ones((3, 2))}}}
  for match in ('path', 'structure'):
    with pytest.raises(VariableMatchError) as e:
      load_linen_variables(model, extra, rules=RULES, match=match)
    assert e.value.source_only == ['params/Dense_4/kernel (3, 2) float32']
    assert 'params/Dense_4/kernel' in str(e.value)
  assert_unchanged(model, before)


def test_model_only_variables_are_listed(linen_mlp):
  _, variables = linen_mlp
  model = MLP(nnx.Rngs(1))
  model.extra = nnx.Param(jnp.zeros(2))
  model.stats = nnx.BatchStat(jnp.zeros(2))
  with pytest.raises(VariableMatchError) as e:
    load_linen_variables(model, variables, rules=RULES)
  assert e.value.model_only == ['extra (2,) float32', 'stats (2,) float32']
  assert not e.value.source_only


def test_missing_rules_list_both_sides(linen_mlp):
  _, variables = linen_mlp
  with pytest.raises(VariableMatchError) as e:
    load_linen_variables(MLP(nnx.Rngs(1)), variables)
  assert len(e.value.source_only) == 8 and len(e.value.model_only) == 8
  assert 'params/Dense_0/kernel (4, 8) float32' in e.value.source_only
  assert 'linear1/kernel (4, 8) float32' in e.value.model_only
  assert "match='structure'" in str(e.value)


def test_shape_mismatch_lists_both_paths_and_shapes(linen_mlp):
  _, variables = linen_mlp
  model = MLP(nnx.Rngs(1))
  model.out = nnx.Linear(8, 5, rngs=nnx.Rngs(0))
  before = values_of(model)
  with pytest.raises(VariableMatchError) as e:
    load_linen_variables(model, variables, rules=RULES)
  assert e.value.mismatched == ['params/Dense_3/bias (3,) float32 -> out/bias (5,) float32',
                                'params/Dense_3/kernel (8, 3) float32 -> out/kernel (8, 5) float32']
  assert_unchanged(model, before)
  with pytest.raises(VariableMatchError) as e:  # by structure: no module has those shapes
    load_linen_variables(model, variables, match='structure')
  assert e.value.source_only == ['params/Dense_3/bias (3,) float32',
                                 'params/Dense_3/kernel (8, 3) float32']
  assert e.value.model_only == ['out/bias (5,) float32', 'out/kernel (8, 5) float32']


def test_dtype_and_collection_mismatches_are_listed():
  model = MLP(nnx.Rngs(1))
  variables = to_linen_variables(model)
  variables['params']['linear1']['kernel'] = variables['params']['linear1']['kernel'].astype(
    jnp.bfloat16)
  variables['batch_stats'] = {'out': {'bias': variables['params']['out'].pop('bias')}}
  with pytest.raises(VariableMatchError) as e:
    load_linen_variables(model, variables)
  assert e.value.mismatched == [
    "batch_stats/out/bias (3,) float32 -> out/bias (3,) float32 (collection 'batch_stats', "
    "the model's Variable is 'params')",
    'params/linear1/kernel (4, 8) bfloat16 -> linear1/kernel (4, 8) float32']


def test_two_leaves_renamed_to_one_path_are_ambiguous(linen_mlp):
  _, variables = linen_mlp
  with pytest.raises(VariableMatchError) as e:
    load_linen_variables(MLP(nnx.Rngs(1)), variables, rules={**RULES, 'Dense_1': 'linear1'})
  assert 'params/Dense_0/kernel, params/Dense_1/kernel all go to linear1/kernel' in \
    e.value.ambiguous
  with pytest.raises(ValueError, match="'params/Dense_0/kernel' and 'params/Dense_1/kernel' "
                     r"to the same path, or one inside the other \('x/kernel'\)"):
    linen_to_state(variables, rules={r'Dense_\d': 'x'})
  with pytest.raises(ValueError, match="'linear1/bias' and 'linear2/bias' to the same path"):
    to_linen_variables(MLP(nnx.Rngs(1)), rules={r'linear\d': 'x'})
  # One leaf renamed to where another one's module is: an error, whichever comes first.
  for rules in ({'Dense_0/kernel': 'Dense_1'}, {'Dense_1': 'Dense_0/kernel'}):
    with pytest.raises(ValueError, match='or one inside the other'):
      linen_to_state(variables, rules=rules)


def test_structure_with_different_module_counts_lists_them(linen_mlp):
  _, variables = linen_mlp
  model = ListMLP((4, 8, 8, 3), nnx.Rngs(1))  # one hidden (8, 8) layer fewer
  with pytest.raises(VariableMatchError) as e:
    load_linen_variables(model, variables, match='structure')
  assert {s.split()[0] for s in e.value.source_only} == {
    'params/Dense_1/kernel', 'params/Dense_1/bias', 'params/Dense_2/kernel',
    'params/Dense_2/bias'}
  assert {s.split()[0] for s in e.value.model_only} == {'layers/1/kernel', 'layers/1/bias'}


def test_bad_rules_and_inputs_are_clear_errors(linen_mlp):
  _, variables = linen_mlp
  with pytest.raises(ValueError, match=re.escape("'params/Dense_0/kernel' into 'weights/")):
    load_linen_variables(MLP(nnx.Rngs(1)), variables, rules={'params': 'weights'})
  with pytest.raises(ValueError, match=r"Rename rule '\(' is not a valid"):
    rename_path('params/a', {'(': 'b'})
  with pytest.raises(ValueError, match="'step' holds a int"):
    load_linen_variables(MLP(nnx.Rngs(1)), {**variables, 'step': 3}, rules=RULES)
  with pytest.raises(ValueError, match="match must be 'path' or 'structure'"):
    load_linen_variables(MLP(nnx.Rngs(1)), variables, match='shapes')


def test_a_rule_whose_replacement_does_not_fit_names_the_rule(linen_mlp):
  _, variables = linen_mlp
  with pytest.raises(ValueError, match=re.escape(
      "Rename rule 'Dense_(\\\\d+)': 'layers/\\\\2' is not a valid replacement for it: invalid "
      'group reference 2')):
    load_linen_variables(MLP(nnx.Rngs(1)), variables, rules={r'Dense_(\d+)': r'layers/\2'})
  with pytest.raises(ValueError, match=r"Rename rule 'nothing_matches': .*unknown group name 'x'"):
    rename_path('params/a', {'nothing_matches': r'\g<x>'})  # checked even without a match


def test_a_target_that_is_not_a_module_is_a_type_error(linen_mlp):
  _, variables = linen_mlp
  for target in (None, variables):
    with pytest.raises(TypeError, match='target is not a Module'):
      load_linen_variables(target, variables)
  with pytest.raises(TypeError, match='target is not a Module'):
    match_variables(variables, None)


def test_rename_rules_match_whole_keys_in_order():
  assert rename_path('params/Dense_10/kernel', {'Dense_1': 'x'}) == 'params/Dense_10/kernel'
  assert rename_path('params/Dense_1/kernel', {'Dense_1': 'x'}) == 'params/x/kernel'
  assert rename_path('params/Block_0/Dense_1/bias',
                     [(r'Block_(\d+)', r'blocks/\1'), ('blocks/0/Dense_1', 'mlp')]) == \
    'params/mlp/bias'
