"""Restore a checkpoint written by a Linen training loop into a ``bridge`` model.

A Linen loop saves its training state with orbax: a dict or ``TrainState`` such as
``{'params': ..., 'batch_stats': ..., 'opt_state': ..., 'step': ...}``, with
``StandardCheckpointer``/``PyTreeCheckpointer`` (one directory) or a ``CheckpointManager``
(numbered steps, each with one or more items). ``restore_linen_checkpoint`` finds the
tree, takes its variable collections, pairs them with the model's Variables (by path after
rename rules, or by structure: see ``load_linen_variables``) from the checkpoint's
metadata alone, and only then reads those arrays (not the optimizer state), placed on the
shardings of the model's current arrays. Boxed params (``nn.Partitioned``), which orbax
stores as ``{'value': array}``, are unboxed.

>>> import tempfile
>>> import jax, jax.numpy as jnp
>>> import flax.linen as nn
>>> import orbax.checkpoint as ocp
>>> import optax
>>> import bridge as nnx
>>> from bridge.migrate import restore_linen_checkpoint
>>> x = jnp.ones((1, 2))
>>> variables = nn.Dense(3).init(jax.random.key(0), x)
>>> directory = tempfile.mkdtemp()
>>> with ocp.CheckpointManager(directory) as manager:  # the Linen training loop
...   _ = manager.save(100, args=ocp.args.StandardSave(
...     {'params': variables['params'], 'opt_state': optax.adam(1e-3).init(variables['params'])}))
>>> class Port(nnx.Module):
...   def __init__(self, rngs):
...     self.proj = nnx.Linear(2, 3, rngs=rngs)
>>> model = restore_linen_checkpoint(directory, Port(nnx.Rngs(1)), rules={'params': 'params/proj'})
>>> bool((model.proj(x) == nn.Dense(3).apply(variables, x)).all())
True
"""

from __future__ import annotations

import os
import re
import typing as tp
from collections import defaultdict

import jax
import orbax.checkpoint as ocp
from etils import epath

from bridge.migrate.checkpoint import abstract_array, metadata_leaves
from bridge.migrate.matching import Match, linen_leaves, model_leaves, pair_leaves
from bridge.migrate.rename import Rules
from bridge.variables import variable_type_from_name


def _is_pytree(path: epath.Path) -> bool:
  return ocp.path.format_utils.is_pytree_checkpoint(path)


def find_pytree_item(path: str | os.PathLike, step: int | None = None) -> epath.Path:
  """The directory of the saved tree: ``path`` itself when it is one; when ``path`` holds
  checkpoint steps (``_steps``), the tree of step ``step`` (by default the latest);
  otherwise ``path`` is a step directory, and it is its one tree item."""
  path = epath.Path(os.path.abspath(path))
  if not path.is_dir():
    raise FileNotFoundError(f'No checkpoint at {os.fspath(path)!r}.')
  steps = {} if _is_pytree(path) else _steps(path)
  if not steps:
    if not (_is_pytree(path) or _items(path)):
      raise FileNotFoundError(
        f'{os.fspath(path)!r} is neither an orbax tree checkpoint nor a directory of '
        f'complete checkpoint steps (entries: {sorted(p.name for p in path.iterdir())}).')
    if step is not None:
      raise ValueError(f'{os.fspath(path)!r} is a single checkpoint; step={step} is for a '
                       'directory of steps.')
    return _tree_of(path)
  if step is None:
    step = max(steps)
  if step not in steps:
    raise FileNotFoundError(f'{os.fspath(path)!r} has no step {step}; steps: {sorted(steps)}.')
  return _tree_of(steps[step])


def _tree_of(path: epath.Path) -> epath.Path:
  """``path`` when it is a tree checkpoint, else its one tree item."""
  return path if _is_pytree(path) else _one_item(path)


def _steps(path: epath.Path) -> dict[int, epath.Path]:
  """``{step: directory}`` of the checkpoint steps in ``path``: the directories that hold
  a complete orbax checkpoint and are named as orbax names steps, ``<step>`` (the
  ``CheckpointManager`` default) or else ``<prefix>_<step>`` with one prefix (as
  ``step_prefix`` and flax's ``checkpoint_<step>`` name them). Other directories (an
  ``export_20240101`` beside the steps) are not steps; two prefixes are an error."""
  named: dict[str, dict[int, epath.Path]] = defaultdict(dict)
  for p in path.iterdir():
    m = re.fullmatch(r'(?:(.+)_)?(\d+)', p.name)
    if m and p.is_dir() and (_is_pytree(p) or _items(p)):
      named[m[1] or ''][int(m[2])] = p
  if '' in named or len(named) <= 1:
    return named.get('', next(iter(named.values()), {}))
  raise ValueError(
    f'{os.fspath(path)!r} holds checkpoint steps with several prefixes '
    f'{sorted(f"{prefix}_<step>" for prefix in named)}; pass the directory of the step to '
    'restore as path.')


