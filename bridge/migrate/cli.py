"""The parity harness from the command line; exits 0 when the port matches, 1 when not.

::

  python -m bridge.migrate.cli mypkg.models:linen_mlp mypkg.port:bridge_mlp \\
      --input-shape 2,8 --grads --modes eval,train --linen-train-flag train

The two positional arguments name factories as ``package.module:function`` (the module
must be importable: run from the directory that holds it or set ``PYTHONPATH``):

- the **Linen factory** takes no argument and returns ``(linen_module, variables)``;
- the **bridge factory** returns the bridge module; when it takes a positional argument it
  is called with the Linen variables, so that it can load the same weights.

The inputs are random normal arrays (``--input-shape``, once per positional input, with
``--input-dtype`` and ``--seed``), or whatever ``--inputs package.module:function``
returns (an array or a tuple of arrays). ``--match`` is ``paths`` or names a mapping of
path prefixes or a function (see ``check_parity``). The other options are
``check_parity``'s. Exit status: 0 parity holds, 1 it does not, 2 bad arguments or an
error while running (the traceback is printed).

>>> import sys, types
>>> import jax, jax.numpy as jnp
>>> import flax.linen as nn
>>> import bridge as nnx
>>> from bridge.migrate.cli import main
>>> demo = sys.modules['parity_demo'] = types.ModuleType('parity_demo')
>>> def linen_factory():
...   module = nn.Dense(3)
...   return module, module.init(jax.random.key(0), jnp.ones((1, 4)))
>>> def bridge_factory(variables):
...   port = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
...   port.kernel.value = variables['params']['kernel']
...   port.bias.value = variables['params']['bias']
...   return port
>>> demo.linen, demo.port = linen_factory, bridge_factory
>>> main(['parity_demo:linen', 'parity_demo:port', '--input-shape', '2,4'])
ParityReport: ok, 1 check within atol=0, rtol=0
mode  check   name  shape   max abs  max rel  result
eval  output  out   (2, 3)  0        0        ok
0
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import traceback
import typing as tp

import jax
import jax.numpy as jnp

from bridge.migrate.parity import MODES, check_parity


def build_parser() -> argparse.ArgumentParser:
  """The argument parser of :func:`main`."""
  p = argparse.ArgumentParser(
    prog='python -m bridge.migrate.cli',
    description='Compare a Linen model and its bridge port (outputs, gradients, train and '
                'eval modes); exit 0 when they match within the tolerances, 1 when not.')
  p.add_argument('linen', help="'package.module:function' returning (linen_module, variables)")
  p.add_argument('bridge', help="'package.module:function' returning the bridge module (called "
                                'with the Linen variables if it takes an argument)')
  p.add_argument('--input-shape', action='append', type=_shape, default=[], metavar='2,8',
                 help='the shape of a random normal input; repeat for several inputs')
  p.add_argument('--input-dtype', action='append', default=[], metavar='float32',
                 help='a floating dtype for all inputs, or one per --input-shape')
  p.add_argument('--inputs', metavar='MODULE:FUNCTION',
                 help='a function returning the inputs (an array or a tuple), instead of '
                      '--input-shape')
  p.add_argument('--seed', type=int, default=0, help='seed of the random inputs (default 0)')
  p.add_argument('--modes', default='eval', type=_modes, metavar='eval,train',
                 help="'eval', 'train' or both, comma-separated (default eval)")
  p.add_argument('--linen-train-flag', action='append', default=[], metavar='NAME',
                 help='a Linen call keyword set to True in train mode (e.g. train)')
  p.add_argument('--linen-eval-flag', action='append', default=[], metavar='NAME',
                 help='a Linen call keyword set to True in eval mode (e.g. deterministic)')
  p.add_argument('--linen-mutable', action='append', default=None, metavar='COLLECTION',
                 help='a collection Linen updates in train mode (default: all but params)')
  p.add_argument('--grads', action='store_true',
                 help='also compare gradients of the summed outputs w.r.t. the parameters')
  p.add_argument('--match', metavar="paths|MODULE:NAME",
                 help="how variables map: 'paths' or a mapping/function to import")
  p.add_argument('--atol', type=float, default=0.0, help='absolute tolerance (default 0)')
  p.add_argument('--rtol', type=float, default=0.0, help='relative tolerance (default 0)')
  return p


def _shape(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(n) for n in text.split(',') if n.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f'a shape is comma-separated integers (2,8), got '
                                     f'{text!r}') from None


def _modes(text: str) -> tuple[str, ...]:
  modes = tuple(m.strip() for m in text.split(',') if m.strip())
  if not modes or any(m not in MODES for m in modes):
    raise argparse.ArgumentTypeError(f'modes are some of {",".join(MODES)}, got {text!r}')
  return modes


class UsageError(ValueError):
  """A factory, input or option the command line cannot use (exit status 2, no traceback)."""


def _load(spec: str, what: str):
  module_name, _, attribute = spec.partition(':')
  if not module_name or not attribute:
    raise UsageError(f"{what} must look like 'package.module:name', got {spec!r}")
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise UsageError(f'{what}: cannot import {module_name!r} ({e}); run from the directory '
                     'that holds it or add that directory to PYTHONPATH.') from e
  for part in attribute.split('.'):
    if not hasattr(obj, part):
      raise UsageError(f'{what}: {module_name!r} has no attribute {attribute!r}.')
    obj = getattr(obj, part)
  return obj


def _takes_argument(fn: tp.Callable) -> bool:
  try:
    parameters = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):
    return False
  return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
             for p in parameters)


def _random_inputs(shapes, dtypes, seed: int) -> tuple:
  if not shapes:
    raise UsageError('give the inputs: --input-shape (once per input) or --inputs.')
  if len(dtypes) not in (0, 1, len(shapes)):
    raise UsageError(f'--input-dtype: give one for all inputs or one per --input-shape '
                     f'({len(shapes)}), got {len(dtypes)}.')
  dtypes = dtypes * len(shapes) if len(dtypes) == 1 else dtypes or ['float32'] * len(shapes)
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  inputs = []
  for key, shape, dtype in zip(keys, shapes, dtypes, strict=True):
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
      raise UsageError(f'--input-dtype {dtype}: random inputs are floating point; give '
                       'integer inputs (token ids) with --inputs.')
    inputs.append(jax.random.normal(key, shape, dtype))
  return tuple(inputs)


def _prepare(args: argparse.Namespace):
  """``(linen_module, variables, bridge_module, inputs, match)`` from the arguments."""
  made = _load(args.linen, 'the Linen factory')()
  if not (isinstance(made, tuple) and len(made) == 2):
    raise UsageError(f'the Linen factory {args.linen} must return (linen_module, variables), '
                     f'got {type(made).__name__}.')
  linen_module, variables = made
  factory = _load(args.bridge, 'the bridge factory')
  bridge_module = factory(variables) if _takes_argument(factory) else factory()
  if args.inputs:
    inputs = _load(args.inputs, '--inputs')()
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
  else:
    inputs = _random_inputs(args.input_shape, args.input_dtype, args.seed)
  match = args.match
  if match is not None and match != 'paths':
    match = _load(match, '--match')
  return linen_module, variables, bridge_module, inputs, match


def main(argv: tp.Sequence[str] | None = None) -> int:
  """Runs the harness on the command line's factories, prints the report; returns the exit
  status (0 parity, 1 no parity, 2 an error). See the module docstring."""
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    linen_module, variables, bridge_module, inputs, match = _prepare(args)
    report = check_parity(
      linen_module, variables, bridge_module, *inputs, modes=args.modes,
      linen_train_flag=args.linen_train_flag, linen_eval_flag=args.linen_eval_flag,
      linen_mutable=args.linen_mutable, grads=args.grads, match=match, atol=args.atol,
      rtol=args.rtol)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except Exception:  # a factory, the model or the harness failed: show where
    traceback.print_exc()
    return 2
  print(report)
  return 0 if report.ok else 1


if __name__ == '__main__':
  sys.exit(main())
