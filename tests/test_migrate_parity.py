"""The parity harness (``bridge.migrate.check_parity``) and its command line.

The models and factories are in ``tests/models/parity_models.py``: a Linen MLP with an
exact port, a port with a bug in layer 2 and a bfloat16 port; Dense + BatchNorm + Dropout
with a ``train`` argument; two blocks whose names sort against their call order.
"""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from models import parity_models as pm

import bridge
from bridge.migrate import ParityReport, check_parity
from bridge.migrate.cli import main

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
X = pm.mlp_inputs()


def mlp(port_factory):
  module, variables = pm.linen_mlp()
  return module, variables, port_factory(variables)


def rows(report: ParityReport, **fields):
  return [c for c in report.checks if all(getattr(c, k) == v for k, v in fields.items())]


def table_line(report, name: str) -> str:
  """The table row (of a report or printed text) whose check or name is ``name``."""
  (line,) = [line for line in str(report).splitlines()
             if line.split()[0] in ('-', 'eval', 'train') and name in line.split()[1:3]]
  return line


# -- outputs, gradients, matching ---------------------------------------------------------
def test_exact_port_passes_with_exact_equality():
  module, variables, port = mlp(pm.port_mlp)
  report = check_parity(module, variables, port, X, grads=True, match=pm.MLP_MATCH,
                        modes=('eval', 'train'))
  assert report.ok, report
  assert (report.atol, report.rtol) == (0.0, 0.0)
  assert {c.kind for c in report.checks} == {'weight', 'output', 'intermediate', 'grad'}
  assert all(c.max_abs == 0 and c.max_rel == 0 for c in report.checks)
  assert len(rows(report, kind='grad')) == 12  # 6 parameters, 2 modes
  grad = rows(report, kind='grad', mode='eval', name='Dense_1/kernel')[0]
  assert grad.bridge_name == 'linear2/kernel' and grad.shape == (16, 16)
  assert report.first_divergence == {'eval': None, 'train': None}
  assert str(report).startswith('ParityReport: ok, 26 checks within atol=0, rtol=0')


def test_a_tonnx_wrapper_matches_by_identical_paths():
  module, variables = pm.linen_mlp()
  wrapper = bridge.ToNNX(pm.LinenMLP(), rngs=bridge.Rngs(5)).lazy_init(X)
  for name, layer in variables['params'].items():
    for key, value in layer.items():
      getattr(wrapper, name)[key].value = value
  report = check_parity(module, variables, wrapper, X, grads=True)  # match='paths'
  assert report.ok, report
  assert rows(report, kind='grad', name='Dense_2/bias')[0].bridge_name is None
  # the wrapper's Linen module sows into an immutable collection: nothing to pair with
  sown = rows(report, kind='intermediate')
  assert [c.note for c in sown] == ['sown by linen only'] * 3
  assert all(c.max_abs is None for c in sown)
  assert str(report).startswith('ParityReport: ok, 13 checks')  # one-sided rows not counted


def test_wrong_weights_fail_on_the_weight_row():
  module, variables, port = mlp(pm.port_mlp)
  port.linear3.bias.value = port.linear3.bias.value + 1.0
  report = check_parity(module, variables, port, X, match=pm.MLP_MATCH)
  assert not report.ok
  (weight,) = rows(report, kind='weight', ok=False)
  assert weight.name == 'params/Dense_2/bias' and weight.max_abs == 1.0
  assert [c.name for c in rows(report, ok=False)] == ['params/Dense_2/bias', 'out', 'layer3']


def test_match_by_function_with_a_user_loss():
  module, variables, port = mlp(pm.port_mlp)
  calls = []

  def loss(out):
    calls.append(out.shape)
    return jnp.mean(out ** 2)

  def rename(path):
    layer, leaf = path.split('/')
    return f'{pm.MLP_MATCH[layer]}/{leaf}'

  report = check_parity(module, variables, port, X, grads=True, match=rename, loss_fn=loss)
  assert report.ok, report
  assert calls == [(3, 4), (3, 4)]  # one Linen and one bridge gradient
  bias = rows(report, kind='grad', name='Dense_2/bias')[0]
  assert bias.bridge_name == 'linear3/bias'


