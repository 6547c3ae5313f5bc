"""``custom_vjp`` side by side with flax.nnx 0.12.8: the bwd inputs (input updates as
States, out_g), Module cotangents as States or Modules, DiffState, nondiff arguments,
Variables written inside, and the errors."""

import inspect

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bridge as nnx


def make_foo(lib):
  class Foo(lib.Module):
    def __init__(self):
      self.x = lib.Param(jnp.array(1.0))
      self.y = lib.Param(jnp.array(2.0))
      self.s = lib.BatchStat(jnp.array(3.0))
      self.w = jnp.array(5.0)
  return Foo()


def graph_mode_rule(lib, seen: dict, **kwargs):
  """f(m, a, k) = sin(x) y a k with a hand-written vjp; ``seen`` records what bwd got."""
  @lib.custom_vjp(nondiff_argnums=(2,), **kwargs)
  def f(m, a, k):
    m.s[...] += 1.0
    return jnp.sin(m.x[...]) * m.y[...] * a * k

  def f_fwd(m, a, k):
    return f(m, a, k), (jnp.cos(m.x[...]), jnp.sin(m.x[...]), m, a)

  def f_bwd(k, res, g):
    input_updates_g, out_g = g
    seen.update(k=k, input_updates_g=input_updates_g, out_g=out_g)
    cos_x, sin_x, m, a = res
    m_g = jax.tree.map(lambda x: x, input_updates_g[0])
    m_g['x'][...] = cos_x * out_g * m.y[...] * a * k
    m_g['y'][...] = sin_x * out_g * a * k
    return m_g, sin_x * m.y[...] * k * out_g

  f.defvjp(f_fwd, f_bwd)
  return f


def test_graph_mode_bwd_gets_state_updates_and_gives_param_grads_as_flax():
  seen, e_seen = {}, {}
  m, fm = make_foo(nnx), make_foo(fnnx)
  a = jnp.array(2.0)
  g_m, g_a = nnx.grad(graph_mode_rule(nnx, seen), argnums=(0, 1))(m, a, 3.0)
  e_m, e_a = fnnx.grad(graph_mode_rule(fnnx, e_seen), argnums=(0, 1))(fm, a, 3.0)
  assert seen['k'] == e_seen['k'] == 3.0
  np.testing.assert_array_equal(seen['out_g'], e_seen['out_g'])
  ours, theirs = seen['input_updates_g'], e_seen['input_updates_g']
  assert len(ours) == len(theirs) == 2 and ours[1] is None and theirs[1] is None
  assert isinstance(ours[0], nnx.State)
  assert sorted(ours[0].keys()) == sorted(theirs[0].keys()) == ['s', 'w', 'x', 'y']
  assert isinstance(ours[0]['w'], jax.Array) and type(ours[0]['s']) is nnx.BatchStat
  assert sorted(g_m.keys()) == sorted(e_m.keys()) == ['x', 'y']
  for k in ('x', 'y'):
    np.testing.assert_array_equal(g_m[k].value, e_m[k].value)
  np.testing.assert_array_equal(g_a, e_a)
  # the write inside the function reached the caller's Module, as in flax
  assert float(m.s.value) == float(fm.s.value) == 4.0


def test_the_primal_value_and_a_jitted_gradient_match_flax():
  m, fm = make_foo(nnx), make_foo(fnnx)
  f, ef = graph_mode_rule(nnx, {}), graph_mode_rule(fnnx, {})
  np.testing.assert_array_equal(f(m, 2.0, 3.0), ef(fm, 2.0, 3.0))
  # k is static: flax (as jax) refuses a tracer in a nondiff position
  g = nnx.jit(nnx.grad(f), static_argnums=2)(m, 2.0, 3.0)
  e = fnnx.jit(fnnx.grad(ef), static_argnums=2)(fm, 2.0, 3.0)
  np.testing.assert_array_equal(g['x'].value, e['x'].value)
  assert float(m.s.value) == float(fm.s.value) == 5.0  # one call, then fwd once


def test_diffstate_picks_the_differentiable_leaves_as_in_flax():
  def run(lib):
    x_only = lib.DiffState(0, lib.PathContains('x'))

    @lib.custom_vjp(nondiff_argnums=(x_only,))
    def f(m):
      return jnp.sin(m.x[...]) * m.y[...]

    def f_bwd(res, g):
      (m_updates_g,), out_g = g
      cos_x, m = res
      m_g = jax.tree.map(lambda x: x, m_updates_g)
      m_g['x'][...] = cos_x * out_g * m.y[...]
      for k in ('y', 's', 'w'):  # flax wants exactly the differentiable leaves
        del m_g[k]
      return (m_g,)

    f.defvjp(lambda m: (f(m), (jnp.cos(m.x[...]), m)), f_bwd)
    return lib.grad(f, argnums=x_only)(make_foo(lib))
  ours, theirs = run(nnx), run(fnnx)
  assert list(ours.keys()) == list(theirs.keys()) == ['x']
  np.testing.assert_array_equal(ours['x'].value, theirs['x'].value)


