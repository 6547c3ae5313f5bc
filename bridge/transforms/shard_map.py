"""``shard_map`` for functions of Modules: a Module argument's ``in_specs`` entry is a
``PartitionSpec`` for all its arrays (``None``: replicated) or a ``StateSharding``; its
Variables keep their spec on the way out, and what the function writes to them is written
back to the caller's objects (so the function must not add or remove Variables).
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import PartitionSpec

from bridge.graph import GraphDef, _Flattener
from bridge.transforms import tree_mode
from bridge.transforms._boundary import NodeSlot, build_inside, insert, split_args
from bridge.transforms.state_sharding import StateSharding
from bridge.variables import Variable


def _per_argument(specs, n: int, what: str) -> tuple:
  """One spec per positional argument: a single spec (``PartitionSpec``, ``None``,
  ``StateSharding``) applies to all of them."""
  if isinstance(specs, (PartitionSpec, StateSharding)) or specs is None:
    return (specs,) * n
  if not isinstance(specs, (tuple, list)) or len(specs) != n:
    raise ValueError(f'shard_map: {what} must be one spec or a tuple with one entry per '
                     f'positional argument ({n}), got {specs!r}.')
  return tuple(specs)


def _spec(spec):
  return PartitionSpec() if spec is None else spec


def shard_map(f=None, *, mesh, in_specs, out_specs, axis_names=frozenset(),
              check_vma: bool = True, graph: bool | None = None,
              graph_updates: bool | None = None):
  """``jax.shard_map`` for functions of Modules (a decorator, with or without arguments).
  See the module docstring.

  >>> import jax
  >>> import jax.numpy as jnp
  >>> from jax.sharding import PartitionSpec as P
  >>> import bridge as nnx
  >>> mesh = jax.sharding.Mesh(jax.devices(), ('data',))
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> @nnx.shard_map(mesh=mesh, in_specs=(P(), P('data')), out_specs=P('data'))
  ... def forward(m, x):
  ...   return m(x)
  >>> forward(model, jnp.ones((16, 2))).shape
  (16, 3)
  """
  if f is None:
    return functools.partial(shard_map, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             axis_names=axis_names, check_vma=check_vma, graph=graph,
                             graph_updates=graph_updates)

  @functools.wraps(f)
  def wrapper(*args):
    dyn_args, flat, leaves = split_args(args)
    root_spec: dict = {}
    dyn_specs = []
    for arg, slot, spec in zip(args, dyn_args,
                               _per_argument(in_specs, len(args), 'in_specs'), strict=True):
      if isinstance(slot, NodeSlot):
        root_spec.setdefault(slot.index, spec)
        dyn_specs.append(PartitionSpec())
      elif isinstance(spec, StateSharding):
        raise ValueError(f'shard_map: StateSharding given for an argument that is not a '
                         f'Module: {type(arg).__name__}.')
      else:
        dyn_specs.append(_spec(spec))
    leaf_specs = []
    for path, handle in zip(flat.paths, flat.handles, strict=True):
      spec = root_spec.get(path[0])
      if isinstance(spec, StateSharding):
        spec = spec.sharding_for(path[1:], handle if isinstance(handle, Variable)
                                 else handle._raw_value)
      leaf_specs.append(_spec(spec))

    def pure(leaves, dyn):
      roots, _ = build_inside(flat.graphdef, leaves)
      out = f(*insert(dyn, roots))
      after = _Flattener()
      if GraphDef(after.walk(roots, ())) != flat.graphdef:
        raise ValueError('shard_map: the function changed the structure of its Module '
                         'arguments (new or removed Variables or attributes); it must keep '
                         'it.')
      return [v.raw_value if isinstance(v, Variable) else v for _, v in after.leaves], out

    new_leaves, out = jax.shard_map(
      pure, mesh=mesh, in_specs=(leaf_specs, dyn_specs), out_specs=(leaf_specs, out_specs),
      axis_names=axis_names, check_vma=check_vma)(leaves, dyn_args)
    for handle, value in zip(flat.handles, new_leaves, strict=True):
      handle._raw_value = value
    return out

  return tree_mode.wrap('shard_map', wrapper, graph, graph_updates)
