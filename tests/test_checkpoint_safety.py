"""bridge.migrate checkpoints never lose or silently corrupt data: same-step saves, keys
that orbax would merge, Python scalars, corrupted files, leftovers of killed saves."""

import glob
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import bridge as nnx
from bridge.migrate import (
  ChecksumError,
  restore_checkpoint,
  restore_linen_checkpoint,
  save_checkpoint,
)


def linear(seed, din=2, dout=3):
  return nnx.Linear(din, dout, rngs=nnx.Rngs(seed))


def assert_same_weights(a, b):
  np.testing.assert_array_equal(a.kernel.value, b.kernel.value)
  np.testing.assert_array_equal(a.bias.value, b.bias.value)


def test_saving_at_a_step_not_after_the_latest_is_an_error(tmp_path):
  first = linear(0)
  assert save_checkpoint(tmp_path, first) == 0
  assert save_checkpoint(tmp_path, first, step=5) == 5
  for step in (5, 3):
    with pytest.raises(ValueError,
                       match=rf'step {step} is not after the latest step 5 .*force=True'):
      save_checkpoint(tmp_path, linear(1), step=step)
  assert sorted(os.listdir(tmp_path)) == ['0', '5']
  assert_same_weights(restore_checkpoint(tmp_path, linear(2)), first)


def test_force_replaces_a_step_and_writes_an_earlier_one(tmp_path):
  save_checkpoint(tmp_path, linear(0))
  save_checkpoint(tmp_path, linear(0), step=5)
  second = linear(1)
  assert save_checkpoint(tmp_path, second, step=5, force=True) == 5
  assert_same_weights(restore_checkpoint(tmp_path, linear(2), step=5), second)
  assert save_checkpoint(tmp_path, second, step=3, force=True) == 3
  assert sorted(os.listdir(tmp_path)) == ['0', '3', '5']
  assert_same_weights(restore_checkpoint(tmp_path, linear(2), step=3), second)


def _crash(*args, **kwargs):
  raise OSError('simulated crash')


async def _crash_async(*args, **kwargs):
  _crash()


@pytest.mark.parametrize('where, crash', [
  ((ocp.path.atomicity.AtomicRenameTemporaryPath, 'finalize'), _crash_async),  # the commit
  ((ocp.CheckpointManager, 'wait_until_finished'), _crash),  # after the commit
])
def test_a_failed_forced_save_keeps_the_step_it_was_replacing(tmp_path, monkeypatch, where,
                                                              crash):
  first = linear(0)
  save_checkpoint(tmp_path, first)
  with monkeypatch.context() as patch:
    patch.setattr(*where, crash)
    with pytest.raises(OSError, match='simulated crash'):
      save_checkpoint(tmp_path, linear(1), step=0, force=True)
  assert_same_weights(restore_checkpoint(tmp_path, linear(2), step=0), first)


class DottedKeys(nnx.Module):
  """Keys holding orbax's separator ``.`` (and the escape character ``%``) next to the
  nested paths of the same spelling."""

  def __init__(self, offset):
    self.a = nnx.Dict({
      'b.c': nnx.Param(jnp.full(2, 1.0 + offset)),
      'b': nnx.Dict({'c': nnx.Param(jnp.full(2, 2.0 + offset))}),
      'b%2Ec': nnx.Param(jnp.full(2, 3.0 + offset)),
    })
    self.x = nnx.Dict({'y': nnx.Param(jnp.full(1, 4.0 + offset))})
    setattr(self, 'x.y', nnx.Param(jnp.full(1, 5.0 + offset)))


def test_keys_with_dots_keep_their_own_values(tmp_path):
  saved = DottedKeys(0.0)
  save_checkpoint(tmp_path, saved)
  restored = restore_checkpoint(tmp_path, DottedKeys(10.0))
  ours, theirs = nnx.state(restored).flat_state(), nnx.state(saved).flat_state()
  assert ours.paths == theirs.paths and len(ours) == 5
  for (path, a), (_, b) in zip(ours, theirs, strict=True):
    np.testing.assert_array_equal(a.value, b.value, err_msg=str(path))


def test_keys_that_would_be_saved_as_one_are_an_error(tmp_path):
  state = nnx.State({1: nnx.Param(jnp.ones(1)), '1': nnx.Param(jnp.zeros(1))})
  with pytest.raises(ValueError, match=r"save_checkpoint: \(1,\) and \('1',\) would be saved "
                                       'as one value'):
    save_checkpoint(tmp_path, state)
  assert not [n for n in os.listdir(tmp_path) if not n.startswith('.')]


