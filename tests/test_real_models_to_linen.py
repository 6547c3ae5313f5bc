"""The real models the other way round: ``bridge`` modules inside Linen parents through
``bridge.to_linen``, as in a migration done one module at a time
(``tests/models/nnx_models.py`` inside ``tests/models/linen_models.py``):

- a Linen ResNet whose residual blocks are bridge modules (``bridge.Conv`` +
  ``bridge.BatchNorm``), trained with ``mutable=['batch_stats']``;
- the Linen Transformer LM whose MLP is a bridge module, also decoding with its cache;
- the Linen LSTM classifier whose head is a bridge module with ``bridge.Dropout``, the
  parent passing ``rngs={'dropout': key}``.

Each hybrid has the variable tree of the pure-Linen model (the bridge modules' attributes
carry the Linen submodule names), so both run on the same variables: init structure,
``apply``, BatchNorm statistics, gradients and an optax step are compared with the pure
Linen model, exactly (bridge's layers do Linen's float32 math op for op). Dropout in a
bridge module draws other masks than ``nn.Dropout``, so the classifier with dropout is
compared with the same NNX code run by ``flax.nnx.bridge.to_linen`` (same Linen keys, same
masks), and with the pure-bridge head seeded with the key Linen gives its scope.

Compiled comparisons trace both sides into one ``jax.jit`` (separate inputs, compared
outside): one compilation per test, both sides compiled alike. Keys are ``rbg`` keys,
whose initializers compile fast.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx as fnnx
from models import linen_models as lm
from models import nnx_models

import bridge

NNX = nnx_models.BRIDGE


# -- helpers ---------------------------------------------------------------------------------
def key(seed):
  return jax.random.key(seed, impl='rbg')


def shapes(tree):
  return jax.tree.map(jnp.shape, tree)


def assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def linen_step(tx, params, opt_state, loss_fn):
  """``jax.value_and_grad`` of ``loss_fn(params) -> (loss, aux)`` and an optax step;
  returns ``(params, opt_state, loss, aux, grads)``."""
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss, aux, grads


# -- a Linen ResNet with bridge blocks ---------------------------------------------------------
class HybridResNet(nn.Module):
  """``linen_models.ResNet`` half migrated: the stem and the head are still Linen, the
  residual blocks are bridge modules under the names the Linen blocks had."""
  stage_sizes: tuple
  num_classes: int
  num_filters: int = 64

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                name='conv_init')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     name='bn_init')(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = bridge.to_linen(NNX.ResNetBlock, x.shape[-1], self.num_filters * 2**i,
                            strides=strides, name=f'stage{i}_block{j}')(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name='head')(x)


RESNET = lm.ResNet(stage_sizes=(1, 1), num_classes=3, num_filters=4)
HYBRID_RESNET = HybridResNet(stage_sizes=(1, 1), num_classes=3, num_filters=4)


def resnet_data(seed=0):
  r = np.random.default_rng(seed)
  return jnp.asarray(r.normal(size=(4, 16, 16, 3)), jnp.float32), jnp.asarray(
    r.integers(0, 3, (4,)))


@pytest.fixture(scope='module')
def resnet_variables():
  variables = HYBRID_RESNET.init(key(0), resnet_data()[0], train=False)
  # non-trivial running statistics, so that eval mode uses them
  r = np.random.default_rng(1)
  batch_stats = jax.tree.map(lambda v: jnp.asarray(r.uniform(0.5, 1.5, v.shape), v.dtype),
                             variables['batch_stats'])
  return {'params': variables['params'], 'batch_stats': batch_stats}


def test_resnet_init_has_the_linen_model_variables(resnet_variables):
  x, _ = resnet_data()
  expected = jax.eval_shape(lambda: RESNET.init(key(0), x, train=False))
  assert shapes(resnet_variables) == shapes(expected)
  block = resnet_variables['params']['stage1_block0']
  assert set(block) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv_proj', 'norm_proj'}
  assert isinstance(block['conv1']['kernel'], jax.Array)  # plain Variables: raw arrays
  assert set(resnet_variables['batch_stats']['stage0_block0']) == {'bn1', 'bn2'}


def test_resnet_apply_and_batch_stats_match_the_linen_model(resnet_variables):
  x, _ = resnet_data(1)
  np.testing.assert_array_equal(HYBRID_RESNET.apply(resnet_variables, x, train=False),
                                RESNET.apply(resnet_variables, x, train=False))
  y, updates = HYBRID_RESNET.apply(resnet_variables, x, train=True, mutable=['batch_stats'])
  expected_y, expected = RESNET.apply(resnet_variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_array_equal(y, expected_y)
  assert_trees_equal(dict(updates), dict(expected))
  moved = updates['batch_stats']['stage1_block0']['norm_proj']['mean']
  assert not np.array_equal(moved, resnet_variables['batch_stats']['stage1_block0']
                            ['norm_proj']['mean'])


def test_resnet_grads_and_adam_steps_match_the_linen_model(resnet_variables):
  """Two jitted Adam steps with BatchNorm in training mode: loss, gradients, parameters,
  batch statistics and optimizer state of the hybrid equal the pure-Linen model's."""
  tx = optax.adam(1e-2)

  def loss_fn(module, batch_stats, x, labels):
    def loss(params):
      logits, updates = module.apply({'params': params, 'batch_stats': batch_stats}, x,
                                     train=True, mutable=['batch_stats'])
      return xent(logits, labels), updates['batch_stats']
    return loss

  @jax.jit
  def steps(hybrid_state, linen_state, x, labels):
    return tuple(linen_step(tx, params, opt_state, loss_fn(module, batch_stats, x, labels))
                 for module, (params, opt_state, batch_stats) in
                 ((HYBRID_RESNET, hybrid_state), (RESNET, linen_state)))

  params, batch_stats = resnet_variables['params'], resnet_variables['batch_stats']
  hybrid = linen = (params, tx.init(params), batch_stats)
  for seed in (2, 3):
    x, labels = resnet_data(seed)
    ours, theirs = steps(hybrid, linen, x, labels)
    assert_trees_equal(ours, theirs)  # params, opt state, loss, batch stats, grads
    assert all(np.any(g != 0) for g in jax.tree.leaves(ours[4]))
    hybrid, linen = ((p, o, b) for p, o, _, b, _ in (ours, theirs))
  assert not np.array_equal(hybrid[0]['stage0_block0']['conv1']['kernel'],
                            params['stage0_block0']['conv1']['kernel'])


