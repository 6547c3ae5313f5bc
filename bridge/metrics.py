"""Metrics kept as Variables, updated in place (``nnx.metrics``): ``Average``, ``Accuracy``,
``Welford`` and ``MultiMetric``; all work inside ``bridge.jit`` like any other Module state.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> loss = nnx.metrics.Average()
>>> loss.update(values=jnp.array([1.0, 2.0, 3.0]))
>>> loss.update(values=5.0)
>>> loss.compute()
Array(2.75, dtype=float32)
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
import jax.numpy as jnp

from bridge.graph import split as graph_split
from bridge.object import Object
from bridge.variables import Variable


class MetricState(Variable):
  """The Variable type of a metric's running totals.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> type(nnx.metrics.Average().total).__name__
  'MetricState'
  """
  __slots__ = ()


class Metric(Object):
  """The base of metrics: a subclass defines ``__init__``, ``reset``, ``update`` and
  ``compute``; ``split`` gives its GraphDef and State.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> class Total(nnx.Metric):
  ...   def __init__(self):
  ...     self.total = nnx.metrics.MetricState(jnp.array(0.0))
  ...   def reset(self):
  ...     self.total[...] = jnp.array(0.0)
  ...   def update(self, *, values):
  ...     self.total[...] += values.sum()
  ...   def compute(self):
  ...     return self.total[...]
  >>> m = Total()
  >>> m.update(values=jnp.array([1.0, 2.0]))
  >>> m.compute()
  Array(3., dtype=float32)
  """

  def __init__(self):
    raise NotImplementedError('Must override `__init__()` method.')

  def reset(self) -> None:
    """Resets the metric in place."""
    raise NotImplementedError('Must override `reset()` method.')

  def update(self, **kwargs) -> None:
    """Updates the metric in place."""
    raise NotImplementedError('Must override `update()` method.')

  def compute(self):
    """The metric's value."""
    raise NotImplementedError('Must override `compute()` method.')

  def split(self, *filters):
    """``bridge.split(self, *filters)``."""
    return graph_split(self, *filters)


def _argument(metric: Metric, kwargs: dict):
  if metric.argname not in kwargs:
    raise TypeError(f"Expected keyword argument '{metric.argname}'")
  return kwargs[metric.argname]


class Average(Metric):
  """The mean of all values seen: ``update(values=...)`` (or the keyword ``argname``) adds
  an array's elements or one Python number; an optional ``mask`` (broadcastable to the
  values) leaves out the masked elements. Before any update ``compute()`` is ``nan``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> avg = nnx.metrics.Average('loss')
  >>> avg.update(loss=jnp.array([1.0, 2.0, 9.0]), mask=jnp.array([1, 1, 0]))
  >>> avg.compute()
  Array(1.5, dtype=float32)
  >>> avg.reset()
  >>> avg.compute()
  Array(nan, dtype=float32)
  """

  def __init__(self, argname: str = 'values'):
    self.argname = argname
    self.total = MetricState(jnp.array(0, dtype=jnp.float32))
    self.count = MetricState(jnp.array(0, dtype=jnp.int32))

  def reset(self) -> None:
    """Back to no values."""
    self.total[...] = jnp.array(0, dtype=jnp.float32)
    self.count[...] = jnp.array(0, dtype=jnp.int32)

  def update(self, mask: jax.Array | None = None, **kwargs) -> None:
    """Adds ``kwargs[argname]`` (an array or a Python number), masked by ``mask``."""
    values = _argument(self, kwargs)
    if isinstance(values, (int, float)):
      if mask is not None:
        raise ValueError(f'If mask is provided, {self.argname} should be a jax array')
      self.total[...] += values
      self.count[...] += 1
    elif mask is None:
      self.total[...] += values.sum()
      self.count[...] += values.size
    else:
      self.total[...] += (values * mask.astype(values.dtype)).sum()
      self.count[...] += mask.sum().astype(self.count.dtype)

  def compute(self) -> jax.Array:
    """The average (``nan`` before any value)."""
    return self.total / self.count


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Statistics:
  """What ``Welford.compute()`` returns (a pytree).

  >>> import jax, jax.numpy as jnp
  >>> import bridge as nnx
  >>> stats = nnx.metrics.Statistics(jnp.float32(1), jnp.float32(0), jnp.float32(0))
  >>> jax.tree.leaves(jax.tree.map(lambda x: x + 1, stats))
  [Array(2., dtype=float32), Array(1., dtype=float32), Array(1., dtype=float32)]
  """
  mean: jax.Array
  standard_error_of_mean: jax.Array
  standard_deviation: jax.Array


