"""Parity harness: does a ``bridge`` port compute what the Linen model computes?

``check_parity`` runs a Linen module (with its variables) and a ``bridge`` module on the
same inputs, in ``'eval'`` and/or ``'train'`` mode, and compares what each side gives:

- ``output``: every leaf of the outputs;
- ``intermediate``: values both sides sow (Linen ``self.sow('intermediates', name, x)``,
  bridge ``self.sow(nnx.Intermediate, name, x)``), matched by sown name in call order; the
  first one outside the tolerances is the report's ``first_divergence`` for that mode;
- with ``match`` or ``grads``, per matched variable: ``weight`` (the values both sides
  start from), ``state`` (non-parameter collections after the call: BatchNorm statistics)
  and ``grad`` (the gradient of a scalar loss with respect to each parameter).

Each check records the maximum absolute and relative difference (relative to the Linen
value) and passes when ``|bridge - linen| <= atol + rtol * |linen|`` everywhere; the
defaults ``atol=0, rtol=0`` ask for exact equality. The report prints as a table, and
``assert report.ok, report`` in pytest shows it.

>>> import jax, jax.numpy as jnp
>>> import flax.linen as nn
>>> import bridge as nnx
>>> from bridge.migrate import check_parity
>>> x = jnp.arange(8.0).reshape(2, 4)
>>> linen = nn.Dense(3)
>>> variables = linen.init(jax.random.key(0), x)
>>> port = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
>>> port.kernel.value = variables['params']['kernel']  # the same weights
>>> port.bias.value = variables['params']['bias']
>>> report = check_parity(linen, variables, port, x, grads=True)
>>> assert report.ok, report
>>> print(report)
ParityReport: ok, 5 checks within atol=0, rtol=0
mode  check   name           shape   max abs  max rel  result
-     weight  params/bias    (3,)    0        0        ok
-     weight  params/kernel  (4, 3)  0        0        ok
eval  output  out            (2, 3)  0        0        ok
eval  grad    bias           (3,)    0        0        ok
eval  grad    kernel         (4, 3)  0        0        ok

Modes: ``model.train()`` / ``model.eval()`` switch the bridge side (on a copy: the model
passed in is not changed); the Linen side gets ``linen_train_flag`` keyword arguments set
to ``True`` in train mode (``False`` in eval) and ``linen_eval_flag`` ones the other way
round (``deterministic``, ``use_running_average``), and in train mode the collections in
``linen_mutable`` (by default every collection of ``variables`` but ``params``) are
mutable. Both sides run eagerly, op by op.

Random layers draw their keys differently in Linen (``make_rng``) and bridge (``Rngs``
streams), so an active ``Dropout`` makes train-mode outputs differ; compare train mode with
dropout rates at 0, or rely on eval mode, where ``Dropout`` is the identity.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from bridge.graph import clone, iter_graph
from bridge.graph import state as graph_state
from bridge.module import Module
from bridge.rngs import RngState
from bridge.transforms.autodiff import grad as bridge_grad
from bridge.variables import (
  Intermediate,
  Variable,
  variable_name_from_type,
  variable_type_from_name,
)

MODES = ('train', 'eval')
Match = str | tp.Mapping[str, str | None] | tp.Callable[[str], str | None]


# -- the report ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Check:
  """One comparison of the report.

  ``mode`` is ``'train'``, ``'eval'`` or ``''`` (weights, before any call); ``kind`` is
  ``'weight'``, ``'output'``, ``'state'``, ``'intermediate'`` or ``'grad'``; ``name`` is
  the Linen-side name (``'out[0]'``, ``'params/Dense_0/kernel'``, a sown path) and
  ``bridge_name`` the bridge-side path when it differs from Linen's. ``max_abs`` and
  ``max_rel`` are ``None`` when there is nothing to compare (a value sown on one side only),
  ``inf`` when shapes or structures differ; ``note`` says why (a dtype difference is
  noted, not failed: a bfloat16 port is judged by the tolerances).

  >>> from bridge.migrate import Check
  >>> Check('eval', 'grad', 'Dense_0/kernel', 'linear1/kernel', (4, 3), 0.0, 0.0, True).label
  'Dense_0/kernel -> linear1/kernel'
  """
  mode: str
  kind: str
  name: str
  bridge_name: str | None
  shape: tuple | None
  max_abs: float | None
  max_rel: float | None
  ok: bool
  note: str = ''

  @property
  def label(self) -> str:
    """``name``, or ``'linen name -> bridge name'`` when the two differ."""
    return self.name if self.bridge_name is None else f'{self.name} -> {self.bridge_name}'


@dataclasses.dataclass(frozen=True)
class ParityReport:
  """The result of :func:`check_parity`: ``ok``, the ``checks``, ``failures`` and, per mode,
  the ``first_divergence`` among sown intermediates (a :class:`Check` or ``None``).

  ``str(report)`` and ``repr(report)`` are a table whose first line is the verdict and, on
  failure, whose last line names the first failing check and the first divergence, so
  that pytest's shortened assertion message (below ``-vv``) still shows them.

  >>> from bridge.migrate import Check, ParityReport
  >>> out = Check('eval', 'output', 'out', None, (2, 3), 0.5, 0.125, False)
  >>> report = ParityReport((out,), atol=0.0, rtol=0.0, first_divergence={'eval': None})
  >>> report.ok, report.failures == (out,)
  (False, True)
  >>> print(report)
  ParityReport: FAIL, 1 of 1 check outside atol=0, rtol=0
  mode  check   name  shape   max abs  max rel  result
  eval  output  out   (2, 3)  0.5      0.125    FAIL
  first failure: eval output out (max abs 0.5)
  """
  checks: tuple[Check, ...]
  atol: float
  rtol: float
  first_divergence: tp.Mapping[str, Check | None]

  @property
  def ok(self) -> bool:
    return all(c.ok for c in self.checks)

  @property
  def failures(self) -> tuple[Check, ...]:
    return tuple(c for c in self.checks if not c.ok)

  def table(self) -> str:
    """The report as a text table (what ``print(report)`` shows)."""
    first = {id(c) for c in self.first_divergence.values() if c is not None}
    rows = [('mode', 'check', 'name', 'shape', 'max abs', 'max rel', 'result')]
    for c in self.checks:
      result = ' '.join(filter(None, ('ok' if c.ok else 'FAIL', c.note,
                                      '<- first divergence' if id(c) in first else '')))
      rows.append((c.mode or '-', c.kind, c.label, '-' if c.shape is None else str(c.shape),
                   _fmt(c.max_abs), _fmt(c.max_rel), result))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [self._verdict()]
    lines += ['  '.join([*(s.ljust(w) for s, w in zip(r, widths, strict=False)), r[-1]])
              for r in rows]
    if not self.ok:
      lines.append(self._summary())
    return '\n'.join(lines)

  def _verdict(self) -> str:
    n = sum(c.max_abs is not None for c in self.checks)  # not the one-sided sown values
    bad = len(self.failures)
    tol = f'atol={self.atol:g}, rtol={self.rtol:g}'
    if not bad:
      return f'ParityReport: ok, {n} check{"s" * (n != 1)} within {tol}'
    return f'ParityReport: FAIL, {bad} of {n} check{"s" * (n != 1)} outside {tol}'

  def _summary(self) -> str:
    c = self.failures[0]
    where = ' '.join(filter(None, (c.mode, c.kind, c.label)))
    text = f'first failure: {where} (max abs {_fmt(c.max_abs)})'
    found = [(mode, d) for mode, d in self.first_divergence.items() if d is not None]
    if found:
      text += '; first divergence: ' + ', '.join(f'{mode} {d.label}' for mode, d in found)
    return text

  __str__ = table
  __repr__ = table


def _fmt(x: float | None) -> str:
  if x is None:
    return '-'
  return '0' if x == 0 else f'{x:.3g}'


# -- comparing values ---------------------------------------------------------------------
def _compare_arrays(a, b, atol: float, rtol: float):
  """``(max_abs, max_rel, ok, note)`` for Linen value ``a`` and bridge value ``b``."""
  a, b = np.asarray(a), np.asarray(b)
  note = f'dtype {a.dtype} vs {b.dtype}' if a.dtype != b.dtype else ''
  if a.shape != b.shape:
    return math.inf, math.inf, False, f'shape {a.shape} vs {b.shape}'
  wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) else np.float64
  a, b = a.astype(wide), b.astype(wide)
  same = (a == b) | (np.isnan(a) & np.isnan(b))
  diff = np.where(same, 0.0, np.abs(a - b))
  scale = np.abs(a)
  with np.errstate(divide='ignore', invalid='ignore'):
    rel = np.where(diff == 0, 0.0, diff / scale)
  ok = bool(np.all(diff <= atol + rtol * scale))  # False where diff is NaN
  if diff.size == 0:
    return 0.0, 0.0, True, note
  return float(np.max(diff)), float(np.max(rel)), ok, note


def _compare_trees(a, b, atol: float, rtol: float):
  """``(shape, max_abs, max_rel, ok, note)`` over all leaves of two pytrees."""
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  if tree_a != tree_b:
    return None, math.inf, math.inf, False, f'structure {tree_a} vs {tree_b}'
  results = [_compare_arrays(x, y, atol, rtol) for x, y in zip(leaves_a, leaves_b, strict=True)]
  shape = np.shape(leaves_a[0]) if len(leaves_a) == 1 else None
  notes = sorted({r[3] for r in results if r[3]})
  return (shape, max((r[0] for r in results), default=0.0),
          max((r[1] for r in results), default=0.0), all(r[2] for r in results),
          '; '.join(notes))


def _check(mode, kind, name, bridge_name, a, b, atol, rtol) -> Check:
  shape, max_abs, max_rel, ok, note = _compare_trees(a, b, atol, rtol)
  return Check(mode, kind, name, bridge_name, shape, max_abs, max_rel, ok, note)


def _output_checks(mode, a, b, atol, rtol) -> list[Check]:
  flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  flat_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
  if tree_a != tree_b:
    return [Check(mode, 'output', 'out', None, None, math.inf, math.inf, False,
                  f'structure {tree_a} vs {tree_b}')]
  return [_check(mode, 'output', 'out' + jax.tree_util.keystr(path), None, x, y, atol, rtol)
          for (path, x), (_, y) in zip(flat_a, flat_b, strict=True)]


# -- matching variables -------------------------------------------------------------------
def _join(path) -> str:
  return '/'.join(map(str, path))


def _flat_mapping(tree: tp.Mapping, prefix=()) -> dict[tuple, tp.Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, tp.Mapping):
      out.update(_flat_mapping(v, (*prefix, k)))
    else:
      out[(*prefix, k)] = v
  return out


def _linen_flat(variables: tp.Mapping) -> dict[tuple[str, str], tp.Any]:
  """``{(collection, 'a/b'): value}`` for every Linen variable but intermediates."""
  return {(collection, _join(path)): value
          for collection, tree in variables.items() if collection != 'intermediates'
          for path, value in _flat_mapping(meta.unbox(tree)).items()}


def _bridge_flat(model) -> dict[str, Variable]:
  """``{'a/b': Variable}`` for the bridge Variables that have a Linen counterpart (not RNG
  state, not sown intermediates)."""
  return {_join(path): v for path, v in graph_state(model).flat_state()
          if isinstance(v, Variable) and not isinstance(v, (RngState, Intermediate))}


def _renamer(match: Match) -> tp.Callable[[str], str | None]:
  if match == 'paths':
    return lambda path: path
  if isinstance(match, tp.Mapping):
    rules = dict(match)
    return lambda path: _rename(rules, path)
  if callable(match):
    return match
  raise ValueError(f"check_parity: match must be 'paths', a mapping of path prefixes or a "
                   f'function of the Linen path, got {match!r}.')


def _rename(rules: dict, path: str) -> str | None:
  """The longest prefix of ``path`` (in whole segments, ``''`` for the root) in ``rules``
  replaced by its target; ``None`` when the target is ``None``."""
  segments = path.split('/')
  for n in range(len(segments), -1, -1):
    prefix = '/'.join(segments[:n])
    if prefix in rules:
      target = rules[prefix]
      if target is None:
        return None
      return '/'.join(filter(None, (target, *segments[n:])))
  return path


def _same_kind(collection: str, var: Variable) -> bool:
  try:
    return isinstance(var, variable_type_from_name(collection, allow_register=False))
  except ValueError:
    return variable_name_from_type(type(var), allow_register=True) == collection


def _match_variables(linen_flat, bridge_flat, rename) -> dict[tuple[str, str], str]:
  """``{(collection, linen path): bridge path}``; anything unmatched is an error listing
  the paths."""
  matched, missing, wrong_kind = {}, [], []
  for collection, path in linen_flat:
    target = rename(path)
    if target is None:
      continue
    var = bridge_flat.get(target)
    if var is None:
      missing.append(f'{collection}/{path} -> {target}')
    elif not _same_kind(collection, var):
      wrong_kind.append(f'{collection}/{path} -> {target} ({type(var).__name__})')
    else:
      matched[collection, path] = target
  extra = sorted(set(bridge_flat) - set(matched.values()))
  if missing or wrong_kind or extra:
    parts = [f'{title}: {", ".join(items[:8])}{" ..." if len(items) > 8 else ""}'
             for title, items in (('Linen variables with no bridge Variable at that path',
                                   missing),
                                  ('of another kind on the bridge side', wrong_kind),
                                  ('bridge Variables no Linen variable maps to', extra))
             if items]
    raise ValueError(
      'check_parity: the variables of the two sides do not match. ' + '. '.join(parts) +
      ". Pass match={'linen/prefix': 'bridge/prefix', ...} (a target None skips a Linen "
      'subtree) or a function of the Linen path.')
  return matched


def _variable_checks(mode, kind, matched, linen_values, bridge_values, atol, rtol,
                     only=None) -> list[Check]:
  out = []
  for (collection, path), target in matched.items():
    if only is not None and collection not in only:
      continue
    name = path if kind == 'grad' else f'{collection}/{path}'
    out.append(_check(mode, kind, name, None if target == path else target,
                      linen_values[collection, path], bridge_values[target], atol, rtol))
  return out


# -- intermediates ------------------------------------------------------------------------
@contextlib.contextmanager
def _sow_log():
  """Records ``(module, name)`` for every bridge ``Module.sow`` call, in call order.

  A walk of the graph visits attributes in sorted order, not in call order, so the calls
  themselves are recorded: ``Module.sow`` is wrapped for the duration of the bridge call
  (one harness call at a time; not thread-safe).
  """
  events: list[tuple[Module, str]] = []
  original = Module.sow

  def sow(self, variable_type, name, value, *args, **kwargs):
    result = original(self, variable_type, name, value, *args, **kwargs)
    events.append((self, name))
    return result

  Module.sow = sow
  try:
    yield events
  finally:
    Module.sow = original


def _linen_sown(intermediates: tp.Mapping) -> list[tuple[str, tp.Any]]:
  """``(path, value)`` per sow call; Linen's nested dicts keep insertion (call) order."""
  out = []
  for path, value in _flat_mapping(intermediates).items():
    out += _elements(_join(path), value)
  return out