def test_unmatched_variables_are_an_error_listing_the_paths():
  module, variables, port = mlp(pm.port_mlp)
  with pytest.raises(ValueError, match='do not match') as error:
    check_parity(module, variables, port, X, grads=True)  # names differ: 'paths' fails
  message = str(error.value)
  assert 'params/Dense_0/kernel -> Dense_0/kernel' in message
  assert 'linear1/kernel' in message and 'match=' in message
  with pytest.raises(ValueError, match='linear3/bias'):  # a prefix left out
    check_parity(module, variables, port, X, match={**pm.MLP_MATCH, 'Dense_2': None})


def test_output_shape_mismatch_fails_with_a_note():
  linen = nn.Dense(4)
  variables = linen.init(jax.random.key(0), X)
  report = check_parity(linen, variables, bridge.Linear(8, 3, rngs=bridge.Rngs(0)), X)
  (out,) = report.checks
  assert not out.ok and out.max_abs == float('inf') and out.note == 'shape (3, 4) vs (3, 3)'


# -- first divergence ---------------------------------------------------------------------
def test_bug_in_layer_2_is_the_first_divergence():
  module, variables, port = mlp(pm.buggy_port_mlp)
  report = check_parity(module, variables, port, X, grads=True, match=pm.MLP_MATCH)
  assert not report.ok
  first = report.first_divergence['eval']
  assert first.name == 'layer2' and first.kind == 'intermediate' and first.max_abs > 0.1
  assert rows(report, kind='intermediate', name='layer1')[0].ok
  assert not rows(report, kind='intermediate', name='layer3')[0].ok
  assert all(c.ok for c in rows(report, kind='weight'))
  assert not rows(report, kind='output')[0].ok
  assert table_line(report, 'layer2').endswith('FAIL <- first divergence')
  assert str(report).splitlines()[-1].endswith('first divergence: eval layer2')


def test_first_divergence_follows_call_order_not_names():
  # Linen runs LinenBlock_1 first, the port z_first first: sorted names would put the
  # second block first on both sides.
  module, variables = pm.linen_two_blocks()
  port = pm.port_two_blocks(variables, first_shift=0.1)
  report = check_parity(module, variables, port, X, match=pm.TWO_BLOCKS_MATCH)
  first = report.first_divergence['eval']
  assert (first.name, first.bridge_name) == ('LinenBlock_1/out', 'z_first/out')
  assert [c.label for c in rows(report, kind='intermediate')] == [
    'LinenBlock_1/out -> z_first/out', 'LinenBlock_0/out -> a_second/out']
  exact = check_parity(module, variables, pm.port_two_blocks(variables), X,
                       match=pm.TWO_BLOCKS_MATCH)
  assert exact.ok, exact


# -- tolerances ---------------------------------------------------------------------------
def test_bf16_port_fails_exact_and_passes_with_a_stated_tolerance():
  module, variables, port = mlp(pm.bf16_port_mlp)
  exact = check_parity(module, variables, port, X, grads=True, match=pm.MLP_MATCH)
  assert not exact.ok
  assert all(c.ok for c in rows(exact, kind='weight'))  # float32 weights, bf16 compute
  assert rows(exact, kind='output')[0].note == 'dtype float32 vs bfloat16'
  assert exact.first_divergence['eval'].name == 'layer1'
  loose = check_parity(module, variables, port, X, grads=True, match=pm.MLP_MATCH,
                       atol=2e-2, rtol=2e-2)
  assert loose.ok, loose
  assert str(loose).startswith('ParityReport: ok, 16 checks within atol=0.02, rtol=0.02')
  assert max(c.max_abs for c in loose.checks) > 1e-3  # not exact: the tolerance did it


