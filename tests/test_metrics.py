"""``bridge.metrics`` side by side with ``flax.nnx.metrics``: the same updates give the same
values (exactly: the arithmetic is the same), in eager code and inside ``bridge.jit``."""

import inspect

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bridge as nnx


def batches():
  k = jax.random.split(jax.random.key(3), 6)
  return [dict(logits=jax.random.normal(k[i], (6, 3)),
               labels=jax.random.randint(k[i + 3], (6,), 0, 3),
               values=jax.random.normal(k[i], (6,)) * 2 + 1) for i in range(3)]


def assert_tree_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('name', ['Average', 'Welford'])
def test_value_metrics_match_flax(name):
  ours, theirs = getattr(nnx.metrics, name)(), getattr(fnnx.metrics, name)()
  assert_tree_equal(ours.compute(), theirs.compute())  # nan before any update
  for b in batches():
    ours.update(values=b['values'])
    theirs.update(values=b['values'])
    assert_tree_equal(ours.compute(), theirs.compute())
  ours.update(values=2.5)  # a Python number counts once
  theirs.update(values=2.5)
  assert_tree_equal(ours.compute(), theirs.compute())
  ours.reset()
  theirs.reset()
  assert_tree_equal(ours.compute(), theirs.compute())


def test_average_mask_and_argname_match_flax():
  ours, theirs = nnx.metrics.Average('loss'), fnnx.metrics.Average('loss')
  values = jnp.arange(6.0).reshape(2, 3)
  mask = jnp.array([True, False, True])
  ours.update(loss=values, mask=mask)
  theirs.update(loss=values, mask=mask)
  np.testing.assert_array_equal(ours.compute(), theirs.compute())
  # as in flax, the count is the mask's sum, not the broadcast mask's
  np.testing.assert_array_equal(ours.count.value, theirs.count.value)
  assert int(ours.count.value) == 2
  with pytest.raises(TypeError, match="Expected keyword argument 'loss'"):
    ours.update(values=values)
  with pytest.raises(ValueError, match='If mask is provided, loss should be a jax array'):
    ours.update(loss=1.0, mask=mask)


@pytest.mark.parametrize('threshold', [None, 0.0])
def test_accuracy_matches_flax(threshold):
  ours = nnx.metrics.Accuracy(threshold)
  theirs = fnnx.metrics.Accuracy(threshold)
  for b in batches():
    logits = b['logits'] if threshold is None else b['values']
    labels = b['labels'] if threshold is None else (b['labels'] > 0).astype(jnp.int32)
    mask = b['labels'] != 2
    ours.update(logits=logits, labels=labels, mask=mask)
    theirs.update(logits=logits, labels=labels, mask=mask)
    np.testing.assert_array_equal(ours.compute(), theirs.compute())
    assert 0.0 < float(ours.compute()) < 1.0  # the data makes some predictions wrong


def test_accuracy_errors_match_flax():
  logits, labels = jnp.zeros((4, 3)), jnp.zeros((4,), jnp.int32)
  for metric in (nnx.metrics.Accuracy(), fnnx.metrics.Accuracy()):
    with pytest.raises(ValueError, match='expected logits.ndim==labels.ndim\\+1, got 2 and 2'):
      metric.update(logits=logits, labels=logits.astype(jnp.int32))
    with pytest.raises(ValueError, match='Expected labels.dtype==jnp.int32, got float32'):
      metric.update(logits=logits, labels=labels.astype(jnp.float32))
  for module in (nnx.metrics, fnnx.metrics):
    with pytest.raises(TypeError, match="Expected threshold to be a float, got <class 'int'>"):
      module.Accuracy(threshold=1)
    with pytest.raises(ValueError, match='expected logits.ndim==labels.ndim, got 2 and 1'):
      module.Accuracy(threshold=0.5).update(logits=logits, labels=labels)


def make_multi(lib):
  return lib.MultiMetric(accuracy=lib.metrics.Accuracy(), loss=lib.metrics.Average(),
                         stats=lib.metrics.Welford())


def test_multimetric_matches_flax_eager_and_under_jit():
  ours, theirs, jitted = make_multi(nnx), make_multi(fnnx), make_multi(nnx)

  @nnx.jit
  def step(metrics, batch, mask):
    metrics.update(**batch, mask=mask)

  for i, b in enumerate(batches()):
    mask = {'accuracy': b['labels'] != 0} if i else None  # per-metric mask dict
    ours.update(**b, mask=mask)
    theirs.update(**b, mask=mask)
    step(jitted, b, mask)
    assert_tree_equal(ours.compute(), theirs.compute())
    assert_tree_equal(jitted.compute(), theirs.compute())
  assert list(ours.compute()) == ['accuracy', 'loss', 'stats']
  ours.reset()
  theirs.reset()
  assert_tree_equal(ours.compute(), theirs.compute())


def test_metric_state_is_filterable_and_splits_like_flax():
  ours, theirs = make_multi(nnx), make_multi(fnnx)
  ours_state = nnx.state(ours, nnx.metrics.MetricState)
  theirs_state = fnnx.state(theirs, fnnx.metrics.MetricState)
  assert ([p for p, _ in ours_state.flat_state()]
          == [p for p, _ in theirs_state.flat_state()])
  graphdef, state = ours.split()
  assert_tree_equal(nnx.merge(graphdef, state).compute(), theirs.compute())


def test_base_metric_needs_overrides_and_signatures_match_flax():
  with pytest.raises(NotImplementedError, match='Must override `__init__\\(\\)` method.'):
    nnx.Metric()
  for name in ('Metric', 'Average', 'Accuracy', 'Welford', 'MultiMetric', 'MetricState'):
    ours, theirs = getattr(nnx.metrics, name), getattr(fnnx.metrics, name)
    for method in ('__init__', 'update', 'reset', 'compute'):
      if hasattr(theirs, method) and name != 'MetricState':
        assert (list(inspect.signature(getattr(ours, method)).parameters)
                == list(inspect.signature(getattr(theirs, method)).parameters)), (name, method)
  assert nnx.Metric is nnx.metrics.Metric and nnx.MultiMetric is nnx.metrics.MultiMetric
