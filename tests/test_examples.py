"""The examples run end to end in their smoke mode (a few steps each)."""

import importlib.util
import pathlib
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / 'examples'


def _load(name):
  spec = importlib.util.spec_from_file_location(f'example_{name}', EXAMPLES / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses (Linen modules) look their module up
  spec.loader.exec_module(module)
  return module


def test_digits_cnn_smoke(capsys):
  pytest.importorskip('sklearn', reason='the examples extra (scikit-learn) is not installed')
  accuracy = _load('digits_cnn').main(['--smoke'])
  assert 0.0 <= accuracy <= 1.0
  out = capsys.readouterr().out
  assert 'summary:' in out and 'test accuracy' in out


def test_demo_runs(capsys):
  _load('demo').main()
  assert 'round trip exact: True' in capsys.readouterr().out


def test_sharded_training_smoke(capsys):
  loss = _load('sharded_training').main(['--smoke'])
  assert loss == loss  # not NaN
  out = capsys.readouterr().out
  assert "Dense_0 kernel on P(None, \"model\"): True" in out


def test_migrate_end_to_end_smoke(capsys):
  _load('migrate_end_to_end').main(['--smoke'])
  out = capsys.readouterr().out
  assert 'ParityReport: ok' in out
  assert 'identical outputs: True' in out


def test_decoder_lm_smoke(capsys):
  loss = _load('decoder_lm').main(['--smoke'])
  assert 0.0 < loss < 10.0
  assert 'a sample decoded with the cache' in capsys.readouterr().out