def test_resnet_block_matches_the_pure_bridge_block(resnet_variables):
  """One block of the hybrid against the bridge module itself, given the same variables."""
  block = NNX.ResNetBlock(4, 8, strides=(2, 2), rngs=bridge.Rngs(params=key(5)))
  params = resnet_variables['params']['stage1_block0']
  stats = resnet_variables['batch_stats']['stage1_block0']
  bridge.update(block, bridge.State(params), bridge.State(stats))
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, 4, 4)), jnp.float32)
  wrapped = bridge.to_linen(NNX.ResNetBlock, 4, 8, strides=(2, 2))
  y, updates = wrapped.apply({'params': params, 'batch_stats': stats}, x, train=True,
                             mutable=['batch_stats'])
  np.testing.assert_array_equal(y, block(x, train=True))
  assert_trees_equal(updates['batch_stats'], bridge.state(block, bridge.BatchStat)
                     .to_pure_dict())


def test_hybrid_resnet_wrapped_back_with_to_nnx_trains_like_the_linen_model(resnet_variables):
  """Linen -> bridge -> Linen: the hybrid wrapped back with ``bridge.ToNNX`` and trained by
  bridge code (``bridge.jit``, ``bridge.value_and_grad``, ``bridge.Optimizer``) takes the
  pure-Linen model's SGD step, batch statistics included."""
  x, labels = resnet_data(4)
  model = bridge.ToNNX(HYBRID_RESNET, rngs=bridge.Rngs(params=key(7))).lazy_init(x)
  params, batch_stats = resnet_variables['params'], resnet_variables['batch_stats']
  bridge.update(model, bridge.State(params), bridge.State(batch_stats))
  assert isinstance(model.stage1_block0['norm_proj']['mean'], bridge.BatchStat)
  tx = optax.sgd(0.1, momentum=0.9)
  optimizer = bridge.Optimizer(model, tx, wrt=bridge.Param)

  @bridge.jit
  def steps(model, optimizer, params, opt_state, batch_stats, x, labels):
    loss, grads = bridge.value_and_grad(lambda m: xent(m(x, train=True), labels))(model)
    optimizer.update(model, grads)

    def linen_loss(params):
      logits, updates = RESNET.apply({'params': params, 'batch_stats': batch_stats}, x,
                                     train=True, mutable=['batch_stats'])
      return xent(logits, labels), updates['batch_stats']
    return (loss, grads), linen_step(tx, params, opt_state, linen_loss)

  (loss, grads), (params, _, expected_loss, batch_stats, expected_grads) = steps(
    model, optimizer, params, tx.init(params), batch_stats, x, labels)
  np.testing.assert_array_equal(loss, expected_loss)
  assert_trees_equal(grads.to_pure_dict(), expected_grads)
  assert_trees_equal(bridge.state(model, bridge.Param).to_pure_dict(), params)
  assert_trees_equal(bridge.state(model, bridge.BatchStat).to_pure_dict(), batch_stats)


