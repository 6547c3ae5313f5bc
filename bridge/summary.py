"""``tabulate``: a table of the calls a model makes, with shapes and Variable counts.

Each row is one call of a Module method (the first call per Module and input shapes), in
call order: the Module's path and type, input and output shapes, and per Variable type the
Module's own Variables and the count and bytes of all Variables under it. The footer sums
the whole model. Rendering uses ``rich`` (installed with flax).

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> model = nnx.Sequential(nnx.Linear(2, 4, rngs=nnx.Rngs(0)), nnx.relu)
>>> table = nnx.tabulate(model, jnp.ones((1, 2)), console_kwargs={'force_terminal': False})
>>> 'Total Parameters: 12 (48 B)' in table
True
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import itertools
import typing as tp
from collections import defaultdict
from types import MappingProxyType

import jax
import jax.numpy as jnp

from bridge.graph import clone, merge, split
from bridge.graph import state as _state
from bridge.object import Object
from bridge.rngs import RngState, RngStream
from bridge.variables import Variable

PathParts = tuple[tp.Hashable, ...]


@dataclasses.dataclass
class CallInfo:
  """One recorded method call: what ``row_filter`` sees and a table row shows."""
  call_order: int
  object_id: int
  type: type
  path: PathParts
  inputs_repr: str
  outputs: tp.Any
  flops: int | None
  vjp_flops: int | None


def filter_rng_streams(row: CallInfo) -> bool:
  """``tabulate``'s default ``row_filter``: leaves out the calls of ``RngStream``\\ s.

  >>> import bridge as nnx
  >>> row = nnx.summary.CallInfo(0, 0, nnx.RngStream, ('rngs',), '', None, None, None)
  >>> filter_rng_streams(row)
  False
  """
  return not issubclass(row.type, RngStream)


# -- sizes --------------------------------------------------------------------------------
def _bytes_repr(num_bytes: int) -> str:
  for scale, unit in ((1e9, 'GB'), (1e6, 'MB'), (1e3, 'KB')):
    if num_bytes > scale:
      return f'{num_bytes / scale:,.1f} {unit}'
  return f'{num_bytes:,} B'


@dataclasses.dataclass(frozen=True)
class _Size:
  count: int = 0
  nbytes: int = 0

  @classmethod
  def of(cls, value) -> _Size:
    leaves = [x for x in jax.tree.leaves(value) if hasattr(x, 'size') and hasattr(x, 'dtype')]
    return cls(sum(int(x.size) for x in leaves),
               sum(int(x.size) * x.dtype.itemsize for x in leaves))

  def __add__(self, other: _Size) -> _Size:
    return _Size(self.count + other.count, self.nbytes + other.nbytes)

  def __str__(self):
    return f'{self.count:,} [dim]({_bytes_repr(self.nbytes)})[/dim]'


def _column_type(var: Variable) -> type:
  return RngState if isinstance(var, RngState) else type(var)


@dataclasses.dataclass
class _NodeInfo:
  path: PathParts
  totals: dict = dataclasses.field(default_factory=dict)  # column type -> _Size
  own: defaultdict = dataclasses.field(default_factory=lambda: defaultdict(dict))


def _collect(node, path: PathParts, infos: dict[int, _NodeInfo | None]) -> _NodeInfo:
  """Per node (first path wins): its own Variables by column type and the sizes of all
  Variables under it, each Variable and node counted once."""
  info = infos[id(node)] = _NodeInfo(path)
  if isinstance(node, Object):
    children = sorted(node._graph_children().items(), key=lambda kv: str(kv[0]))
  elif isinstance(node, dict):
    children = list(node.items())
  else:
    children = list(enumerate(node))
  for key, value in children:
    if id(value) in infos:
      continue
    if isinstance(value, Variable):
      infos[id(value)] = None
      column = _column_type(value)
      info.own[column][key] = value
      info.totals[column] = info.totals.get(column, _Size()) + _Size.of(value.get_value())
    elif isinstance(value, (Object, list, tuple, dict)):
      child = _collect(value, (*path, key), infos)
      for column, size in child.totals.items():
        info.totals[column] = info.totals.get(column, _Size()) + size
  return info


# -- text of inputs, outputs and Variables ------------------------------------------------
def _array_text(shape, dtype) -> str:
  return f"[dim]{dtype}[/dim][{','.join(map(str, shape))}]"


def _describe(x):
  if hasattr(x, 'shape') and hasattr(x, 'dtype') and not isinstance(x, Variable):
    return _array_text(jnp.shape(x), x.dtype)
  if isinstance(x, Object):
    return f'{type(x).__name__}(...)'
  if isinstance(x, type):
    return f'type[{x.__name__}]'
  return x if isinstance(x, str) else repr(x)


def _to_plain(tree):
  """Lists and dicts of text: arrays as ``dtype[shape]``, Objects as ``Type(...)``."""
  if isinstance(tree, dict):  # in key order and without None entries, as jax flattens dicts
    return {k: _to_plain(tree[k]) for k in jax.tree_util.tree_structure(
      dict.fromkeys(tree, 0)).node_data()[1] if tree[k] is not None}
  if isinstance(tree, (list, tuple)):
    return [_to_plain(v) for v in tree]
  return _describe(tree)


def _yaml(value, indent: int = 0) -> str:
  """A small YAML-style text of plain lists, dicts and strings (block style)."""
  pad = ' ' * indent
  if isinstance(value, dict):
    lines = []
    for k, v in value.items():
      if isinstance(v, (dict, list)) and v:
        lines.append(f'{pad}{k}:\n{_yaml(v, indent + (2 if isinstance(v, dict) else 0))}')
      else:
        lines.append(f'{pad}{k}: {_yaml(v) if v or v == 0 else ""}'.rstrip())
    return '\n'.join(lines)
  if isinstance(value, list):
    return '\n'.join(f'{pad}- ' + _yaml(v, indent + 2).lstrip() for v in value)
  return f'{pad}{value}'


def _text(value) -> str:
  if value is None or (hasattr(value, '__len__') and len(value) == 0):
    return ''
  return _yaml(_to_plain(value))


def _inputs_text(args: tuple, kwargs: dict) -> str:
  parts = []
  if args:
    parts.append(_text(args[0] if len(args) == 1 and not kwargs else list(args)))
  if kwargs:
    parts.append(_text(kwargs))
  return '\n'.join(parts)


def _variables_text(own: dict, total: _Size | None) -> str:
  attributes = {}
  for name, var in own.items():
    value = var.get_value()
    text = _array_text(jnp.shape(value), value.dtype) if hasattr(value, 'dtype') else ''
    metadata = var.get_metadata()
    if metadata:
      attributes[name] = _to_plain({'value': text, **metadata})
    elif text:
      attributes[name] = text
  out = _yaml(_to_plain(attributes)) + '\n\n' if attributes else ''
  return out + (f'[bold]{total}[/bold]' if total is not None and total.count else '')


# -- recording calls ----------------------------------------------------------------------
def _flops(lowered) -> int:
  cost = lowered.cost_analysis() or lowered.compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0] if cost else None
  return int(cost['flops']) if cost and 'flops' in cost else 0


class _Recorder:
  def __init__(self, infos, compute_flops: bool, compute_vjp_flops: bool):
    self.infos = infos
    self.compute_flops = compute_flops
    self.compute_vjp_flops = compute_vjp_flops
    self.rows: list[CallInfo] = []
    self.seen: set = set()
    self.order = itertools.count()
    self.paused = False

  def _cost(self, fn, obj, args, kwargs, vjp: bool) -> int:
    graphdef, state = split((obj, args, kwargs))

    def pure(state):
      o, a, k = merge(graphdef, state)
      return fn(o, *a, **k)

    def pure_vjp(state):
      out, f_vjp = jax.vjp(pure, state)
      return f_vjp(out)

    self.paused = True
    try:
      return _flops(jax.jit(pure_vjp if vjp else pure).lower(state))
    finally:
      self.paused = False

  def wrap(self, fn):
    recorder = self

    def recording(obj, *args, **kwargs):
      info = recorder.infos.get(id(obj))
      if recorder.paused or info is None:
        return fn(obj, *args, **kwargs)
      path = info.path if fn.__name__ == '__call__' else (*info.path, fn.__name__)
      inputs = _inputs_text(args, kwargs)
      order = next(recorder.order)
      flops = recorder._cost(fn, obj, args, kwargs, False) if recorder.compute_flops else None
      vjp_flops = (recorder._cost(fn, obj, args, kwargs, True)
                   if recorder.compute_vjp_flops else None)
      out = fn(obj, *args, **kwargs)
      key = (inputs, id(obj), fn.__name__)
      if key not in recorder.seen:
        recorder.seen.add(key)
        recorder.rows.append(CallInfo(order, id(obj), type(obj), path, inputs, _to_plain(out),
                                      flops, vjp_flops))
      return out

    recording.__name__ = fn.__name__
    recording.__wrapped__ = fn
    return recording


def _patch(classes, recorder: _Recorder) -> list[tuple[type, str, tp.Any]]:
  """Wraps the public methods (and ``__call__``) of each class to record their calls;
  returns ``(class, name, own definition or None)`` to undo it."""
  methods = [(cls, name, fn) for cls in classes
             for name, fn in inspect.getmembers(cls, inspect.isfunction)
             if not name.startswith('_') or name == '__call__']
  undo = [(cls, name, vars(cls).get(name)) for cls, name, _ in methods]
  for cls, name, fn in methods:
    setattr(cls, name, recorder.wrap(fn))
  return undo


def _unpatch(undo) -> None:
  for cls, name, own in undo:
    if own is None:
      delattr(cls, name)
    else:
      setattr(cls, name, own)


def tabulate(obj, *input_args, depth: int | None = None, method: str = '__call__',
             row_filter: tp.Callable[[CallInfo], bool] = filter_rng_streams,
             table_kwargs: tp.Mapping[str, tp.Any] = MappingProxyType({}),
             column_kwargs: tp.Mapping[str, tp.Any] = MappingProxyType({}),
             console_kwargs: tp.Mapping[str, tp.Any] = MappingProxyType({}),
             compute_flops: bool = False, compute_vjp_flops: bool = False,
             **input_kwargs) -> str:
  """A table of the calls ``obj.<method>(*input_args, **input_kwargs)`` makes (see the
  module docstring), rendered with ``rich`` as a string.

  The call runs on a copy of ``obj``, which is not changed. ``depth`` keeps rows at most
  that deep; ``row_filter`` selects rows (by default all but ``RngStream`` calls);
  ``table_kwargs``, ``column_kwargs`` and ``console_kwargs`` go to ``rich.table.Table``,
  its ``add_column`` and ``rich.console.Console`` (default ``force_terminal=True``);
  ``compute_flops``/``compute_vjp_flops`` add columns with XLA's estimate of each call's
  forward/backward FLOPs.

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> model = nnx.Sequential(nnx.Linear(2, 4, rngs=nnx.Rngs(0)), nnx.relu)
  >>> table = nnx.tabulate(model, jnp.ones((1, 2)), console_kwargs={'force_terminal': False})
  >>> for line in table.splitlines()[1:12]:
  ...   print(line.rstrip())
  ┏━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━┓
  ┃ path     ┃ type       ┃ inputs       ┃ outputs      ┃ Param                ┃
  ┡━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━┩
  │          │ Sequential │ float32[1,2] │ float32[1,4] │ 12 (48 B)            │
  ├──────────┼────────────┼──────────────┼──────────────┼──────────────────────┤
  │ layers/0 │ Linear     │ float32[1,2] │ float32[1,4] │ bias: float32[4]     │
  │          │            │              │              │ kernel: float32[2,4] │
  │          │            │              │              │                      │
  │          │            │              │              │ 12 (48 B)            │
  ├──────────┼────────────┼──────────────┼──────────────┼──────────────────────┤
  │          │            │              │        Total │ 12 (48 B)            │
  """
  import rich.console
  import rich.table
  import rich.text

  if not hasattr(obj, method):
    raise AttributeError(f'tabulate: {type(obj).__name__} has no method {method!r} to call.')
  obj = clone(obj)
  infos: dict[int, _NodeInfo | None] = {}
  _collect(obj, (), infos)
  columns = sorted({_column_type(v) for _, v in _state(obj).flat_state()
                    if isinstance(v, Variable)}, key=lambda t: t.__name__)
  classes = {type(x) for x in _graph_objects(obj)}
  recorder = _Recorder({k: v for k, v in infos.items() if v is not None}, compute_flops,
                       compute_vjp_flops)
  undo = _patch(classes, recorder)
  try:
    getattr(obj, method)(*input_args, **input_kwargs)
  finally:
    _unpatch(undo)
  rows = sorted(recorder.rows, key=lambda r: r.call_order)
  rows = [r for r in rows if (depth is None or len(r.path) <= depth) and row_filter(r)]

  table = rich.table.Table(show_header=True, show_lines=True, show_footer=True,
                           title=f'{type(obj).__name__} Summary', **table_kwargs)
  headers = ['path', 'type', 'inputs', 'outputs']
  headers += ['flops'] * compute_flops + ['vjp_flops'] * compute_vjp_flops
  for header in [*headers, *(t.__name__ for t in columns)]:
    table.add_column(header, **column_kwargs)
  for row in rows:
    info = recorder.infos[row.object_id]
    cells = ['/'.join(map(str, row.path)), row.type.__name__, row.inputs_repr,
             _text(row.outputs)]
    cells += [str(row.flops)] * compute_flops + [str(row.vjp_flops)] * compute_vjp_flops
    cells += [_variables_text(info.own.get(t, {}), info.totals.get(t)) for t in columns]
    table.add_row(*cells)
  table.columns[len(headers) - 1].footer = rich.text.Text.from_markup('Total', justify='right')
  root = infos[id(obj)]
  for i, column in enumerate(columns):
    table.columns[len(headers) + i].footer = str(root.totals[column])
  table.caption_style = 'bold'
  table.caption = f'\nTotal Parameters: {sum(root.totals.values(), _Size())}'

  out = io.StringIO()
  rich.console.Console(file=out, **{'force_terminal': True, **console_kwargs}).print(table)
  return out.getvalue()


def _graph_objects(node) -> tp.Iterator[Object]:
  seen: set[int] = set()
  stack = [node]
  while stack:
    x = stack.pop()
    if id(x) in seen:
      continue
    seen.add(id(x))
    if isinstance(x, Object):
      yield x
      stack.extend(x._graph_children().values())
    elif isinstance(x, (list, tuple)):
      stack.extend(x)
    elif isinstance(x, dict):
      stack.extend(x.values())