def test_tolerances_are_inclusive_bounds_on_abs_and_rel():
  linen = nn.Dense(4)
  x = jnp.ones((1, 4))
  variables = {'params': {'kernel': jnp.ones((4, 4)), 'bias': jnp.zeros(4)}}
  port = bridge.Linear(4, 4, rngs=bridge.Rngs(0))
  port.kernel.value = jnp.ones((4, 4))
  port.bias.value = jnp.full(4, 0.5)  # linen 4.0, bridge 4.5: abs 0.5, rel 0.125
  out = check_parity(linen, variables, port, x).checks[0]
  assert (out.max_abs, out.max_rel, out.ok) == (0.5, 0.125, False)
  assert check_parity(linen, variables, port, x, atol=0.5).ok
  assert not check_parity(linen, variables, port, x, atol=0.49).ok
  assert check_parity(linen, variables, port, x, rtol=0.125).ok
  assert not check_parity(linen, variables, port, x, rtol=0.12).ok
  assert check_parity(linen, variables, port, x, atol=0.25, rtol=0.0625).ok
  # a zero reference has an infinite relative difference: only atol covers it
  weights = check_parity(linen, variables, port, x, match='paths', rtol=1.0)
  (bias,) = rows(weights, kind='weight', ok=False)
  assert bias.name == 'params/bias' and bias.max_rel == float('inf')
  with pytest.raises(ValueError, match='tolerances'):
    check_parity(linen, variables, port, x, atol=-1.0)


def test_the_table_shows_the_numbers_and_survives_pytest_shortening():
  linen = nn.Dense(4)
  x = jnp.ones((1, 4))
  variables = {'params': {'kernel': jnp.ones((4, 4)), 'bias': jnp.zeros(4)}}
  port = bridge.Linear(4, 4, rngs=bridge.Rngs(0))
  port.kernel.value = jnp.ones((4, 4))
  port.bias.value = jnp.full(4, 0.5)
  report = check_parity(linen, variables, port, x, atol=0.1)
  assert table_line(report, 'output').split() == ['eval', 'output', 'out', '(1,', '4)', '0.5',
                                                  '0.125', 'FAIL']
  lines = repr(report).splitlines()
  assert lines[0] == 'ParityReport: FAIL, 1 of 1 check outside atol=0.1, rtol=0'
  assert lines[1].split() == ['mode', 'check', 'name', 'shape', 'max', 'abs', 'max', 'rel',
                              'result']
  assert lines[-1] == 'first failure: eval output out (max abs 0.5)'
  with pytest.raises(AssertionError, match='ParityReport: FAIL') as error:
    assert report.ok, report
  assert 'first failure: eval output out' in str(error.value)


# -- train and eval -----------------------------------------------------------------------
def test_batchnorm_in_train_and_eval_modes_is_exact():
  module, variables = pm.linen_bn()
  port = pm.port_bn(variables)
  report = check_parity(module, variables, port, X, grads=True, match=pm.BN_MATCH,
                        modes=('eval', 'train'), linen_train_flag='train')
  assert report.ok, report
  states = rows(report, kind='state')
  assert [(c.mode, c.name) for c in states] == [
    (mode, f'batch_stats/BatchNorm_0/{stat}') for mode in ('eval', 'train')
    for stat in ('mean', 'var')]
  # the two modes compute differently (batch statistics against running averages)
  eval_out = module.apply(variables, X, train=False)
  train_out, _ = module.apply(variables, X, train=True, mutable=['batch_stats'])
  assert float(jnp.abs(eval_out - train_out).max()) > 0.1


def test_wrong_momentum_shows_in_the_train_mode_statistics_only():
  module, variables = pm.linen_bn()
  port = pm.port_bn_drop(variables, rate=0.0, momentum=0.99)
  report = check_parity(module, variables, port, X, match=pm.BN_MATCH,
                        modes=('eval', 'train'), linen_train_flag='train')
  assert [(c.mode, c.kind, c.name) for c in report.failures] == [
    ('train', 'state', 'batch_stats/BatchNorm_0/mean'),
    ('train', 'state', 'batch_stats/BatchNorm_0/var')]


def test_dropout_is_deterministic_in_eval_and_draws_masks_in_train():
  module, variables = pm.linen_bn_drop(rate=0.5)
  port = pm.port_bn_drop(variables, rate=0.5)
  eval_only = check_parity(module, variables, port, X, grads=True, match=pm.BN_MATCH,
                           linen_train_flag='train')
  assert eval_only.ok, eval_only
  both = check_parity(module, variables, port, X, grads=True, match=pm.BN_MATCH,
                      modes=('eval', 'train'), linen_train_flag='train')
  # Linen and bridge draw different dropout masks: train outputs differ, the statistics
  # (computed before the dropout) do not
  assert {c.mode for c in both.failures} == {'train'}
  assert not rows(both, mode='train', kind='output')[0].ok
  assert all(c.ok for c in rows(both, mode='train', kind='state'))


