"""Every docstring example in bridge/ runs and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest

import bridge

MODULES = sorted(m.name for m in pkgutil.walk_packages(bridge.__path__, 'bridge.'))


@pytest.mark.parametrize('name', MODULES)
def test_docstrings(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f'{result.failed} docstring example(s) failed in {name}'
