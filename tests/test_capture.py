"""nnx.capture side by side with flax.nnx 0.12.8: same sown values, same structure."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from flax_parity import assert_same_signature

import bridge as nnx

X = jnp.arange(4.0).reshape(2, 2) / 4


def model(n):
  class Block(n.Module):
    def __init__(self, rngs):
      self.l1 = n.Linear(2, 3, rngs=rngs)
      self.l2 = n.Linear(3, 2, rngs=rngs)

    def features(self, x):
      return self.l1(x)

    def __call__(self, x):
      h = self.features(x)
      self.sow(n.Intermediate, 'h', h)
      h = self.perturb('hp', h)
      return self.l2(n.relu(h))

  class Model(n.Module):
    def __init__(self, rngs):
      self.a = Block(rngs)
      self.b = Block(rngs)

    def __call__(self, x):
      y = self.b(self.a(x))
      self.sow(n.Intermediate, 'y', y, reduce_fn=lambda prev, new: prev + new,
               init_fn=lambda: 0.0)
      return (y ** 2).sum()

  return Model(n.Rngs(0))


def assert_same_state(ours, theirs):
  """Same paths, same Variable types, exactly the same values."""
  flat_ours = {p: v for p, v in ours.flat_state()}
  flat_theirs = dict(theirs.flat_state())
  assert sorted(flat_ours, key=str) == sorted(flat_theirs, key=str)
  for path, v in flat_ours.items():
    assert type(v).__name__ == type(flat_theirs[path]).__name__, path
    jax.tree.map(np.testing.assert_array_equal, v.get_value(), flat_theirs[path].get_value())


@pytest.fixture(autouse=True)
def _quiet():
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)  # flax's sow outside capture
    yield


def test_signature_matches_flax():
  assert_same_signature(nnx.capture, fnnx.capture)


def test_intermediates_equal_flax_and_module_is_left_unchanged():
  ours, theirs = model(nnx), model(fnnx)
  before = nnx.graphdef(ours)
  y, inter = nnx.capture(ours, nnx.Intermediate)(X)
  fy, finter = fnnx.capture(theirs, fnnx.Intermediate)(X)
  np.testing.assert_array_equal(y, fy)
  assert_same_state(inter, finter)
  assert nnx.graphdef(ours) == before and not hasattr(ours.a, 'h')


def test_perturbation_init_gradients_equal_flax():
  ours, theirs = model(nnx), model(fnnx)
  _, perts = nnx.capture(ours, nnx.Perturbation)(X)
  _, fperts = fnnx.capture(theirs, fnnx.Perturbation)(X)
  assert_same_state(perts, fperts)

  def loss(perturbations):
    return nnx.capture(ours, nnx.Intermediate, init=perturbations)(X)

  def floss(model, perturbations):
    return fnnx.capture(model, fnnx.Intermediate, init=perturbations)(X)

  grads, sowed = jax.grad(loss, has_aux=True)(perts)
  fgrads, fsowed = fnnx.grad(floss, argnums=1, has_aux=True)(theirs, fperts)
  assert_same_state(sowed, fsowed)
  assert_same_state(grads, fgrads)
  assert float(jnp.abs(grads['a']['hp'][...]).sum()) > 0


def test_under_jit_equals_flax():
  ours, theirs = model(nnx), model(fnnx)
  y, inter = nnx.jit(lambda m, x: nnx.capture(m, nnx.Intermediate)(x))(ours, X)
  fy, finter = fnnx.jit(lambda m, x: fnnx.capture(m, fnnx.Intermediate)(x))(theirs, X)
  np.testing.assert_array_equal(y, fy)
  assert_same_state(inter, finter)
  assert not hasattr(ours, 'y')
  # capture around a jitted function: sown inside the jit, collected outside
  _, inter = nnx.capture(nnx.jit(lambda m, x: m(x)), nnx.Intermediate)(ours, X)
  _, finter = fnnx.capture(fnnx.jit(lambda m, x: m(x)), fnnx.Intermediate)(theirs, X)
  assert_same_state(inter, finter)
  assert sorted(vars(ours.a)) == ['l1', 'l2']


def test_method_outputs_and_two_types_equal_flax():
  ours, theirs = model(nnx), model(fnnx)
  out = nnx.capture(ours, nnx.Intermediate, nnx.Perturbation,
                    method_outputs=nnx.Intermediate)(X)
  fout = fnnx.capture(theirs, fnnx.Intermediate, fnnx.Perturbation,
                      method_outputs=fnnx.Intermediate)(X)
  assert len(out) == len(fout) == 3
  for s, fs in zip(out[1:], fout[1:], strict=True):
    assert_same_state(s, fs)
  assert 'features' in out[1]['a'] and '__call__' in out[1]['a']['l1']
  assert type(ours.a).features.__name__ == 'features'  # methods are put back
  assert nnx.capture(ours, nnx.Intermediate)(X)[1]['a'].keys() == {'h'}


def test_decorator_function_and_bound_method_forms():
  ours, theirs = model(nnx), model(fnnx)

  @nnx.capture(nnx.Intermediate)
  def forward(m, x):
    return m(x)

  @fnnx.capture(fnnx.Intermediate)
  def fforward(m, x):
    return m(x)

  assert_same_state(forward(ours, X)[1], fforward(theirs, X)[1])
  assert forward.__name__ == 'forward' and not hasattr(nnx.capture(ours.a), 'l1')
  out = nnx.capture(ours.a.__call__, nnx.Intermediate)(X)
  fout = fnnx.capture(theirs.a.__call__, fnnx.Intermediate)(X)
  assert_same_state(out[1], fout[1])


def test_no_var_types_returns_the_result_only():
  ours, theirs = model(nnx), model(fnnx)
  np.testing.assert_array_equal(nnx.capture(ours)(X), fnnx.capture(theirs)(X))
  assert not hasattr(ours, 'y')


def test_uncaptured_types_leave_no_trace_and_old_intermediates_come_back():
  ours, theirs = model(nnx), model(fnnx)
  ours(X)  # sow outside capture: Intermediates stay on the Module
  theirs(X)
  old = ours.a.h
  _, perts = nnx.capture(ours, nnx.Perturbation)(X)
  _, fperts = fnnx.capture(theirs, fnnx.Perturbation)(X)
  assert_same_state(perts, fperts)
  assert ours.a.h is old and len(ours.a.h.get_value()) == 1
  assert len(theirs.a.h.get_value()) == 1


def test_errors():
  with pytest.raises(TypeError, match='first argument of the wrapped function must be the '
                                      'Module'):
    nnx.capture(lambda x: x, nnx.Intermediate)(1.0)
  with pytest.raises(TypeError, match='var_types must be Variable types'):
    nnx.capture(model(nnx), 'intermediates')
