"""Save and restore ``bridge`` models with orbax-checkpoint.

A checkpoint directory holds numbered steps in orbax's ``CheckpointManager`` layout
(``<directory>/<step>/default``). A step is the model's State as a pure dict of the
Variables' stored values: every Variable, RNG state included (restoring continues the
random streams), keys as in ``nnx.state(model)``. The model is a Module, a State, or any
graph of them such as ``{'model': model, 'optimizer': optimizer}`` (one step then holds
the whole training state). Orbax writes a step into a temporary
directory and renames it once complete, so a save that fails or is interrupted leaves the
earlier steps as they were, and ``restore_checkpoint`` reads the latest complete one; the
next save removes the temporary directories such saves left behind.

Nothing is lost or read back wrong: a key holding ``.`` or ``%`` is escaped (orbax names
arrays by their keys joined with ``.``, so ``{'a.b': x}`` and ``{'a': {'b': y}}`` would be
one array), and two keys that would still be one on disk (the int ``1`` and the string
``'1'`` in one dict) are an error at save time. Variables holding Python scalars
(``int``, ``float``, ``bool``) or ``None`` are saved and restored as such; any other value
that is not an array is an error at save time. Each step records a checksum of every value
(``bridge.migrate.integrity``), verified at restore: a corrupted file is an error naming
the arrays it affects. Saving at a step that is not after the latest is an error unless
``force=True``, which replaces that step.

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
import shutil
import typing as tp

import jax
import numpy as np
import orbax.checkpoint as ocp

from bridge.graph import state as graph_state
from bridge.graph import update
from bridge.migrate.integrity import checksum, verify
from bridge.migrate.matching import Leaf, pair_leaves
from bridge.state import State
from bridge.variables import Variable

_SCALARS = (bool, int, float, np.generic)
_CHECKSUMS = 'checksums'  # the step's item recording a checksum per value


def _flat(target) -> list[tuple[tuple, tp.Any]]:
  """``(path, Variable or raw array)`` for everything a Module or State holds."""
  return list(target.flat_state() if isinstance(target, State) else
              graph_state(target).flat_state())


def _stored(leaf):
  return leaf.raw_value if isinstance(leaf, Variable) else leaf


def _escape(key) -> str:
  """A key as saved: ``.`` (orbax's separator in array names) and ``%`` escaped."""
  return str(key).replace('%', '%25').replace('.', '%2E')


def _name(escaped: tuple[str, ...]) -> str:
  """The name of a saved value in the checksums: its escaped keys joined with ``.``."""
  return '.'.join(escaped)


def _saved_leaves(target, action: str) -> list[tuple[tuple, tuple[str, ...], tp.Any]]:
  """``(path, escaped path, stored value)`` per leaf; a value that is neither an array, a
  scalar nor ``None``, or two paths saved under one name, is an error naming them."""
  out, seen = [], {}
  for path, leaf in _flat(target):
    value, escaped = _stored(leaf), tuple(map(_escape, path))
    if value is not None and not isinstance(value, _SCALARS) and \
        not (hasattr(value, 'shape') and hasattr(value, 'dtype')):
      raise ValueError(f'{action}: {"/".join(map(str, path))!r} holds a '
                       f'{type(value).__name__}; a checkpoint holds arrays, Python scalars '
                       '(int, float, bool) and None.')
    if escaped in seen:
      raise ValueError(f'{action}: {seen[escaped]!r} and {path!r} would be saved as one '
                       'value (keys are saved as strings); rename one of them.')
    seen[escaped] = path
    out.append((path, escaped, value))
  return out


def _nest(items: tp.Iterable[tuple[tuple, tp.Any]]) -> dict:
  root: dict = {}
  for path, value in items:
    node = root
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return root


def abstract_array(value) -> jax.ShapeDtypeStruct:
  """The shape, dtype and sharding a value is restored to (its own sharding, or the
  first device's for an abstract value without one)."""
  sharding = getattr(value, 'sharding', None) or \
    jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)


def _restore_target(value):
  """What orbax restores a value into: scalars and ``None`` as themselves."""
  return value if value is None or isinstance(value, _SCALARS) else abstract_array(value)


def saved_shape_dtype(value) -> tuple[tuple, tp.Any]:
  """How orbax records a value: a PRNG key array as its key data (``uint32``), a Python
  scalar as a 0-d NumPy value."""
  if isinstance(value, _SCALARS):
    value = np.asarray(value)
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
    os.path.abspath(directory),
    item_handlers={'default': ocp.StandardCheckpointHandler(),
                   _CHECKSUMS: ocp.JsonCheckpointHandler()},
    options=ocp.CheckpointManagerOptions(create=create, max_to_keep=max_to_keep,
                                         cleanup_tmp_directories=create,
                                         enable_async_checkpointing=False))


