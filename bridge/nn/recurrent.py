"""Recurrent layers: the cells ``SimpleCell``, ``LSTMCell``, ``OptimizedLSTMCell`` and
``GRUCell`` (one time step: ``cell(carry, x) -> (carry, y)``), ``RNN`` (a cell scanned over
the time axis with ``bridge.scan``, so a sequence compiles to one ``lax.scan``) and
``Bidirectional``. Signatures, parameter names, key order and carry layout are flax.nnx
0.12's: an LSTM's carry is ``(c, h)``, a GRU's or simple cell's is ``h``.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> rnn = nnx.RNN(nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0)))
>>> rnn(jnp.ones((2, 5, 3))).shape            # (batch, time, features)
(2, 5, 4)
"""

from __future__ import annotations

import logging
import typing as tp
import warnings
from types import MappingProxyType

import jax
import jax.numpy as jnp

from bridge import filters
from bridge.module import Module
from bridge.nn import dtypes, initializers
from bridge.nn.activations import sigmoid, tanh
from bridge.nn.linear import Linear
from bridge.rngs import Rngs, RngState, RngStream, split_rngs
from bridge.transforms.iteration import Carry, StateAxes, scan

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros_init()

_NO_METADATA = MappingProxyType({})
_log = logging.getLogger(__name__)


def modified_orthogonal(key, shape, dtype=jnp.float32):
  """An orthogonal matrix drawn in float32 and cast to ``dtype`` (half types included).

  >>> import jax, jax.numpy as jnp
  >>> from bridge.nn.recurrent import modified_orthogonal
  >>> w = modified_orthogonal(jax.random.key(0), (3, 3), jnp.bfloat16)
  >>> w.dtype
  dtype(bfloat16)
  """
  return initializers.orthogonal()(key, shape).astype(dtype)


class RNNCellBase(Module):
  """The interface of a recurrent cell: ``cell(carry, inputs) -> (new_carry, output)``,
  ``initialize_carry(input_shape, rngs)`` and ``num_feature_axes`` (how many trailing
  input axes are features; ``RNN`` finds the time axis just before them).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> class Sum(nnx.RNNCellBase):
  ...   def __call__(self, carry, x):
  ...     return carry + x, carry + x
  ...   def initialize_carry(self, input_shape, rngs=None, carry_init=None):
  ...     return jnp.zeros(input_shape)
  ...   @property
  ...   def num_feature_axes(self):
  ...     return 1
  >>> nnx.RNN(Sum())(jnp.ones((1, 3, 2)))[0, :, 0].tolist()
  [1.0, 2.0, 3.0]
  """

  def initialize_carry(self, input_shape: tuple[int, ...], rngs=None, carry_init=None):
    """The carry before the first step, for inputs of ``input_shape`` (one time step)."""
    raise NotImplementedError(f'{type(self).__name__} does not define initialize_carry.')

  def __call__(self, carry, inputs):
    """One step: ``(new_carry, output)``."""
    raise NotImplementedError(f'{type(self).__name__} does not define __call__.')

  @property
  def num_feature_axes(self) -> int:
    """The number of trailing feature axes of the inputs."""
    raise NotImplementedError(f'{type(self).__name__} does not define num_feature_axes.')


def _setup_cell(cell: RNNCellBase, in_features, hidden_features, dtype, param_dtype,
                promote_dtype, carry_init, keep_rngs, rngs) -> None:
  """The attributes every built-in cell has, with flax.nnx's warnings for ``keep_rngs``
  (kept: ``cell.rngs`` is a fork of ``rngs.carry``) and a ``carry_init`` in the
  constructor."""
  cell.in_features = in_features
  cell.hidden_features = hidden_features
  cell.dtype = dtype
  cell.param_dtype = param_dtype
  cell.promote_dtype = promote_dtype
  if keep_rngs:
    warnings.warn('keep_rngs argument is deprecated. Please use rngs argument in __call__ '
                  'instead', stacklevel=3)
    cell.rngs = rngs.carry.fork()
  else:
    cell.rngs = None
  if carry_init:
    warnings.warn(
      'carry_init is provided in __init__. Please, use carry_init argument in '
      '`initialize_carry` method instead to initialize the carry. Otherwise, two instances '
      'with same configuration but different carry_init functions will have different '
      'graphdefs.', stacklevel=3)
  cell.carry_init = carry_init


