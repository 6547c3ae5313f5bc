"""A first look at bridge: build a model, split it into GraphDef + State, merge it back.

Run with ``./dev.sh demo``.
"""

import jax
import jax.numpy as jnp

import bridge as nnx


class MLP(nnx.Module):
  def __init__(self, din, dhidden, dout, *, rngs):
    self.hidden = nnx.Linear(din, dhidden, rngs=rngs)
    self.out = nnx.Linear(dhidden, dout, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.hidden(x))
    self.sow(nnx.Intermediate, 'hidden_activations', h)
    return self.out(h)


def main():
  model = MLP(4, 16, 2, rngs=nnx.Rngs(0))
  x = jnp.linspace(-1, 1, 12).reshape(3, 4)
  y = model(x)
  print('output shape:', y.shape)
  print('parameters:', jax.tree.map(jnp.shape, nnx.state(model, nnx.Param)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rebuilt = nnx.merge(graphdef, params, rest)
  print('round trip exact:', bool((rebuilt(x) == y).all()))


if __name__ == '__main__':
  main()