def test_linen_mode_flags_and_mutable_collections():
  module, variables = pm.linen_bn()
  port = pm.port_bn(variables)
  with pytest.raises(ValueError, match='linen_train_flag'):  # Linen needs `train`
    check_parity(module, variables, port, X)
  with pytest.raises(ValueError, match='linen_mutable'):  # train mode updates batch_stats
    check_parity(module, variables, port, X, modes=('train',), linen_train_flag='train',
                 linen_mutable=())
  with pytest.raises(ValueError, match='modes'):
    check_parity(module, variables, port, X, modes=('training',))


def values(model) -> dict:
  """Every Variable's value by path (RNG keys as their raw data)."""
  return {path: jax.random.key_data(v.get_value()) if jax.dtypes.issubdtype(
    v.get_value().dtype, jax.dtypes.prng_key) else v.get_value()
    for path, v in bridge.state(model).flat_state()}


def test_the_bridge_model_is_left_unchanged():
  module, variables = pm.linen_bn_drop()
  port = pm.port_bn_drop(variables)
  port.eval()
  before = values(port)
  check_parity(module, variables, port, X, grads=True, match=pm.BN_MATCH,
               modes=('train', 'eval'), linen_train_flag='train')
  after = values(port)
  assert before.keys() == after.keys() and ('dropout', 'rngs', 'count') in after
  assert all(bool(jnp.all(before[k] == after[k])) for k in before)
  assert port.bn.use_running_average and port.dropout.deterministic
  _, _, sown_port = mlp(pm.port_mlp)
  check_parity(*pm.linen_mlp(), sown_port, X)
  assert not hasattr(sown_port, 'layer1')


# -- command line -------------------------------------------------------------------------
def cli(*args):
  return main(['models.parity_models:linen_mlp', *args])


def test_cli_exit_status_and_table(capsys):
  match = ['--match', 'models.parity_models:MLP_MATCH']
  assert cli('models.parity_models:port_mlp', '--input-shape', '3,8', '--grads', *match) == 0
  out = capsys.readouterr().out
  assert out.startswith('ParityReport: ok, 16 checks within atol=0, rtol=0')
  assert cli('models.parity_models:buggy_port_mlp', '--input-shape', '3,8', *match) == 1
  out = capsys.readouterr().out
  assert 'FAIL <- first divergence' in table_line(out, 'layer2')
  assert out.rstrip().endswith('first divergence: eval layer2')


def test_cli_tolerances_modes_and_inputs(capsys):
  bf16 = ['models.parity_models:bf16_port_mlp', '--inputs', 'models.parity_models:mlp_inputs']
  assert cli(*bf16) == 1
  assert cli(*bf16, '--atol', '0.02', '--rtol', '0.02') == 0
  assert main(['models.parity_models:linen_bn', 'models.parity_models:port_bn',
               '--input-shape', '3,8', '--modes', 'eval,train', '--linen-train-flag', 'train',
               '--grads', '--match', 'models.parity_models:BN_MATCH']) == 0
  out = capsys.readouterr().out
  assert 'train  state' in out and 'batch_stats/BatchNorm_0/mean -> bn/mean' in out


def test_cli_usage_errors_exit_2(capsys):
  assert cli('models.parity_models:nope', '--input-shape', '3,8') == 2
  assert "has no attribute 'nope'" in capsys.readouterr().err
  assert cli('models.parity_models:port_mlp') == 2
  assert '--input-shape' in capsys.readouterr().err
  assert cli('models.parity_models:port_mlp', '--input-shape', '3,8', '--grads') == 2
  assert 'do not match' in capsys.readouterr().err  # check_parity's error, with traceback
  with pytest.raises(SystemExit):
    cli('models.parity_models:port_mlp', '--modes', 'fit')


def test_cli_runs_as_a_module_with_the_venv_python():
  env = {**os.environ, 'PYTHONPATH': TESTS_DIR, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  result = subprocess.run(
    [sys.executable, '-m', 'bridge.migrate.cli', 'models.parity_models:linen_mlp',
     'models.parity_models:buggy_port_mlp', '--input-shape', '3,8'],
    capture_output=True, text=True, env=env, timeout=120, check=False)
  assert result.returncode == 1, result.stderr
  assert result.stdout.startswith('ParityReport: FAIL')
  assert 'FAIL <- first divergence' in table_line(result.stdout, 'layer2')