def _initial_carry(cell: RNNCellBase, input_shape, rngs, carry_init, parts: int) -> tuple:
  """``parts`` arrays of shape ``(*input_shape[:-1], hidden_features)`` from ``carry_init``
  (else the cell's, else zeros), one key of the ``carry`` stream each."""
  if rngs is None:
    rngs = cell.rngs
  if isinstance(rngs, Rngs):
    rngs = rngs.carry
  if rngs is None:
    raise ValueError(
      f'{type(cell).__name__}.initialize_carry: RNGs must be provided to initialize the cell '
      'carry; pass rngs=nnx.Rngs(...) (its `carry` stream, else `default`) or an RngStream.')
  if carry_init is None:
    carry_init = cell.carry_init if cell.carry_init is not None else initializers.zeros_init()
  shape = tuple(input_shape[:-1]) + (cell.hidden_features,)
  return tuple(carry_init(rngs(), shape, cell.param_dtype) for _ in range(parts))


def _linear(rngs, in_features, out_features, use_bias, kernel_init, cell, kernel_metadata,
            bias_init=default_bias_init, bias_metadata=_NO_METADATA) -> Linear:
  return Linear(in_features, out_features, use_bias=use_bias, kernel_init=kernel_init,
                bias_init=bias_init, dtype=cell.dtype, param_dtype=cell.param_dtype,
                promote_dtype=cell.promote_dtype, rngs=rngs,
                kernel_metadata=kernel_metadata, bias_metadata=bias_metadata)


class LSTMCell(RNNCellBase):
  """A long short-term memory cell with one ``Linear`` per gate and input:

  ``i = gate(ii(x) + hi(h))``, ``f = gate(if_(x) + hf(h))``, ``g = act(ig(x) + hg(h))``,
  ``o = gate(io(x) + ho(h))``, ``c' = f * c + i * g``, ``h' = o * act(c')``.

  The input layers ``ii, if_, ig, io`` have no bias; the recurrent ``hi, hf, hg, ho`` do.
  The carry is ``(c, h)``; the output is ``h'``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> cell = nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0))
  >>> c, h = cell.initialize_carry((2, 3), nnx.Rngs(0))
  >>> (c, h), y = cell((c, h), jnp.ones((2, 3)))
  >>> c.shape, y.shape
  ((2, 4), (2, 4))
  """

  def __init__(self, in_features: int, hidden_features: int, *, gate_fn=sigmoid,
               activation_fn=tanh, kernel_init=default_kernel_init,
               recurrent_kernel_init=modified_orthogonal,
               bias_init=initializers.zeros_init(), dtype=None, param_dtype=jnp.float32,
               carry_init=None, promote_dtype=dtypes.promote_dtype, keep_rngs: bool = False,
               rngs: Rngs,
               kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               recurrent_kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               bias_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA):
    _setup_cell(self, in_features, hidden_features, dtype, param_dtype, promote_dtype,
                carry_init, keep_rngs, rngs)
    self.gate_fn = gate_fn
    self.activation_fn = activation_fn

    def dense_i():
      return _linear(rngs, in_features, hidden_features, False, kernel_init, self,
                     kernel_metadata)

    def dense_h():
      return _linear(rngs, hidden_features, hidden_features, True, recurrent_kernel_init,
                     self, recurrent_kernel_metadata, bias_init, bias_metadata)

    self.ii, self.if_, self.ig, self.io = dense_i(), dense_i(), dense_i(), dense_i()
    self.hi, self.hf, self.hg, self.ho = dense_h(), dense_h(), dense_h(), dense_h()

  def __call__(self, carry, inputs):
    """One step: ``((c', h'), h')``."""
    c, h = carry
    i = self.gate_fn(self.ii(inputs) + self.hi(h))
    f = self.gate_fn(self.if_(inputs) + self.hf(h))
    g = self.activation_fn(self.ig(inputs) + self.hg(h))
    o = self.gate_fn(self.io(inputs) + self.ho(h))
    new_c = f * c + i * g
    new_h = o * self.activation_fn(new_c)
    return (new_c, new_h), new_h

  def initialize_carry(self, input_shape: tuple[int, ...], rngs=None, carry_init=None):
    """``(c, h)``, each ``(*input_shape[:-1], hidden_features)`` (zeros by default)."""
    return _initial_carry(self, input_shape, rngs, carry_init, 2)

  @property
  def num_feature_axes(self) -> int:
    return 1