@pytest.mark.parametrize('mode', [dict(graph_updates=False), dict(graph=False)])
def test_tree_mode_bwd_gets_out_g_and_returns_modules_as_in_flax(mode):
  def run(lib):
    @lib.custom_vjp(**mode)
    def f(m, a):
      return jnp.sin(m.x[...]) * m.y[...] * a

    def f_bwd(res, g):
      cos_x, sin_x, m, a = res
      m_g = lib.clone(m)
      m_g.x[...] = cos_x * g * m.y[...] * a
      m_g.y[...] = sin_x * g * a
      m_g.s[...] = jnp.zeros(())
      m_g.w = jnp.zeros(())
      return m_g, sin_x * m.y[...]

    f.defvjp(lambda m, a: (f(m, a), (jnp.cos(m.x[...]), jnp.sin(m.x[...]), m, a)), f_bwd)
    return lib.grad(f, argnums=(0, 1), **mode)(make_foo(lib), jnp.array(2.0))
  (g_m, g_a), (e_m, e_a) = run(nnx), run(fnnx)
  assert type(g_m).__name__ == type(e_m).__name__ == 'Foo'
  for k in ('x', 'y', 's'):
    np.testing.assert_array_equal(getattr(g_m, k).value, getattr(e_m, k).value)
  np.testing.assert_array_equal(g_m.w, e_m.w)
  np.testing.assert_array_equal(g_a, e_a)


def test_plain_arrays_only_behave_like_jax_custom_vjp():
  @nnx.custom_vjp
  def f(x, y):
    return jnp.sin(x) * y

  f.defvjp(lambda x, y: (f(x, y), (jnp.cos(x), jnp.sin(x), y)),
           lambda res, g: (res[0] * g[1] * res[2] * 10, res[1] * g[1]))

  @jax.custom_vjp
  def jf(x, y):
    return jnp.sin(x) * y

  jf.defvjp(lambda x, y: (jf(x, y), (jnp.cos(x), jnp.sin(x), y)),
            lambda res, g: (res[0] * g * res[2] * 10, res[1] * g))
  x, y = jnp.array(0.3), jnp.array(1.5)
  np.testing.assert_array_equal(nnx.grad(f, argnums=(0, 1))(x, y),
                                jax.grad(jf, argnums=(0, 1))(x, y))


def test_errors():
  @nnx.custom_vjp(nondiff_argnums=(0,))
  def f(m):
    return m.x[...]
  f.defvjp(lambda m: (f(m), None), lambda m, res, g: ())
  with pytest.raises(ValueError, match='integers cannot mark graph nodes'):
    f(make_foo(nnx))

  @nnx.custom_vjp
  def no_rules(x):
    return x
  with pytest.raises(AttributeError, match='No VJP defined'):
    no_rules(1.0)

  with pytest.raises(ValueError, match='DiffState'):
    nnx.custom_vjp(lambda m: m, nondiff_argnums=(nnx.DiffState(0, ...),), graph=False)
  with pytest.raises(ValueError, match='DiffState'):
    fnnx.custom_vjp(lambda m: m, nondiff_argnums=(fnnx.DiffState(0, ...),), graph=False)

  @nnx.custom_vjp
  def g(x):
    return x * 2
  g.defvjp(lambda x: (g(x), None), lambda res, ct: (ct[1], ct[1]))
  with pytest.raises(ValueError, match='one cotangent per differentiated argument'):
    nnx.grad(g)(jnp.array(1.0))


def test_signature_matches_flax():
  ours = inspect.signature(nnx.custom_vjp).parameters
  theirs = inspect.signature(fnnx.custom_vjp).parameters
  assert list(ours) == list(theirs)
  assert all(ours[k].default == theirs[k].default for k in list(ours)[1:])


def test_tree_mode_bwd_can_ask_for_updates_g_as_in_flax():
  def run(lib):
    seen = {}

    @lib.custom_vjp(graph_updates=False)
    def f(m, a):
      m.s[...] *= 2.0
      return jnp.sin(m.x[...]) * m.y[...] * a

    def f_bwd(res, g, *, updates_g):
      seen['updates_g'] = updates_g
      cos_x, sin_x, m, a = res
      m_g = lib.clone(m)
      m_g.x[...] = cos_x * g * m.y[...] * a
      m_g.y[...] = sin_x * g * a
      return m_g, sin_x * m.y[...] * g

    f.defvjp(lambda m, a: (f(m, a), (jnp.cos(m.x[...]), jnp.sin(m.x[...]), m, a)), f_bwd)
    m = make_foo(lib)
    g = lib.grad(f, graph_updates=False)(m, jnp.array(2.0))
    u_m, u_a = seen['updates_g']
    return g, m, u_m, u_a
  (g, m, u_m, u_a), (e, fm, e_m, e_a) = run(nnx), run(fnnx)
  assert u_a is None and e_a is None
  for k in ('x', 'y', 'w'):  # not written: None in both
    assert getattr(u_m, k) is None and getattr(e_m, k) is None
  assert type(u_m.s) is nnx.BatchStat
  np.testing.assert_array_equal(u_m.s.value, e_m.s.value)
  np.testing.assert_array_equal(g.x.value, e.x.value)
  np.testing.assert_array_equal(g.y.value, e.y.value)
  assert float(m.s.value) == float(fm.s.value) == 6.0
