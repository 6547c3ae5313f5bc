"""nnx.tabulate against flax.nnx.tabulate: the same rows, cells, totals and FLOPs, compared
as parsed table content (not whitespace)."""

import warnings

import jax.numpy as jnp
import pytest
from flax import nnx as fnnx
from flax_parity import assert_same_signature

import bridge as nnx

PLAIN = {'force_terminal': False, 'width': 240}


def parse(table: str) -> dict:
  """Title, header, body rows (cells with their lines joined) and caption of a rendered
  table."""
  lines = [line.rstrip() for line in table.splitlines()]
  rows, block = [], []
  header = None
  for line in lines:
    if line.startswith('┃'):
      header = [c.strip() for c in line.strip('┃').split('┃')]
    elif line.startswith('│'):
      block.append([c.strip() for c in line.strip('│').split('│')])
    elif line.startswith(('├', '└')) and block:
      rows.append(tuple('\n'.join(filter(None, column)) for column in zip(*block, strict=True)))
      block = []
  title = next(line.strip() for line in lines if line.strip())
  caption = next(line.strip() for line in lines if 'Total Parameters' in line)
  return {'title': title, 'header': header, 'rows': rows, 'caption': caption}


def block_model(n):
  class Block(n.Module):
    def __init__(self, din, dout, rngs):
      self.linear = n.Linear(din, dout, rngs=rngs)
      self.bn = n.BatchNorm(dout, rngs=rngs)
      self.dropout = n.Dropout(0.2, rngs=rngs)

    def __call__(self, x):
      return n.relu(self.dropout(self.bn(self.linear(x))))

  class Foo(n.Module):
    def __init__(self, rngs):
      self.block1 = Block(4, 8, rngs=rngs)
      self.block2 = Block(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.block2(self.block1(x))

  return Foo(n.Rngs(0))


def io_model(n):
  class Two(n.Module):
    def __init__(self, rngs):
      self.a = n.Linear(3, 2, rngs=rngs)
      self.b = n.Linear(3, 4, rngs=rngs)

    def __call__(self, x, y, *, scale=1.0, mask=None):
      return self.a(x) * scale, {'b': self.b(y)}

    def encode(self, x):
      return self.a(x)

  class Top(n.Module):
    def __init__(self, rngs):
      self.two = Two(rngs)
      self.emb = n.Embed(5, 3, rngs=rngs)

    def __call__(self, ids):
      e = self.emb(ids)
      out = self.two(e, e, scale=2.0, mask=jnp.ones((2,), bool))
      self.two(e, e, scale=2.0, mask=jnp.zeros((2,), bool))  # the same inputs: one row
      self.two(e, e, scale=3.0, mask=None)  # other inputs: a second row
      return self.two.encode(e), out

  return Top(n.Rngs(0))


def both(make, *args, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    return [parse(n.tabulate(make(n), *args, console_kwargs=PLAIN, **kwargs))
            for n in (nnx, fnnx)]


def test_signature_matches_flax():
  assert_same_signature(nnx.tabulate, fnnx.tabulate)
  assert_same_signature(nnx.summary.filter_rng_streams, fnnx.summary.filter_rng_streams)


def test_table_equals_flax():
  ours, theirs = both(block_model, jnp.ones((1, 4)))
  assert ours == theirs
  assert [row[0] for row in ours['rows']] == [
    '', 'block1', 'block1/linear', 'block1/bn', 'block1/dropout', 'block2', 'block2/linear',
    'block2/bn', 'block2/dropout', '']
  assert ours['header'] == ['path', 'type', 'inputs', 'outputs', 'BatchStat', 'Param',
                            'RngState']
  assert ours['caption'] == 'Total Parameters: 102 (416 B)'


def test_depth_equals_flax():
  ours, theirs = both(block_model, jnp.ones((1, 4)), depth=1)
  assert ours == theirs and len(ours['rows']) == 4


def test_inputs_kwargs_tuple_outputs_and_other_methods_equal_flax():
  ours, theirs = both(io_model, jnp.array([[1, 2]]))
  assert ours == theirs
  paths = [row[0] for row in ours['rows']]
  assert paths == ['', 'emb', 'two', 'two/a', 'two/b', 'two', 'two/encode', '']
  two = ours['rows'][2]
  assert two[2] == '- float32[1,2,3]\n- float32[1,2,3]\nmask: bool[2]\nscale: 2.0'


def test_method_argument_equals_flax():
  def encoder(n):
    return io_model(n).two

  ours, theirs = both(encoder, jnp.ones((1, 3)), method='encode')
  assert ours == theirs and ours['rows'][0][:2] == ('encode', 'Two')


def test_row_filter_equals_flax():
  ours, theirs = both(block_model, jnp.ones((1, 4)), row_filter=lambda row: True)
  assert ours == theirs
  assert 'block1/dropout/rngs' in [row[0] for row in ours['rows']]


def test_flops_equal_flax():
  def small(n):
    return n.Sequential(n.Linear(3, 4, rngs=n.Rngs(0)), n.Dropout(0.5, rngs=n.Rngs(1)))

  ours, theirs = both(small, jnp.ones((2, 3)), compute_flops=True, compute_vjp_flops=True)
  assert ours == theirs
  assert ours['header'][4:6] == ['flops', 'vjp_flops'] and int(ours['rows'][1][4]) > 0


def test_model_and_classes_are_left_unchanged():
  model = block_model(nnx)
  before = nnx.state(model, nnx.BatchStat)['block1']['bn']['mean'][...]
  call = type(model.block1).__call__
  nnx.tabulate(model, jnp.ones((1, 4)), console_kwargs=PLAIN)
  assert (nnx.state(model, nnx.BatchStat)['block1']['bn']['mean'][...] == before).all()
  assert type(model.block1).__call__ is call and 'sow' not in vars(type(model.block1))
  assert nnx.Linear.__call__.__name__ == '__call__' and not hasattr(nnx.Linear.__call__,
                                                                    '__wrapped__')


def test_default_console_is_a_terminal_and_missing_method_is_an_error():
  table = nnx.tabulate(block_model(nnx), jnp.ones((1, 4)))
  assert '\x1b[' in table  # force_terminal=True by default, as flax.nnx
  with pytest.raises(AttributeError, match="Foo has no method 'encode'"):
    nnx.tabulate(block_model(nnx), jnp.ones((1, 4)), method='encode')


def test_shared_modules_and_lists_equal_flax():
  def tied(n):
    class Tied(n.Module):
      def __init__(self, rngs):
        self.enc = n.Linear(3, 3, rngs=rngs)
        self.dec = self.enc  # one Module, two paths: listed once, counted once
        self.layers = n.List([n.Linear(3, 3, rngs=rngs), n.LayerNorm(3, rngs=rngs)])

      def __call__(self, x):
        x = self.dec(self.enc(x))
        for layer in self.layers:
          x = layer(x)
        return x

    return Tied(n.Rngs(0))

  ours, theirs = both(tied, jnp.ones((1, 3)))
  assert ours == theirs
  assert [row[0] for row in ours['rows']] == ['', 'dec', 'layers/0', 'layers/1', '']
  assert ours['caption'] == 'Total Parameters: 30 (120 B)'