def _lstm_step(cell, carry, y):
  """The LSTM update from the summed pre-activations ``y`` (gates ``i, f, g, o``)."""
  c, _ = carry
  i, f, g, o = jnp.split(y, indices_or_sections=4, axis=-1)
  new_c = cell.gate_fn(f) * c + cell.gate_fn(i) * cell.activation_fn(g)
  new_h = cell.gate_fn(o) * cell.activation_fn(new_c)
  return (new_c, new_h), new_h


class OptimizedLSTMCell(RNNCellBase):
  """An LSTM cell computing all four gates with one input and one recurrent ``Linear``
  (``dense_i``: ``(in_features, 4 * hidden)``, no bias; ``dense_h``: ``(hidden, 4 *
  hidden)`` with bias; gate order ``i, f, g, o``). Same math and carry as ``LSTMCell``;
  usually faster.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> cell = nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0))
  >>> cell.dense_h.kernel.shape
  (4, 16)
  >>> carry = cell.initialize_carry((2, 3), nnx.Rngs(0))
  >>> cell(carry, jnp.ones((2, 3)))[1].shape
  (2, 4)
  """

  def __init__(self, in_features: int, hidden_features: int, *, gate_fn=sigmoid,
               activation_fn=tanh, kernel_init=default_kernel_init,
               recurrent_kernel_init=initializers.orthogonal(),
               bias_init=initializers.zeros_init(), dtype=None, param_dtype=jnp.float32,
               carry_init=None, promote_dtype=dtypes.promote_dtype, keep_rngs: bool = False,
               rngs: Rngs,
               kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               recurrent_kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               bias_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA):
    _setup_cell(self, in_features, hidden_features, dtype, param_dtype, promote_dtype,
                carry_init, keep_rngs, rngs)
    self.gate_fn = gate_fn
    self.activation_fn = activation_fn
    self.dense_i = _linear(rngs, in_features, 4 * hidden_features, False, kernel_init, self,
                           kernel_metadata)
    self.dense_h = _linear(rngs, hidden_features, 4 * hidden_features, True,
                           recurrent_kernel_init, self, recurrent_kernel_metadata, bias_init,
                           bias_metadata)

  def __call__(self, carry, inputs):
    """One step: ``((c', h'), h')``."""
    return _lstm_step(self, carry, self.dense_i(inputs) + self.dense_h(carry[1]))

  def initialize_carry(self, input_shape: tuple[int, ...], rngs=None, carry_init=None):
    """``(c, h)``, each ``(*input_shape[:-1], hidden_features)`` (zeros by default)."""
    return _initial_carry(self, input_shape, rngs, carry_init, 2)

  @property
  def num_feature_axes(self) -> int:
    return 1


class SimpleCell(RNNCellBase):
  """An Elman cell: ``h' = act(dense_i(x) + dense_h(h))`` (``+ h`` before the activation
  when ``residual``). ``dense_i`` has the bias, ``dense_h`` none; ``dense_h``'s keys are
  drawn first. Note ``dtype`` defaults to float32 here, as in flax.nnx.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> cell = nnx.SimpleCell(3, 4, rngs=nnx.Rngs(0))
  >>> h = cell.initialize_carry((2, 3), nnx.Rngs(0))
  >>> h, y = cell(h, jnp.ones((2, 3)))
  >>> bool((h == y).all()), y.shape
  (True, (2, 4))
  """

  def __init__(self, in_features: int, hidden_features: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, carry_init=None, residual: bool = False,
               activation_fn=tanh, kernel_init=initializers.lecun_normal(),
               recurrent_kernel_init=initializers.orthogonal(),
               bias_init=initializers.zeros_init(), promote_dtype=dtypes.promote_dtype,
               keep_rngs: bool = False, rngs: Rngs,
               kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               recurrent_kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               bias_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA):
    _setup_cell(self, in_features, hidden_features, dtype, param_dtype, promote_dtype,
                carry_init, keep_rngs, rngs)
    self.residual = residual
    self.activation_fn = activation_fn
    self.dense_h = _linear(rngs, hidden_features, hidden_features, False,
                           recurrent_kernel_init, self, recurrent_kernel_metadata)
    self.dense_i = _linear(rngs, in_features, hidden_features, True, kernel_init, self,
                           kernel_metadata, bias_init, bias_metadata)

  def __call__(self, carry, inputs):
    """One step: ``(h', h')``."""
    new_carry = self.dense_i(inputs) + self.dense_h(carry)
    if self.residual:
      new_carry += carry
    new_carry = self.activation_fn(new_carry)
    return new_carry, new_carry

  def initialize_carry(self, input_shape: tuple[int, ...], rngs=None, carry_init=None):
    """``h`` of shape ``(*input_shape[:-1], hidden_features)`` (zeros by default)."""
    return _initial_carry(self, input_shape, rngs, carry_init, 1)[0]

  @property
  def num_feature_axes(self) -> int:
    return 1