def _elements(name: str, value) -> list[tuple[str, tp.Any]]:
  """One entry per sown value: the items of the default tuple reduction, numbered from the
  second on."""
  if not isinstance(value, tuple):
    return [(name, value)]
  return [(name if k == 0 else f'{name}[{k}]', x) for k, x in enumerate(value)]


def _bridge_sown(model, events) -> list[tuple[str, tp.Any]]:
  """``(path, value)`` per sown value, in the order of ``events`` (then any Intermediate
  the log did not see, e.g. written by a ToNNX wrapper, in graph order)."""
  paths = {id(m): path for path, m in iter_graph(model) if isinstance(m, Module)}
  out, done = [], set()
  for module, name in events:
    if id(module) not in paths:  # a copy made inside a transform: found by the walk below
      continue
    path, var = (*paths[id(module)], name), getattr(module, name, None)
    if path in done or not isinstance(var, Intermediate):
      continue
    done.add(path)
    out += _elements(_join(path), var.get_value())
  for path, var in graph_state(model, Intermediate).flat_state():
    if path not in done:
      out += _elements(_join(path), var.get_value())
  return out


def _stem(name: str) -> str:
  """The sown name of a path: its last segment without the ``[k]`` occurrence suffix."""
  return name.rsplit('/', 1)[-1].split('[', 1)[0]


