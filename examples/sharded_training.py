"""Sharded training on 8 CPU devices with partition metadata carried through the bridge.

A Linen model annotates its kernels with ``nn.with_partitioning``; wrapped with
``bridge.ToNNX`` the annotations become Variable metadata, ``bridge.get_named_sharding``
lays the parameters out on a (data=2, model=4) mesh, and ``bridge.jit`` trains with the
batch split over ``data``. Back in Linen form the variables carry the same
``nn.Partitioned`` boxes. The data is a synthetic regression the program makes.

    .venv/bin/python examples/sharded_training.py [--steps N] [--smoke]
"""

from __future__ import annotations

import os

if 'jax' not in __import__('sys').modules:  # 8 CPU devices, before JAX starts
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()

import argparse  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _progress import Progress  # noqa: E402

import bridge  # noqa: E402
from bridge.interop.collections import tree_to_linen  # noqa: E402


class FeedForward(nn.Module):
  """A Linen MLP whose kernels say how they are split over the ``model`` axis."""
  hidden: int = 64

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.lecun_normal()
    x = nn.Dense(self.hidden, kernel_init=nn.with_partitioning(init, (None, 'model')))(x)
    x = nn.gelu(x)
    return nn.Dense(4, kernel_init=nn.with_partitioning(init, ('model', None)))(x)


def main(argv=None) -> float:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--smoke', action='store_true', help='a few steps only')
  args = parser.parse_args(argv)
  if jax.device_count() < 8:
    raise SystemExit('needs 8 devices: run with XLA_FLAGS=--xla_force_host_platform_device_'
                     'count=8 (set before JAX is imported)')
  mesh = jax.make_mesh((2, 4), ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  true_w = jax.random.normal(jax.random.key(42), (16, 4))

  def batch(step):
    x = jax.random.normal(jax.random.fold_in(jax.random.key(0), step), (32, 16))
    return (jax.device_put(x, NamedSharding(mesh, P('data', None))),
            jax.device_put(jnp.tanh(x @ true_w), NamedSharding(mesh, P('data', None))))

  model = bridge.ToNNX(FeedForward(), rngs=bridge.Rngs(0)).lazy_init(jnp.ones((1, 16)))
  state = bridge.state(model)
  bridge.update(model, jax.device_put(state, bridge.get_named_sharding(state, mesh)))
  optimizer = bridge.Optimizer(model, optax.adam(1e-2), wrt=bridge.Param)

  @bridge.jit
  def train_step(model, optimizer, x, y):
    loss, grads = bridge.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  steps = 3 if args.smoke else args.steps
  with Progress(steps, 'train') as bar:
    for step in range(steps):
      loss = train_step(model, optimizer, *batch(step))
      bar.update(loss=float(loss))
  kernel = model.Dense_0['kernel'].value
  on_layout = kernel.sharding.is_equivalent_to(NamedSharding(mesh, P(None, 'model')),
                                               kernel.ndim)
  linen_specs = nn.get_partition_spec(tree_to_linen(dict(bridge.state(model, bridge.Param))))
  print(f'summary: {steps} steps on {jax.device_count()} devices, final loss {float(loss):.4f}; '
        f'Dense_0 kernel on P(None, "model"): {on_layout}; back in Linen: '
        f'{linen_specs["params"]["Dense_0"]["kernel"]}')
  return float(loss)


if __name__ == '__main__':
  main()