class GRUCell(RNNCellBase):
  """A gated recurrent unit with one input and one recurrent ``Linear`` for the three
  parts ``r, z, n`` (``dense_i``: ``(in_features, 3 * hidden)`` with bias; ``dense_h``:
  ``(hidden, 3 * hidden)``, no bias):

  ``r = gate(x_r + h_r)``, ``z = gate(x_z + h_z)``, ``n = act(x_n + r * h_n)``,
  ``h' = (1 - z) * n + z * h``.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> cell = nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))
  >>> cell.dense_i.kernel.shape, cell.dense_h.kernel.shape
  ((3, 12), (4, 12))
  >>> h = cell.initialize_carry((2, 3), nnx.Rngs(0))
  >>> cell(h, jnp.ones((2, 3)))[1].shape
  (2, 4)
  """

  def __init__(self, in_features: int, hidden_features: int, *, gate_fn=sigmoid,
               activation_fn=tanh, kernel_init=default_kernel_init,
               recurrent_kernel_init=initializers.orthogonal(),
               bias_init=initializers.zeros_init(), dtype=None, param_dtype=jnp.float32,
               carry_init=None, promote_dtype=dtypes.promote_dtype, keep_rngs: bool = False,
               rngs: Rngs,
               kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               recurrent_kernel_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA,
               bias_metadata: tp.Mapping[str, tp.Any] = _NO_METADATA):
    _setup_cell(self, in_features, hidden_features, dtype, param_dtype, promote_dtype,
                carry_init, keep_rngs, rngs)
    self.gate_fn = gate_fn
    self.activation_fn = activation_fn
    self.dense_i = _linear(rngs, in_features, 3 * hidden_features, True, kernel_init, self,
                           kernel_metadata, bias_init, bias_metadata)
    self.dense_h = _linear(rngs, hidden_features, 3 * hidden_features, False,
                           recurrent_kernel_init, self, recurrent_kernel_metadata)

  def __call__(self, carry, inputs):
    """One step: ``(h', h')``."""
    h = carry
    xi_r, xi_z, xi_n = jnp.split(self.dense_i(inputs), 3, axis=-1)
    hh_r, hh_z, hh_n = jnp.split(self.dense_h(h), 3, axis=-1)
    r = self.gate_fn(xi_r + hh_r)
    z = self.gate_fn(xi_z + hh_z)
    n = self.activation_fn(xi_n + r * hh_n)
    new_h = (1.0 - z) * n + z * h
    return new_h, new_h

  def initialize_carry(self, input_shape: tuple[int, ...], rngs=None, carry_init=None):
    """``h`` of shape ``(*input_shape[:-1], hidden_features)`` (zeros by default)."""
    return _initial_carry(self, input_shape, rngs, carry_init, 1)[0]

  @property
  def num_feature_axes(self) -> int:
    return 1


def flip_sequences(inputs, seq_lengths, num_batch_dims: int, time_major: bool):
  """``inputs`` reversed along the time axis; with ``seq_lengths`` (one per batch element)
  only the first ``length`` steps of each sequence are reversed and the padding stays at
  the end (the padding steps are reversed among themselves).

  >>> import jax.numpy as jnp
  >>> from bridge.nn.recurrent import flip_sequences
  >>> x = jnp.array([[1, 0, 0], [2, 3, 0], [4, 5, 6]])
  >>> flip_sequences(x, jnp.array([1, 2, 3]), 1, False).tolist()
  [[1, 0, 0], [3, 2, 0], [6, 5, 4]]
  """
  time_axis = 0 if time_major else num_batch_dims
  if seq_lengths is None:
    return jnp.flip(inputs, axis=time_axis)
  steps = inputs.shape[time_axis]
  lengths = jnp.expand_dims(jnp.asarray(seq_lengths), time_axis)
  reverse = jnp.arange(steps - 1, -1, -1)
  index_shape = [1] * (num_batch_dims + 1)
  index_shape[time_axis] = steps
  idxs = (jnp.reshape(reverse, index_shape) + lengths) % steps
  idxs = jnp.reshape(idxs, idxs.shape + (1,) * (inputs.ndim - idxs.ndim))
  return jnp.take_along_axis(inputs, idxs, axis=time_axis)


