"""The graph API's flax.nnx 0.12.8 signatures and their semantics, side by side:
``merge(copy=, recreate_variables=)``, ``clone(variables=, arrays=)``, ``iter_children``
and ``update`` of paths that do not exist yet."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from flax.nnx import bridge as fbridge

import bridge as nnx
from bridge import graphlib
from tests.flax_parity import assert_same_signature

LIBS = [nnx, fnnx]


def test_signatures_match_flax():
  for name in ('merge', 'clone', 'iter_children', 'update'):
    assert_same_signature(getattr(nnx, name), getattr(fnnx, name))
    assert_same_signature(getattr(graphlib, name), getattr(fnnx.graphlib, name))


def _raw(lib, variable):
  return variable.get_raw_value() if lib is fnnx else variable.raw_value


def _model(lib):
  return lib.Linear(2, 3, rngs=lib.Rngs(0))


@pytest.mark.parametrize('copy', [False, True])
def test_merge_copy_matches_flax(copy):
  for lib in LIBS:
    graphdef, state = lib.split(_model(lib))
    merged = lib.merge(graphdef, state, copy=copy)
    assert (merged.kernel is state['kernel']) is (not copy), lib
    assert _raw(lib, merged.kernel) is _raw(lib, state['kernel'])
    assert type(merged.kernel) is type(state['kernel'])


@pytest.mark.parametrize('recreate', [False, True])
def test_merge_recreate_variables_matches_flax(recreate):
  kinds = {}
  for lib in LIBS:
    graphdef, state = lib.split(_model(lib))
    pure = lib.State(state.to_pure_dict())
    merged = lib.merge(graphdef, pure, recreate_variables=recreate)
    kinds[lib] = type(merged.kernel).__name__
    np.testing.assert_array_equal(jnp.asarray(merged.kernel[...]), state['kernel'][...])
    # Variables in the State are used whatever recreate_variables says
    assert lib.merge(graphdef, state, recreate_variables=recreate).kernel is state['kernel']
  assert kinds[nnx] == kinds[fnnx] == ('Param' if recreate else 'ArrayImpl')


def test_merge_errors():
  for lib in LIBS:
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'state'"):
      lib.merge(lib.graphdef(lib.Dropout(0.5)))
  graphdef, state = nnx.split(_model(nnx))
  with pytest.raises(ValueError, match="State does not fit the GraphDef: it has no Param"):
    nnx.merge(graphdef, nnx.State({'bias': state['bias']}))
  with pytest.raises(TypeError, match='merge expects a GraphDef or a GraphState'):
    nnx.merge(nnx.split(_model(nnx)))


def test_merge_graphstates_still_work():
  params, rest = nnx.unpack(nnx.BatchNorm(2, rngs=nnx.Rngs(0)), nnx.Param, ...)
  merged = nnx.merge(params, rest, copy=True)
  assert type(merged).__name__ == 'BatchNorm' and merged.scale is not params._state['scale']


@pytest.mark.parametrize('variables,arrays', [(True, False), (False, False), (True, True)])
def test_clone_matches_flax(variables, arrays):
  for lib in LIBS:
    model = _model(lib)
    copy = lib.clone(model, variables, arrays=arrays)
    assert copy is not model and type(copy) is type(model)
    assert (copy.kernel is model.kernel) is (not variables), lib
    assert (_raw(lib, copy.kernel) is _raw(lib, model.kernel)) is (not arrays), lib
    np.testing.assert_array_equal(copy.kernel[...], model.kernel[...])


def test_clone_arrays_without_variables_is_the_flax_error():
  for lib in LIBS:
    with pytest.raises(ValueError, match='If arrays is True, variables should be also True'):
      lib.clone(_model(lib), variables=False, arrays=True)


def test_iter_children_matches_flax():
  def names(lib, node):
    return [(k, type(v).__name__) for k, v in lib.iter_children(node)]

  for node_fn in (_model, lambda lib: lib.Sequential(_model(lib), lib.relu),
                  lambda lib: lib.List([_model(lib), 2]),
                  lambda lib: {'a': _model(lib), 'b': lib.Param(1), 'c': [1], 'd': 3}):
    assert names(nnx, node_fn(nnx)) == names(fnnx, node_fn(fnnx))
  assert names(nnx, _model(nnx)) == [('bias', 'Param'), ('kernel', 'Param')]
  with pytest.raises(TypeError, match='iter_children expects a graph node'):
    list(nnx.iter_children(3))


def _update_outcome(lib, module, state):
  try:
    lib.update(module, state)
  except ValueError:
    return 'ValueError'
  return {'/'.join(map(str, p)): type(v).__name__ for p, v in lib.state(module).flat_state()}


@pytest.mark.parametrize('state_fn', [
  lambda lib: {'b': lib.Param(jnp.ones(2))},
  lambda lib: {'b': {'c': lib.Param(jnp.ones(2))}},
  lambda lib: {'d': {'x': {'y': lib.Param(jnp.ones(2))}}},
])
def test_update_of_missing_paths_matches_flax(state_fn):
  outcomes = {}
  for lib, bridge_module in ((nnx, nnx.bridge.Module), (fnnx, fbridge.Module)):
    class Plain(lib.Module):
      def __init__(self, lib):
        self.a = lib.Param(jnp.ones(1))
        self.d = lib.Dict()

    class Bridged(bridge_module):
      def __init__(self, lib):
        self.a = lib.Param(jnp.ones(1))

    outcomes[lib] = (_update_outcome(lib, Plain(lib), state_fn(lib)),
                     _update_outcome(lib, Bridged(lib), state_fn(lib)))
  assert outcomes[nnx] == outcomes[fnnx]
  assert outcomes[nnx][1] != 'ValueError'
