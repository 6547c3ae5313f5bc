"""NNX modules that replace parts of the Linen models in ``linen_models``, as a migration
does one module at a time: a ResNet block (Conv + BatchNorm), the Transformer MLP, the
classifier head with Dropout.

They are written once against an ``nnx`` namespace, so the same source runs on ``bridge``
(``BRIDGE``) and on ``flax.nnx`` (``define(flax.nnx)`` in a test). Attribute names are the
Linen submodule names, so their variables have the paths of the Linen modules they replace.
"""

from __future__ import annotations

import functools
import types

import jax

import bridge


def define(nnx) -> types.SimpleNamespace:
  """The modules, built on ``nnx`` (``bridge`` or ``flax.nnx``)."""

  class ResNetBlock(nnx.Module):
    """``linen_models.ResNetBlock`` with its input width given up front."""

    def __init__(self, in_features: int, filters: int, *, strides=(1, 1), rngs):
      conv = functools.partial(nnx.Conv, use_bias=False, rngs=rngs)
      norm = functools.partial(nnx.BatchNorm, momentum=0.9, epsilon=1e-5, rngs=rngs)
      self.conv1 = conv(in_features, filters, (3, 3), strides=strides)
      self.bn1 = norm(filters)
      self.conv2 = conv(filters, filters, (3, 3))
      self.bn2 = norm(filters)
      if in_features != filters or tuple(strides) != (1, 1):
        self.conv_proj = conv(in_features, filters, (1, 1), strides=strides)
        self.norm_proj = norm(filters)
      else:
        self.conv_proj = self.norm_proj = None

    def __call__(self, x, train: bool = True):
      residual = x
      y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
      y = self.bn2(self.conv2(y), use_running_average=not train)
      if self.conv_proj is not None:
        residual = self.norm_proj(self.conv_proj(residual), use_running_average=not train)
      return jax.nn.relu(residual + y)

  class MlpBlock(nnx.Module):
    """``linen_models.MlpBlock``: fc1, relu, dropout, fc2, dropout."""

    def __init__(self, features: int, mlp_dim: int, *, dropout_rate: float = 0.0,
                 deterministic: bool = True, kernel_init=nnx.initializers.xavier_uniform(),
                 bias_init=nnx.initializers.normal(stddev=1e-6), rngs):
      linear = functools.partial(nnx.Linear, kernel_init=kernel_init, bias_init=bias_init,
                                 rngs=rngs)
      self.fc1 = linear(features, mlp_dim)
      self.fc2 = linear(mlp_dim, features)
      self.dropout = nnx.Dropout(dropout_rate, deterministic=deterministic, rngs=rngs)

    def __call__(self, x):
      x = self.dropout(jax.nn.relu(self.fc1(x)))
      return self.dropout(self.fc2(x))

  class MLPHead(nnx.Module):
    """``linen_models.MLPHead``: tanh hidden layer, dropout, output layer."""

    def __init__(self, in_features: int, hidden_size: int, num_classes: int, *,
                 dropout_rate: float = 0.0, rngs):
      self.hidden = nnx.Linear(in_features, hidden_size, rngs=rngs)
      self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
      self.output = nnx.Linear(hidden_size, num_classes, rngs=rngs)

    def __call__(self, x, deterministic: bool):
      x = self.dropout(jax.nn.tanh(self.hidden(x)), deterministic=deterministic)
      return self.output(x)

  return types.SimpleNamespace(ResNetBlock=ResNetBlock, MlpBlock=MlpBlock, MLPHead=MLPHead)


BRIDGE = define(bridge)
