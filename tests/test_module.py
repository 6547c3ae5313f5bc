"""Module (sow, perturb, iter_modules, set_attributes, train/eval), the containers
Sequential/List/Dict, Object's structure epoch and the repr; side by side with flax.nnx."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx

import bridge as nnx
from bridge import object as objectlib

# flax deprecates State and sow/perturb outside ``nnx.capture``; the behaviour is the reference
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning',
                                        'ignore:.*outside of .nnx.capture')


def shapes(pure):
  return jax.tree.map(jnp.shape, pure)


def assert_same_pure(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def make_model(lib):
  """The same hand-written model in bridge or flax.nnx."""

  class Block(lib.Module):
    def __init__(self, rngs):
      self.lin = lib.Linear(2, 2, rngs=rngs)
      self.deterministic = False

    def __call__(self, x):
      y = self.lin(x)
      self.sow(lib.Intermediate, 'y', y)
      return y

  class Model(lib.Module):
    def __init__(self, rngs):
      self.block = Block(rngs)
      self.shared = self.block
      self.head = lib.Linear(2, 3, rngs=rngs)
      self.use_running_average = False

    def __call__(self, x):
      self.sow(lib.Intermediate, 'seen', x)
      h = self.block(x)
      self.sow(lib.Intermediate, 'seen', h)
      self.sow(lib.Intermediate, 'total', h, reduce_fn=lambda a, b: a + b,
               init_fn=lambda: jnp.zeros(2))
      self.sow(lib.Intermediate, 'total', h, reduce_fn=lambda a, b: a + b,
               init_fn=lambda: jnp.zeros(2))
      self.sow('my_collection', 'custom', h)
      return self.head(h)

  return Block, Model


# -- Module state and sow ------------------------------------------------------------------
def test_state_is_the_attributes():
  _, Model = make_model(nnx)
  m = Model(nnx.Rngs(0))
  pure = nnx.state(m).to_pure_dict()
  assert shapes(pure) == {'block': {'lin': {'bias': (2,), 'kernel': (2, 2)}},
                          'head': {'bias': (3,), 'kernel': (2, 3)}}
  m.extra = nnx.BatchStat(jnp.zeros(4))
  assert shapes(nnx.state(m, nnx.BatchStat).to_pure_dict()) == {'extra': (4,)}
  del m.extra
  assert 'extra' not in nnx.state(m).to_pure_dict()


def test_sow_state_matches_flax():
  x = jnp.array([[1.0, -2.0]])
  _, Ours = make_model(nnx)
  _, Theirs = make_model(fnnx)
  ours, theirs = Ours(nnx.Rngs(0)), Theirs(fnnx.Rngs(0))
  for _ in range(2):
    np.testing.assert_array_equal(ours(x), theirs(x))
  a = nnx.state(ours).to_pure_dict()
  b = fnnx.state(theirs).to_pure_dict()
  assert_same_pure(a, b)
  assert shapes(a['seen']) == ((1, 2),) * 4
  assert shapes(a['block']['y']) == ((1, 2),) * 2
  assert shapes(a['total']) == (1, 2)
  np.testing.assert_array_equal(a['total'], 4 * a['seen'][1])
  assert_same_pure(nnx.state(ours, nnx.Intermediate).to_pure_dict(),
                   fnnx.state(theirs, fnnx.Intermediate).to_pure_dict())


def test_sow_default_tuple_and_return_value():
  m = nnx.Module()
  assert m.sow(nnx.Intermediate, 'v', 1.0) is True
  assert type(m.v) is nnx.Intermediate and m.v.value == (1.0,)
  m.sow(nnx.Intermediate, 'v', 2.0)
  assert m.v.value == (1.0, 2.0)


def test_sow_custom_reduce_and_init():
  m = nnx.Module()
  for i in range(1, 4):
    m.sow(nnx.Intermediate, 'running', jnp.array(float(i)), reduce_fn=lambda a, b: a + b,
          init_fn=lambda: jnp.array(10.0))
  assert float(m.running.value) == 16.0
  m.sow(nnx.Intermediate, 'biggest', 3, reduce_fn=max, init_fn=lambda: 0)
  m.sow(nnx.Intermediate, 'biggest', 1, reduce_fn=max, init_fn=lambda: 0)
  assert m.biggest.value == 3


def test_sow_string_type_goes_through_variable_type_from_name():
  m = nnx.Module()
  m.sow('intermediates', 'a', 1)
  assert type(m.a) is nnx.Intermediate
  m.sow('batch_stats', 'b', 1)
  assert type(m.b) is nnx.BatchStat
  m.sow('test_module_sown', 'c', 1)
  assert type(m.c) is nnx.variable_type_from_name('test_module_sown')
  assert type(m.c).__name__ == 'test_module_sown'
  m.sow('test_module_sown', 'c', 2)
  assert m.c.value == (1, 2)
  assert set(nnx.state(m, type(m.c)).to_pure_dict()) == {'c'}


def test_sow_into_another_type_is_a_clear_error():
  m = nnx.Module()
  m.sow(nnx.Intermediate, 'h', 1)
  with pytest.raises(ValueError, match=r"'h'.*Intermediate.*BatchStat"):
    m.sow(nnx.BatchStat, 'h', 2)
  # a subclass is another type too
  with pytest.raises(ValueError, match='Perturbation'):
    m.sow(nnx.Perturbation, 'h', 2)
  m.plain = 3
  with pytest.raises(ValueError, match="'plain'.*int"):
    m.sow(nnx.Intermediate, 'plain', 1)
  assert m.h.value == (1,) and m.plain == 3


def test_perturb():
  class M(nnx.Module):
    def __call__(self, x):
      return 2 * self.perturb('p', x)

  m = M()
  x = jnp.array([1.0, 2.0])
  np.testing.assert_array_equal(m(x), 2 * x)
  assert type(m.p) is nnx.Perturbation
  np.testing.assert_array_equal(m.p.value, jnp.zeros(2))

  def loss(model):
    return jnp.sum(model(x) ** 2)

  grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Perturbation))(m)
  np.testing.assert_array_equal(grads["p"].value, 8 * x)

  def leaky_loss(p_value):  # writes a tracer into a Variable closed over: refused
    m.p.value = p_value
    return jnp.sum(m(x) ** 2)

  with pytest.raises(nnx.variables.TraceContextError):
    jax.grad(leaky_loss)(jnp.zeros(2))
  m.p.value = jnp.ones(2)
  np.testing.assert_array_equal(m(x), 2 * (x + 1))

  class F(fnnx.Module):
    def __call__(self, x):
      return 2 * self.perturb('p', x)

  f = F()
  f(x)
  assert type(f.p).__name__ == type(m.p).__name__


# -- iter_modules / iter_children ------------------------------------------------------------
def test_iter_modules_matches_flax_children_first_shared_once():
  _, Ours = make_model(nnx)
  _, Theirs = make_model(fnnx)
  ours, theirs = Ours(nnx.Rngs(0)), Theirs(fnnx.Rngs(0))
  got = [(p, type(m).__name__) for p, m in nnx.iter_modules(ours)]
  assert got == [(('block', 'lin'), 'Linear'), (('block',), 'Block'),
                 (('head',), 'Linear'), ((), 'Model')]
  assert got == [(p, type(m).__name__) for p, m in fnnx.iter_modules(theirs)]
  assert [(p, m) for p, m in ours.iter_modules()] == list(nnx.iter_modules(ours))
  modules = [m for _, m in nnx.iter_modules(ours)]
  assert modules[-1] is ours and modules[1] is ours.block
  assert len({id(m) for m in modules}) == len(modules)


def test_iter_children():
  _, Ours = make_model(nnx)
  _, Theirs = make_model(fnnx)
  ours, theirs = Ours(nnx.Rngs(0)), Theirs(fnnx.Rngs(0))
  got = [(name, type(m).__name__) for name, m in ours.iter_children()]
  assert got == [('block', 'Block'), ('head', 'Linear'), ('shared', 'Block')]  # sorted
  assert got == [(n, type(m).__name__) for n, m in theirs.iter_children()]
  assert dict(nnx.iter_children(ours))['shared'] is ours.block


# -- set_attributes / train / eval ----------------------------------------------------------
def test_set_attributes_with_filters():
  Block, Model = make_model(nnx)
  m = Model(nnx.Rngs(0))
  m.set_attributes(deterministic=True)
  assert m.block.deterministic is True
  assert not hasattr(m.head, 'deterministic')
  m.set_attributes(nnx.Linear, deterministic=False, raise_if_not_found=False)
  assert m.block.deterministic is True
  m.set_attributes(Block, deterministic=False)
  assert m.block.deterministic is False
  m.set_attributes(nnx.Linear, use_bias=False)
  assert m.head.use_bias is False and m.block.lin.use_bias is False
  assert m.use_running_average is False


def test_set_attributes_raise_if_not_found():
  _, Model = make_model(nnx)
  m = Model(nnx.Rngs(0))
  with pytest.raises(ValueError, match='nonexistent'):
    m.set_attributes(nonexistent=1)
  m.set_attributes(nonexistent=1, raise_if_not_found=False)
  assert not any(hasattr(x, 'nonexistent') for _, x in m.iter_modules())
  # an attribute only unselected modules have is also not found
  with pytest.raises(ValueError, match='deterministic'):
    m.set_attributes(nnx.Linear, deterministic=True)


def test_train_eval_match_flax():
  _, Ours = make_model(nnx)
  _, Theirs = make_model(fnnx)
  ours, theirs = Ours(nnx.Rngs(0)), Theirs(fnnx.Rngs(0))
  for mode in ('eval', 'train', 'eval'):
    getattr(ours, mode)()
    getattr(theirs, mode)()
    assert ours.block.deterministic is theirs.block.deterministic is (mode == 'eval')
    assert ours.use_running_average is theirs.use_running_average is (mode == 'eval')
    assert not hasattr(ours.head, 'deterministic')
    assert not hasattr(ours.head, 'use_running_average')
  ours.eval(use_bias=False)
  assert ours.head.use_bias is False


# -- Sequential / List / Dict ---------------------------------------------------------------
def test_sequential_matches_flax():
  ours = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.relu,
                        nnx.Linear(3, 1, rngs=nnx.Rngs(1)))
  theirs = fnnx.Sequential(fnnx.Linear(2, 3, rngs=fnnx.Rngs(0)), fnnx.relu,
                           fnnx.Linear(3, 1, rngs=fnnx.Rngs(1)))
  x = jnp.array([[1.0, -1.0], [0.5, 2.0]])
  np.testing.assert_array_equal(ours(x), theirs(x))
  assert_same_pure(nnx.state(ours).to_pure_dict(), fnnx.state(theirs).to_pure_dict())
  assert set(nnx.state(ours).to_pure_dict()['layers']) == {0, 2}


def test_sequential_tuple_outputs_splat():
  seq = nnx.Sequential(lambda x: (x, x + 1), lambda a, b: a * b, lambda y: {'z': y},
                       lambda z: z - 1)
  np.testing.assert_array_equal(seq(jnp.array([2.0, 3.0])), jnp.array([5.0, 11.0]))


def test_empty_sequential_is_an_error():
  with pytest.raises(ValueError, match='no layers'):
    nnx.Sequential()(jnp.ones(2))


def test_list_is_a_graph_container():
  layers = nnx.List([nnx.Linear(1, 2, rngs=nnx.Rngs(0)), nnx.Param(jnp.ones(3))])
  theirs = fnnx.List([fnnx.Linear(1, 2, rngs=fnnx.Rngs(0)), fnnx.Param(jnp.ones(3))])
  pure = nnx.state(layers).to_pure_dict()
  assert shapes(pure) == {0: {'bias': (2,), 'kernel': (1, 2)}, 1: (3,)}
  assert_same_pure(pure, fnnx.state(theirs).to_pure_dict())
  layers.append(nnx.Param(jnp.zeros(1)))
  assert list(nnx.state(layers).to_pure_dict()) == [0, 1, 2]
  assert len(layers) == 3 and isinstance(layers[0], nnx.Linear)
  assert isinstance(layers[1:], nnx.List) and len(layers[1:]) == 2
  del layers[0]
  assert shapes(nnx.state(layers).to_pure_dict()) == {0: (3,), 1: (1,)}
  # round trip through split / merge
  graphdef, state = nnx.split(layers)
  back = nnx.merge(graphdef, state)
  assert isinstance(back, nnx.List) and len(back) == 2 and back[0] is layers[0]


def test_dict_is_a_graph_container():
  d = nnx.Dict(enc=nnx.Linear(1, 2, rngs=nnx.Rngs(0)), scale=nnx.Param(jnp.ones(3)))
  theirs = fnnx.Dict(enc=fnnx.Linear(1, 2, rngs=fnnx.Rngs(0)), scale=fnnx.Param(jnp.ones(3)))
  pure = nnx.state(d).to_pure_dict()
  assert shapes(pure) == {'enc': {'bias': (2,), 'kernel': (1, 2)}, 'scale': (3,)}
  assert_same_pure(pure, fnnx.state(theirs).to_pure_dict())
  assert d.enc is d['enc']
  d.dec = nnx.Param(jnp.zeros(1))
  assert set(nnx.state(d).to_pure_dict()) == {'enc', 'scale', 'dec'}
  del d['scale']
  assert sorted(d) == ['dec', 'enc'] and len(d) == 2
  with pytest.raises(AttributeError, match='missing'):
    d.missing  # noqa: B018


def test_containers_inside_modules():
  class M(nnx.Module):
    def __init__(self):
      self.layers = nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(i)) for i in range(2)])
      self.heads = nnx.Dict(a=nnx.Linear(2, 1, rngs=nnx.Rngs(5)))

  m = M()
  assert [p for p, _ in nnx.iter_modules(m)] == [
    ('heads', 'a'), ('layers', 0), ('layers', 1), ()]
  pure = nnx.state(m, nnx.Param).to_pure_dict()
  assert set(pure['layers']) == {0, 1} and set(pure['heads']) == {'a'}


# -- Object structure epoch -----------------------------------------------------------------
def test_structure_epoch_moves_on_structure_changes_only():
  m = nnx.Module()
  before = objectlib.structure_epoch()
  m.w = nnx.Param(jnp.zeros(2))
  after_set = objectlib.structure_epoch()
  assert after_set != before
  m.w.value = jnp.ones(2)
  m.w[...] = jnp.full(2, 3.0)
  assert objectlib.structure_epoch() == after_set
  m.note = 'static'
  after_static = objectlib.structure_epoch()
  assert after_static != after_set
  del m.note
  assert objectlib.structure_epoch() != after_static


def test_structure_epoch_containers_and_sow():
  items = nnx.List([])
  e0 = objectlib.structure_epoch()
  items.append(nnx.Param(jnp.zeros(1)))
  e1 = objectlib.structure_epoch()
  assert e1 != e0
  items[0] = nnx.Param(jnp.ones(1))
  e2 = objectlib.structure_epoch()
  assert e2 != e1
  d = nnx.Dict()
  e3 = objectlib.structure_epoch()
  d['a'] = 1
  assert objectlib.structure_epoch() != e3
  m = nnx.Module()
  m.sow(nnx.Intermediate, 'x', 1)
  e4 = objectlib.structure_epoch()
  m.sow(nnx.Intermediate, 'x', 2)  # writes the value of an existing Variable
  assert objectlib.structure_epoch() == e4
  rngs = nnx.Rngs(0)
  e5 = objectlib.structure_epoch()
  rngs()
  assert objectlib.structure_epoch() == e5


# -- repr ------------------------------------------------------------------------------------
def test_repr_is_readable_and_counts_like_flax():
  _, Ours = make_model(nnx)
  _, Theirs = make_model(fnnx)
  ours, theirs = Ours(nnx.Rngs(0)), Theirs(fnnx.Rngs(0))
  text = repr(ours)
  first = text.splitlines()[0]
  assert first == 'Model( # Param: 15 (60 B)'
  assert first == repr(theirs).splitlines()[0]
  assert '  block=Block( # Param: 6 (24 B)' in text
  assert 'kernel=Param( # 6 (24 B)' in text
  assert 'value=Array(shape=(2, 3), dtype=float32)' in text
  assert 'use_running_average=False' in text
  x = jnp.ones((1, 2))
  ours(x)
  theirs(x)
  assert repr(ours).splitlines()[0] == repr(theirs).splitlines()[0]
  assert repr(nnx.Module()) == 'Module()'
  assert 'Linear( # Param: 9 (36 B)' in repr(nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0))))