def _intermediate_checks(mode, linen_sown, bridge_sown, atol, rtol):
  """Checks pairing the k-th value sown under a name on each side, in Linen's call order,
  and the first that fails."""
  queues = collections.defaultdict(collections.deque)
  for name, value in bridge_sown:
    queues[_stem(name)].append((name, value))
  checks, first = [], None
  for name, value in linen_sown:
    queue = queues[_stem(name)]
    if not queue:
      checks.append(Check(mode, 'intermediate', name, None, np.shape(value) or None, None,
                          None, True, 'sown by linen only'))
      continue
    bridge_name, bridge_value = queue.popleft()
    check = _check(mode, 'intermediate', name, None if bridge_name == name else bridge_name,
                   value, bridge_value, atol, rtol)
    checks.append(check)
    if first is None and not check.ok:
      first = check
  for queue in queues.values():
    checks += [Check(mode, 'intermediate', name, None, np.shape(value) or None, None, None,
                     True, 'sown by bridge only') for name, value in queue]
  return checks, first


# -- running the two sides ----------------------------------------------------------------
def sum_outputs(outputs) -> jax.Array:
  """The default loss for gradients: the sum of every floating-point output, in at least
  float32.

  >>> import jax.numpy as jnp
  >>> from bridge.migrate import sum_outputs
  >>> float(sum_outputs({'logits': jnp.ones((2, 3)), 'ids': jnp.arange(3)}))
  6.0
  """
  leaves = [x for x in jax.tree.leaves(outputs) if jnp.issubdtype(jnp.result_type(x),
                                                                    jnp.inexact)]
  if not leaves:
    raise ValueError('check_parity: the outputs have no floating-point leaf to sum for '
                     'gradients; pass loss_fn=.')
  return sum(jnp.sum(x, dtype=jnp.promote_types(jnp.result_type(x), jnp.float32))
             for x in leaves)