# -- the Transformer LM with a bridge MLP ------------------------------------------------------
LM_CONFIG = lm.TransformerConfig(vocab_size=32, emb_dim=16, num_heads=2, num_layers=2,
                                 qkv_dim=16, mlp_dim=32, max_len=16, dropout_rate=0.0,
                                 attention_dropout_rate=0.0, deterministic=True)
SEQ = 16


def bridge_mlp(config, name=None):
  """The ``mlp_cls`` of the Linen blocks, built from the bridge MLP."""
  return bridge.to_linen(NNX.MlpBlock, config.emb_dim, config.mlp_dim,
                         dropout_rate=config.dropout_rate, deterministic=config.deterministic,
                         name=name)


LM = lm.TransformerLM(LM_CONFIG)
HYBRID_LM = lm.TransformerLM(LM_CONFIG, mlp_cls=bridge_mlp)


def lm_tokens(seed=0, batch=2):
  return jnp.asarray(np.random.default_rng(seed).integers(1, LM_CONFIG.vocab_size,
                                                          (batch, SEQ)))


@pytest.fixture(scope='module')
def lm_params():
  return HYBRID_LM.init(key(0), lm_tokens())['params']


def test_lm_init_and_apply_match_the_linen_model(lm_params):
  tokens = lm_tokens(1)
  expected = jax.eval_shape(lambda: LM.init(key(0), tokens))
  assert shapes({'params': lm_params}) == shapes(expected)
  assert set(lm_params['block_0']['mlp']) == {'fc1', 'fc2'}
  np.testing.assert_array_equal(HYBRID_LM.apply({'params': lm_params}, tokens),
                                LM.apply({'params': lm_params}, tokens))


def test_lm_grads_and_sgd_step_match_the_linen_model(lm_params):
  tx = optax.sgd(0.1, momentum=0.9)
  tokens = lm_tokens(2)

  @jax.jit
  def steps(params, tokens):
    return tuple(linen_step(tx, params, tx.init(params),
                            lambda p, m=module: (xent(m.apply({'params': p}, tokens),
                                                      tokens), None))
                 for module in (HYBRID_LM, LM))

  ours, theirs = steps(lm_params, tokens)
  assert_trees_equal(ours, theirs)
  assert np.any(ours[4]['block_1']['mlp']['fc1']['kernel'] != 0)


def test_lm_decode_with_cache_matches_the_linen_model(lm_params):
  """16 decode steps of the hybrid (Linen attention cache, bridge MLP) equal the pure-Linen
  decode loop, logits and cache, and come close to the full forward pass (atol 1e-5: one
  query against a masked cache vs all queries at once)."""
  decode_config = LM_CONFIG.replace(decode=True)
  hybrid = lm.TransformerLM(decode_config, mlp_cls=bridge_mlp)
  linen = lm.TransformerLM(decode_config)
  tokens = lm_tokens(3)
  cache = hybrid.init(key(1), tokens)['cache']
  assert shapes(cache) == shapes(jax.eval_shape(lambda: linen.init(key(1), tokens))['cache'])

  @jax.jit
  def step(caches, token):
    outs = [m.apply({'params': lm_params, 'cache': c}, token, mutable=['cache'])
            for m, c in zip((hybrid, linen), caches, strict=True)]
    return [o[0] for o in outs], [o[1]['cache'] for o in outs]

  inputs = lm.shift_right(tokens)
  caches, logits = (cache, cache), []
  for i in range(SEQ):
    (ours, theirs), caches = step(caches, inputs[:, i:i + 1])
    np.testing.assert_array_equal(ours, theirs)
    logits.append(ours)
  assert_trees_equal(*caches)
  assert int(caches[0]['posembed']['cache_index']) == SEQ
  np.testing.assert_allclose(jnp.concatenate(logits, axis=1),
                             LM.apply({'params': lm_params}, tokens), rtol=0, atol=1e-5)


# -- the LSTM classifier with a bridge head using bridge.Dropout --------------------------------
class _Probe(nn.Module):
  """A classifier head that returns its input and the ``dropout`` key of its scope."""

  @nn.compact
  def __call__(self, x, deterministic):
    return x, self.make_rng('dropout')


FLAX_NNX = nnx_models.define(fnnx)


def head_cls(to_linen, nnx):
  """The classifier's ``head_cls`` built from an NNX head (``to_linen`` from bridge or from
  flax.nnx.bridge)."""
  def head(hidden_size, num_classes, dropout_rate, name=None):
    return to_linen(nnx.MLPHead, hidden_size, hidden_size, num_classes,
                    dropout_rate=dropout_rate, name=name)
  return head


