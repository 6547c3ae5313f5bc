"""Linen metadata boxes <-> Variable metadata.

A Linen variable may be boxed in an ``AxisMetadata`` (``nn.Partitioned``,
``nn.LogicallyPartitioned``, or any user box). Going to ``bridge`` the box becomes metadata
of the Variable: ``Partitioned`` names become ``out_sharding`` (and ``mesh``),
``LogicallyPartitioned`` rules become ``sharding_rules``, and any other box is kept whole
(as ``linen_box``, emptied of its value). Coming back, the same box is rebuilt around the
current value; a Variable with other metadata comes back as an ``NNXMeta`` box, a plain
one as its raw array.

>>> import jax.numpy as jnp
>>> import flax.linen as nn
>>> import bridge
>>> from bridge.interop.metadata import to_linen_var, to_nnx_var
>>> box = nn.Partitioned(jnp.ones((2, 3)), names=('in', 'out'))
>>> var = to_nnx_var('params', box)
>>> type(var).__name__, var.out_sharding
('Param', ('in', 'out'))
>>> back = to_linen_var(var)
>>> type(back).__name__, back.names
('Partitioned', ('in', 'out'))
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
from flax import struct
from flax.core import meta
from flax.core import spmd as core_spmd
from flax.core.spmd import logical_axis_rules  # noqa: F401 (the context Linen uses too)

from bridge.state import State, map_state
from bridge.variables import Variable, variable_type_from_name, with_metadata

PARTITION_NAME = meta.PARTITION_NAME
# fields of nn.Partitioned / nn.LogicallyPartitioned and the Variable metadata they become
_BOX_TO_VAR = {'names': 'out_sharding', 'rules': 'sharding_rules'}
_HOOKS = ('on_set_value', 'on_get_value', 'on_create_value', 'on_add_axis', 'on_remove_axis')


class NNXMeta(struct.PyTreeNode, meta.AxisMetadata):
  """The Linen box of a ``bridge`` Variable that carries metadata: its type, value and
  metadata travel through Linen and come back as the same Variable. ``nn.unbox`` and
  ``nn.get_partition_spec`` work on it; ``nn.vmap``/``nn.scan`` add and remove axes
  through it (sharding names and the Variable's axis hooks)."""

  var_type: type = struct.field(pytree_node=False)
  value: tp.Any = struct.field(pytree_node=True)
  metadata: dict = struct.field(pytree_node=False)

  def unbox(self):
    return self.value

  def replace_boxed(self, val):
    return self.replace(value=val)

  def _with_axis(self, index: int, params: dict, adding: bool) -> NNXMeta:
    var = self.to_nnx_variable()
    name = params.get(PARTITION_NAME) if params else None
    key = next((k for k in ('out_sharding', 'sharding') if k in var._metadata), None)
    if name is not None and key is not None and var._metadata[key] is not None:
      spec = list(var._metadata[key])
      if adding:
        spec.insert(index, name)
      else:
        spec.pop(index)
      var.set_metadata(key, tuple(spec))
    (var.add_axis if adding else var.remove_axis)(index, name)
    return self.replace(metadata=var.get_metadata())

  def add_axis(self, index: int, params: dict) -> NNXMeta:
    return self._with_axis(index, params, adding=True)

  def remove_axis(self, index: int, params: dict) -> NNXMeta:
    return self._with_axis(index, params, adding=False)

  def get_partition_spec(self) -> jax.sharding.PartitionSpec:
    return partition_spec_of(self.metadata) or jax.sharding.PartitionSpec()

  def to_nnx_variable(self) -> Variable:
    return self.var_type(self.value, **self.metadata)


def partition_spec_of(metadata: tp.Mapping) -> jax.sharding.PartitionSpec | None:
  """The spec of a Variable's sharding metadata (``None`` without any); logical names go
  through its ``sharding_rules`` and the ``logical_axis_rules`` in effect, as in flax.nnx.

  >>> from bridge.interop.metadata import logical_axis_rules, partition_spec_of
  >>> with logical_axis_rules([('embed', 'model')]):
  ...   partition_spec_of({'out_sharding': ('embed', None)})
  P('model', None)
  """
  names = metadata.get('out_sharding', metadata.get('sharding'))
  if not names:
    return None
  context_rules = core_spmd.get_logical_axis_rules()
  if context_rules or metadata.get('sharding_rules'):
    rules = core_spmd.composite_rules(context_rules, metadata.get('sharding_rules') or ())
    names = core_spmd.from_sharding_rules(tuple(names), rules)
  return names if isinstance(names, jax.sharding.PartitionSpec) else \
    jax.sharding.PartitionSpec(*names)


def to_nnx_var(collection: str, x) -> Variable:
  """The Variable for a Linen variable of ``collection`` (boxed or raw)."""
  var_type = variable_type_from_name(collection, allow_register=True)
  if isinstance(x, NNXMeta):
    if not issubclass(x.var_type, var_type) and x.var_type is not var_type:
      raise ValueError(f'NNXMeta holds a {x.var_type.__name__} but collection '
                       f'{collection!r} maps to {var_type.__name__}.')
    return x.to_nnx_variable()
  if isinstance(x, meta.Partitioned):  # LogicallyPartitioned and subclasses too
    metadata = {_BOX_TO_VAR.get(f.name, f.name): getattr(x, f.name)
                for f in dataclasses.fields(x) if f.name != 'value'}
    metadata['out_sharding'] = tuple(x.names)
    return var_type(x.value, **metadata, linen_meta_type=type(x))
  if isinstance(x, meta.AxisMetadata):
    return var_type(x.unbox(), linen_box=x.replace_boxed(None))
  return var_type(x)


def _plain(var: Variable) -> bool:
  """No metadata but empty hook slots: goes to Linen as its raw value."""
  return all(k in _HOOKS and not v for k, v in var._metadata.items())


def to_linen_var(var: Variable):
  """The Linen value for a Variable: its original box, an ``NNXMeta``, or the raw value."""
  metadata = var._metadata
  value = var.get_value()
  box_type = metadata.get('linen_meta_type')
  if box_type is not None:
    kwargs = {f.name: metadata[_BOX_TO_VAR.get(f.name, f.name)]
              for f in dataclasses.fields(box_type)
              if f.name != 'value' and _BOX_TO_VAR.get(f.name, f.name) in metadata}
    return box_type(value, **kwargs)
  if 'linen_box' in metadata:
    return metadata['linen_box'].replace_boxed(value)
  if _plain(var):
    return value
  return NNXMeta(type(var), value, dict(metadata))


def with_partitioning(initializer: tp.Callable, sharding, mesh=None, **metadata) -> tp.Callable:
  """An initializer whose Variables carry ``out_sharding=sharding`` (and ``mesh``, and any
  other ``metadata``) and go to Linen as ``nn.Partitioned`` boxes.

  >>> import jax
  >>> import bridge
  >>> init = bridge.with_partitioning(bridge.initializers.ones_init(), ('a', 'b'))
  >>> bridge.Param(init(jax.random.key(0), (2, 3))).out_sharding
  ('a', 'b')
  """
  return with_metadata(initializer, out_sharding=tuple(sharding), mesh=mesh,
                       linen_meta_type=meta.Partitioned, **metadata)


def get_partition_spec(tree):
  """``PartitionSpec``\\ s for a State (or pytree) of Variables with sharding metadata:
  each Variable with ``out_sharding`` gets its spec, any other leaf ``PartitionSpec()``.

  >>> import jax.numpy as jnp
  >>> import bridge
  >>> s = bridge.State({'w': bridge.Param(jnp.ones((2, 2)), out_sharding=('a', None))})
  >>> bridge.get_partition_spec(s)['w'].value
  P('a', None)
  """
  def spec_of(x):
    if isinstance(x, Variable):
      return x.replace(partition_spec_of(x._metadata) or jax.sharding.PartitionSpec())
    return x.get_partition_spec() if isinstance(x, meta.AxisMetadata) else \
      jax.sharding.PartitionSpec()
  if isinstance(tree, State):
    return map_state(lambda _, x: spec_of(x), tree)
  return jax.tree.map(spec_of, tree,
                      is_leaf=lambda x: isinstance(x, (Variable, meta.AxisMetadata)))


def get_named_sharding(tree, mesh: jax.sharding.Mesh):
  """``NamedSharding``\\ s on ``mesh`` for the Variables of ``tree`` (see
  ``get_partition_spec``)."""
  specs = get_partition_spec(tree)
  return jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
