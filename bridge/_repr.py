"""Readable reprs for Variables, States and Objects, in flax.nnx's layout.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> print(nnx.Param(jnp.zeros(3)))
Param( # 3 (12 B)
  value=Array([0., 0., 0.], dtype=float32)
)
"""

from __future__ import annotations

import jax
import numpy as np


def _indent(text: str, by: str = '  ') -> str:
  return text.replace('\n', '\n' + by)


def _size_comment(values) -> str:
  arrays = [x for x in jax.tree.leaves(values) if hasattr(x, 'size') and hasattr(x, 'dtype')]
  if not arrays:
    return ''
  size = sum(int(x.size) for x in arrays)
  nbytes = sum(int(x.size) * np.dtype(x.dtype).itemsize if not jax.dtypes.issubdtype(
    x.dtype, jax.dtypes.prng_key) else int(x.size) * 8 for x in arrays)
  return f' # {size:,} ({_bytes(nbytes)})'


def _bytes(n: int) -> str:
  for unit in ('B', 'KB', 'MB', 'GB'):
    if n < 1000 or unit == 'GB':
      return f'{n:.1f} {unit}'.replace('.0 ', ' ') if unit != 'B' else f'{n} B'
    n /= 1000
  return f'{n} B'  # pragma: no cover


def variable_repr(v, *, compact_arrays: bool = False) -> str:
  value = v._raw_value
  shown = _array_summary(value) if compact_arrays else repr(value)
  lines = [f'value={shown}', *(f'{k}={m!r}' for k, m in v._metadata.items())]
  body = ',\n'.join(lines)
  return f'{type(v).__name__}({_size_comment(value)}\n  {_indent(body)}\n)'


def _array_summary(value) -> str:
  if isinstance(value, (jax.Array, np.ndarray)):
    return f'Array(shape={value.shape}, dtype={value.dtype})'
  return repr(value)


def state_repr(state) -> str:
  from bridge.state import State

  def walk(s) -> str:
    if not len(s):
      return '{}'
    items = []
    for k, v in s.items():
      inner = walk(v) if isinstance(v, State) else repr(v)
      items.append(f'{k!r}: {_indent(inner)}')
    return '{\n  ' + ',\n  '.join(items) + '\n}'

  return f'State({walk(state)})'


def _object_size_comment(obj) -> str:
  """``' # Param: 9 (36 B)'``: every Variable under ``obj`` (once), by type, as flax.nnx
  shows it, with a ``Total`` when there are several types."""
  from bridge.graph import iter_graph
  from bridge.variables import Variable

  by_type: dict[str, list] = {}
  for _, x in iter_graph(obj):
    if isinstance(x, Variable):
      by_type.setdefault(type(x).__name__, []).append(x._raw_value)
  if not by_type:
    return ''
  parts = [f'{name}:{_size_comment(values)[2:]}' for name, values in by_type.items()]
  if len(parts) > 1:
    parts.append(f'Total:{_size_comment(list(by_type.values()))[2:]}')
  return ' # ' + ', '.join(parts)


def object_repr(obj) -> str:
  from bridge.variables import Variable

  children = obj._graph_children()
  lines = []
  for k, v in children.items():
    if isinstance(v, Variable):
      shown = variable_repr(v, compact_arrays=True)
    elif isinstance(v, (jax.Array, np.ndarray)):
      shown = _array_summary(v)
    else:
      shown = repr(v)
    lines.append(f'{k}={_indent(shown)}')
  if not lines:
    return f'{type(obj).__name__}()'
  return f'{type(obj).__name__}({_object_size_comment(obj)}\n  ' + ',\n  '.join(lines) + '\n)'
