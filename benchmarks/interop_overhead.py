"""What the adapters cost: ToNNX and ToLinen train steps vs pure Linen, and eager ToLinen
apply vs flax.nnx.bridge's ToLinen, side by side from one run.

1. A Linen MLP (Dense -> BatchNorm -> relu blocks) wrapped with ``bridge.ToNNX`` and
   trained with ``bridge.jit`` + ``bridge.Optimizer``, vs the same model with Linen +
   ``jax.jit`` (target <= 1.05x).
2. A Linen MLP whose blocks are bridge modules (``bridge.to_linen``), vs the pure Linen MLP,
   both trained with ``jax.jit`` (target <= 1.05x).
3. Eager ``apply`` of a ToLinen-wrapped bridge MLP vs flax.nnx.bridge's ToLinen of the same
   flax.nnx MLP (flax re-runs the initializers on every apply; bridge does not).

    .venv/bin/python benchmarks/interop_overhead.py [--quick]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
from _timing import interleaved_medians, print_table
from flax import nnx as fnnx
from step_overhead import linen_mlp, linen_step_runner, nnx_step_runner

import bridge


def tonnx_vs_linen(depth, width, batch, rounds, steps):
  x = jax.random.normal(jax.random.key(1), (batch, width))
  y = jax.random.normal(jax.random.key(2), (batch, width))
  wrapped = bridge.ToNNX(linen_mlp(depth, width), rngs=bridge.Rngs(0)).lazy_init(x)
  runners = {'linen+jax.jit': linen_step_runner(linen_mlp(depth, width), x, y)(),
             'ToNNX+bridge.jit': nnx_step_runner(bridge, wrapped, x, y)()}
  return interleaved_medians(runners, rounds, steps)


def tolinen_vs_linen(depth, width, batch, rounds, steps):
  class BridgeBlock(bridge.Module):
    def __init__(self, rngs):
      self.linear = bridge.Linear(width, width, rngs=rngs)
      self.bn = bridge.BatchNorm(width, momentum=0.99, rngs=rngs)

    def __call__(self, h):
      return bridge.relu(self.bn(self.linear(h)))

  class MixedMLP(nn.Module):
    @nn.compact
    def __call__(self, h):
      for _ in range(depth):
        h = bridge.to_linen(BridgeBlock)(h)
      return h

  x = jax.random.normal(jax.random.key(1), (batch, width))
  y = jax.random.normal(jax.random.key(2), (batch, width))
  runners = {'linen+jax.jit': linen_step_runner(linen_mlp(depth, width), x, y)(),
             'ToLinen blocks+jax.jit': linen_step_runner(MixedMLP(), x, y)()}
  return interleaved_medians(runners, rounds, steps)


def _mlp(lib, width, depth):
  class MLP(lib.Module):
    def __init__(self, rngs):
      self.layers = lib.List([lib.Linear(width, width, rngs=rngs) for _ in range(depth)])

    def __call__(self, x):
      for layer in self.layers:
        x = lib.relu(layer(x))
      return x
  return MLP


def eager_apply(width, depth, rounds, steps):
  x = jnp.ones((4, width))
  ours = bridge.ToLinen(_mlp(bridge, width, depth))
  theirs = fnnx.bridge.ToLinen(_mlp(fnnx, width, depth))
  ours_vars = ours.init(jax.random.key(0), x)
  theirs_vars = theirs.init(jax.random.key(0), x)
  runners = {'flax.nnx.bridge.ToLinen': lambda: theirs.apply(theirs_vars, x),
             'bridge.ToLinen': lambda: ours.apply(ours_vars, x)}
  return interleaved_medians(runners, rounds, steps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='fewer rounds (a smoke run)')
  args = parser.parse_args()
  rounds, steps = (3, 20) if args.quick else (15, 50)
  print(f'jax {jax.__version__}; medians of {rounds} interleaved rounds')
  for depth, width, batch in ((10, 8, 4), (8, 512, 128)):
    n = steps if width < 512 else max(steps // 5, 2)
    print_table(f'ToNNX train step, depth {depth}, width {width}, batch {batch} '
                '(target <= 1.05x)', tonnx_vs_linen(depth, width, batch, rounds, n),
                'linen+jax.jit', 1e6, 'µs/step')
    print_table(f'ToLinen blocks in a Linen model, depth {depth}, width {width}, batch '
                f'{batch} (target <= 1.05x)', tolinen_vs_linen(depth, width, batch, rounds, n),
                'linen+jax.jit', 1e6, 'µs/step')
  print_table('eager ToLinen apply, 4 Linear layers of width 256',
              eager_apply(256, 4, rounds, max(steps // 5, 2)), 'flax.nnx.bridge.ToLinen',
              1e3, 'ms/apply')


if __name__ == '__main__':
  main()
