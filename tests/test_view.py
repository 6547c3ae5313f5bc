"""nnx.view / with_attributes / view_info, side by side with flax.nnx 0.12.8."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from flax_parity import assert_same_signature

import bridge as nnx


def block(n):
  class Block(n.Module):
    def __init__(self, rngs):
      self.linear = n.Linear(2, 4, rngs=rngs)
      self.dropout = n.Dropout(0.5, rngs=rngs)
      self.batch_norm = n.BatchNorm(4, rngs=rngs)

    def __call__(self, x):
      return self.batch_norm(self.dropout(self.linear(x)))

  return Block(n.Rngs(0))


def attention_model(n):
  class Model(n.Module):
    def __init__(self, rngs):
      self.mha = n.MultiHeadAttention(4, 8, 32, rngs=rngs)
      self.drop = n.Dropout(0.5, rngs=rngs)
      self.bn = n.BatchNorm(32, rngs=rngs)

  return Model(n.Rngs(0))


@pytest.mark.parametrize('name', ['view', 'view_info', 'with_attributes'])
def test_signatures_match_flax(name):
  assert_same_signature(getattr(nnx, name), getattr(fnnx, name))


@pytest.mark.parametrize('layer', ['Dropout', 'BatchNorm', 'MultiHeadAttention'])
def test_set_view_signatures_match_flax(layer):
  assert_same_signature(getattr(nnx, layer).set_view, getattr(fnnx, layer).set_view)


def test_view_sets_a_copy_and_shares_variables():
  for n in (nnx, fnnx):
    model = block(n)
    new = n.view(model, deterministic=True, use_running_average=True)
    assert (new.dropout.deterministic, new.batch_norm.use_running_average) == (True, True)
    assert (model.dropout.deterministic, model.batch_norm.use_running_average) == (False, False)
    assert new is not model and new.linear is not model.linear
    assert new.linear.kernel is model.linear.kernel
    assert new.batch_norm.mean is model.batch_norm.mean


def test_view_only_filter():
  results = []
  for n in (nnx, fnnx):
    new = n.view(block(n), only=n.Dropout, deterministic=True, use_running_average=True,
                 raise_if_not_found=False)
    results.append((new.dropout.deterministic, new.batch_norm.use_running_average))
  assert results[0] == results[1] == (True, False)


def test_eval_view_output_equals_flax():
  x = jnp.arange(6.0).reshape(3, 2)
  outs = [np.asarray(n.view(block(n), deterministic=True, use_running_average=True)(x))
          for n in (nnx, fnnx)]
  np.testing.assert_array_equal(outs[0], outs[1])


def test_train_view_updates_the_shared_batch_stats():
  model = block(nnx)
  nnx.view(model, deterministic=True)(jnp.arange(6.0).reshape(3, 2))
  reference = block(fnnx)
  fnnx.view(reference, deterministic=True)(jnp.arange(6.0).reshape(3, 2))
  np.testing.assert_array_equal(model.batch_norm.mean[...], reference.batch_norm.mean[...])
  assert float(jnp.abs(model.batch_norm.mean[...]).sum()) > 0


def test_view_unused_key_errors_like_flax():
  for n in (nnx, fnnx):
    with pytest.raises(ValueError, match=r"Unused keys found in nnx.view: \['foo'\]"):
      n.view(block(n), deterministic=True, foo=1)
    assert n.view(block(n), foo=1, raise_if_not_found=False).dropout.deterministic is False


@pytest.mark.parametrize('lib', [nnx, fnnx], ids=['bridge', 'flax'])
def test_view_passes_everything_to_a_var_keyword_set_view(lib):
  seen = []

  class Custom(lib.Module):
    def set_view(self, **kwargs):
      seen.append(kwargs)

  lib.view(lib.Sequential(Custom()), anything=1)
  assert seen == [{'anything': 1}]


def test_view_decode_creates_the_cache_when_sizes_are_given():
  model = attention_model(nnx)
  new = nnx.view(model, decode=True, batch_size=2, max_length=5)
  reference = fnnx.MultiHeadAttention(4, 8, 32, decode=True, rngs=fnnx.Rngs(0))
  reference.init_cache((2, 5, 8))
  assert new.mha.decode and new.mha.cached_key.shape == reference.cached_key.shape
  assert new.mha.cached_key.dtype == reference.cached_key.dtype
  assert model.mha.cached_key is None  # the original is untouched
  # Without sizes, only ``decode`` is set (flax.nnx 0.12.8 does not create a cache here).
  for n in (nnx, fnnx):
    assert n.view(attention_model(n), decode=True).mha.cached_key is None


def test_view_info_equals_flax():
  assert nnx.view_info(attention_model(nnx)) == fnnx.view_info(attention_model(fnnx))
  assert nnx.view_info(attention_model(nnx), only=nnx.Dropout) == \
         fnnx.view_info(attention_model(fnnx), only=fnnx.Dropout)


def test_view_info_without_docstring_shows_the_signature_as_flax():
  def custom(lib):
    class Custom(lib.Module):
      def set_view(self, flag: bool = False):  # noqa: D102
        pass

    Custom.set_view.__doc__ = None
    return Custom()

  assert nnx.view_info(custom(nnx)) == fnnx.view_info(custom(fnnx))
  assert 'set_view(self, flag: bool = False)' in nnx.view_info(custom(nnx))


def test_with_attributes_matches_flax():
  for n in (nnx, fnnx):
    model = block(n)
    new = n.with_attributes(model, deterministic=True, use_running_average=True)
    assert (new.dropout.deterministic, new.batch_norm.use_running_average) == (True, True)
    assert (model.dropout.deterministic, model.batch_norm.use_running_average) == (False, False)
    assert new.linear.kernel is model.linear.kernel
    only = n.with_attributes(model, only=n.Dropout, deterministic=True, rate=0.1)
    assert (only.dropout.rate, only.batch_norm.use_running_average) == (0.1, False)
    with pytest.raises(ValueError, match=r"following attributes: \['nope'\]"):
      n.with_attributes(model, nope=1)
    assert n.with_attributes(model, nope=1, raise_if_not_found=False) is not model
