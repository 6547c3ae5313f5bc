"""Rngs, RngStream and the graph-wide stream operations; keys side by side with flax.nnx."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx


def kd(key):
  return np.asarray(jax.random.key_data(key))


def assert_same_keys(a, b):
  np.testing.assert_array_equal(kd(a), kd(b))


def draws(rngs):
  """A fixed mixed sequence of draws through every access style."""
  return [rngs.params(), rngs(), rngs['x'](), rngs.params(), rngs.default(), rngs.dropout(),
          rngs['params'](), rngs()]


# -- construction and access --------------------------------------------------------------
def test_streams_are_rng_variables():
  rngs = nnx.Rngs(0, params=1)
  assert set(rngs) == {'default', 'params'}
  assert len(rngs) == 2
  assert 'params' in rngs and 'dropout' not in rngs
  stream = rngs.params
  assert isinstance(stream, nnx.RngStream)
  assert isinstance(stream.key, nnx.RngKey) and isinstance(stream.key, nnx.RngState)
  assert isinstance(stream.count, nnx.RngCount) and isinstance(stream.count, nnx.RngState)
  assert stream.key.tag == 'params' and stream.count.tag == 'params'
  assert stream.count.value.dtype == jnp.uint32 and int(stream.count.value) == 0
  assert jnp.issubdtype(stream.key.value.dtype, jax.dtypes.prng_key)


def test_key_is_fold_in_of_count_and_counts_up():
  rngs = nnx.Rngs(params=3)
  base = jax.random.key(3)
  for i in range(3):
    assert_same_keys(rngs.params(), jax.random.fold_in(base, i))
  assert int(rngs.params.count.value) == 3


@pytest.mark.parametrize('seed', [0, 7, jax.random.key(5), jax.random.PRNGKey(11)])
def test_same_key_sequences_as_flax(seed):
  ours = nnx.Rngs(seed, params=seed if isinstance(seed, int) else 1, dropout=2)
  theirs = fnnx.Rngs(seed, params=seed if isinstance(seed, int) else 1, dropout=2)
  for a, b in zip(draws(ours), draws(theirs), strict=True):
    assert_same_keys(a, b)


def test_mapping_and_stream_arguments_like_flax():
  ours = nnx.Rngs({'params': 1, 'noise': 4}, dropout=nnx.Rngs(9).default)
  theirs = fnnx.Rngs({'params': 1, 'noise': 4}, dropout=fnnx.Rngs(9).default)
  assert set(ours) == set(theirs) == {'params', 'noise', 'dropout'}
  for name in ('params', 'noise', 'dropout', 'noise'):
    assert_same_keys(ours[name](), theirs[name]())


def test_missing_stream_falls_back_to_default():
  rngs = nnx.Rngs(0)
  reference = nnx.Rngs(0)
  assert rngs.dropout is rngs.default
  assert rngs['anything'] is rngs.default
  assert_same_keys(rngs.dropout(), reference())
  assert_same_keys(rngs['x'](), reference())
  assert int(rngs.default.count.value) == 2


def test_missing_stream_without_default_is_a_clear_error():
  rngs = nnx.Rngs(params=0)
  with pytest.raises(AttributeError, match="'dropout'"):
    rngs.dropout  # noqa: B018
  with pytest.raises(KeyError, match="'dropout'"):
    rngs['dropout']
  with pytest.raises(AttributeError, match="'default'"):
    rngs()
  # the failed lookups did not create streams
  assert list(rngs) == ['params']


def test_invalid_seed_is_an_error():
  with pytest.raises(ValueError, match='seed'):
    nnx.Rngs(params='zero')
  with pytest.raises(ValueError):
    nnx.Rngs(params=jnp.ones(2, jnp.float32))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_state_structure_matches_flax():
  ours, theirs = nnx.state(nnx.Rngs(0)), fnnx.state(fnnx.Rngs(0))
  pure = ours.to_pure_dict()
  assert set(pure) == {'default'} and set(pure['default']) == {'count', 'key'}
  assert jax.tree.structure(pure) == jax.tree.structure(theirs.to_pure_dict())
  ours_leaves = dict(ours.flat_state())
  theirs_leaves = {tuple(p): v for p, v in theirs.flat_state()}
  assert set(ours_leaves) == set(theirs_leaves) == {('default', 'count'), ('default', 'key')}
  for path, v in ours_leaves.items():
    w = theirs_leaves[path]
    assert type(v).__name__ == type(w).__name__
    assert v.tag == w.tag == 'default'
  assert_same_keys(ours_leaves[('default', 'key')].value, theirs_leaves[('default', 'key')][...])
  assert int(ours_leaves[('default', 'count')].value) == 0
  # split by type
  keys, counts = nnx.state(nnx.Rngs(0, params=1), nnx.RngKey, nnx.RngCount)
  assert set(keys.to_pure_dict()) == {'default', 'params'}
  assert all(isinstance(v, nnx.RngCount) for _, v in counts.flat_state())


def test_linear_weights_equal_flax():
  ours = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  theirs = fnnx.Linear(2, 3, rngs=fnnx.Rngs(0))
  np.testing.assert_array_equal(ours.kernel.value, theirs.kernel[...])
  np.testing.assert_array_equal(ours.bias.value, theirs.bias[...])
  # named params stream, and several layers drawing in turn
  r1, r2 = nnx.Rngs(params=42), fnnx.Rngs(params=42)
  a = [nnx.Linear(4, 5, rngs=r1) for _ in range(3)]
  b = [fnnx.Linear(4, 5, rngs=r2) for _ in range(3)]
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x.kernel.value, y.kernel[...])
  assert not np.array_equal(a[0].kernel.value, a[1].kernel.value)


# -- fork / split / broadcast -------------------------------------------------------------
def test_fork_matches_flax():
  ours, theirs = nnx.Rngs(0, params=1), fnnx.Rngs(0, params=1)
  ours.params(), theirs.params()
  fo, ft = ours.fork(), theirs.fork()
  assert set(fo) == set(ft)
  for a, b in zip(draws(fo), draws(ft), strict=True):
    assert_same_keys(a, b)
  # forking drew one key from every parent stream
  for a, b in zip(draws(ours), draws(theirs), strict=True):
    assert_same_keys(a, b)
  assert not np.array_equal(kd(nnx.Rngs(0).fork()()), kd(nnx.Rngs(0)()))


@pytest.mark.parametrize('k', [3, (2, 3)])
def test_split_matches_flax(k):
  ours, theirs = nnx.Rngs(0, params=1), fnnx.Rngs(0, params=1)
  so, st = ours.split(k), theirs.split(k)
  shape = (k,) if isinstance(k, int) else k
  for name in ('default', 'params'):
    assert so[name].key.value.shape == shape
    assert so[name].count.value.shape == shape
    assert_same_keys(so[name].key.value, st[name].key[...])
  for a, b in zip(draws(ours), draws(theirs), strict=True):
    assert_same_keys(a, b)


def test_split_with_filter_mapping_matches_flax():
  spec = {'params': 5, 'dropout': None, ...: (2, 5)}
  ours = nnx.Rngs(params=1, dropout=2, noise=3).split(spec)
  theirs = fnnx.Rngs(params=1, dropout=2, noise=3).split(spec)
  assert ours.params.key.value.shape == (5,)
  assert ours.dropout.key.value.shape == ()
  assert ours.noise.key.value.shape == (2, 5)
  for name in ('params', 'dropout', 'noise'):
    assert_same_keys(ours[name].key.value, theirs[name].key[...])


def test_stream_split_and_fork_match_flax():
  so, st = nnx.Rngs(params=4).params, fnnx.Rngs(params=4).params
  assert_same_keys(so.split(4).key.value, st.split(4).key[...])
  assert_same_keys(so.fork()(), st.fork()())
  assert_same_keys(so(), st())


def test_broadcast_repeats_one_key_and_matches_flax():
  ours = nnx.Rngs(0, params=1).broadcast(4)
  theirs = fnnx.Rngs(0, params=1).broadcast(4)
  key = ours.params.key.value
  assert key.shape == (4,)
  assert all(np.array_equal(kd(key[0]), kd(key[i])) for i in range(4))
  assert_same_keys(key, theirs.params.key[...])
  mixed = nnx.Rngs(params=1, dropout=2).broadcast({'params': (2, 3), ...: None})
  assert mixed.params.key.value.shape == (2, 3) and mixed.dropout.key.value.shape == ()


def test_fork_split_argument_splits():
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    theirs = fnnx.Rngs(params=1).fork(split=3)
  ours = nnx.Rngs(params=1).fork(split=3)
  assert ours.params.key.value.shape == (3,)
  assert_same_keys(ours.params.key.value, theirs.params.key[...])


# -- random methods -----------------------------------------------------------------------
@pytest.mark.parametrize('name, args', [
  ('normal', ((3,),)), ('uniform', ((2, 2),)), ('bernoulli', (0.5, (4,))),
  ('randint', ((3,), 0, 10)), ('permutation', (5,)), ('truncated_normal', (-1., 1., (3,))),
])
def test_random_methods_match_flax(name, args):
  ours, theirs = nnx.Rngs(0, params=1), fnnx.Rngs(0, params=1)
  for _ in range(2):
    np.testing.assert_array_equal(getattr(ours, name)(*args), getattr(theirs, name)(*args))
    np.testing.assert_array_equal(getattr(ours.params, name)(*args),
                                  getattr(theirs.params, name)(*args))
  assert int(ours.default.count.value) == 2 and int(ours.params.count.value) == 2


def test_normal_uses_next_default_key():
  rngs = nnx.Rngs(3)
  expected = jax.random.normal(jax.random.fold_in(jax.random.key(3), 0), (2,))
  np.testing.assert_array_equal(rngs.normal((2,)), expected)


# -- split_rngs / fork_rngs / restore_rngs -------------------------------------------------
class Holder(nnx.Module):
  def __init__(self, rngs):
    self.rngs = rngs
    self.other = nnx.Rngs(dropout=5)


class FHolder(fnnx.Module):
  def __init__(self, rngs):
    self.rngs = rngs
    self.other = fnnx.Rngs(dropout=5)


def test_split_rngs_function_form_matches_flax():
  ours, theirs = nnx.Rngs(0, params=1), fnnx.Rngs(0, params=1)
  bo = nnx.split_rngs(ours, splits=5)
  bt = fnnx.split_rngs(theirs, splits=5)
  for name in ('default', 'params'):
    assert ours[name].key.value.shape == (5,) and ours[name].count.value.shape == (5,)
    assert_same_keys(ours[name].key.value, theirs[name].key[...])
  assert len(bo) == 2
  nnx.restore_rngs(bo)
  fnnx.restore_rngs(bt)
  assert ours.params.key.value.shape == ()
  for a, b in zip(draws(ours), draws(theirs), strict=True):
    assert_same_keys(a, b)


def test_split_rngs_context_manager_restores_like_flax():
  ours, theirs = nnx.Rngs(0, params=1), fnnx.Rngs(0, params=1)
  with nnx.split_rngs(ours, splits=(2, 3)), fnnx.split_rngs(theirs, splits=(2, 3)):
    assert ours.params.key.value.shape == (2, 3)
    assert_same_keys(ours.params.key.value, theirs.params.key[...])
  assert ours.params.key.value.shape == ()
  for a, b in zip(draws(ours), draws(theirs), strict=True):
    assert_same_keys(a, b)


def test_split_rngs_only_filter_and_nested_graph():
  ours = Holder(nnx.Rngs(0, params=1))
  theirs = FHolder(fnnx.Rngs(0, params=1))
  with nnx.split_rngs(ours, splits=4, only='params'), \
      fnnx.split_rngs(theirs, splits=4, only='params'):
    assert ours.rngs.params.key.value.shape == (4,)
    assert ours.rngs.default.key.value.shape == ()
    assert ours.other.dropout.key.value.shape == ()
    assert_same_keys(ours.rngs.params.key.value, theirs.rngs.params.key[...])
  with nnx.split_rngs(ours, splits=2, only=nnx.Not('params')):
    assert ours.rngs.params.key.value.shape == ()
    assert ours.rngs.default.key.value.shape == (2,)
    assert ours.other.dropout.key.value.shape == (2,)


def test_split_rngs_decorator_form():
  rngs = nnx.Rngs(params=0)
  seen = []

  @nnx.split_rngs(splits=5)
  def f(r, *, other):
    seen.append((r.params.key.value.shape, other.dropout.key.value.shape))
    return 'out'

  other = nnx.Rngs(dropout=1)
  assert f(rngs, other=other) == 'out'
  assert seen == [((5,), (5,))]
  assert rngs.params.key.value.shape == () and other.dropout.key.value.shape == ()

  theirs = fnnx.Rngs(params=0)
  fnnx.split_rngs(splits=5)(lambda r: None)(theirs)
  assert_same_keys(rngs.params(), theirs.params())


def test_split_rngs_decorator_splits_a_shared_stream_once():
  rngs = nnx.Rngs(params=0)

  @nnx.split_rngs(splits=3)
  def f(a, b):
    return a.params.key.value.shape

  assert f(rngs, rngs) == (3,)
  assert int(rngs.params.count.value) == 1


def test_split_rngs_squeeze():
  ours, theirs = nnx.Rngs(params=0), fnnx.Rngs(params=0)
  with nnx.split_rngs(ours, splits=1, squeeze=True), \
      fnnx.split_rngs(theirs, splits=1, squeeze=True):
    assert ours.params.key.value.shape == () and ours.params.count.value.shape == ()
    assert_same_keys(ours.params.key.value, theirs.params.key[...])
    assert_same_keys(ours.params(), theirs.params())
  with pytest.raises(ValueError, match='squeeze'):
    nnx.split_rngs(nnx.Rngs(0), splits=3, squeeze=True)


def test_fork_rngs_and_restore_match_flax():
  ours, theirs = Holder(nnx.Rngs(0, params=1)), FHolder(fnnx.Rngs(0, params=1))
  bo, bt = nnx.fork_rngs(ours), fnnx.fork_rngs(theirs)
  for a, b in zip(draws(ours.rngs), draws(theirs.rngs), strict=True):
    assert_same_keys(a, b)
  assert_same_keys(ours.other.dropout(), theirs.other.dropout())
  nnx.restore_rngs(bo)
  fnnx.restore_rngs(bt)
  for a, b in zip(draws(ours.rngs), draws(theirs.rngs), strict=True):
    assert_same_keys(a, b)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_fork_rngs_split_mapping():
  ours, theirs = nnx.Rngs(params=0, dropout=1), fnnx.Rngs(params=0, dropout=1)
  # streams no filter matches are left alone
  with nnx.fork_rngs(ours, split={'params': 3}), fnnx.fork_rngs(theirs, split={'params': 3}):
    assert ours.params.key.value.shape == (3,) and ours.dropout.key.value.shape == ()
    assert_same_keys(ours.params.key.value, theirs.params.key[...])
    assert_same_keys(ours.dropout(), theirs.dropout())
  assert ours.params.key.value.shape == ()
  assert_same_keys(ours.params(), theirs.params())
  # first matching filter wins; None forks without splitting
  with nnx.fork_rngs(ours, split={'params': 3, ...: None}):
    assert ours.params.key.value.shape == (3,) and ours.dropout.key.value.shape == ()
    assert int(ours.dropout.count.value) == 0
  assert int(ours.dropout.count.value) == 2


# -- reseed --------------------------------------------------------------------------------
def test_reseed_matches_flax():
  ours, theirs = Holder(nnx.Rngs(0, dropout=1)), FHolder(fnnx.Rngs(0, dropout=1))
  ours.rngs.dropout(), theirs.rngs.dropout()
  nnx.reseed(ours, dropout=9)
  fnnx.reseed(theirs, dropout=9)
  # both 'dropout' streams were reseeded (and got different keys); 'default' was not
  assert int(ours.rngs.dropout.count.value) == 0
  assert not np.array_equal(kd(ours.rngs.dropout.key.value), kd(ours.other.dropout.key.value))
  for a, b in zip(draws(ours.rngs), draws(theirs.rngs), strict=True):
    assert_same_keys(a, b)
  assert_same_keys(ours.other.dropout(), theirs.other.dropout())


def test_reseed_is_reproducible():
  rngs = nnx.Rngs(dropout=1)
  nnx.reseed(rngs, dropout=3)
  first = [rngs.dropout() for _ in range(3)]
  nnx.reseed(rngs, dropout=3)
  for a in first:
    assert_same_keys(a, rngs.dropout())


def test_reseed_policies():
  ours, theirs = nnx.Rngs(params=0), fnnx.Rngs(params=0)
  nnx.split_rngs(ours, splits=4)
  fnnx.split_rngs(theirs, splits=4)
  with pytest.raises(ValueError, match='match_shape'):
    nnx.reseed(ours, params=1)
  nnx.reseed(ours, policy='match_shape', params=1)
  fnnx.reseed(theirs, policy='match_shape', params=1)
  assert ours.params.key.value.shape == (4,) and ours.params.count.value.shape == (4,)
  assert_same_keys(ours.params.key.value, theirs.params.key[...])

  calls = []

  def policy(path, key, shape):
    calls.append((path, shape))
    return jax.random.split(key, 2)

  holder = Holder(nnx.Rngs(params=0))
  nnx.reseed(holder, policy=policy, params=5)
  assert calls == [(('rngs', 'params'), ())]
  assert holder.rngs.params.key.value.shape == (2,)
  assert holder.rngs.params.count.value.shape == (2,)
  with pytest.raises(ValueError, match='policy'):
    nnx.reseed(holder, policy='nope', params=1)


def test_compat_backup_keys_restores_keys_but_not_counters_as_flax_nnx():
  got = {}
  for lib in (fnnx, nnx):
    rngs = lib.Rngs(0, dropout=1)
    backups = lib.compat.backup_keys(rngs)
    rngs(), rngs.dropout(), rngs.dropout()
    lib.split_rngs(rngs, splits=2)  # replaces the keys with split ones
    lib.restore_rngs(backups)
    got[lib] = [(jax.random.key_data(s.key[...]), s.count[...])
                for s in (rngs.default, rngs.dropout)]
  for (key, count), (fkey, fcount) in zip(got[nnx], got[fnnx], strict=True):
    np.testing.assert_array_equal(key, fkey)
    np.testing.assert_array_equal(count, fcount)
  assert got[nnx][1][0].tolist() == [0, 1]  # the key from before the split
