"""Migration end to end: train a Linen model, checkpoint it with orbax, port it to bridge,
load the checkpoint, prove parity with the harness, and continue training.

The data is a synthetic 3-class problem the program makes (no download). Every step
prints what it did; the run fails loudly if the port does not compute what Linen did.

    ./dev.sh demo                                        # this program, on a fresh machine
    .venv/bin/python examples/migrate_end_to_end.py --smoke
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _progress import Progress  # noqa: E402

import bridge  # noqa: E402
from bridge.migrate import (  # noqa: E402
  check_parity,
  restore_checkpoint,
  restore_linen_checkpoint,
  save_checkpoint,
)


# -- 1. the Linen model and its training loop, as they exist today -------------------------
class LinenClassifier(nn.Module):
  hidden: int = 64

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Dense(self.hidden)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    return nn.Dense(3)(x)


def make_data(n: int, seed: int):
  """Three noisy Gaussian blobs in 8 dimensions."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  labels = jax.random.randint(k1, (n,), 0, 3)
  centers = jax.random.normal(jax.random.key(99), (3, 8)) * 1.0
  return centers[labels] + jax.random.normal(k2, (n, 8)), labels


def train_linen(steps: int, x, y):
  model = LinenClassifier()
  variables = model.init(jax.random.key(0), x[:2])
  tx = optax.adam(1e-2)
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats'],
           'opt_state': tx.init(variables['params'])}

  @jax.jit
  def step(state, x, y):
    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': state['batch_stats']},
                                    x, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates['batch_stats']
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    return {'params': optax.apply_updates(state['params'], updates), 'batch_stats': stats,
            'opt_state': opt_state}, loss

  with Progress(steps, '1. train Linen     ') as bar:
    for _ in range(steps):
      state, loss = step(state, x, y)
      bar.update(loss=float(loss))
  return model, state


# -- 2. the port: the same model written with bridge layers, with its own names --------------
class Classifier(bridge.Module):
  def __init__(self, *, rngs: bridge.Rngs, hidden: int = 64):
    self.linear1 = bridge.Linear(8, hidden, rngs=rngs)
    self.norm = bridge.BatchNorm(hidden, momentum=0.9, rngs=rngs)
    self.linear2 = bridge.Linear(hidden, 3, rngs=rngs)

  def __call__(self, x):
    return self.linear2(bridge.relu(self.norm(self.linear1(x))))


RENAME = {r'Dense_0': 'linear1', r'BatchNorm_0': 'norm', r'Dense_1': 'linear2'}


def accuracy(logits, labels) -> float:
  return float((jnp.argmax(logits, -1) == labels).mean())


def main(argv=None) -> float:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=150)
  parser.add_argument('--smoke', action='store_true', help='a few steps only')
  args = parser.parse_args(argv)
  steps = 5 if args.smoke else args.steps
  x, y = make_data(512, seed=0)
  x_test, y_test = make_data(256, seed=1)

  linen_model, linen_state = train_linen(steps, x, y)
  variables = {'params': linen_state['params'], 'batch_stats': linen_state['batch_stats']}
  linen_acc = accuracy(linen_model.apply(variables, x_test, train=False), y_test)

  with tempfile.TemporaryDirectory() as workdir:
    linen_dir = pathlib.Path(workdir) / 'linen'
    with ocp.CheckpointManager(linen_dir) as manager:
      manager.save(steps, args=ocp.args.StandardSave(linen_state))
      manager.wait_until_finished()
    print(f'2. saved the Linen training state (params, batch_stats, opt_state) at step '
          f'{steps} with orbax')

    port = Classifier(rngs=bridge.Rngs(1))
    restore_linen_checkpoint(linen_dir, port, rules=RENAME)
    print('3. loaded the Linen checkpoint into the bridge port (Dense_0 -> linear1, ...)')

    report = check_parity(linen_model, variables, port, x_test, modes=('eval', 'train'),
                          linen_train_flag='train', grads=True,
                          match={'Dense_0': 'linear1', 'BatchNorm_0': 'norm',
                                 'Dense_1': 'linear2'})
    print('4. parity of the port against the Linen model:')
    print(report)
    if not report.ok:
      raise SystemExit('the port does not compute what the Linen model does')

    optimizer = bridge.Optimizer(port, optax.adam(1e-2), wrt=bridge.Param)

    @bridge.jit
    def train_step(model, optimizer, x, y):
      def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
      loss, grads = bridge.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    port.train()
    with Progress(steps, '5. continue, bridge') as bar:
      for _ in range(steps):
        bar.update(loss=float(train_step(port, optimizer, x, y)))
    port.eval()
    bridge_acc = accuracy(port(x_test), y_test)

    bridge_dir = pathlib.Path(workdir) / 'bridge'
    saved = save_checkpoint(bridge_dir, {'model': port, 'optimizer': optimizer})
    fresh = Classifier(rngs=bridge.Rngs(2))
    restore_checkpoint(bridge_dir, {
      'model': fresh, 'optimizer': bridge.Optimizer(fresh, optax.adam(1e-2), wrt=bridge.Param)})
    fresh.eval()
    same = bool((fresh(x_test) == port(x_test)).all())
    print(f'6. saved the bridge model and optimizer (step {saved}) and restored them into a '
          f'fresh model: identical outputs: {same}')
  print(f'summary: Linen test accuracy {linen_acc:.1%} after {steps} steps; the port matched '
        f'it exactly ({len(report.checks)} checks) and reached {bridge_acc:.1%} after '
        f'{steps} more steps with bridge.jit')
  return bridge_acc


if __name__ == '__main__':
  main()
