"""Graph mapping (map, recursive_map, set_metadata), nnx.variables, from_flat_state, graph.Key,
traversals and flax's module names, side by side with flax.nnx 0.12.8."""

import importlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from flax_parity import assert_same_signature

import bridge as nnx
from bridge import traversals


def model(n):
  class Model(n.Module):
    def __init__(self, rngs):
      self.lin = n.Linear(2, 3, rngs=rngs)
      self.drop = n.Dropout(0.5)
      self.layers = n.List([n.Linear(3, 3, rngs=rngs), n.Linear(3, 2, rngs=rngs)])

    def __call__(self, x):
      x = self.drop(self.lin(x), deterministic=True)
      for layer in self.layers:
        x = layer(x)
      return x

  return Model(n.Rngs(0))


def flat_values(n, node):
  return {p: np.asarray(v[...]) for p, v in n.state(node).flat_state()}


@pytest.mark.parametrize('name', ['map', 'recursive_map', 'set_metadata', 'from_flat_state'])
def test_signatures_match_flax(name):
  assert_same_signature(getattr(nnx, name), getattr(fnnx, name))


def test_variables_is_state_and_returns_the_variables_themselves():
  for n in (nnx, fnnx):
    m = model(n)
    params = n.variables(m, n.Param)
    assert params['lin']['kernel'] is m.lin.kernel
    assert sorted(params['layers'][0]) == ['bias', 'kernel']
  # the module stays importable
  bv = importlib.import_module('bridge.variables')
  assert bv.Param is nnx.Param and nnx.variables.Param is nnx.Param


def test_map_equals_flax():
  def double_kernels(path, v):
    return v.replace(v[...] * 2) if path[-1] == 'kernel' else v

  ours, theirs = model(nnx), model(fnnx)
  new, fnew = nnx.map(double_kernels, ours), fnnx.map(double_kernels, theirs)
  a, b = flat_values(nnx, new), flat_values(fnnx, fnew)
  assert a.keys() == b.keys()
  for path in a:
    np.testing.assert_array_equal(a[path], b[path])
  # replaced Variables are new, the others are shared; the original is unchanged
  assert new.lin.kernel is not ours.lin.kernel and new.lin.bias is ours.lin.bias
  np.testing.assert_array_equal(new.lin.kernel[...], 2 * ours.lin.kernel[...])
  x = jnp.ones((1, 2))
  np.testing.assert_array_equal(new(x), fnew(x))


def test_map_plain_values_are_rewrapped_unless_recreate_variables_is_false():
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  wrapped = nnx.map(lambda p, v: v[...] + 1, m)
  assert type(wrapped.kernel) is nnx.Param
  raw = nnx.map(lambda p, v: v[...] + 1, m, recreate_variables=False)
  assert isinstance(raw.kernel, jnp.ndarray) and not isinstance(raw.kernel, nnx.Variable)
  np.testing.assert_array_equal(raw.kernel, m.kernel[...] + 1)


def test_recursive_map_visits_like_flax():
  def record(n, calls):
    def f(path, x):  # flax's internal attributes (_pytree__*, _length) are not compared
      if isinstance(x, (n.Module, n.List, n.Variable, int, float)) and not isinstance(x, bool):
        if not any(str(k).startswith('_') for k in path):
          calls.append((path, type(x).__name__))
      return x
    return f

  ours, theirs = [], []
  original = model(nnx)
  new = nnx.recursive_map(record(nnx, ours), original)
  fnew = fnnx.recursive_map(record(fnnx, theirs), model(fnnx))
  assert ours == theirs
  assert ours[-1] == ((), 'Model') and (('layers', 0), 'Linear') in ours
  np.testing.assert_array_equal(new.lin.kernel[...], fnew.lin.kernel[...])
  assert new is not original and new.lin.kernel is original.lin.kernel  # as flax: a new
  # graph holding the same Variables when f returns each value unchanged


def test_recursive_map_replaces_modules_in_a_copy():
  def swap(n):
    def f(path, x):
      if isinstance(x, n.Linear) and x.out_features == 3:
        return n.Linear(x.in_features, 3, use_bias=False, rngs=n.Rngs(1))
      return x
    return f

  ours, theirs = model(nnx), model(fnnx)
  new, fnew = nnx.recursive_map(swap(nnx), ours), fnnx.recursive_map(swap(fnnx), theirs)
  assert (new.lin.bias, new.layers[0].bias) == (None, None)
  assert ours.lin.bias is not None and new.layers[1].kernel is ours.layers[1].kernel
  x = jnp.ones((1, 2))
  np.testing.assert_array_equal(new(x), fnew(x))


def test_recursive_map_keeps_sharing_and_cannot_mutate_tuples():
  shared = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  seq = nnx.Sequential(shared, shared)
  new = nnx.recursive_map(lambda p, x: x, seq)
  assert new.layers[0] is new.layers[1] and new.layers[0] is not shared

  class Holder(nnx.Module):
    def __init__(self):
      self.pair = (nnx.Param(jnp.ones(1)), nnx.Param(jnp.ones(1)))

  with pytest.raises(ValueError, match="cannot replace 0 in the tuple at 'pair'"):
    nnx.recursive_map(lambda p, x: x[...] if isinstance(x, nnx.Param) else x, Holder())


def test_set_metadata_equals_flax():
  for n in (nnx, fnnx):
    m = model(n)
    n.set_metadata(m, only=n.Param, differentiable=False)
    assert m.lin.kernel.get_metadata('differentiable') is False
    assert m.layers[1].bias.get_metadata('differentiable') is False
    n.set_metadata(m.lin, tag='x')
    assert m.lin.kernel.get_metadata('tag') == 'x'


