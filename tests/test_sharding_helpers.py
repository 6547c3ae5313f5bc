"""Sharding helpers side by side with flax.nnx on a mesh of the 8 CPU devices: eager
sharding of new Variables (``use_eager_sharding``), ``logical_axis_rules``,
``with_partitioning(..., sharding=...)``, ``get_abstract_model``, ``as_abstract`` /
``abstract_with_sharding``, and the optimizer state's shardings."""

import inspect

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bridge as nnx

EXPLICIT = jax.make_mesh((2, 4), ('a', 'b'))
AUTO = jax.make_mesh((2, 4), ('a', 'b'), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def make_mlp(lib, sharding=(('a', 'b'), ('b',))):
  """Two layers whose kernels/biases carry out_sharding (via with_partitioning)."""
  kernel, bias = sharding

  class MLP(lib.Module):
    def __init__(self, rngs):
      kernel_init = lib.with_partitioning(lib.initializers.lecun_normal(), sharding=kernel)
      bias_init = lib.with_partitioning(lib.initializers.zeros_init(), sharding=bias)
      self.l1 = lib.Linear(4, 8, kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)
      self.l2 = lib.Linear(8, 8, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.l1(x))
  return MLP(lib.Rngs(0))


def specs(lib, model):
  return [(path, getattr(v.get_value(), 'sharding', None))
          for path, v in lib.to_flat_state(lib.state(model))]


def shardings(lib, model):
  return [(path, v.get_value().sharding.spec) for path, v in lib.to_flat_state(lib.state(model))]


@pytest.mark.parametrize('mesh', [EXPLICIT, AUTO], ids=['explicit', 'auto'])
def test_variables_are_sharded_eagerly_like_flax(mesh):
  with jax.set_mesh(mesh):
    ours, theirs = make_mlp(nnx), make_mlp(fnnx)
  assert shardings(nnx, ours) == shardings(fnnx, theirs)
  assert ours.l1.kernel[...].sharding.spec == jax.P('a', 'b')
  assert ours.l1.kernel[...].sharding.mesh.shape == {'a': 2, 'b': 4}
  np.testing.assert_array_equal(ours.l1.kernel[...], theirs.l1.kernel[...])
  # the math does not change; the outputs are equal
  x = jnp.ones((2, 4))
  with jax.set_mesh(mesh):
    np.testing.assert_array_equal(ours(x), theirs(x))


def test_use_eager_sharding_off_leaves_values_alone_like_flax():
  for lib in (nnx, fnnx):
    assert lib.using_eager_sharding() is True
    with lib.use_eager_sharding(False):
      assert lib.using_eager_sharding() is False
      with jax.set_mesh(EXPLICIT):
        model = make_mlp(lib)
    assert lib.using_eager_sharding() is True
    assert not any(model.l1.kernel[...].sharding.spec)  # not split over any mesh axis
    assert model.l1.kernel.get_metadata('out_sharding') == ('a', 'b')  # still annotated

  @nnx.use_eager_sharding(False)
  def inside():
    return nnx.using_eager_sharding()
  assert inside() is False and nnx.using_eager_sharding() is True


def test_logical_axis_rules_map_names_like_flax():
  rules = [('embed', 'a'), ('mlp', 'b')]
  with jax.set_mesh(EXPLICIT), nnx.logical_axis_rules(rules):
    ours = make_mlp(nnx, sharding=(('embed', 'mlp'), ('mlp',)))
    theirs = make_mlp(fnnx, sharding=(('embed', 'mlp'), ('mlp',)))
    assert nnx.get_partition_spec(nnx.state(ours))['l1']['kernel'].get_value() == jax.P('a', 'b')
  assert shardings(nnx, ours) == shardings(fnnx, theirs)
  assert ours.l1.kernel[...].sharding.spec == jax.P('a', 'b')
  assert nnx.logical_axis_rules is fnnx.logical_axis_rules  # one context for Linen and nnx


def test_with_partitioning_signature_and_metadata_match_flax():
  ours = inspect.signature(nnx.with_partitioning)
  theirs = inspect.signature(fnnx.with_partitioning)
  assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
    [(p.name, p.kind, p.default) for p in theirs.parameters.values()]
  for lib in (nnx, fnnx):
    init = lib.with_partitioning(lib.initializers.ones_init(), sharding=('a', None),
                                 mesh=EXPLICIT, note='kept')
    var = lib.Param(init(jax.random.key(0), (2, 8)))
    assert var.get_metadata('note') == 'kept' and var.get_metadata('mesh') is EXPLICIT
    assert var.get_value().sharding.spec == jax.P('a', None)  # the mesh metadata suffices


def test_get_abstract_model_matches_flax():
  results = []
  for lib in (nnx, fnnx):
    graphdef, state = lib.get_abstract_model(lambda lib=lib: make_mlp(lib), EXPLICIT)
    flat = [(p, v.get_value()) for p, v in lib.to_flat_state(state)]
    assert all(isinstance(x, jax.ShapeDtypeStruct) for _, x in flat)
    results.append([(p, x.shape, x.dtype, x.sharding) for p, x in flat])
  assert results[0] == results[1]
  assert results[0][1][3] == jax.NamedSharding(EXPLICIT, jax.P('a', 'b'))  # l1/kernel
  # the shardings create the model sharded under jit
  graphdef, state = nnx.get_abstract_model(lambda: make_mlp(nnx), EXPLICIT)
  out_shardings = jax.tree.map(lambda x: x.sharding, state)
  sharded = jax.jit(lambda: nnx.state(make_mlp(nnx)), out_shardings=out_shardings)()
  assert sharded['l1']['kernel'][...].sharding.spec == jax.P('a', 'b')


def test_as_abstract_and_its_deprecated_name_match_flax():
  results = []
  for lib in (nnx, fnnx):
    with jax.set_mesh(AUTO):
      model = lib.eval_shape(lambda lib=lib: lib.Linear(
        4, 8, rngs=lib.Rngs(0), kernel_metadata={'out_sharding': ('a', 'b')}))
      abstract = lib.as_abstract(model)
      with pytest.warns(DeprecationWarning, match='deprecated. Use as_abstract instead'):
        old = lib.abstract_with_sharding(model)
    # (the bias has no out_sharding: as_abstract leaves it as eval_shape made it)
    results.append([abstract.kernel.get_value().sharding.spec,
                    old.kernel.get_value().sharding.spec])
  assert results[0] == results[1]
  assert results[0][0] == jax.P('a', 'b')
  for name in ('as_abstract', 'abstract_with_sharding', 'get_abstract_model'):
    assert list(inspect.signature(getattr(nnx, name)).parameters) == \
      list(inspect.signature(getattr(fnnx, name)).parameters), name


def test_optimizer_moments_are_sharded_like_the_params_and_like_flax():
  with jax.set_mesh(EXPLICIT):
    results = []
    for lib in (nnx, fnnx):
      model = make_mlp(lib)
      optimizer = lib.Optimizer(model, optax.adam(1e-2), wrt=lib.Param)
      mu = optimizer.opt_state[0].mu
      assert mu['l1']['kernel'][...].sharding == model.l1.kernel[...].sharding
      named = lib.get_named_sharding(lib.state(optimizer), EXPLICIT)
      results.append([(p, v.get_value()) for p, v in lib.to_flat_state(named)])
  assert results[0] == results[1]


def test_spmd_module_mirrors_flax():
  for name in ('PARTITION_NAME', 'get_partition_spec', 'get_named_sharding',
               'with_partitioning', 'get_abstract_model', 'as_abstract',
               'abstract_with_sharding'):
    assert hasattr(fnnx.spmd, name)
    assert getattr(nnx.spmd, name) is getattr(nnx, name), name
  assert nnx.spmd.PARTITION_NAME == fnnx.spmd.PARTITION_NAME
