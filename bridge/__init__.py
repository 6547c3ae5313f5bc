"""bridge: an NNX-style Module system on JAX, and adapters to and from ``flax.linen``.

``import bridge as nnx`` runs flax.nnx code for everything bridge implements.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> graphdef, state = nnx.split(model)
>>> nnx.merge(graphdef, state)(jnp.ones((1, 2))).shape
(1, 3)
"""

import sys as _sys

from bridge import (
  _repr,
  bridge,
  compat,
  ema,
  filters,
  graph,
  graphlib,
  helpers,
  metrics,
  object,
  pytreelib,
  rngs,
  spmd,
  summary,
  tracers,
  training,
  traversals,
  variables,
  visualization,
)
from bridge._callable_module import make_callable as _make_callable
from bridge.bridge import wrappers  # flax.nnx exposes nnx.bridge.wrappers as nnx.wrappers
from bridge.capture import capture
from bridge.ema import EMA
from bridge.extract import NodeStates, from_tree, to_tree
from bridge.filters import All, Any, Everything, Not, Nothing, OfType, PathContains, PathIn, WithTag
from bridge.graph import (
  GraphDef,
  clone,
  flatten,
  graphdef,
  iter_graph,
  merge,
  pop,
  split,
  unflatten,
  update,
)
from bridge.graph import state as _graph_state
from bridge.graph_call import call
from bridge.graph_context import (
  MergeContext,
  SplitContext,
  UpdateContext,
  current_update_context,
  merge_context,
  split_context,
  update_context,
)
from bridge.graph_map import map, recursive_map, set_metadata
from bridge.graph_mode import set_graph_mode, set_graph_updates
from bridge.graph_state import GraphState, PureState, as_pure, pure, unpack
from bridge.helpers import TrainState
from bridge.interop.metadata import (
  PARTITION_NAME,
  NNXMeta,
  get_named_sharding,
  get_partition_spec,
  with_partitioning,
)
from bridge.interop.to_linen import ToLinen, to_linen
from bridge.interop.to_nnx import ToNNX, lazy_init
from bridge.metrics import Metric, MultiMetric
from bridge.module import Dict, List, Module, Sequential, iter_children, iter_modules
from bridge.module_children import A, M, iter_module_children
from bridge.nn import initializers
from bridge.nn.activations import (
  PReLU,
  celu,
  elu,
  gelu,
  glu,
  hard_sigmoid,
  hard_silu,
  hard_swish,
  hard_tanh,
  identity,
  leaky_relu,
  log_sigmoid,
  log_softmax,
  logsumexp,
  one_hot,
  relu,
  relu6,
  selu,
  sigmoid,
  silu,
  soft_sign,
  softmax,
  softplus,
  standardize,
  swish,
  tanh,
)
from bridge.nn.attention import (
  MultiHeadAttention,
  combine_masks,
  dot_product_attention,
  dot_product_attention_weights,
  make_attention_mask,
  make_causal_mask,
)
from bridge.nn.conv import Conv, ConvTranspose
from bridge.nn.embed import Embed
from bridge.nn.linear import Einsum, Linear, LinearGeneral
from bridge.nn.lora import LoRA, LoRALinear, LoRAParam
from bridge.nn.normalization import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from bridge.nn.pooling import avg_pool, max_pool, min_pool, pool
from bridge.nn.recurrent import (
  RNN,
  Bidirectional,
  GRUCell,
  LSTMCell,
  OptimizedLSTMCell,
  RNNCellBase,
  SimpleCell,
)
from bridge.nn.stochastic import Dropout
from bridge.nn.weight_norms import SpectralNorm, WeightNorm
from bridge.object import Object
from bridge.optimizer import ModelAndOptimizer, OptArray, Optimizer, OptState, OptVariable
from bridge.prefix import prefix
from bridge.pytreelib import (
  Data,
  Static,
  check_pytree,
  data,
  dataclass,
  find_duplicates,
  has_data,
  is_data,
  register_data_type,
  static,
)
from bridge.rngs import (
  RngCount,
  RngKey,
  Rngs,
  RngState,
  RngStream,
  fork_rngs,
  reseed,
  restore_rngs,
  split_rngs,
)
from bridge.spmd import (
  abstract_with_sharding,
  as_abstract,
  get_abstract_model,
  logical_axis_rules,
  use_eager_sharding,
  using_eager_sharding,
)
from bridge.state import (
  FlatState,
  State,
  filter_state,
  from_flat_state,
  map_state,
  merge_state,
  replace_by_pure_dict,
  restore_int_paths,
  split_state,
  to_flat_state,
  to_pure_dict,
)
from bridge.summary import tabulate
from bridge.transforms.autodiff import DiffState, grad, value_and_grad
from bridge.transforms.checkify import checkify
from bridge.transforms.custom_vjp import custom_vjp
from bridge.transforms.iteration import Carry, StateAxes, scan, vmap
from bridge.transforms.jit import jit
from bridge.transforms.lift import (
  checkpoint,
  cond,
  eval_shape,
  fori_loop,
  remat,
  switch,
  while_loop,
)
from bridge.transforms.make_jaxpr import make_jaxpr
from bridge.transforms.partial import cached_partial, jit_partial
from bridge.transforms.pmap import pmap
from bridge.transforms.shard_map import shard_map
from bridge.transforms.state_sharding import StateSharding
from bridge.transforms.transform_metadata import transform_metadata
from bridge.transforms.vjp import jvp, vjp
from bridge.typing import Initializer
from bridge.var_modes import ImmutableVariableError, var_defaults, vars_as, with_vars
from bridge.variables import (
  BatchStat,
  Cache,
  Intermediate,
  Param,
  Perturbation,
  Variable,
  VariableMetadata,
  register_variable_name,
  variable_name_from_type,
  variable_type_from_name,
  with_metadata,
)
from bridge.view import view, view_info, with_attributes
from bridge.visualization import display
from bridge.with_rngs import with_rngs

# ``bridge.state`` is the function, as ``nnx.state`` is; the module is ``bridge.state`` in
# sys.modules, so ``from bridge.state import State`` still works.
state = _graph_state

# ``nnx.variables(model)`` is ``nnx.state(model)`` (the Variables themselves); the module
# ``bridge.variables`` stays importable, so it is made callable rather than replaced.
_make_callable(variables, _graph_state)

# flax.nnx's module names, as attributes and as importable modules (``import bridge.statelib``).
filterlib = filters
statelib = _sys.modules['bridge.state']
variablelib = variables
rnglib = rngs
reprlib = _repr
for _name in ('filterlib', 'statelib', 'variablelib', 'rnglib', 'reprlib'):
  _sys.modules[f'bridge.{_name}'] = globals()[_name]
Pytree = Object