def save_checkpoint(directory: str | os.PathLike, model, *, step: int | None = None,
                    max_to_keep: int | None = None, force: bool = False) -> int:
  """Saves the State of ``model`` (a Module or State) as step ``step`` of ``directory``
  (by default the step after the latest, or 0) and returns the step. A ``step`` at or
  before the latest is an error, unless ``force=True``: then the step is written anew
  (an existing one replaced once the new one is complete). With ``max_to_keep`` only that
  many latest steps are kept (older ones are removed after the new one is complete). See
  the module docstring."""
  leaves = _saved_leaves(model, 'save_checkpoint')
  tree = _nest((escaped, value) for _, escaped, value in leaves)
  digests = {_name(escaped): checksum(value) for _, escaped, value in leaves
             if value is not None}
  manager = _manager(directory, create=True, max_to_keep=max_to_keep)
  try:
    latest = manager.latest_step()
    if step is None:
      step = 0 if latest is None else latest + 1
    elif latest is not None and step <= latest and not force:
      raise ValueError(
        f'save_checkpoint: step {step} is not after the latest step {latest} of '
        f'{os.fspath(directory)!r}; pass a later step, step=None for the next one, or '
        f'force=True to write step {step} anew (replacing it if it exists).')
    replaced = _set_aside(manager, step)
    try:
      manager.save(step, args=ocp.args.Composite(
        default=ocp.args.StandardSave(tree), **{_CHECKSUMS: ocp.args.JsonSave(digests)}),
        force=True)
      manager.wait_until_finished()
    except BaseException:
      if replaced is not None:  # the old step comes back
        _restore_aside(replaced, os.fspath(manager.directory / str(step)))
      raise
    if replaced is not None:
      shutil.rmtree(replaced)
  finally:
    manager.close()
  return step


def _set_aside(manager, step: int) -> str | None:
  """Moves an existing ``step`` out of the way of a forced save (to a temporary name the
  next save cleans up); returns where it went."""
  if step not in manager.all_steps():
    return None
  path = os.fspath(manager.directory / str(step))
  aside = f'{path}.orbax-checkpoint-tmp-replaced'
  os.replace(path, aside)
  manager.reload()
  return aside


def _restore_aside(aside: str, path: str) -> None:
  """Puts a step set aside by ``_set_aside`` back, over whatever the failed save left."""
  if os.path.exists(path):
    shutil.rmtree(path)
  os.replace(aside, path)


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
    where = f'{directory}/{step}'
    leaves = _saved_leaves(model, 'restore_checkpoint')
    _check(metadata_leaves(manager.item_metadata(step)['default'].tree), leaves, where)
    target = _nest((escaped, _restore_target(value)) for _, escaped, value in leaves)
    items = {'default': ocp.args.StandardRestore(target)}
    if os.path.isdir(os.path.join(where, _CHECKSUMS)):  # steps saved before checksums: none
      items[_CHECKSUMS] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  finally:
    manager.close()
  values = {}
  for path, escaped, _ in leaves:
    node = restored['default']
    for key in escaped:
      node = node[key]
    values[path] = node
  if _CHECKSUMS in items:
    verify({_name(escaped): values[path] for path, escaped, _ in leaves},
           restored[_CHECKSUMS], f'{where}')
  raw = []
  for path, leaf in _flat(model):
    if isinstance(leaf, Variable):
      leaf.raw_value = values[path]
    else:
      raw.append((path, values[path]))
  if raw:  # arrays held outside Variables are replaced
    update(model, State.from_flat_path(raw))
  return model


def _check(saved: list[tuple[tuple, tp.Any]], leaves, where: str):
  checkpoint = [Leaf(p, p, '', tuple(m.shape), m.dtype, None) for p, m in saved]
  model = [Leaf(path, escaped, '', *saved_shape_dtype(value), value)
           for path, escaped, value in leaves if value is not None]
  pair_leaves(checkpoint, model, source=f'checkpoint {where}',
              hint='Restore into a model built like the one that was saved (e.g. '
                   'nnx.eval_shape(lambda: Model(...))); for a checkpoint of a Linen '
                   'training loop, use restore_linen_checkpoint.')