class Scalars(nnx.Module):
  def __init__(self, n):
    self.count = nnx.Variable(n)
    self.rate = nnx.Variable(n / 4)
    self.flag = nnx.Variable(n % 2 == 1)
    self.nothing = nnx.Variable(None)
    self.array = nnx.Variable(jnp.arange(3) * n)


def test_python_scalars_and_none_round_trip_as_themselves(tmp_path):
  save_checkpoint(tmp_path, Scalars(3))
  restored = restore_checkpoint(tmp_path, Scalars(8))
  assert (restored.count.value, restored.rate.value, restored.flag.value) == (3, 0.75, True)
  assert [type(v.value) for v in (restored.count, restored.rate, restored.flag)] == \
    [int, float, bool]
  assert restored.nothing.value is None
  np.testing.assert_array_equal(restored.array.value, jnp.arange(3) * 3)


def test_values_a_checkpoint_cannot_hold_are_an_error_at_save(tmp_path):
  model = Scalars(1)
  model.name = nnx.Variable('relu')
  with pytest.raises(ValueError, match="'name' holds a str; a checkpoint holds arrays"):
    save_checkpoint(tmp_path, model)


def _flip_a_byte_of_the_largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, 'default', '**', 'd', '*'), recursive=True)
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0x01
  with open(path, 'wb') as f:
    f.write(bytes(data))


def test_a_flipped_byte_is_an_error_naming_the_array(tmp_path):
  saved = linear(0, 64, 64)  # the kernel is by far the largest file
  save_checkpoint(tmp_path, saved)
  _flip_a_byte_of_the_largest_array_file(tmp_path / '0')
  target = linear(1, 64, 64)
  before = np.asarray(target.kernel.value)
  with pytest.raises(ChecksumError, match=r"0 is corrupted: the value read for 'kernel' ") as e:
    restore_checkpoint(tmp_path, target)
  assert e.value.names == ['kernel']
  np.testing.assert_array_equal(target.kernel.value, before)  # nothing was written


def test_the_next_save_removes_what_killed_saves_left(tmp_path):
  save_checkpoint(tmp_path, linear(0))
  # what a save killed before its commit leaves behind (orbax's temporary names)
  for name in ('1.orbax-checkpoint-tmp-1733011200', '1.orbax-checkpoint-tmp'):
    os.makedirs(tmp_path / name / 'default')
  assert save_checkpoint(tmp_path, linear(1)) == 1
  assert sorted(os.listdir(tmp_path)) == ['0', '1']


# -- which directories are steps of a Linen loop's checkpoint directory -------------------
def _linen_params(seed):
  return nn.Dense(3).init(jax.random.key(seed), jnp.ones((1, 2)))['params']


def _save_tree(path, tree):
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, tree)


def _restored_kernel(path, **kwargs):
  model = restore_linen_checkpoint(path, linear(9), collections={'params': 'params'},
                                   **kwargs)
  return np.asarray(model.kernel.value)


def test_only_checkpoint_steps_count_as_steps(tmp_path):
  with ocp.CheckpointManager(tmp_path) as manager:
    for step in (100, 200):
      manager.save(step, args=ocp.args.StandardSave({'params': _linen_params(step)}))
  _save_tree(tmp_path / 'export_20240101', {'params': _linen_params(0)})
  os.makedirs(tmp_path / 'logs_900')  # not a checkpoint at all
  np.testing.assert_array_equal(_restored_kernel(tmp_path), _linen_params(200)['kernel'])
  np.testing.assert_array_equal(_restored_kernel(tmp_path, step=100),
                                _linen_params(100)['kernel'])
  with pytest.raises(FileNotFoundError, match=r'has no step 20240101; steps: \[100, 200\]'):
    _restored_kernel(tmp_path, step=20240101)


def test_prefixed_steps_and_a_second_prefix(tmp_path):
  options = ocp.CheckpointManagerOptions(step_prefix='checkpoint')
  with ocp.CheckpointManager(tmp_path, options=options) as manager:
    for step in (1, 2):
      manager.save(step, args=ocp.args.StandardSave({'params': _linen_params(step)}))
  os.makedirs(tmp_path / 'export_20240101')  # not a checkpoint: ignored
  np.testing.assert_array_equal(_restored_kernel(tmp_path), _linen_params(2)['kernel'])
  _save_tree(tmp_path / 'backup_7', {'params': _linen_params(7)})
  with pytest.raises(ValueError, match=r"several prefixes \['backup_<step>', "
                                       r"'checkpoint_<step>'\]; pass the directory"):
    _restored_kernel(tmp_path)
  np.testing.assert_array_equal(_restored_kernel(tmp_path / 'backup_7'),
                                _linen_params(7)['kernel'])