def _items(step_dir: epath.Path) -> list[epath.Path]:
  return sorted(p for p in step_dir.iterdir() if p.is_dir() and _is_pytree(p))


def _one_item(step_dir: epath.Path) -> epath.Path:
  items = _items(step_dir)
  if len(items) != 1:
    raise ValueError(
      f'{os.fspath(step_dir)!r} has {len(items)} tree items {[p.name for p in items]}; pass '
      'the directory of the one to restore as path.')
  return items[0]


def _is_collection(name) -> bool:
  try:
    variable_type_from_name(name, allow_register=False)
  except ValueError:
    return False
  return True


def _collections(tree: tp.Mapping, collections) -> dict[str, tuple]:
  """``{collection: its path in the tree}``."""
  if collections is None:
    found = {k: (k,) for k in tree if _is_collection(k)}
    if not found:
      raise ValueError(
        f'The checkpoint has no Linen collection at its top level (keys: {list(tree)}). '
        "Pass collections=['params', ...], or {'params': 'path/in/checkpoint'} ('' for a "
        'checkpoint that is the params tree itself).')
    return found
  if isinstance(collections, tp.Mapping):
    return {c: tuple(k for k in p.split('/') if k) for c, p in collections.items()}
  return {c: (c,) for c in collections}


def _subtree(tree, path: tuple, collection: str):
  for key in path:
    if not isinstance(tree, tp.Mapping) or key not in tree:
      raise ValueError(f'The checkpoint has no {"/".join(path)!r} for collection '
                       f'{collection!r} (keys there: '
                       f'{list(tree) if isinstance(tree, tp.Mapping) else type(tree).__name__}).')
    tree = tree[key]
  return tree


class _Saved(tp.NamedTuple):
  path: tuple  # in the collection's subtree of the checkpoint
  shape: tuple
  dtype: tp.Any


def _unbox(leaves: list[tuple[tuple, tp.Any]]) -> list[tuple[tuple, _Saved]]:
  """``(Linen path, saved leaf)``: a ``{'value': array}`` node (a box as orbax stores it)
  becomes its array."""
  children = defaultdict(set)
  for p, _ in leaves:
    for i in range(len(p)):
      children[p[:i]].add(p[i])
  out = []
  for p, meta in leaves:
    boxed = len(p) > 1 and p[-1] == 'value' and children[p[:-1]] == {'value'}
    out.append((p[:-1] if boxed else p, _Saved(p, tuple(meta.shape), meta.dtype)))
  return out


def restore_linen_checkpoint(path: str | os.PathLike, model, *, step: int | None = None,
                             collections: tp.Sequence[str] | tp.Mapping[str, str] | None = None,
                             rules: Rules | None = None, match: Match = 'path'):
  """Loads the variable collections of a Linen loop's orbax checkpoint into ``model`` (a
  Module or State) in place and returns it; see the module docstring.

  Args:
    path: a tree checkpoint directory, a ``CheckpointManager`` directory, or one of its
      step directories.
    model: the ported model; every Variable but RNG state must get a value.
    step: the step of a ``CheckpointManager`` directory (default: the latest).
    collections: which parts of the saved tree are Linen collections: by default its
      top-level keys that name one (``params``, ``batch_stats``, any registered name);
      a list of top-level keys; or ``{collection: 'path/in/checkpoint'}``.
    rules, match: how Linen paths pair with the model's (``load_linen_variables``).
  """
  item = find_pytree_item(path, step)
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(item).tree
    where: dict[tuple, tuple] = {}  # Linen path (collection first) -> path in the checkpoint
    abstract: dict = {}
    for collection, prefix in _collections(tree, collections).items():
      node = abstract.setdefault(collection, {})
      sub = _subtree(tree, prefix, collection)
      leaves = metadata_leaves(sub) if isinstance(sub, tp.Mapping) else []
      for p, meta in _unbox(leaves):
        where[(collection, *p)] = (*prefix, *meta.path)
        _insert(node, p, jax.ShapeDtypeStruct(meta.shape, meta.dtype))
    pairs = pair_leaves(linen_leaves(abstract, rules), model_leaves(model), match,
                        source=f'checkpoint {os.fspath(item)}', linen_ordered=False)
    target: dict = {}
    for linen, var, _ in pairs:
      _insert(target, where[linen.key], abstract_array(var.item.raw_value))
    restored = handler.restore(item, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  finally:
    handler.close()
  for linen, var, _ in pairs:
    value = restored
    for key in where[linen.key]:
      value = value[key]
    var.item.raw_value = value
  return model


def _insert(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
