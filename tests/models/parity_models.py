"""Linen models and their bridge ports for the parity harness tests
(``tests/test_migrate_parity.py``), with factories in the command line's contract: a Linen
factory returns ``(module, variables)``, a bridge factory takes the Linen variables and
returns the port with the same weights.

- ``LinenMLP`` / ``PortMLP``: three Dense layers sowing ``layer1..3`` (before the ReLU);
  the port names its layers ``linear1..3`` (``MLP_MATCH``). ``BuggyPortMLP`` multiplies by
  the transposed kernel in layer 2, a classic porting bug that shapes do not catch.
- ``LinenBNDrop`` / ``PortBNDrop``: Dense, BatchNorm, ReLU, Dropout, Dense, with a
  ``train`` argument on the Linen side.
- ``LinenTwoBlocks`` / ``PortTwoBlocks``: blocks that sow ``out``; on both sides the
  names sort in the opposite order to the calls (``TWO_BLOCKS_MATCH``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import bridge as nnx

IN, HIDDEN, OUT = 8, 16, 4
MLP_MATCH = {'Dense_0': 'linear1', 'Dense_1': 'linear2', 'Dense_2': 'linear3'}


def sample_input(batch: int = 2) -> jax.Array:
  return jax.random.normal(jax.random.key(1), (batch, IN))


def _copy_dense(linear, params) -> None:
  linear.kernel.value = params['kernel']
  linear.bias.value = params['bias']


# -- MLP ----------------------------------------------------------------------------------
class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i, features in enumerate((HIDDEN, HIDDEN, OUT)):
      x = nn.Dense(features)(x)
      self.sow('intermediates', f'layer{i + 1}', x)
      if i < 2:
        x = nn.relu(x)
    return x


class PortMLP(nnx.Module):
  def __init__(self, *, dtype=None, rngs: nnx.Rngs):
    self.linear1 = nnx.Linear(IN, HIDDEN, dtype=dtype, rngs=rngs)
    self.linear2 = nnx.Linear(HIDDEN, HIDDEN, dtype=dtype, rngs=rngs)
    self.linear3 = nnx.Linear(HIDDEN, OUT, dtype=dtype, rngs=rngs)

  def layer(self, i: int, x):
    return getattr(self, f'linear{i}')(x)

  def __call__(self, x):
    for i in (1, 2, 3):
      x = self.layer(i, x)
      self.sow(nnx.Intermediate, f'layer{i}', x)
      if i < 3:
        x = nnx.relu(x)
    return x


class BuggyPortMLP(PortMLP):
  def layer(self, i: int, x):
    if i == 2:  # the bug: PyTorch's (out, in) layout, square so the shapes still fit
      return x @ self.linear2.kernel.value.T + self.linear2.bias.value
    return super().layer(i, x)


def linen_mlp():
  module = LinenMLP()
  return module, module.init(jax.random.key(0), sample_input())


def _load_mlp(port: PortMLP, variables) -> PortMLP:
  for linen_name, attribute in MLP_MATCH.items():
    _copy_dense(getattr(port, attribute), variables['params'][linen_name])
  return port


def port_mlp(variables):
  return _load_mlp(PortMLP(rngs=nnx.Rngs(1)), variables)


def buggy_port_mlp(variables):
  return _load_mlp(BuggyPortMLP(rngs=nnx.Rngs(1)), variables)


def bf16_port_mlp(variables):
  return _load_mlp(PortMLP(dtype=jnp.bfloat16, rngs=nnx.Rngs(1)), variables)


def mlp_inputs():
  return sample_input(3)


# -- BatchNorm and Dropout ----------------------------------------------------------------
class LinenBNDrop(nn.Module):
  rate: float = 0.5
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(HIDDEN)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x)
    x = nn.Dropout(self.rate, deterministic=not train)(nn.relu(x))
    return nn.Dense(OUT)(x)


class PortBNDrop(nnx.Module):
  def __init__(self, *, rate: float = 0.5, momentum: float = 0.9, rngs: nnx.Rngs):
    self.linear1 = nnx.Linear(IN, HIDDEN, rngs=rngs)
    self.bn = nnx.BatchNorm(HIDDEN, momentum=momentum, rngs=rngs)
    self.dropout = nnx.Dropout(rate, rngs=rngs)
    self.linear2 = nnx.Linear(HIDDEN, OUT, rngs=rngs)

  def __call__(self, x):
    return self.linear2(self.dropout(nnx.relu(self.bn(self.linear1(x)))))


BN_MATCH = {'Dense_0': 'linear1', 'BatchNorm_0': 'bn', 'Dense_1': 'linear2'}


def linen_bn_drop(rate: float = 0.5, momentum: float = 0.9):
  module = LinenBNDrop(rate=rate, momentum=momentum)
  variables = module.init(jax.random.key(0), sample_input(), train=False)
  # running statistics away from their initial zeros and ones, so eval mode uses them
  stats = variables['batch_stats']['BatchNorm_0']
  variables = {**variables, 'batch_stats': {'BatchNorm_0': {
    'mean': stats['mean'] + 0.5, 'var': stats['var'] * 2.0}}}
  return module, variables


def port_bn_drop(variables, rate: float = 0.5, momentum: float = 0.9):
  port = PortBNDrop(rate=rate, momentum=momentum, rngs=nnx.Rngs(1))
  params, stats = variables['params'], variables['batch_stats']['BatchNorm_0']
  _copy_dense(port.linear1, params['Dense_0'])
  _copy_dense(port.linear2, params['Dense_1'])
  port.bn.scale.value = params['BatchNorm_0']['scale']
  port.bn.bias.value = params['BatchNorm_0']['bias']
  port.bn.mean.value = stats['mean']
  port.bn.var.value = stats['var']
  return port


def linen_bn():
  return linen_bn_drop(rate=0.0)


def port_bn(variables):
  return port_bn_drop(variables, rate=0.0)


# -- blocks sowing the same name, attribute names against call order ----------------------
class LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(HIDDEN)(x))
    self.sow('intermediates', 'out', x)
    return x


class LinenTwoBlocks(nn.Module):
  """The inner block is built second: ``LinenBlock_1`` runs first."""

  @nn.compact
  def __call__(self, x):
    return LinenBlock()(LinenBlock()(x))


class PortBlock(nnx.Module):
  def __init__(self, n_in: int, *, shift: float = 0.0, rngs: nnx.Rngs):
    self.linear = nnx.Linear(n_in, HIDDEN, rngs=rngs)
    self.shift = shift

  def __call__(self, x):
    x = nnx.tanh(self.linear(x) + self.shift)
    self.sow(nnx.Intermediate, 'out', x)
    return x


class PortTwoBlocks(nnx.Module):
  """``z_first`` runs first but sorts last."""

  def __init__(self, *, first_shift: float = 0.0, rngs: nnx.Rngs):
    self.z_first = PortBlock(IN, shift=first_shift, rngs=rngs)
    self.a_second = PortBlock(HIDDEN, rngs=rngs)

  def __call__(self, x):
    return self.a_second(self.z_first(x))


TWO_BLOCKS_MATCH = {'LinenBlock_1/Dense_0': 'z_first/linear',
                    'LinenBlock_0/Dense_0': 'a_second/linear'}


def linen_two_blocks():
  module = LinenTwoBlocks()
  return module, module.init(jax.random.key(0), sample_input())


def port_two_blocks(variables, first_shift: float = 0.0):
  port = PortTwoBlocks(first_shift=first_shift, rngs=nnx.Rngs(1))
  _copy_dense(port.z_first.linear, variables['params']['LinenBlock_1']['Dense_0'])
  _copy_dense(port.a_second.linear, variables['params']['LinenBlock_0']['Dense_0'])
  return port
