"""A small decoder-only language model trained on text that ships with Python (the
standard library's own source), then sampling token by token with the attention cache.

Bytes are the tokens (a vocabulary of 256); the model is a 2-block Transformer written
with bridge layers (Embed, MultiHeadAttention, LayerNorm, Linear), trained with
``bridge.jit`` + ``bridge.Optimizer``. Sampling runs one token per jitted step with
``decode=True``: each attention layer keeps its keys and values in ``Cache`` Variables.

    .venv/bin/python examples/decoder_lm.py             # ~2 minutes on 2 cores
    .venv/bin/python examples/decoder_lm.py --smoke     # a few steps (what the tests run)
"""

from __future__ import annotations

import argparse
import inspect
import json
import pathlib
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _progress import Progress  # noqa: E402

import bridge  # noqa: E402


def corpus() -> np.ndarray:
  """The source of a few standard-library modules, as bytes."""
  text = '\n'.join(inspect.getsource(m) for m in (json, textwrap, argparse))
  return np.frombuffer(text.encode('utf-8'), dtype=np.uint8).astype(np.int32)


class Block(bridge.Module):
  def __init__(self, dim: int, heads: int, *, rngs: bridge.Rngs):
    self.norm1 = bridge.LayerNorm(dim, rngs=rngs)
    self.attention = bridge.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
    self.norm2 = bridge.LayerNorm(dim, rngs=rngs)
    self.up = bridge.Linear(dim, 4 * dim, rngs=rngs)
    self.down = bridge.Linear(4 * dim, dim, rngs=rngs)

  def __call__(self, x, mask, decode: bool):
    x = x + self.attention(self.norm1(x), mask=mask, decode=decode)
    return x + self.down(bridge.gelu(self.up(self.norm2(x))))


class DecoderLM(bridge.Module):
  def __init__(self, *, vocab: int = 256, dim: int = 64, heads: int = 4, depth: int = 2,
               max_len: int = 128, rngs: bridge.Rngs):
    self.embed = bridge.Embed(vocab, dim, rngs=rngs)
    self.position = bridge.Embed(max_len, dim, rngs=rngs)
    self.blocks = bridge.List([Block(dim, heads, rngs=rngs) for _ in range(depth)])
    self.norm = bridge.LayerNorm(dim, rngs=rngs)
    self.max_len = max_len

  def __call__(self, tokens, positions, decode: bool = False):
    x = self.embed(tokens) + self.position(positions)
    mask = None if decode else bridge.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask, decode)
    return self.embed.attend(self.norm(x))  # weights tied with the input embedding

  def init_cache(self, batch: int) -> None:
    for block in self.blocks:
      block.attention.init_cache((batch, self.max_len, self.embed.features))


@bridge.jit
def train_step(model, optimizer, tokens):
  def loss_fn(model):
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
    logits = model(inputs, positions)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  loss, grads = bridge.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


@bridge.jit
def decode_step(model, token, position, rngs):
  logits = model(token[:, None], position[:, None], decode=True)[:, -1]
  return jax.random.categorical(rngs.sample(), logits / 0.8)


def sample(model, prompt: bytes, length: int, seed: int = 0) -> str:
  """Feeds the prompt, then samples ``length`` bytes, one jitted step per token."""
  model.init_cache(batch=1)
  rngs = bridge.Rngs(sample=seed)
  tokens = list(prompt)
  for i in range(len(prompt) + length - 1):
    nxt = decode_step(model, jnp.array([tokens[i]]), jnp.array([i]), rngs)
    if i + 1 >= len(prompt):
      tokens.append(int(nxt[0]))
  return bytes(tokens).decode('utf-8', errors='replace')


def main(argv=None) -> float:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--smoke', action='store_true', help='a few steps only')
  args = parser.parse_args(argv)
  data = corpus()
  model = DecoderLM(rngs=bridge.Rngs(0))
  optimizer = bridge.Optimizer(model, optax.adamw(3e-3), wrt=bridge.Param)
  steps = 3 if args.smoke else args.steps
  rng = np.random.default_rng(0)
  batch, length = 16, model.max_len
  with Progress(steps, 'train') as bar:
    for _ in range(steps):
      starts = rng.integers(0, len(data) - length - 1, batch)
      tokens = jnp.asarray(np.stack([data[s:s + length + 1] for s in starts]))
      loss = float(train_step(model, optimizer, tokens))
      bar.update(loss=loss)
  text = sample(model, b'def ', 8 if args.smoke else 100)
  print(f'summary: {len(data):,} bytes of stdlib source, {steps} steps, final loss '
        f'{loss:.3f} nats/byte; a sample decoded with the cache:\n{text}')
  return loss


if __name__ == '__main__':
  main()