def _as_names(flag: str | tp.Sequence[str]) -> tuple[str, ...]:
  return (flag,) if isinstance(flag, str) else tuple(flag)


@dataclasses.dataclass(frozen=True)
class _LinenCall:
  module: tp.Any
  variables: dict
  args: tuple
  kwargs: dict
  rngs: dict

  def apply(self, mode: str, mode_kwargs: dict, mutable: list, variables=None):
    """``(outputs, updated collections)``; a failing call is re-raised naming the mode."""
    try:
      return self.module.apply(self.variables if variables is None else variables,
                               *self.args, rngs=self.rngs, mutable=mutable,
                               **self.kwargs, **mode_kwargs)
    except Exception as e:
      raise ValueError(
        f'check_parity: the Linen {type(self.module).__name__} failed in {mode} mode (extra '
        f'keyword arguments {mode_kwargs}, mutable {mutable}): {type(e).__name__}: {e}. If '
        'it takes a train/deterministic argument, name it with linen_train_flag= or '
        'linen_eval_flag=; if train mode updates a collection, list it in '
        'linen_mutable=.') from e


def check_parity(linen_module, variables: tp.Mapping, bridge_module: Module, *args,
                 kwargs: tp.Mapping | None = None, modes: tp.Sequence[str] = ('eval',),
                 linen_train_flag: str | tp.Sequence[str] = (),
                 linen_eval_flag: str | tp.Sequence[str] = (),
                 linen_mutable: tp.Sequence[str] | None = None,
                 linen_rngs: tp.Mapping[str, jax.Array] | None = None, grads: bool = False,
                 loss_fn: tp.Callable[[tp.Any], jax.Array] = sum_outputs,
                 match: Match | None = None, atol: float = 0.0,
                 rtol: float = 0.0) -> ParityReport:
  """Runs ``linen_module.apply(variables, *args, **kwargs)`` and
  ``bridge_module(*args, **kwargs)`` in each of ``modes`` and compares them (see the module
  docstring for what is compared and an example).

  Args:
    linen_module, variables: the Linen model and its variables (``init``'s result).
    bridge_module: the bridge model; it is copied per mode and never changed.
    *args, kwargs: the inputs, given to both sides.
    modes: ``'eval'`` and/or ``'train'``, run in that order.
    linen_train_flag, linen_eval_flag: keyword argument(s) of the Linen call set to
      ``mode == 'train'`` (``train``) or ``mode == 'eval'`` (``deterministic``,
      ``use_running_average``).
    linen_mutable: the collections Linen may update in train mode (default: all in
      ``variables`` but ``params``); nothing but ``intermediates`` is mutable in eval.
    linen_rngs: Linen's ``rngs`` (default ``{'dropout': jax.random.key(0)}``).
    grads: also compare the gradients of ``loss_fn(outputs)`` (default: the sum of the
      outputs) with respect to the matched parameters.
    match: how Linen variables map to bridge Variables, which turns on the ``weight`` and
      ``state`` checks (``grads`` implies ``'paths'``): ``'paths'`` when the paths are the
      same once Linen's collection is dropped, as in a ``ToNNX`` wrapper or a port that
      kept Linen's names; a mapping of path prefixes (``{'Dense_0': 'linear1'}``,
      ``''`` is the root; a ``None`` target skips that Linen subtree); or a function from
      the Linen path (``'Dense_0/kernel'``) to the bridge path (or ``None``). A variable
      left unmatched on either side is an error that lists them.
    atol, rtol: the tolerances, ``|bridge - linen| <= atol + rtol * |linen|``.

  Returns:
    A :class:`ParityReport`.

  A port that sows ``h`` after the ReLU where Linen sows it before: the outputs agree,
  the intermediates show the difference:

  >>> import jax, jax.numpy as jnp
  >>> import flax.linen as nn
  >>> import bridge as nnx
  >>> class Linen(nn.Module):
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     h = nn.Dense(3, name='a')(x)
  ...     self.sow('intermediates', 'h', h)
  ...     return nn.Dense(2, name='b')(nn.relu(h))
  >>> class Port(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.a, self.b = nnx.Linear(4, 3, rngs=rngs), nnx.Linear(3, 2, rngs=rngs)
  ...   def __call__(self, x):
  ...     h = nnx.relu(self.a(x))
  ...     self.sow(nnx.Intermediate, 'h', h)
  ...     return self.b(h)
  >>> x = jnp.linspace(-2.0, 2.0, 8).reshape(2, 4)
  >>> linen = Linen()
  >>> variables = linen.init(jax.random.key(0), x)
  >>> port = Port(nnx.Rngs(0))
  >>> for name in ('a', 'b'):
  ...   for leaf in ('kernel', 'bias'):
  ...     getattr(getattr(port, name), leaf).value = variables['params'][name][leaf]
  >>> report = check_parity(linen, variables, port, x, match='paths')
  >>> report.ok, report.first_divergence['eval'].name
  (False, 'h')
  >>> [(c.kind, c.name) for c in report.failures]
  [('intermediate', 'h')]
  """
  unknown = [m for m in modes if m not in MODES]
  if unknown or not modes:
    raise ValueError(f"check_parity: modes must be some of {MODES}, got {tuple(modes)}.")
  if atol < 0 or rtol < 0:
    raise ValueError(f'check_parity: tolerances must be >= 0, got atol={atol}, rtol={rtol}.')
  variables = {c: tree for c, tree in variables.items() if c != 'intermediates'}
  linen = _LinenCall(linen_module, variables, args, dict(kwargs or {}),
                     dict(linen_rngs) if linen_rngs is not None else
                     {'dropout': jax.random.key(0)})
  train_flags, eval_flags = _as_names(linen_train_flag), _as_names(linen_eval_flag)
  train_mutable = list(linen_mutable) if linen_mutable is not None else \
    [c for c in variables if c != 'params']
  if match is None and grads:
    match = 'paths'
  matched = None
  checks: list[Check] = []
  if match is not None:
    linen_start = _linen_flat(variables)
    bridge_start = _bridge_flat(bridge_module)
    matched = _match_variables(linen_start, bridge_start, _renamer(match))
    checks += _variable_checks('', 'weight', matched, linen_start,
                               {k: v.get_value() for k, v in bridge_start.items()}, atol, rtol)

  first_divergence = {}
  for mode in modes:
    mode_kwargs = {**{f: mode == 'train' for f in train_flags},
                   **{f: mode == 'eval' for f in eval_flags}}
    mutable = train_mutable if mode == 'train' else []
    linen_out, updates = linen.apply(mode, mode_kwargs, [*mutable, 'intermediates'])
    model = _copy_in_mode(bridge_module, mode)
    with _sow_log() as events:
      bridge_out = model(*args, **linen.kwargs)
    checks += _output_checks(mode, linen_out, bridge_out, atol, rtol)
    if matched is not None:
      linen_after = _linen_flat({**variables, **updates})
      bridge_after = {k: v.get_value() for k, v in _bridge_flat(model).items()}
      checks += _variable_checks(mode, 'state', matched, linen_after, bridge_after, atol, rtol,
                                 only=set(variables) - {'params'})
    sown, first_divergence[mode] = _intermediate_checks(
      mode, _linen_sown(updates.get('intermediates', {})), _bridge_sown(model, events),
      atol, rtol)
    checks += sown
    if grads:
      checks += _grad_checks(mode, linen, mode_kwargs, mutable, bridge_module, loss_fn,
                             matched, atol, rtol)
  return ParityReport(tuple(checks), atol, rtol, first_divergence)


