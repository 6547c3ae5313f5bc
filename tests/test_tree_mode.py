"""Tree mode (graph=False) and graph_updates=False, side by side with flax.nnx 0.12.8."""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx
from bridge.graph_mode import resolve_graph, resolve_graph_updates

LIBS = pytest.mark.parametrize('lib', [nnx, fnnx], ids=['bridge', 'flax'])


def counter(lib, shared=False):
  class Counter(lib.Module):
    def __init__(self):
      self.w = lib.Param(jnp.ones(2))
      self.n = lib.BatchStat(jnp.array(0.0))
      if shared:
        self.alias = self.w
  return Counter()


def tick(m):
  m.n.value += 1
  m.note = type(m.n)(jnp.array(7.0))  # a new attribute
  return m.n.value * 10


# -- the global switches ------------------------------------------------------------------
@LIBS
def test_set_graph_mode_bare_context_and_decorator(lib):
  current = lib.set_graph_mode.current_value
  seen = [current()]
  with lib.set_graph_mode(False):
    seen.append(current())
    with lib.set_graph_mode(True):
      seen.append(current())
    seen.append(current())
  seen.append(current())

  @lib.set_graph_mode(False)
  def inside():
    return current()
  seen += [inside(), current()]
  lib.set_graph_mode(False)
  seen.append(current())
  lib.set_graph_mode(True)
  seen.append(current())
  assert seen == [True, False, True, False, True, False, True, False, True]


def test_graph_updates_switch_and_resolution():
  assert resolve_graph_updates(None) is True
  with nnx.set_graph_updates(False):
    assert resolve_graph_updates(None) is False and resolve_graph_updates(True) is True
  assert resolve_graph(False) is False
  with pytest.raises(TypeError, match='graph='):
    resolve_graph('yes')


# -- graph functions ----------------------------------------------------------------------
@LIBS
def test_split_and_state_refuse_shared_references_in_tree_mode(lib):
  m = counter(lib, shared=True)
  for fn in (lib.split, lib.state):
    with pytest.raises(ValueError, match='[Tt]ree mode'):
      fn(m, graph=False)
  with lib.set_graph_mode(False):
    with pytest.raises(ValueError):
      lib.split(m)
    graphdef, state = lib.compat.split(m)  # graph mode, whatever the global mode
  assert sorted(state.keys()) == ['alias', 'n']  # the shared Param once, at its first path


@LIBS
def test_tree_mode_split_merge_round_trip(lib):
  m = counter(lib)
  graphdef, state = lib.split(m, graph=False)
  again = lib.merge(graphdef, state)
  np.testing.assert_array_equal(again.w.value, m.w.value)
  assert sorted(lib.state(m, graph=False).keys()) == ['n', 'w']


# -- transforms ---------------------------------------------------------------------------
@pytest.mark.parametrize('graph,graph_updates', [(True, True), (True, False), (False, True),
                                                 (False, False)])
def test_jit_updates_follow_graph_updates_as_in_flax(graph, graph_updates):
  results = []
  for lib in (nnx, fnnx):
    m = counter(lib)
    out = lib.jit(tick, graph=graph, graph_updates=graph_updates)(m)
    results.append((float(out), float(m.n.value), hasattr(m, 'note')))
  assert results[0] == results[1]
  assert results[0][:2] == (10.0, 1.0)  # the value update always reaches the caller


@pytest.mark.parametrize('graph,graph_updates', [(False, True), (True, False)])
@LIBS
def test_jit_without_graph_updates_refuses_aliasing(lib, graph, graph_updates):
  with pytest.raises(ValueError, match='alias|shared'):
    lib.jit(lambda m: m, graph=graph, graph_updates=graph_updates)(counter(lib))
  if not graph:
    with pytest.raises(ValueError, match='alias|shared'):
      lib.jit(tick, graph=False)(counter(lib, shared=True))


def test_vmap_and_lifted_transforms_in_tree_mode_match_flax():
  x = jnp.arange(6.0).reshape(3, 1, 2)
  ours_m, theirs_m = nnx.Linear(2, 2, rngs=nnx.Rngs(0)), fnnx.Linear(2, 2, rngs=fnnx.Rngs(0))
  ours = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), graph=False)(ours_m, x)
  theirs = fnnx.vmap(lambda m, x: m(x), in_axes=(None, 0), graph=False)(theirs_m, x)
  np.testing.assert_array_equal(ours, theirs)

  def step(i, m):
    m.n.value += i
    return m

  def bump(m):
    m.n.value += 3
  for lib in (nnx, fnnx):
    m = counter(lib)
    lib.fori_loop(0, 4, step, m, graph=False)
    lib.cond(True, bump, lambda m: None, m, graph=False)
    assert float(m.n.value) == 9.0


@pytest.mark.parametrize('name', ['jit', 'grad', 'value_and_grad', 'vmap', 'scan', 'remat',
                                  'eval_shape', 'cond', 'switch', 'fori_loop', 'while_loop',
                                  'split_rngs', 'fork_rngs'])
def test_transforms_take_graph_keywords_like_flax(name):
  theirs = inspect.signature(getattr(fnnx, name)).parameters
  ours = inspect.signature(getattr(nnx, name)).parameters
  for keyword in ('graph', 'graph_updates'):
    assert keyword in theirs
    assert ours[keyword].default is None and ours[keyword].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize('name', ['split', 'state', 'graphdef', 'clone', 'iter_graph',
                                  'iter_modules', 'iter_children', 'reseed'])
def test_graph_functions_take_graph_keyword_like_flax(name):
  assert 'graph' in inspect.signature(getattr(fnnx, name)).parameters
  assert inspect.signature(getattr(nnx, name)).parameters['graph'].default is None


def test_compat_binds_the_same_defaults_as_flax():
  from flax.nnx import compat as fcompat
  for name in nnx.compat.NAMES:
    if 'graph' not in inspect.signature(getattr(nnx, name, len)).parameters:
      continue  # not in bridge yet, or without a graph mode (reported in the README)
    assert getattr(nnx.compat, name).keywords == getattr(fcompat, name).keywords, name


def test_split_rngs_refuses_shared_streams_in_tree_mode():
  rngs = nnx.Rngs(0)
  with pytest.raises(ValueError, match='[Tt]ree mode'):
    nnx.split_rngs([rngs, rngs], splits=2, graph=False)
  with nnx.split_rngs(rngs, splits=2, graph=False):
    assert rngs.default.key.shape == (2,)
