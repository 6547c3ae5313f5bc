"""Save and restore ``bridge`` models with orbax-checkpoint.

A checkpoint directory holds numbered steps in orbax's ``CheckpointManager`` layout
(``<directory>/<step>/default``). A step is the model's State as a pure dict of the
Variables' stored values: every Variable, RNG state included (restoring continues the
random streams), keys as in ``nnx.state(model)``. The model is a Module, a State, or any
graph of them such as ``{'model': model, 'optimizer': optimizer}`` (one step then holds
the whole training state). Orbax writes a step into a temporary
directory and renames it once complete, so a save that fails or is interrupted leaves the
earlier steps as they were, and ``restore_checkpoint`` reads the latest complete one.

Restoring writes into the Variables of a model (or State) built like the saved one, e.g.
``nnx.eval_shape(lambda: Model(...))``: the types and metadata (sharding, ...) are the
model's own, the arrays land on the shardings of its current arrays, and a path, shape or
dtype that differs from the checkpoint is a ``VariableMatchError`` listing them all.

>>> import tempfile
>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> from bridge.migrate import restore_checkpoint, save_checkpoint
>>> directory = tempfile.mkdtemp()
>>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> save_checkpoint(directory, model)
0
>>> fresh = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(1)))
>>> restored = restore_checkpoint(directory, fresh)
>>> bool((restored.kernel.value == model.kernel.value).all())
True
"""

from __future__ import annotations

import os
import typing as tp

import jax
import orbax.checkpoint as ocp

from bridge.graph import state as graph_state
from bridge.graph import update
from bridge.migrate.matching import Leaf, pair_leaves
from bridge.state import State
from bridge.variables import Variable


def _flat(target) -> list[tuple[tuple, tp.Any]]:
  """``(path, Variable or raw array)`` for everything a Module or State holds."""
  return list(target.flat_state() if isinstance(target, State) else
              graph_state(target).flat_state())


def _stored(leaf):
  return leaf.raw_value if isinstance(leaf, Variable) else leaf


def abstract_array(value) -> jax.ShapeDtypeStruct:
  """The shape, dtype and sharding a value is restored to (its own sharding, or the
  first device's for an abstract value without one)."""
  sharding = getattr(value, 'sharding', None) or \
    jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)


def saved_shape_dtype(value) -> tuple[tuple, tp.Any]:
  """How orbax records a value: a PRNG key array as its key data (``uint32``)."""
  if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
    value = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(value.shape, value.dtype))
  return tuple(value.shape), value.dtype


def metadata_leaves(tree, prefix: tuple = ()) -> list[tuple[tuple, tp.Any]]:
  """``(path, array metadata)`` for the leaves of an orbax metadata tree (dicts and
  lists; ``None`` leaves, as optax's empty states are saved, left out)."""
  items = tree.items() if isinstance(tree, tp.Mapping) else \
    enumerate(tree) if isinstance(tree, (list, tuple)) else None
  if items is None:
    return [] if tree is None else [(prefix, tree)]
  return [leaf for k, v in items for leaf in metadata_leaves(v, (*prefix, str(k)))]


def _manager(directory, *, create: bool, max_to_keep: int | None = None):
  return ocp.CheckpointManager(
    os.path.abspath(directory), item_handlers=ocp.StandardCheckpointHandler(),
    options=ocp.CheckpointManagerOptions(create=create, max_to_keep=max_to_keep,
                                         enable_async_checkpointing=False))


def save_checkpoint(directory: str | os.PathLike, model, *, step: int | None = None,
                    max_to_keep: int | None = None) -> int:
  """Saves the State of ``model`` (a Module or State) as step ``step`` of ``directory``
  (by default the step after the latest, or 0) and returns the step. With ``max_to_keep``
  only that many latest steps are kept (older ones are removed after the new one is
  complete). See the module docstring."""
  pure = State.from_flat_path((p, _stored(v)) for p, v in _flat(model)).to_pure_dict()
  manager = _manager(directory, create=True, max_to_keep=max_to_keep)
  try:
    if step is None:
      latest = manager.latest_step()
      step = 0 if latest is None else latest + 1
    manager.save(step, args=ocp.args.StandardSave(pure))
    manager.wait_until_finished()
  finally:
    manager.close()
  return step


def restore_checkpoint(directory: str | os.PathLike, model, *, step: int | None = None):
  """Restores step ``step`` of ``directory`` (by default the latest complete one) into
  the Variables of ``model`` (a Module or State) in place and returns ``model``. See the
  module docstring."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'restore_checkpoint: no checkpoint directory {directory!r}.')
  manager = _manager(directory, create=False)
  try:
    if step is None:
      step = manager.latest_step()
      if step is None:
        raise FileNotFoundError(
          f'restore_checkpoint: {directory!r} has no complete checkpoint step (entries: '
          f'{sorted(os.listdir(directory))}; a name ending in .orbax-checkpoint-tmp is a '
          'save that did not finish).')
    elif step not in manager.all_steps():
      raise FileNotFoundError(f'restore_checkpoint: {directory!r} has no step {step}; its '
                              f'steps are {list(manager.all_steps())}.')
    flat = _flat(model)
    _check(metadata_leaves(manager.item_metadata(step).tree), flat, f'{directory}/{step}')
    target = State.from_flat_path((p, abstract_array(_stored(v))) for p, v in flat)
    restored = manager.restore(step, args=ocp.args.StandardRestore(target.to_pure_dict()))
  finally:
    manager.close()
  values = dict(State(restored).flat_state())
  raw = []
  for path, leaf in flat:
    if isinstance(leaf, Variable):
      leaf.raw_value = values[path]
    else:
      raw.append((path, values[path]))
  if raw:  # arrays held outside Variables are replaced
    update(model, State.from_flat_path(raw))
  return model


def _check(saved: list[tuple[tuple, tp.Any]], flat: list[tuple[tuple, tp.Any]], where: str):
  checkpoint = [Leaf(p, p, '', tuple(m.shape), m.dtype, None) for p, m in saved]
  model = [Leaf(p, tuple(map(str, p)), '', *saved_shape_dtype(_stored(v)), v) for p, v in flat]
  pair_leaves(checkpoint, model, source=f'checkpoint {where}',
              hint='Restore into a model built like the one that was saved (e.g. '
                   'nnx.eval_shape(lambda: Model(...))); for a checkpoint of a Linen '
                   'training loop, use restore_linen_checkpoint.')
