"""``transform_metadata``: run a function with a mapped axis taken out of its Variables'
sharding metadata, for code that maps an axis by hand (``jax.lax.map``, a manual loop over
stacked layers) and wants the layers' metadata to look like one layer's.

The function gets copies of its Module arguments whose Variables lost ``partition`` at
their ``in_axes`` (their axis hooks run too); on return the axis is added back to those and
to the Variables of the output (at ``out_axes``), and the values the function wrote are
written to the caller's Variables, whose metadata is never touched.
"""

from __future__ import annotations

import functools

import jax

from bridge.graph import flatten, unflatten
from bridge.graph_mode import resolve_graph
from bridge.transforms._boundary import is_graph
from bridge.transforms.iteration import PARTITION_NAME, _axis_change, _leaves_of, _specs
from bridge.variables import Variable


def _axes_per_value(values: tuple, axes) -> list:
  """``(Variables of the graph nodes in a value, its axis)`` for each of ``values``."""
  out = []
  for value, axis in zip(values, _specs(axes, len(values)), strict=True):
    nodes = tuple(x for x in jax.tree.leaves(value, is_leaf=is_graph) if is_graph(x))
    out.append(([v for v in _leaves_of(nodes) if isinstance(v, Variable)], axis))
  return out


def transform_metadata(f=None, *, in_axes=0, out_axes=0, partition: str | None,
                       graph: bool | None = None):
  """Wraps ``f`` as the module docstring says (a decorator, with or without ``f``).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> class Stack(nnx.Module):
  ...   def __init__(self):
  ...     self.w = nnx.Param(jnp.ones((4, 3)), out_sharding=('layers', 'model'))
  >>> @nnx.transform_metadata(in_axes=0, partition='layers')
  ... def one_layer_view(m):
  ...   return m.w.get_metadata()['out_sharding']
  >>> one_layer_view(Stack())
  ('model',)
  """
  resolve_graph(graph)
  if f is None:
    return functools.partial(transform_metadata, in_axes=in_axes, out_axes=out_axes,
                             partition=partition, graph=graph)
  metadata = {PARTITION_NAME: partition}

  def change(groups, adding: bool):
    for variables, axis in groups:
      _axis_change(variables, [axis] * len(variables), partition, adding, metadata)

  @functools.wraps(f)
  def wrapper(*args):
    graphdef, leaves = flatten(args)
    copies = [v.replace() if isinstance(v, Variable) else v for _, v in leaves]
    copied_args = unflatten(graphdef, copies)
    groups = _axes_per_value(copied_args, in_axes)
    change(groups, adding=False)
    out = f(*copied_args)
    change(groups, adding=True)
    outs = out if isinstance(out_axes, (tuple, list)) else (out,)
    change(_axes_per_value(tuple(outs), out_axes), adding=True)
    for (_, original), copy in zip(leaves, copies, strict=True):
      if isinstance(original, Variable) and copy.raw_value is not original.raw_value:
        original.raw_value = copy.raw_value
    return out

  return wrapper