CLASSIFIER_ARGS = dict(vocab_size=20, embedding_size=8, hidden_size=8, num_classes=3,
                       dropout_rate=0.5)
CLASSIFIER = lm.TextClassifier(**CLASSIFIER_ARGS)
HYBRID_CLASSIFIER = lm.TextClassifier(**CLASSIFIER_ARGS,
                                      head_cls=head_cls(bridge.to_linen, NNX))
FLAX_HYBRID_CLASSIFIER = lm.TextClassifier(**CLASSIFIER_ARGS,
                                           head_cls=head_cls(fnnx.bridge.to_linen, FLAX_NNX))


def text_batch(seed=0):
  r = np.random.default_rng(seed)
  tokens = jnp.asarray(r.integers(1, 20, (4, 6)))
  return tokens, jnp.array([6, 3, 5, 1]), jnp.asarray(r.integers(0, 3, (4,)))


@pytest.fixture(scope='module')
def classifier_params():
  tokens, lengths, _ = text_batch()
  variables = HYBRID_CLASSIFIER.init({'params': key(0), 'dropout': key(1)}, tokens, lengths)
  return variables['params']


def test_classifier_init_and_deterministic_apply_match_the_linen_model(classifier_params):
  tokens, lengths, _ = text_batch(1)
  expected = jax.eval_shape(lambda: CLASSIFIER.init(key(0), tokens, lengths))
  assert shapes({'params': classifier_params}) == shapes(expected)
  variables = {'params': classifier_params}
  np.testing.assert_array_equal(
    HYBRID_CLASSIFIER.apply(variables, tokens, lengths, deterministic=True),
    CLASSIFIER.apply(variables, tokens, lengths, deterministic=True))


def test_classifier_dropout_masks_follow_the_linen_dropout_key(classifier_params):
  """With ``rngs={'dropout': key}`` the hybrid equals flax.nnx's ToLinen running the same
  NNX head, and the pure-bridge head seeded with the key Linen gives the ``head`` scope;
  another key gives other masks; ``init_with_output`` agrees with ``apply``."""
  tokens, lengths, _ = text_batch(2)
  variables = {'params': classifier_params}

  def run(module, seed):
    return module.apply(variables, tokens, lengths, deterministic=False,
                        rngs={'dropout': key(seed)})
  ours = run(HYBRID_CLASSIFIER, 3)
  np.testing.assert_array_equal(ours, run(FLAX_HYBRID_CLASSIFIER, 3))
  assert not np.array_equal(ours, run(HYBRID_CLASSIFIER, 4))
  assert not np.array_equal(ours, HYBRID_CLASSIFIER.apply(variables, tokens, lengths,
                                                          deterministic=True))

  def probe(hidden_size, num_classes, dropout_rate, name=None):
    return _Probe(name=name)

  hidden, head_key = lm.TextClassifier(**CLASSIFIER_ARGS, head_cls=probe).apply(
    variables, tokens, lengths, deterministic=False, rngs={'dropout': key(3)})
  head = NNX.MLPHead(8, 8, 3, dropout_rate=0.5, rngs=bridge.Rngs(params=key(9), dropout=head_key))
  bridge.update(head, bridge.State(classifier_params['head']))
  np.testing.assert_array_equal(ours, head(hidden, deterministic=False))

  rngs = {'params': key(0), 'dropout': key(3)}
  out, init_variables = HYBRID_CLASSIFIER.init_with_output(rngs, tokens, lengths,
                                                           deterministic=False)
  np.testing.assert_array_equal(out, HYBRID_CLASSIFIER.apply(
    init_variables, tokens, lengths, deterministic=False, rngs={'dropout': key(3)}))


def test_classifier_grads_with_dropout_match_flax_nnx_to_linen(classifier_params):
  """Gradients through the bridge head's dropout equal those through flax.nnx's ToLinen
  with the same keys; with dropout off they equal the pure-Linen model's."""
  tokens, lengths, labels = text_batch(3)

  def grads(module, deterministic):
    def loss(params):
      logits = module.apply({'params': params}, tokens, lengths, deterministic=deterministic,
                            rngs={'dropout': key(6)})
      return xent(logits, labels)
    return jax.value_and_grad(loss)(classifier_params)

  @jax.jit
  def all_grads():
    return (grads(HYBRID_CLASSIFIER, False), grads(FLAX_HYBRID_CLASSIFIER, False),
            grads(HYBRID_CLASSIFIER, True), grads(CLASSIFIER, True))

  ours, flax_nnx, ours_eval, linen_eval = all_grads()
  assert_trees_equal(ours, flax_nnx)
  assert_trees_equal(ours_eval, linen_eval)
  assert not np.array_equal(ours[1]['head']['hidden']['kernel'],
                            ours_eval[1]['head']['hidden']['kernel'])