class Welford(Metric):
  """Running mean and variance (Welford's algorithm) of the values of ``update(values=...)``
  (or the keyword ``argname``); ``compute()`` returns ``Statistics``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> w = nnx.metrics.Welford()
  >>> w.update(values=jnp.array([1.0, 2.0, 3.0, 4.0]))
  >>> w.compute().mean, w.compute().standard_deviation
  (Array(2.5, dtype=float32), Array(1.118034, dtype=float32))
  """

  def __init__(self, argname: str = 'values'):
    self.argname = argname
    self.count = MetricState(jnp.array(0, dtype=jnp.int32))
    self.mean = MetricState(jnp.array(0, dtype=jnp.float32))
    self.m2 = MetricState(jnp.array(0, dtype=jnp.float32))

  def reset(self) -> None:
    """Back to no values."""
    self.count[...] = jnp.array(0, dtype=jnp.int32)
    self.mean[...] = jnp.array(0, dtype=jnp.float32)
    self.m2[...] = jnp.array(0, dtype=jnp.float32)

  def update(self, **kwargs) -> None:
    """Merges the batch ``kwargs[argname]`` (an array or a Python number) into the
    running statistics."""
    values = _argument(self, kwargs)
    scalar = isinstance(values, (int, float))
    count = 1 if scalar else values.size
    previous = self.count[...]
    self.count[...] += count
    delta = (values if scalar else values.mean()) - self.mean
    self.mean[...] += delta * count / self.count
    batch_m2 = 0.0 if scalar else values.var() * count
    self.m2[...] += batch_m2 + delta * delta * count * previous / self.count

  def compute(self) -> Statistics:
    """Mean, standard error of the mean and standard deviation (``nan`` before any value,
    the mean then being 0)."""
    standard_deviation = (self.m2 / self.count) ** 0.5
    return Statistics(mean=self.mean[...],
                      standard_error_of_mean=standard_deviation / self.count ** 0.5,
                      standard_deviation=standard_deviation)


class Accuracy(Average):
  """The fraction of correct predictions. Multi-class (no ``threshold``): ``logits`` have
  one more axis than ``labels`` and are argmax-ed on the last axis. Binary (a float
  ``threshold``): ``logits >= threshold`` is compared with ``labels > 0``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> acc = nnx.metrics.Accuracy()
  >>> acc.update(logits=jnp.array([[0.1, 0.9], [0.8, 0.2]]), labels=jnp.array([1, 1]))
  >>> acc.compute()
  Array(0.5, dtype=float32)
  """

  def __init__(self, threshold: float | None = None, *args, **kwargs):
    if threshold is not None and not isinstance(threshold, float):
      raise TypeError(f'Expected threshold to be a float, got {type(threshold)}')
    self.threshold = threshold
    super().__init__(*args, **kwargs)

  def update(self, *, logits: jax.Array, labels: jax.Array,  # type: ignore[override]
             mask: jax.Array | None = None, **_) -> None:
    """Counts the correct predictions of ``logits`` for ``labels`` (integer labels),
    masked by ``mask``."""
    if self.threshold is not None:
      if logits.ndim != labels.ndim:
        raise ValueError('For binary classification, expected logits.ndim==labels.ndim, '
                         f'got {logits.ndim} and {labels.ndim}')
    elif logits.ndim != labels.ndim + 1:
      raise ValueError('For multi-class classification, expected '
                       f'logits.ndim==labels.ndim+1, got {logits.ndim} and {labels.ndim}')
    if labels.dtype in (jnp.int64, jnp.int32):
      labels = labels.astype(jnp.int32)
    else:
      raise ValueError(f'Expected labels.dtype==jnp.int32, got {labels.dtype}')
    if self.threshold is not None:
      correct = (logits >= self.threshold) == (labels > 0)
    else:
      correct = logits.argmax(axis=-1) == labels
    super().update(values=correct, mask=mask)


class MultiMetric(Metric):
  """Several metrics updated together: ``update(**kwargs)`` passes all keywords to every
  metric (``mask`` may be one array or a dict of arrays by metric name); ``compute()``
  returns a dict by name.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average())
  >>> metrics.update(logits=jnp.array([[0.0, 1.0]]), labels=jnp.array([1]),
  ...                values=jnp.array(0.5))
  >>> metrics.compute()
  {'accuracy': Array(1., dtype=float32), 'loss': Array(0.5, dtype=float32)}
  """

  def __init__(self, **metrics: Metric):
    self._metric_names = tuple(metrics)
    for name, metric in metrics.items():
      setattr(self, name, metric)

  def reset(self) -> None:
    """Resets every metric."""
    for name in self._metric_names:
      getattr(self, name).reset()

  def update(self, **updates) -> None:
    """Updates every metric with ``updates``."""
    mask = updates.pop('mask', None)
    for name in self._metric_names:
      metric_mask = mask.get(name) if isinstance(mask, dict) else mask
      extra = {} if metric_mask is None else {'mask': metric_mask}
      getattr(self, name).update(**updates, **extra)

  def compute(self) -> dict[str, tp.Any]:
    """Each metric's value, by name."""
    return {name: getattr(self, name).compute() for name in self._metric_names}
