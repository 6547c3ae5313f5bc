"""``import bridge as nnx`` covers flax.nnx 0.12: every public name of ``flax.nnx``,
``flax.nnx.bridge`` and ``flax.nnx.compat`` exists in bridge, except the ones the README's
coverage section lists as still missing (so the README cannot drift from the code), and
the functions both define take the same parameters, bar the differences listed here."""

import inspect
import pathlib
import re
import types

import pytest
from flax import nnx

import bridge

README = pathlib.Path(__file__).parents[1] / 'README.md'

# Parameters that differ on purpose; each entry says why.
SIGNATURE_DIFFERENCES = {
  # flax's flatten/unflatten take its internal reference tables; bridge's graph has none.
  'flatten', 'unflatten',
  # The seed API pages name the hooks set_value_hooks, ...; flax's on_* names are accepted
  # as keywords too (tests/test_variables.py).
  'with_metadata',
  # A private flax flag of lax.scan's transpose.
  'scan',
}


def readme_missing() -> set[str]:
  section = README.read_text().split('## flax.nnx API coverage')[1].split('\n## ')[0]
  line = next(line for line in section.splitlines() if line.startswith('Still missing:'))
  return set(re.findall(r'`([\w.]+)`', line))


def public(module) -> set[str]:
  return {name for name in dir(module) if not name.startswith('_')}


def test_every_flax_nnx_name_exists_or_the_readme_lists_it_missing():
  missing = {name for name in public(nnx) if not hasattr(bridge, name)}
  missing |= {f'bridge.{n}' for n in public(nnx.bridge) if not hasattr(bridge.bridge, n)}
  missing |= {f'compat.{n}' for n in public(nnx.compat) if not hasattr(bridge.compat, n)}
  assert missing == readme_missing()


def parameters(f) -> list[tuple[str, inspect._ParameterKind]]:
  return [(p.name, p.kind) for p in inspect.signature(f).parameters.values()]


def shared_functions():
  for name in sorted(public(nnx) - SIGNATURE_DIFFERENCES):
    theirs, ours = getattr(nnx, name), getattr(bridge, name, None)
    if (ours is None or isinstance(theirs, (type, types.ModuleType))
        or not inspect.isfunction(inspect.unwrap(theirs))):
      continue
    yield name


@pytest.mark.parametrize('name', list(shared_functions()))
def test_functions_take_flax_nnx_parameters(name):
  assert parameters(getattr(bridge, name)) == parameters(getattr(nnx, name))
