"""A mixed Linen/bridge CNN trained on the handwritten digits that ship with scikit-learn.

The convolutional trunk is Linen code (as in a codebase being migrated), run through
``bridge.ToNNX``; the classifier head is a bridge Module. The whole model trains with
``bridge.jit`` + ``bridge.value_and_grad`` + ``bridge.Optimizer`` and reaches >= 97% test
accuracy on the 8x8 digits (1797 images, no download: they ship inside scikit-learn).

    .venv/bin/python examples/digits_cnn.py            # full run
    .venv/bin/python examples/digits_cnn.py --smoke    # a few steps (what the tests run)

Needs the ``examples`` extra (``pip install -e '.[examples]'``) for scikit-learn.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _progress import Progress  # noqa: E402

import bridge  # noqa: E402


class LinenTrunk(nn.Module):
  """Two conv blocks written in Linen: the part not migrated yet."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    for features in (32, 64):
      x = nn.Conv(features, (3, 3), padding='SAME')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return x.reshape(x.shape[0], -1)


class Head(bridge.Module):
  """The migrated part: a bridge classifier head."""

  def __init__(self, din: int, classes: int, *, rngs: bridge.Rngs):
    self.hidden = bridge.Linear(din, 128, rngs=rngs)
    self.dropout = bridge.Dropout(0.3, rngs=rngs)
    self.out = bridge.Linear(128, classes, rngs=rngs)

  def __call__(self, x):
    return self.out(self.dropout(bridge.relu(self.hidden(x))))


class DigitsCNN(bridge.Module):
  def __init__(self, *, rngs: bridge.Rngs):
    self.trunk = bridge.ToNNX(LinenTrunk(), rngs=rngs)
    self.head = Head(4 * 4 * 64, 10, rngs=rngs)
    self.train_mode = True

  def __call__(self, x):
    return self.head(self.trunk(x, train=self.train_mode))


def load_digits(seed: int = 0):
  from sklearn.datasets import load_digits as sk_load_digits
  data = sk_load_digits()
  images = (data.images / 16.0).astype(np.float32)[..., None]  # (n, 8, 8, 1) in [0, 1]
  labels = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(labels))
  split = int(0.8 * len(labels))
  train, test = order[:split], order[split:]
  return (images[train], labels[train]), (images[test], labels[test])


def make_model(sample) -> DigitsCNN:
  model = DigitsCNN(rngs=bridge.Rngs(0, dropout=1))
  bridge.lazy_init(model, sample)  # runs Linen's init for the trunk
  return model


@bridge.jit
def train_step(model, optimizer, x, y):
  def loss_fn(model):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  loss, grads = bridge.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


@bridge.jit
def predict(model, x):
  return jnp.argmax(model(x), axis=-1)


def accuracy(model, images, labels, batch: int = 256) -> float:
  model.eval()
  model.train_mode = False
  correct = sum(int((predict(model, images[i:i + batch]) == labels[i:i + batch]).sum())
                for i in range(0, len(labels), batch))
  model.train()
  model.train_mode = True
  return correct / len(labels)


def main(argv=None) -> float:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--epochs', type=int, default=12)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--smoke', action='store_true', help='a few steps only')
  args = parser.parse_args(argv)
  (x_train, y_train), (x_test, y_test) = load_digits()
  model = make_model(jnp.asarray(x_train[:2]))
  optimizer = bridge.Optimizer(model, optax.adam(2e-3), wrt=bridge.Param)
  epochs = 1 if args.smoke else args.epochs
  steps = 3 if args.smoke else len(y_train) // args.batch
  rng = np.random.default_rng(0)
  for epoch in range(epochs):
    order = rng.permutation(len(y_train))
    with Progress(steps, f'epoch {epoch + 1}/{epochs}') as bar:
      for i in range(steps):
        idx = order[i * args.batch:(i + 1) * args.batch]
        loss = train_step(model, optimizer, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]))
        bar.update(loss=float(loss))
  acc = accuracy(model, jnp.asarray(x_test), jnp.asarray(y_test))
  n_params = sum(v.value.size for _, v in bridge.state(model, bridge.Param).flat_state())
  print(f'summary: {n_params:,} parameters ({len(bridge.state(model.trunk, bridge.Param))} '
        f'Linen layers via ToNNX + a bridge head), {int(optimizer.step.value)} steps, '
        f'test accuracy {acc:.2%} on {len(y_test)} images')
  return acc


if __name__ == '__main__':
  main()
