"""Sharding helpers (flax.nnx's ``spmd`` module): partition specs from Variable metadata,
eager sharding of new Variables, and abstract models with their shardings.

With eager sharding on (the default, as in flax.nnx), a Variable created with
``out_sharding`` metadata while a mesh is set (``jax.set_mesh``, or the Variable's ``mesh``
metadata) is placed on that mesh right away: resharded on a mesh of Explicit axes,
constrained with ``with_sharding_constraint`` on Auto axes. Logical names go through the
``logical_axis_rules`` in effect and the Variable's ``sharding_rules``.

>>> import jax, jax.numpy as jnp
>>> import bridge as nnx
>>> mesh = jax.make_mesh((2, 4), ('a', 'b'))
>>> with jax.set_mesh(mesh):
...   w = nnx.Param(jnp.zeros((4, 8)), out_sharding=('a', 'b'))
>>> w[...].sharding.spec
P('a', 'b')
"""

from __future__ import annotations

import threading
import typing as tp
import warnings

import jax

from bridge import variables as variablelib
from bridge.graph import split
from bridge.graph_map import map as graph_map
from bridge.graph_mode import ConfigContext
from bridge.interop.metadata import (
  PARTITION_NAME,
  get_named_sharding,
  get_partition_spec,
  logical_axis_rules,
  partition_spec_of,
  with_partitioning,
)
from bridge.transforms.lift import eval_shape
from bridge.variables import Variable

A = tp.TypeVar('A')


class _EagerStack(threading.local):
  def __init__(self):
    self.values: list[bool] = []


_EAGER = _EagerStack()


class use_eager_sharding(ConfigContext):  # noqa: N801 (flax.nnx name)
  """Sets whether new Variables with ``out_sharding`` are sharded when created (default
  ``True``): bare until set again, for a ``with`` block, or per call as a decorator.

  >>> import bridge as nnx
  >>> with nnx.use_eager_sharding(False):
  ...   nnx.using_eager_sharding()
  False
  >>> nnx.using_eager_sharding()
  True
  """

  default = True

  @classmethod
  def _stack(cls):
    return _EAGER.values


def using_eager_sharding() -> bool:
  """Whether new Variables are sharded eagerly (see ``use_eager_sharding``).

  >>> import bridge as nnx
  >>> nnx.using_eager_sharding()
  True
  """
  return use_eager_sharding.current_value()


def _mesh_of(metadata: tp.Mapping):
  mesh = metadata.get('mesh')
  if mesh is not None:
    return mesh
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def _shard_on_create(value, metadata: tp.Mapping):
  """Places ``value`` as ``metadata['out_sharding']`` says, if eager sharding is on and a
  mesh is known (without one the value is left as it is: flax.nnx raises there)."""
  if not using_eager_sharding() or not hasattr(value, 'shape'):
    return value
  mesh = _mesh_of(metadata)
  if mesh is None:
    return value
  sharding = jax.sharding.NamedSharding(mesh, partition_spec_of(metadata))
  if mesh.are_all_axes_explicit:
    return jax.sharding.reshard(value, sharding)
  if mesh.are_all_axes_auto:
    return jax.lax.with_sharding_constraint(value, sharding)
  raise ValueError(f'Cannot shard a Variable with out_sharding={metadata["out_sharding"]!r} '
                   'eagerly: the mesh must have all axes Explicit or all axes Auto, got '
                   f'{mesh.axis_types}.')


variablelib.shard_on_create = _shard_on_create


def as_abstract(tree: A, graph: bool | None = None) -> A:
  """``tree`` with each Variable that has ``out_sharding`` metadata and holds a
  ``ShapeDtypeStruct`` without a sharding given one: a ``NamedSharding`` on its ``mesh``
  metadata or the current abstract mesh.

  >>> import jax
  >>> import bridge as nnx
  >>> mesh = jax.make_mesh((2, 4), ('a', 'b'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  >>> with jax.set_mesh(mesh):
  ...   model = nnx.eval_shape(lambda: nnx.Linear(4, 8, rngs=nnx.Rngs(0),
  ...                          kernel_metadata={'out_sharding': ('a', 'b')}))
  ...   model = nnx.as_abstract(model)
  >>> model.kernel[...].sharding.spec
  P('a', 'b')
  """
  def add_sharding(_path, x):
    if not isinstance(x, Variable) or 'out_sharding' not in x.get_metadata():
      return x
    value = x.get_value()
    if not (hasattr(value, 'shape') and hasattr(value, 'dtype')) \
        or getattr(value, 'sharding', None) is not None:
      return x
    mesh = x.get_metadata('mesh', None) or jax.sharding.get_abstract_mesh()
    sharding = jax.sharding.NamedSharding(
      mesh, partition_spec_of(x.get_metadata()) or jax.sharding.PartitionSpec())
    return x.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))
  return graph_map(add_sharding, tree, graph=graph)


def abstract_with_sharding(tree: A, graph: bool | None = None) -> A:
  """Deprecated name of ``as_abstract`` (warns, as flax.nnx does).

  >>> import warnings
  >>> import bridge as nnx
  >>> with warnings.catch_warnings(record=True) as caught:
  ...   warnings.simplefilter('always')
  ...   _ = nnx.abstract_with_sharding(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
  >>> str(caught[0].message)
  'This function is deprecated. Use as_abstract instead.'
  """
  warnings.warn('This function is deprecated. Use as_abstract instead.', DeprecationWarning,
                stacklevel=2)
  return as_abstract(tree, graph=graph)


def get_abstract_model(init_fn, mesh, *, graph: bool | None = None):
  """The GraphDef and abstract State of the model ``init_fn()`` builds, without computing
  it: each leaf a ``ShapeDtypeStruct`` with its ``NamedSharding`` on ``mesh`` (from the
  Variables' sharding metadata). Feed the shardings to ``jax.jit(out_shardings=...)`` to
  create the model sharded.

  >>> import jax
  >>> import bridge as nnx
  >>> mesh = jax.make_mesh((2, 4), ('a', 'b'))
  >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, 'b'))
  >>> graphdef, state = nnx.get_abstract_model(
  ...   lambda: nnx.Linear(4, 8, kernel_init=init, rngs=nnx.Rngs(0)), mesh)
  >>> state['kernel'][...].sharding.spec, state['kernel'][...].shape
  (P(None, 'b'), (4, 8))
  """
  with jax.set_mesh(mesh):
    model = eval_shape(init_fn, graph=graph)
    graphdef, state = split(model, graph=graph)
    state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      state, get_named_sharding(state, mesh))
  return graphdef, state


__all__ = ('PARTITION_NAME', 'abstract_with_sharding', 'as_abstract', 'get_abstract_model',
           'get_named_sharding', 'get_partition_spec', 'logical_axis_rules',
           'use_eager_sharding', 'using_eager_sharding', 'with_partitioning')