def _select_last_carry(carries, seq_lengths):
  """From carries stacked on axis 0 (time), each sequence's carry after its last step."""
  last = jnp.asarray(seq_lengths) - 1

  def pick(x):
    idx = jnp.reshape(last, (1, *last.shape) + (1,) * (x.ndim - 1 - last.ndim))
    return jnp.take_along_axis(x, idx, axis=0)[0]

  return jax.tree.map(pick, carries)


def _concatenate(a, b):
  """``a`` and ``b`` joined along the last axis."""
  return jnp.concatenate([a, b], axis=-1)


def _carry_stream(rngs, owner: str, error: type[Exception]):
  """``rngs`` as an ``RNN``/``Bidirectional`` holds it: ``True`` a new ``carry`` stream
  seeded 0, ``False`` none, ``Rngs`` a fork of its ``carry`` stream, a stream itself;
  anything else raises ``error`` (flax.nnx's type for that owner)."""
  if rngs is True:
    return RngStream(0, tag='carry')
  if rngs is False:
    return None
  if isinstance(rngs, Rngs):
    return rngs.carry.fork()
  if isinstance(rngs, RngStream):
    return rngs
  raise error(f'{owner}: rngs must be an nnx.Rngs, an RngStream or a bool, got '
              f'{type(rngs).__name__}.')


_CARRY_ALL = StateAxes({...: Carry})


class RNN(Module):
  """A cell applied over the time axis with one ``bridge.scan``.

  Inputs are ``(*batch, time, *features)`` (``(time, *batch, *features)`` when
  ``time_major``), with as many feature axes as the cell's ``num_feature_axes``. The
  carry starts from ``initial_carry`` or the cell's ``initialize_carry`` (keys from
  ``rngs``, else this RNN's ``carry`` stream). ``reverse`` runs back to front (``seq_lengths``
  keep padding at the end), ``keep_order`` flips the outputs back; ``return_carry`` also
  returns the final carry, per sequence its last valid step's when ``seq_lengths`` is given.
  ``state_axes`` says how the cell's state goes through the scan (carried, by default);
  streams matching ``broadcast_rngs`` give every step the same keys (fresh each call).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> rnn = nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)), return_carry=True)
  >>> carry, y = rnn(jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 2]))
  >>> carry.shape, y.shape
  ((2, 4), (2, 5, 4))
  >>> bool((carry[1] == y[1, 1]).all())    # sequence 1 ends at step 2
  True
  """

  def __init__(self, cell: RNNCellBase, *, time_major: bool = False,
               return_carry: bool = False, reverse: bool = False, keep_order: bool = False,
               unroll: int = 1, state_axes=None, broadcast_rngs=None, rngs=True):
    self.cell = cell
    self.time_major = time_major
    self.return_carry = return_carry
    self.reverse = reverse
    self.keep_order = keep_order
    self.unroll = unroll
    self.rngs = _carry_stream(rngs, 'RNN', ValueError)
    self.state_axes = state_axes or _CARRY_ALL
    self.broadcast_rngs = broadcast_rngs

  def _time_axis(self, inputs, time_major: bool) -> int:
    features = self.cell.num_feature_axes
    if jnp.ndim(inputs) < features + 1:
      raise ValueError(
        f'RNN: inputs of shape {jnp.shape(inputs)} have no time axis; the cell '
        f'{type(self.cell).__name__} takes {features} feature axis(es), so expected '
        f'{"(time, *batch" if time_major else "(*batch, time"}, {features} feature axes).')
    return 0 if time_major else inputs.ndim - features - 1

  def __call__(self, inputs, *, initial_carry=None, seq_lengths=None, return_carry=None,
               time_major=None, reverse=None, keep_order=None, rngs=None):
    """The outputs of every step (``(carry, outputs)`` with ``return_carry``); the
    keywords override the constructor's settings for this call."""
    return_carry = self.return_carry if return_carry is None else return_carry
    time_major = self.time_major if time_major is None else time_major
    reverse = self.reverse if reverse is None else reverse
    keep_order = self.keep_order if keep_order is None else keep_order
    time_axis = self._time_axis(inputs, time_major)
    num_batch_dims = (inputs.ndim - 1 - self.cell.num_feature_axes)

    def flip(x):
      return jax.tree.map(lambda a: flip_sequences(a, seq_lengths, num_batch_dims,
                                                   time_major), x)

    if reverse:
      inputs = flip(inputs)
    if rngs is None:
      rngs = self.rngs
    if isinstance(rngs, Rngs):
      rngs = rngs.carry.fork()
    if initial_carry is None:
      step_shape = inputs.shape[:time_axis] + inputs.shape[time_axis + 1:]
      initial_carry = self.cell.initialize_carry(step_shape, rngs)

    slice_carry = seq_lengths is not None and return_carry
    axes = getattr(self.state_axes, 'filter_axes', self.state_axes)
    state_axes = StateAxes({filters.All(RngState, self.broadcast_rngs): None, **axes})

    @scan(in_axes=(state_axes, Carry, time_axis), out_axes=(Carry, 0), unroll=self.unroll)
    def step(cell, carry, x):
      carry, y = cell(carry, x)
      return carry, ((carry, y) if slice_carry else y)

    if self.broadcast_rngs is None:
      carry, stacked = step(self.cell, initial_carry, inputs)
    else:
      with split_rngs(self.cell, splits=1, only=self.broadcast_rngs, squeeze=True):
        carry, stacked = step(self.cell, initial_carry, inputs)
    if slice_carry:
      carries, stacked = stacked
      carry = _select_last_carry(carries, seq_lengths)
    outputs = jax.tree.map(lambda a: jnp.moveaxis(a, 0, time_axis), stacked)
    if reverse and keep_order:
      outputs = flip(outputs)
    return (carry, outputs) if return_carry else outputs


