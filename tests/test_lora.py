"""LoRA, LoRALinear, LoRAParam side by side with flax.nnx: the same signatures, the same state
paths and Variable types, the same initial values from the same seed, and outputs equal bit
for bit (the same matmuls in the same order) once the factors are trained away from zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from flax_parity import assert_same_signature

import bridge as nnx


def flat(flat_state):
  """``{path: (Variable type name, value)}`` of a flat State."""
  return {tuple(p): (type(v).__name__, np.asarray(v[...])) for p, v in flat_state}


def assert_same_state(ours, theirs):
  a = flat(nnx.to_flat_state(nnx.state(ours)))
  b = flat(fnnx.to_flat_state(fnnx.state(theirs)))
  assert a.keys() == b.keys()
  for k in a:
    assert a[k][0] == b[k][0], k
    np.testing.assert_array_equal(a[k][1], b[k][1], err_msg=str(k))


def randomize_b(ours, theirs, seed=3):
  """Sets both ``lora_b`` (zeros at init) to the same random values."""
  value = jax.random.normal(jax.random.key(seed), ours.lora_b.shape, ours.lora_b.dtype)
  ours.lora_b[...] = value
  theirs.lora_b[...] = value


@pytest.mark.parametrize('name', ['LoRA', 'LoRALinear'])
def test_signatures_match_flax(name):
  for method in ('__init__', '__call__'):
    assert_same_signature(getattr(getattr(nnx, name), method),
                          getattr(getattr(fnnx, name), method))


def test_lora_param_is_a_param():
  assert issubclass(nnx.LoRAParam, nnx.Param)
  layer = nnx.LoRA(3, 2, 4, rngs=nnx.Rngs(0))
  assert set(nnx.state(layer, nnx.LoRAParam).keys()) == {'lora_a', 'lora_b'}
  assert set(nnx.state(layer, nnx.Param).keys()) == {'lora_a', 'lora_b'}


def test_lora_same_init_and_output_as_flax():
  ours = nnx.LoRA(3, 2, 4, rngs=nnx.Rngs(0))
  theirs = fnnx.LoRA(3, 2, 4, rngs=fnnx.Rngs(0))
  assert_same_state(ours, theirs)
  randomize_b(ours, theirs)
  x = jax.random.normal(jax.random.key(1), (5, 3))
  np.testing.assert_array_equal(ours(x), theirs(x))


def test_lora_wrapping_a_base_module_adds_its_output_and_forwards_kwargs():
  ours = nnx.LoRA(3, 2, 4, base_module=nnx.Linear(3, 4, rngs=nnx.Rngs(5)), rngs=nnx.Rngs(0))
  theirs = fnnx.LoRA(3, 2, 4, base_module=fnnx.Linear(3, 4, rngs=fnnx.Rngs(5)),
                     rngs=fnnx.Rngs(0))
  assert_same_state(ours, theirs)
  randomize_b(ours, theirs)
  x = jax.random.normal(jax.random.key(1), (5, 3))
  np.testing.assert_array_equal(ours(x), theirs(x))
  np.testing.assert_array_equal(ours(x, out_sharding=None), theirs(x, out_sharding=None))


def test_lora_linear_same_init_and_output_as_flax_and_loads_linear_weights():
  kwargs = dict(lora_rank=2, use_bias=True, bias_init=nnx.initializers.normal())
  ours = nnx.LoRALinear(3, 4, **kwargs, rngs=nnx.Rngs(0))
  theirs = fnnx.LoRALinear(3, 4, **kwargs, rngs=fnnx.Rngs(0))
  assert_same_state(ours, theirs)
  randomize_b(ours.lora, theirs.lora)
  x = jax.random.normal(jax.random.key(1), (2, 5, 3))
  np.testing.assert_array_equal(ours(x), theirs(x))
  # a Linear's state is the non-LoRA part
  linear = nnx.Linear(3, 4, bias_init=nnx.initializers.normal(), rngs=nnx.Rngs(0))
  nnx.update(linear, nnx.state(ours, nnx.Not(nnx.LoRAParam)))
  np.testing.assert_array_equal(ours(x), linear(x) + ours.lora(x))


def test_dtype_metadata_and_custom_param_type():
  class Adapter(nnx.Param):
    pass

  class FAdapter(fnnx.Param):
    pass

  ours = nnx.LoRA(3, 2, 4, dtype=jnp.bfloat16, param_dtype=jnp.float16,
                  lora_param_type=Adapter, a_metadata={'tag': 'a'}, rngs=nnx.Rngs(0))
  theirs = fnnx.LoRA(3, 2, 4, dtype=jnp.bfloat16, param_dtype=jnp.float16,
                     lora_param_type=FAdapter, a_metadata={'tag': 'a'}, rngs=fnnx.Rngs(0))
  assert type(ours.lora_a) is Adapter and ours.lora_a.dtype == jnp.float16
  assert ours.lora_a.get_metadata()['tag'] == 'a'
  np.testing.assert_array_equal(ours.lora_a[...], theirs.lora_a[...])
  randomize_b(ours, theirs)
  x = jnp.ones((2, 3))
  y = ours(x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y, theirs(x))


def test_training_only_the_lora_factors():
  model = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
  x, target = jnp.ones((4, 3)), jnp.zeros((4, 4))

  def loss(m):
    return jnp.mean((m(x) - target) ** 2)

  grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
  assert {p for p, _ in nnx.to_flat_state(grads)} == {('lora', 'lora_a'), ('lora', 'lora_b')}
  assert float(jnp.abs(grads['lora']['lora_b'][...]).sum()) > 0


def test_non_callable_base_module_is_a_clear_value_error():
  layer = nnx.LoRA(3, 2, 4, base_module=nnx.Param(jnp.ones(1)), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='base_module must be callable'):
    layer(jnp.ones((1, 3)))