def test_from_flat_state_takes_a_mapping_or_pairs():
  flat = {('a', 'b'): nnx.Param(jnp.zeros(2)), ('c',): jnp.ones(1)}
  fflat = {('a', 'b'): fnnx.Param(jnp.zeros(2)), ('c',): jnp.ones(1)}
  for state, fstate in ((nnx.from_flat_state(flat), fnnx.from_flat_state(fflat)),
                        (nnx.from_flat_state(list(flat.items())),
                         fnnx.from_flat_state(list(fflat.items())))):
    assert type(state) is nnx.State
    assert state.to_pure_dict().keys() == fstate.to_pure_dict().keys()
    assert state['a']['b'] is flat[('a', 'b')]
    np.testing.assert_array_equal(state['c'], fstate['c'])

  class MyState(nnx.State):
    pass

  assert type(nnx.from_flat_state(flat, cls=MyState)) is MyState


def test_graph_key_names_the_hashable_path_entries():
  import typing
  # flax's Key is a Protocol usable only in annotations; bridge's is typing.Hashable, the
  # same contract, usable with isinstance too (a deliberate difference).
  assert typing.get_origin(nnx.graph.PathParts) is typing.get_origin(fnnx.graph.PathParts)
  assert nnx.graph.PathParts == tuple[nnx.graph.Key, ...]
  assert all(isinstance(k, nnx.graph.Key) for k in ('a', 0, ('t', 1)))
  assert not isinstance([1], nnx.graph.Key)


@pytest.mark.parametrize('xs', [
  {'foo': 1, 'bar': {'a': 2, 'b': {}}},
  {'a': {'b': {'c': 1, 'd': {}}, 'e': [1, 2]}, 'f': {}},
  {},
])
def test_traversals_equal_flax(xs):
  for kwargs in ({}, {'keep_empty_nodes': True}, {'sep': '/'},
                 {'is_leaf': lambda path, x: path == ('a', 'b')}):
    ours = traversals.flatten_mapping(xs, **kwargs)
    theirs = fnnx.traversals.flatten_mapping(xs, **kwargs)
    assert list(map(str, ours.items())) == list(map(str, theirs.items()))
    sep = kwargs.get('sep')
    restore = {k: fnnx.traversals.empty_node if v is traversals.empty_node else v
               for k, v in ours.items()}
    assert traversals.unflatten_mapping(ours, sep=sep) == \
           fnnx.traversals.unflatten_mapping(restore, sep=sep)
  assert traversals.flatten_to_sequence(xs) == fnnx.traversals.flatten_to_sequence(xs)
  with pytest.raises(TypeError, match='flatten_mapping: expected a Mapping, got a list'):
    traversals.flatten_mapping([1])


@pytest.mark.parametrize('name', ['flatten_mapping', 'flatten_to_sequence',
                                  'unflatten_mapping'])
def test_traversals_signatures(name):
  assert_same_signature(getattr(traversals, name), getattr(fnnx.traversals, name))


@pytest.mark.parametrize('alias, module, name', [
  ('filterlib', 'bridge.filters', 'PathContains'),
  ('statelib', 'bridge.state', 'State'),
  ('variablelib', 'bridge.variables', 'Param'),
  ('rnglib', 'bridge.rngs', 'Rngs'),
  ('graphlib', 'bridge.graphlib', 'split'),
  ('traversals', 'bridge.traversals', 'flatten_mapping'),
  ('reprlib', 'bridge._repr', None),
])
def test_flax_module_names(alias, module, name):
  target = importlib.import_module(module)
  assert getattr(nnx, alias) is target
  assert importlib.import_module(f'bridge.{alias}') is target
  if name is not None:
    assert hasattr(getattr(fnnx, alias), name)  # the name exists in flax's module too
    assert getattr(importlib.import_module(f'bridge.{alias}'), name) is getattr(target, name)


def test_graphlib_has_the_graph_functions():
  from bridge import graphlib
  for name in ('split', 'merge', 'state', 'variables', 'map', 'recursive_map', 'set_metadata',
               'iter_graph', 'clone', 'GraphDef', 'Key'):
    assert hasattr(graphlib, name) and hasattr(fnnx.graphlib, name), name


def test_variables_signature_matches_flax():
  assert_same_signature(nnx.variables, fnnx.variables)


@pytest.mark.parametrize('name', ['map', 'recursive_map'])
def test_tree_mode_refuses_shared_references_like_flax(name):
  for n in (nnx, fnnx):
    shared = n.Linear(2, 2, rngs=n.Rngs(0))
    with pytest.raises(ValueError):
      getattr(n, name)(lambda path, x: x, n.List([shared, shared]), graph=False)
    new = getattr(n, name)(lambda path, x: x, n.List([shared, shared]), graph=True)
    assert new[0].kernel is new[1].kernel


def test_display_prints_outside_ipython_like_flax(capsys):
  nnx.display(1, 'two', [3])
  ours = capsys.readouterr().out
  fnnx.display(1, 'two', [3])
  assert ours == capsys.readouterr().out == '1\ntwo\n[3]\n'
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  nnx.display(model)
  assert capsys.readouterr().out == f'{model}\n'


def test_display_uses_treescope_in_ipython(monkeypatch):
  import treescope

  from bridge import visualization
  shown = []
  monkeypatch.setattr(visualization, '_in_ipython', lambda: True)
  monkeypatch.setattr(treescope, 'display', lambda x, **kwargs: shown.append((x, kwargs)))
  nnx.display(1, 'two')
  assert shown == [(1, {'ignore_exceptions': True, 'autovisualize': True}),
                   ('two', {'ignore_exceptions': True, 'autovisualize': True})]
  assert nnx.visualization is visualization and hasattr(fnnx.visualization, 'display')