def _copy_in_mode(model: Module, mode: str) -> Module:
  model = clone(model)
  getattr(model, mode)()
  return model


def _grad_checks(mode, linen: _LinenCall, mode_kwargs, mutable, bridge_module, loss_fn,
                 matched, atol, rtol) -> list[Check]:
  if 'params' not in linen.variables:
    raise ValueError("check_parity: grads=True but the Linen variables have no 'params'.")
  rest = {c: t for c, t in linen.variables.items() if c != 'params'}

  def linen_loss(params):
    out, _ = linen.apply(mode, mode_kwargs, mutable, variables={**rest, 'params': params})
    return loss_fn(out)

  linen_grads = jax.grad(linen_loss)(linen.variables['params'])
  model = _copy_in_mode(bridge_module, mode)
  bridge_grads = bridge_grad(lambda m: loss_fn(m(*linen.args, **linen.kwargs)),
                             argnums=0)(model)
  linen_flat = _linen_flat({'params': linen_grads})
  bridge_flat = {_join(path): v.get_value() if isinstance(v, Variable) else v
                 for path, v in bridge_grads.flat_state()}
  return _variable_checks(mode, 'grad', matched, linen_flat, bridge_flat, atol, rtol,
                          only={'params'})


__all__ = ['Check', 'ParityReport', 'check_parity', 'sum_outputs']
