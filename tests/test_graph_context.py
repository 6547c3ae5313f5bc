"""The graph-level API around split/merge, side by side with flax.nnx 0.12.8:
split_context/merge_context/update_context, call, unpack/GraphState, as_pure/pure,
to_tree/from_tree/NodeStates, iter_module_children, proxy_caller, deprecations."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx

LIBS = [pytest.param(fnnx, id='flax'), pytest.param(nnx, id='bridge')]
NAMES = ['split_context', 'merge_context', 'update_context', 'current_update_context', 'call',
         'unpack', 'as_pure', 'to_tree', 'from_tree', 'iter_module_children']


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('name', NAMES)
def test_signatures_match_flax(name):
  def described(fn):  # callables/classes as defaults (split_fn, Missing) by name only
    return [(p.name, p.kind, p.default.__name__ if callable(p.default) else p.default)
            for p in inspect.signature(fn).parameters.values()]
  assert described(getattr(nnx, name)) == described(getattr(fnnx, name))


def shared_pair(lib):
  shared = lib.Linear(2, 2, rngs=lib.Rngs(0))
  return shared, lib.Dict(l=shared), lib.Dict(l=shared, w=lib.Param(jnp.ones(1)))


@pytest.mark.parametrize('lib', LIBS)
def test_split_and_merge_context_keep_sharing_across_calls(lib):
  shared, a, b = shared_pair(lib)
  with lib.split_context() as ctx:
    (ga, sa), (gb, sb) = ctx.split(a), ctx.split(b)
  assert list(sa) == ['l'] and list(sb) == ['w']  # the second split refers to the first
  with lib.merge_context() as ctx:
    a2, b2 = ctx.merge(ga, sa), ctx.merge(gb, sb)
  assert a2['l'] is b2['l'] and a2['l'] is not shared
  np.testing.assert_array_equal(a2['l'].kernel.value, shared.kernel.value)
  with pytest.raises(ValueError, match="No update context found for tag 'x'"):
    with lib.split_context('x'):
      pass


@pytest.mark.parametrize('lib', LIBS)
def test_update_context_writes_back_into_the_callers_objects(lib):
  shared = lib.Linear(2, 2, rngs=lib.Rngs(0))
  model = lib.Dict(a=shared, b=shared, w=lib.Param(jnp.ones(2)))
  with lib.update_context('f') as uctx:
    assert lib.current_update_context('f') is uctx
    with lib.split_context('f') as ctx:
      graphdef, state = ctx.split(model)
    with lib.merge_context('f', True) as ctx:
      inner = ctx.merge(graphdef, state)
    assert inner is not model and inner['a'] is inner['b']
    inner['w'].value = inner['w'].value * 3
    inner['a'].extra = lib.BatchStat(jnp.zeros(1))  # a new Variable inside
    with lib.split_context('f') as ctx:
      graphdef, state = ctx.split(inner)
    with lib.merge_context('f', False) as ctx:
      out = ctx.merge(graphdef, state)
  assert out is model and out['a'] is shared and out['b'] is shared
  assert model['w'].value.tolist() == [3.0, 3.0] and shared.extra.value.shape == (1,)
  with pytest.raises(ValueError):
    lib.current_update_context('f')


def counter(lib):
  class Counter(lib.Module):
    def __init__(self):
      self.count = lib.BatchStat(jnp.array(0))

    def add(self, k):
      self.count.value += k
      return self.count.value
  return Counter


def test_call_matches_flax():
  results = []
  for lib in (fnnx, nnx):
    nodes = lib.Dict(a=counter(lib)(), b=counter(lib)())
    pure = lib.split(nodes)
    out1, pure = jax.jit(lambda p, lib=lib: lib.call(p)['b'].add(2))(pure)
    out2, pure = lib.call(pure).b.add(5)
    results.append((out1, out2, lib.state(lib.merge(*pure)).to_pure_dict()))
  assert_trees_equal(results[1], results[0])
  with pytest.raises(TypeError, match='GraphDef'):
    nnx.call(nnx.state(counter(nnx)()))


@pytest.mark.parametrize('lib', LIBS)
def test_unpack_bundles_graphdef_and_state(lib):
  model = lib.BatchNorm(2, rngs=lib.Rngs(0))
  whole = lib.unpack(model)
  assert isinstance(whole, lib.GraphState) and sorted(whole) == ['bias', 'mean', 'scale', 'var']
  params, stats = lib.unpack(model, lib.Param, lib.BatchStat)
  assert sorted(params) == ['bias', 'scale'] and sorted(stats) == ['mean', 'var']
  assert params['scale'] is whole['scale'] and params._graphdef == lib.graphdef(model)
  assert type(lib.merge(whole)) is type(model)
  rebuilt = lib.merge(params, stats)  # GraphStates carry the GraphDef
  assert rebuilt.scale is model.scale and rebuilt.mean is model.mean


def test_graph_state_pytree_paths_match_flax():
  flax_paths, paths = (
    [p for p, _ in jax.tree_util.tree_flatten_with_path(lib.unpack(lib.Linear(
      2, 3, rngs=lib.Rngs(0))))[0]] for lib in (fnnx, nnx))
  assert paths == flax_paths
  gs = nnx.unpack(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  doubled = jax.tree.map(lambda x: 2 * x, gs)
  assert isinstance(doubled, nnx.GraphState) and doubled._graphdef == gs._graphdef
  np.testing.assert_array_equal(doubled['kernel'].value, 2 * gs['kernel'].value)


def test_as_pure_and_deprecated_pure_match_flax():
  flax_state, state = (lib.state(lib.Linear(2, 3, rngs=lib.Rngs(0))) for lib in (fnnx, nnx))
  assert_trees_equal(nnx.as_pure(state).to_pure_dict(), fnnx.as_pure(flax_state).to_pure_dict())
  assert type(nnx.as_pure({'a': nnx.Param(jnp.ones(1))})['a']) is type(jnp.ones(1))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    pure = nnx.pure(state)
  assert [w.category for w in caught] == [DeprecationWarning]
  assert 'as_pure' in str(caught[0].message)
  assert_trees_equal(pure.to_pure_dict(), nnx.as_pure(state).to_pure_dict())


def test_to_tree_from_tree_match_flax():
  trees = []
  for lib in (fnnx, nnx):
    shared = lib.Linear(2, 2, rngs=lib.Rngs(0))
    tree = lib.to_tree({'x': jnp.ones(1), 'm': [shared, shared], 'k': 3})
    assert isinstance(tree['m'][0], lib.NodeStates) and len(tree['m'][1].states[0]) == 0
    trees.append(tree)
    back = lib.from_tree(tree)
    assert back['m'][0] is back['m'][1] and back['m'][0] is not shared and back['k'] == 3
  flax_leaves, leaves = (jax.tree_util.tree_leaves_with_path(t) for t in trees)
  assert [p for p, _ in leaves] == [p for p, _ in flax_leaves]
  for (_, x), (_, y) in zip(leaves, flax_leaves, strict=True):
    np.testing.assert_array_equal(x, y)


def test_to_tree_with_prefix_passes_each_nodes_prefix():
  seen = []

  def split_fn(ctx, path, prefix, leaf):
    seen.append((jax.tree_util.keystr(path), prefix))
    return nnx.NodeStates.from_split(*ctx.split(leaf), metadata=prefix)

  a, b = nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Linear(2, 2, rngs=nnx.Rngs(1))
  tree = nnx.to_tree((a, [b, 1]), prefix=(0, None), split_fn=split_fn)
  assert seen == [('[0]', 0), ('[1][0]', None)] and tree[0].metadata == 0
  with pytest.raises(ValueError, match='prefix'):
    nnx.to_tree((a, a), prefix=(0, 1))


@pytest.mark.parametrize('lib', LIBS)
def test_iter_module_children(lib):
  model = lib.Sequential(lib.Linear(2, 2, rngs=lib.Rngs(0)), lib.relu)
  children = [(k, type(m).__name__) for k, m in lib.iter_module_children(model.layers)]
  assert children == [(0, 'Linear')]
  assert list(lib.iter_module_children(model.layers[0])) == []


def test_module_namespaces_exist():
  assert nnx.proxy_caller.CallableProxy and nnx.deprecations.deprecated
  assert isinstance(nnx.A, type(fnnx.A)) and nnx.M.__bound__ is nnx.Module
  assert nnx.PureState.__args__[0] is nnx.GraphDef


@pytest.mark.parametrize('graph', [None, False])
def test_graphdef_apply_matches_flax(graph):
  results = []
  for lib in (fnnx, nnx):
    graphdef, params, stats = lib.split(counter(lib)(), lib.Param, ...)
    out, (new_graphdef, new_state) = graphdef.apply(params, stats, graph=graph).add(4)
    if graph is None:  # (tree mode re-splits into a tree-mode GraphDef in flax)
      assert new_graphdef == graphdef
    results.append((out, new_state.to_pure_dict()))
  assert_trees_equal(results[1], results[0])