class RNNBase(tp.Protocol):
  """What ``Bidirectional`` needs of its two RNNs: ``RNN``'s call signature.

  >>> import inspect
  >>> import bridge as nnx
  >>> from bridge.nn.recurrent import RNNBase
  >>> params = lambda f: list(inspect.signature(f).parameters)
  >>> sorted(params(RNNBase.__call__)[1:]) == sorted(params(nnx.RNN.__call__)[1:])
  True
  """

  def __call__(self, inputs, *, initial_carry=None, rngs=None, seq_lengths=None,
               return_carry=None, time_major=None, reverse=None, keep_order=None): ...


class Bidirectional(Module):
  """Runs ``forward_rnn`` over the inputs and ``backward_rnn`` over them reversed (outputs
  put back in input order), and merges the outputs with ``merge_fn`` (concatenation along
  the last axis by default). ``return_carry`` also returns ``(forward carry, backward
  carry)``; ``initial_carry`` is such a pair.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.Bidirectional(nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))),
  ...                           nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(1))))
  >>> layer(jnp.ones((2, 5, 3))).shape
  (2, 5, 8)
  """

  def __init__(self, forward_rnn: RNNBase, backward_rnn: RNNBase, *,
               merge_fn=_concatenate, time_major: bool = False, return_carry: bool = False,
               rngs=True):
    self.forward_rnn = forward_rnn
    self.backward_rnn = backward_rnn
    self.merge_fn = merge_fn
    self.time_major = time_major
    self.return_carry = return_carry
    self.rngs = _carry_stream(rngs, 'Bidirectional', TypeError)

  def __call__(self, inputs, *, initial_carry=None, rngs=None, seq_lengths=None,
               return_carry=None, time_major=None, reverse=None, keep_order=None):
    """The merged outputs (``((forward carry, backward carry), outputs)`` with
    ``return_carry``). ``reverse`` and ``keep_order`` are accepted and ignored."""
    time_major = self.time_major if time_major is None else time_major
    return_carry = self.return_carry if return_carry is None else return_carry
    if rngs is None:
      rngs = self.rngs
    if isinstance(rngs, Rngs):
      rngs = rngs.carry
    forward_carry, backward_carry = (None, None) if initial_carry is None else initial_carry
    if self.forward_rnn is self.backward_rnn:
      _log.warning('forward_rnn and backward_rnn is the same object, so they will share '
                   'parameters.')
    common = dict(rngs=rngs, seq_lengths=seq_lengths, return_carry=True,
                  time_major=time_major)
    carry_f, out_f = self.forward_rnn(inputs, initial_carry=forward_carry, reverse=False,
                                      **common)
    carry_b, out_b = self.backward_rnn(inputs, initial_carry=backward_carry, reverse=True,
                                       keep_order=True, **common)
    outputs = jax.tree.map(self.merge_fn, out_f, out_b)
    return ((carry_f, carry_b), outputs) if return_carry else outputs
