"""``prefix``, Modules rebuilt by jax tree functions, ``vmap`` with dict in_axes, and the
Variable modes (``with_vars``, ``vars_as``, ``var_defaults``), side by side with flax.nnx."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import errors as flax_errors
from flax import nnx as fnnx

import bridge as nnx
from bridge import graphlib
from tests.flax_parity import assert_same_signature

LIBS = [nnx, fnnx]
is_var = {nnx: lambda x: isinstance(x, nnx.Variable),
          fnnx: lambda x: isinstance(x, fnnx.Variable)}


def _stacked(lib):
  @lib.vmap(in_axes=0, out_axes=0)
  def create(rngs):
    return lib.Linear(2, 3, rngs=rngs)
  return create(lib.Rngs(0).split(4))


# -- prefix --------------------------------------------------------------------------------
def test_signatures_match_flax():
  for name in ('prefix', 'with_vars', 'vars_as', 'var_defaults'):
    assert_same_signature(getattr(nnx, name), getattr(fnnx, name))
  assert_same_signature(graphlib.with_vars, fnnx.graphlib.with_vars)


@pytest.mark.parametrize('as_mapping', [False, True])
def test_prefix_of_dict_matches_flax_tree_mode(as_mapping):
  out = {}
  for lib in LIBS:
    d = {'a': lib.Param(jnp.array(2)), 'b': lib.BatchStat(jnp.arange(5)), 'c': jnp.ones(3),
         'n': 5}
    fm = ({lib.Param: None, lib.BatchStat: 0, ...: 1} if as_mapping else
          lambda path, x: (path, type(x).__name__.replace('ArrayImpl', 'Array')))
    out[lib] = lib.prefix(d, fm, graph=False)
  assert out[nnx] == out[fnnx]
  assert out[nnx]['b'] == (0 if as_mapping else (('b',), 'BatchStat'))


def test_prefix_no_match_is_the_flax_error():
  for lib in LIBS:
    d = {'a': lib.Param(jnp.array(2)), 'b': lib.BatchStat(jnp.arange(5))}
    with pytest.raises(ValueError, match=r"No filter matched leaf at path \('b',\)"):
      lib.prefix(d, {lib.Param: None}, graph=False)
  with pytest.raises(TypeError, match='filter_map must be a callable'):
    nnx.prefix({}, 3)


def test_prefix_of_module_keeps_its_structure_for_jax_vmap():
  results = {}
  for lib in LIBS:
    model = _stacked(lib)
    axes = lib.prefix(model, {lib.Param: 0}, graph=False)
    assert type(axes) is type(model) and axes.kernel == 0 and axes.bias == 0
    assert jax.tree.structure(axes) == jax.tree.structure(model, is_leaf=is_var[lib])
    results[lib] = jax.vmap(lambda m, x: m(x), in_axes=(axes, None))(model, jnp.ones(2))
  np.testing.assert_array_equal(results[nnx], results[fnnx])
  assert results[nnx].shape == (4, 3)


@pytest.mark.parametrize('graph', [False, True])
def test_prefix_as_nnx_vmap_in_axes(graph):
  # flax takes graph-mode prefixes only without graph updates
  results = {}
  for lib in LIBS:
    model = _stacked(lib)
    # only the bias is stacked here: the kernel of one layer is broadcast
    model.kernel = lib.Param(model.kernel[0])
    axes = lib.prefix(model, lambda path, x: 0 if path == ('bias',) else None, graph=graph)
    results[lib] = lib.vmap(lambda m, x: m(x), in_axes=(axes, None), graph=graph,
                            graph_updates=False)(model, jnp.ones(2))
  np.testing.assert_array_equal(results[nnx], results[fnnx])


def test_graph_mode_prefix_of_a_node_passed_twice():
  results = {}
  for lib in LIBS:
    model = _stacked(lib)
    px1, px2 = lib.prefix((model, model), {lib.Param: 0}, graph=True)

    @lib.vmap(in_axes=(px1, px2, None), graph=True, graph_updates=False)  # flax needs it
    def forward(m1, m2, x):
      assert m1 is m2
      return m1(x) + m2(x)
    results[lib] = forward(model, model, jnp.ones(2))
  np.testing.assert_array_equal(results[nnx], results[fnnx])
  model = _stacked(nnx)  # bridge also takes them with graph updates
  px1, px2 = nnx.prefix((model, model), {nnx.Param: 0}, graph=True)
  y = nnx.vmap(lambda m1, m2, x: m1(x) + m2(x), in_axes=(px1, px2, None), graph=True)(
    model, model, jnp.ones(2))
  np.testing.assert_array_equal(y, results[nnx])


@pytest.mark.parametrize('graph', [False, True])
def test_vmap_dict_in_axes_for_a_dict_of_variables(graph):
  results = {}
  for lib in LIBS:
    d = {'a': lib.Param(jnp.array(2)), 'b': lib.BatchStat(jnp.arange(5))}
    axes = lib.prefix(d, lambda path, x: 0 if 'b' in path else None, graph=False)
    assert axes == {'a': None, 'b': 0}
    f = lib.vmap(lambda d: d['a'] * d['b'], in_axes=({'a': None, 'b': 0},), graph=graph)
    results[lib] = f(d)
  np.testing.assert_array_equal(results[nnx], results[fnnx])
  np.testing.assert_array_equal(results[nnx], [0, 2, 4, 6, 8])


def test_vmap_prefix_missing_entry_names_the_path():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="no entry 'bias'"):
    nnx.vmap(lambda m: m.kernel[...], in_axes=({'kernel': 0},))(model)


# -- Modules rebuilt by jax tree functions --------------------------------------------------
def test_rebuilt_module_keeps_data_attributes_like_flax():
  for lib in LIBS:
    model = lib.Linear(2, 3, rngs=lib.Rngs(0))
    ints = jax.tree.map(lambda x: 0, model, is_leaf=is_var[lib])
    assert jax.tree.structure(ints) == jax.tree.structure(model, is_leaf=is_var[lib])
    ints.kernel = 'abc'  # flax keeps the attribute's data status on assignment
    assert jax.tree.leaves(ints) == [0, 'abc']
  jitted = jax.jit(lambda m: m)(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  nones = jax.tree.map(lambda x: None, jitted, is_leaf=is_var[nnx])
  assert nones.kernel is None and jax.tree.leaves(nones) == []


# -- with_vars / vars_as / var_defaults ----------------------------------------------------
def test_var_defaults_match_flax():
  assert dict(nnx.var_defaults()) == dict(fnnx.var_defaults()) == {'hijax': False,
                                                                   'ref': False}
  assert repr(nnx.var_defaults()) == repr(fnnx.var_defaults())
  for lib in LIBS:
    with lib.var_defaults(hijax=False, ref=False) as entered:
      assert entered is None and lib.var_defaults().hijax is False

    @lib.var_defaults(ref=False)
    def f(x):
      return x + 1
    assert f(1) == 2
  for kwargs in ({'hijax': True}, {'ref': True}):
    with pytest.raises(NotImplementedError, match=f"{next(iter(kwargs))}=True"):
      nnx.var_defaults(**kwargs)
    with pytest.raises(NotImplementedError, match='no hijax or ref mode'):
      nnx.with_vars(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), **kwargs)


def test_with_vars_without_changes_shares_variables_like_flax():
  for lib in LIBS:
    model = lib.Linear(2, 3, rngs=lib.Rngs(0))
    same = lib.with_vars(model)
    assert same is not model and same.kernel is model.kernel and same.bias is model.bias
  assert nnx.with_vars(3, mutable=False) == 3


def test_read_only_variables():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  frozen = nnx.with_vars(model, mutable=False, only=nnx.Param)
  assert frozen.kernel is not model.kernel
  np.testing.assert_array_equal(frozen.kernel[...], model.kernel[...])
  writes = [lambda: frozen.kernel.__setitem__(..., jnp.zeros((2, 3))),
            lambda: setattr(frozen.kernel, 'value', jnp.zeros((2, 3))),
            lambda: frozen.bias.set_value(jnp.zeros(3)),
            lambda: setattr(frozen.bias, 'raw_value', jnp.zeros(3))]
  for write in writes:
    with pytest.raises(nnx.ImmutableVariableError, match='read-only Param.*mutable=True'):
      write()
  model.kernel[...] = jnp.zeros((2, 3))  # the original stays writable
  assert float(frozen.kernel[...].sum()) != 0.0
  y = nnx.jit(lambda m, x: m(x))(frozen, jnp.ones(2))  # reading works under transforms
  np.testing.assert_array_equal(y, frozen(jnp.ones(2)))
  thawed = nnx.with_vars(frozen, mutable=True)
  thawed.kernel[...] = jnp.ones((2, 3))
  assert 'mutable' not in thawed.kernel.get_metadata()
  assert nnx.graphdef(thawed) == nnx.graphdef(model)


def test_with_vars_only_and_duplicates_match_flax():
  for lib in LIBS:
    class Tied(lib.Module):
      def __init__(self, lib):
        self.a = lib.Param(jnp.ones(2))
        self.b = self.a
        self.c = lib.BatchStat(jnp.ones(1))

    tied = Tied(lib)
    changed = {'mutable': False} if lib is nnx else {'hijax': True}
    with pytest.raises(ValueError, match='Found duplicate at paths:\n  ---\n  a\n  b'):
      lib.with_vars(tied, **changed)
    out = lib.with_vars(tied, allow_duplicates=True, **changed)
    assert out.a is out.b and out.a is not tied.a
    out = lib.with_vars(tied, only=lib.BatchStat, **changed)
    assert out.a is tied.a and out.c is not tied.c


def test_vars_as_is_deprecated_like_flax():
  messages = {}
  for lib in LIBS:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      lib.vars_as(lib.Linear(2, 3, rngs=lib.Rngs(0)))
    messages[lib] = [(w.category, str(w.message)) for w in caught]
  assert messages[nnx] == messages[fnnx] == [
    (DeprecationWarning, 'This function is deprecated. Use with_vars instead.')]


def test_immutable_error_has_flax_name():
  assert nnx.ImmutableVariableError.__name__ == flax_errors.ImmutableVariableError.__name__
