"""Train-step cost: bridge.jit vs flax.linen + jax.jit vs flax.nnx.jit, side by side.

The model is ``depth`` blocks of Linear -> BatchNorm -> relu, trained with SGD on a squared
error (value_and_grad, optimizer update, BatchNorm statistics update). Each contestant runs
``steps`` steps per round; rounds are interleaved and the median per-step time is reported
with its ratio to linen. Trace+compile time of the first call is measured on a fresh
function per contestant.

    .venv/bin/python benchmarks/step_overhead.py            # full table
    .venv/bin/python benchmarks/step_overhead.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from _timing import interleaved_medians, print_table
from flax import nnx as fnnx

import bridge

LR = 0.1


# -- the three contestants ----------------------------------------------------------------
def linen_mlp(depth, width) -> nn.Module:
  """``depth`` blocks of Dense -> BatchNorm -> relu, written in Linen."""
  class Block(nn.Module):
    @nn.compact
    def __call__(self, h, train):
      h = nn.Dense(width)(h)
      h = nn.BatchNorm(use_running_average=not train, momentum=0.99)(h)
      return nn.relu(h)

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, h, train=True):
      for _ in range(depth):
        h = Block()(h, train)
      return h

  return MLP()


def make_linen(depth, width, x, y):
  return linen_step_runner(linen_mlp(depth, width), x, y)


def linen_step_runner(model: nn.Module, x, y):
  """A factory of fresh ``jax.jit`` train steps (SGD, mutable batch_stats) of ``model``."""
  variables = model.init(jax.random.key(0), x)
  tx = optax.sgd(LR)
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats'],
           'opt': tx.init(variables['params'])}

  def step(state, x, y):
    def loss_fn(params):
      out, updates = model.apply({'params': params, 'batch_stats': state['batch_stats']}, x,
                                 mutable=['batch_stats'])
      return jnp.mean((out - y) ** 2), updates['batch_stats']
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt = tx.update(grads, state['opt'], state['params'])
    return {'params': optax.apply_updates(state['params'], updates), 'batch_stats': stats,
            'opt': opt}, loss

  box = {'state': state}

  def make_runner():
    jitted = jax.jit(lambda *a: step(*a))  # a fresh function: no reuse of jax's cache

    def run():
      box['state'], loss = jitted(box['state'], x, y)
      return loss
    return run
  return make_runner


def _nnx_like(lib, depth, width, x, y):
  class Block(lib.Module):
    def __init__(self, rngs):
      self.linear = lib.Linear(width, width, rngs=rngs)
      self.bn = lib.BatchNorm(width, momentum=0.99, rngs=rngs)

    def __call__(self, h):
      return lib.relu(self.bn(self.linear(h)))

  class MLP(lib.Module):
    def __init__(self, rngs):
      self.blocks = lib.List([Block(rngs) for _ in range(depth)])

    def __call__(self, h):
      for block in self.blocks:
        h = block(h)
      return h

  return nnx_step_runner(lib, MLP(lib.Rngs(0)), x, y)


def nnx_step_runner(lib, model, x, y):
  """A factory of fresh ``lib.jit`` train steps (value_and_grad + Optimizer) of ``model``."""
  optimizer = lib.Optimizer(model, optax.sgd(LR), wrt=lib.Param)

  def step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)
    loss, grads = lib.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  def make_runner():
    jitted = lib.jit(lambda *a: step(*a))  # a fresh function: no reuse of a cache
    return lambda: jitted(model, optimizer, x, y)
  return make_runner


CONTESTANTS = {
  'linen+jax.jit': make_linen,
  'bridge.jit': lambda *a: _nnx_like(bridge, *a),
  'flax.nnx.jit': lambda *a: _nnx_like(fnnx, *a),
}


# -- measuring ----------------------------------------------------------------------------
def step_times(depth, width, batch, rounds, steps):
  x = jax.random.normal(jax.random.key(1), (batch, width))
  y = jax.random.normal(jax.random.key(2), (batch, width))
  runners = {name: make(depth, width, x, y)() for name, make in CONTESTANTS.items()}
  return interleaved_medians(runners, rounds, steps)


def compile_times(depth, width, batch, rounds):
  x = jnp.ones((batch, width))
  y = jnp.ones((batch, width))
  makers = {name: make(depth, width, x, y) for name, make in CONTESTANTS.items()}
  samples = {name: [] for name in makers}
  for _ in range(rounds):
    for name, make_runner in makers.items():
      run = make_runner()
      start = time.perf_counter()
      jax.block_until_ready(run())
      samples[name].append(time.perf_counter() - start)
  return {name: statistics.median(s) for name, s in samples.items()}


def table(title, results, scale, unit):
  print_table(title, results, 'linen+jax.jit', scale, unit)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='fewer rounds (a smoke run)')
  args = parser.parse_args()
  rounds, steps = (3, 20) if args.quick else (15, 50)
  print(f'jax {jax.__version__}, {jax.device_count()} device(s); medians of {rounds} '
        f'interleaved rounds')
  for depth, width, batch, target in ((10, 8, 4, '<= 1.10x'), (100, 8, 4, '<= 1.10x'),
                                      (8, 512, 128, '<= 1.02x')):
    results = step_times(depth, width, batch, rounds, steps if width < 512 else steps // 5)
    table(f'train step, depth {depth}, width {width}, batch {batch} (target {target})',
          results, 1e6, 'µs/step')
  results = compile_times(12, 8, 4, 3 if args.quick else 5)
  table('trace + compile of a 12-layer step (target <= 1.0x)', results, 1e3, 'ms')


if __name__ == '__main__':
  main()
