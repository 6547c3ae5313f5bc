"""Real Linen models through ``bridge.ToNNX``: a ResNet with BatchNorm, a decoder-only
Transformer LM with its decode cache, an LSTM classifier with dropout, and an
encoder-decoder with ``encode``/``decode`` methods (``tests/models/linen_models.py``).

Each is compared with Linen itself on the same variables (read from the wrapper as
``{'params': bridge.state(model, bridge.Param).to_pure_dict(), ...}``): the forward pass,
the gradients, an optimizer step, BatchNorm's running statistics and the decode cache.

Exactness: the wrapper runs Linen's ``apply``, so every comparison is exact
(``assert_array_equal``) when both sides run the same way: eager against eager, compiled
against compiled, dropout with the same key. Forward passes (and the classifier's
gradients) are compared eagerly. Train steps trace both sides into one ``bridge.jit``: the
wrapper with ``bridge.value_and_grad`` and ``bridge.Optimizer``, and Linen's ``apply`` with
``jax.value_and_grad`` and optax on the Linen variables passed in beside it; the results
are compared outside. That is one compilation per test instead of two, with both sides
compiled alike. The one tolerance is decoding token by token against the full causal
forward pass: different computations (one query against a masked 16-slot cache, against 16
queries at once), equal up to float32 rounding (about 7e-7 on logits of size 3; atol 1e-5).

Keys are ``rbg`` keys (as big-model training configures): initializers compile in a
fraction of the time threefry takes, which keeps the file fast.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from models import linen_models as lm

import bridge

# -- helpers ---------------------------------------------------------------------------------
COLLECTIONS = {'params': bridge.Param, 'batch_stats': bridge.BatchStat, 'cache': bridge.Cache}


def linen_variables(model, *collections):
  """The wrapper's variables as Linen variables (``{collection: nested dict}``)."""
  return {c: bridge.state(model, COLLECTIONS[c]).to_pure_dict() for c in collections}


def linen_shapes(module, *args, **kwargs):
  """The shapes of the variables ``module.init`` creates."""
  return jax.tree.map(jnp.shape, jax.eval_shape(
    lambda: module.init(jax.random.key(0), *args, **kwargs)))


def key(seed):
  return jax.random.key(seed, impl='rbg')


def rngs(**seeds):
  return bridge.Rngs(**{name: key(seed) for name, seed in seeds.items()})


def init(module, seeds, *args, **kwargs):
  """``ToNNX(module, rngs=rngs(**seeds)).lazy_init(*args, **kwargs)``."""
  return bridge.ToNNX(module, rngs=rngs(**seeds)).lazy_init(*args, **kwargs)


def assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def assert_opt_state_equal(optimizer, opt_state):
  ours = jax.tree.leaves(optimizer.opt_state, is_leaf=lambda x: isinstance(x, bridge.Variable))
  assert len(ours) == len(jax.tree.leaves(opt_state))
  for a, b in zip(ours, jax.tree.leaves(opt_state), strict=True):
    np.testing.assert_array_equal(a.value, b)


def xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def bridge_step(model, optimizer, loss_fn, *args):
  """A train step on the wrapper: ``bridge.value_and_grad`` of ``loss_fn(model, *args)``
  and ``Optimizer.update``."""
  loss, grads = bridge.value_and_grad(loss_fn)(model, *args)
  optimizer.update(model, grads)
  return loss, grads


def linen_step(tx, params, opt_state, loss_fn):
  """The same step on Linen params: ``jax.value_and_grad`` of ``loss_fn(params) -> (loss,
  aux)`` and optax; returns ``(params, opt_state, loss, aux, grads)``."""
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss, aux, grads


# -- ResNet with BatchNorm -------------------------------------------------------------------
RESNET = lm.ResNet(stage_sizes=(1, 1), num_classes=3, num_filters=4)


def resnet_data(seed=0):
  r = np.random.default_rng(seed)
  return jnp.asarray(r.normal(size=(4, 16, 16, 3)), jnp.float32), jnp.asarray(
    r.integers(0, 3, (4,)))


@pytest.fixture(scope='module')
def resnet_init():
  return init(RESNET, {'params': 0}, resnet_data()[0], train=False)


@pytest.fixture
def resnet(resnet_init):
  return bridge.clone(resnet_init)


def test_resnet_variables_have_linen_paths_and_types(resnet):
  x, _ = resnet_data()
  shapes = jax.tree.map(jnp.shape, linen_variables(resnet, 'params', 'batch_stats'))
  assert shapes == linen_shapes(RESNET, x, train=False)
  assert isinstance(resnet.stage1_block0['conv_proj']['kernel'], bridge.Param)
  assert isinstance(resnet.stage1_block0['norm_proj']['mean'], bridge.BatchStat)
  assert 'conv_proj' not in resnet.stage0_block0  # no projection where shapes agree


def test_resnet_forward_and_batch_stats_match_apply(resnet):
  x, _ = resnet_data(1)
  variables = linen_variables(resnet, 'params', 'batch_stats')
  mean = resnet.bn_init['mean']

  np.testing.assert_array_equal(resnet(x, train=False), RESNET.apply(variables, x, train=False))
  assert_trees_equal(linen_variables(resnet, 'batch_stats'),
                     {'batch_stats': variables['batch_stats']})  # eval: unchanged

  y = resnet(x, train=True)
  expected_y, updates = RESNET.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_array_equal(y, expected_y)
  assert_trees_equal(linen_variables(resnet, 'batch_stats'), dict(updates))
  assert resnet.bn_init['mean'] is mean  # updated in place
  assert not np.array_equal(mean.value, variables['batch_stats']['bn_init']['mean'])


def test_resnet_grads_sgd_steps_and_batch_stats_match_linen(resnet):
  """Two train steps (``bridge.Optimizer`` with SGD + momentum, BatchNorm in training
  mode): loss, gradients, parameters, running statistics and momentum equal the same steps
  on Linen variables with ``mutable=['batch_stats']``."""
  tx = optax.sgd(0.1, momentum=0.9)
  optimizer = bridge.Optimizer(resnet, tx, wrt=bridge.Param)
  variables = linen_variables(resnet, 'params', 'batch_stats')

  @bridge.jit
  def steps(model, optimizer, params, opt_state, batch_stats, x, labels):
    def linen_loss(params):
      logits, updates = RESNET.apply({'params': params, 'batch_stats': batch_stats}, x,
                                     train=True, mutable=['batch_stats'])
      return xent(logits, labels), updates['batch_stats']
    return (bridge_step(model, optimizer, lambda m: xent(m(x, train=True), labels)),
            linen_step(tx, params, opt_state, linen_loss))

  params, batch_stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  for seed in (1, 2):
    x, labels = resnet_data(seed)
    (loss, grads), (params, opt_state, expected_loss, batch_stats, expected_grads) = steps(
      resnet, optimizer, params, opt_state, batch_stats, x, labels)
    np.testing.assert_array_equal(loss, expected_loss)
    assert_trees_equal(grads.to_pure_dict(), expected_grads)
    assert all(np.any(g != 0) for g in jax.tree.leaves(expected_grads))  # all matter
    assert_trees_equal(linen_variables(resnet, 'params', 'batch_stats'),
                       {'params': params, 'batch_stats': batch_stats})
  assert_opt_state_equal(optimizer, opt_state)
  assert int(optimizer.step.value) == 2
  assert not np.array_equal(params['head']['kernel'], variables['params']['head']['kernel'])


# -- decoder-only Transformer LM with a decode cache -----------------------------------------
LM_CONFIG = lm.TransformerConfig(vocab_size=32, emb_dim=16, num_heads=2, num_layers=2,
                                 qkv_dim=16, mlp_dim=32, max_len=16, dropout_rate=0.0,
                                 attention_dropout_rate=0.0, deterministic=True)
LM = lm.TransformerLM(LM_CONFIG)
LM_DECODE = lm.TransformerLM(LM_CONFIG.replace(decode=True))
SEQ = 16


def lm_tokens(seed=0, batch=2):
  return jnp.asarray(np.random.default_rng(seed).integers(1, LM_CONFIG.vocab_size,
                                                          (batch, SEQ)))


@pytest.fixture(scope='module')
def lm_init():
  return init(LM, {'params': 0}, lm_tokens())


@pytest.fixture
def lm_model(lm_init):
  return bridge.clone(lm_init)


def test_lm_forward_matches_apply(lm_model):
  tokens = lm_tokens(1)
  variables = linen_variables(lm_model, 'params')
  assert jax.tree.map(jnp.shape, variables) == linen_shapes(LM, tokens)
  np.testing.assert_array_equal(lm_model(tokens), LM.apply(variables, tokens))
  assert isinstance(lm_model.embed['embedding'], bridge.Param)
  assert linen_variables(lm_model, 'cache')['cache'] == {}  # no cache without decode


def test_lm_grads_and_adam_step_match_linen(lm_model):
  """Logits at position i predict token i (the model shifts its input right)."""
  tx = optax.adam(1e-2)
  optimizer = bridge.Optimizer(lm_model, tx, wrt=bridge.Param)
  params = linen_variables(lm_model, 'params')['params']
  tokens = lm_tokens(2)

  @bridge.jit
  def steps(model, optimizer, params, opt_state, tokens):
    return (bridge_step(model, optimizer, lambda m: xent(m(tokens), tokens)),
            linen_step(tx, params, opt_state,
                       lambda p: (xent(LM.apply({'params': p}, tokens), tokens), None)))

  (loss, grads), (new_params, opt_state, expected_loss, _, expected_grads) = steps(
    lm_model, optimizer, params, tx.init(params), tokens)
  np.testing.assert_array_equal(loss, expected_loss)
  assert_trees_equal(grads.to_pure_dict(), expected_grads)
  assert np.any(expected_grads['posembed']['pos_embedding'] != 0)
  assert_trees_equal(linen_variables(lm_model, 'params')['params'], new_params)
  assert_opt_state_equal(optimizer, opt_state)


def test_lm_decode_token_by_token_with_cache(lm_model):
  """16 decode steps with the Cache of a ``decode=True`` wrapper: logits and cache equal
  Linen's own decode loop (``apply(..., mutable=['cache'])``) step by step, both jitted;
  the logits are allclose to the full causal forward pass (see the module docstring)."""
  tokens = lm_tokens(3)
  inputs = lm.shift_right(tokens)  # step i sees the tokens before position i

  decoder = init(LM_DECODE, {'params': 1}, tokens)
  cache = linen_variables(decoder, 'cache')['cache']
  assert cache['block_0']['self_attention']['cached_key'].shape == (2, SEQ, 2, 8)
  assert isinstance(decoder.block_0['self_attention']['cached_key'], bridge.Cache)
  bridge.update(decoder, bridge.state(lm_model, bridge.Param))  # the trained weights
  params = linen_variables(lm_model, 'params')['params']
  assert_trees_equal(linen_variables(decoder, 'params')['params'], params)

  @bridge.jit
  def step(decoder, token):
    return decoder(token)  # the cache is written back in place

  @jax.jit
  def linen_step(params, cache, token):
    logits, updates = LM_DECODE.apply({'params': params, 'cache': cache}, token,
                                      mutable=['cache'])
    return logits, updates['cache']

  logits = []
  for i in range(SEQ):
    token = inputs[:, i:i + 1]
    logits.append(step(decoder, token))
    expected, cache = linen_step(params, cache, token)
    np.testing.assert_array_equal(logits[-1], expected)
    assert_trees_equal(linen_variables(decoder, 'cache')['cache'], cache)
  assert int(decoder.posembed['cache_index'].value) == SEQ
  assert int(decoder.block_1['self_attention']['cache_index'].value) == SEQ

  decoded = jnp.concatenate(logits, axis=1)
  np.testing.assert_allclose(decoded, lm_model(tokens), rtol=0, atol=1e-5)
  with pytest.raises(AssertionError):  # the tolerance still tells other tokens apart
    np.testing.assert_allclose(decoded, lm_model(lm_tokens(4)), rtol=0, atol=1e-5)


# -- LSTM text classifier with dropout -------------------------------------------------------
CLASSIFIER = lm.TextClassifier(vocab_size=20, embedding_size=8, hidden_size=8, num_classes=3,
                               dropout_rate=0.5)


def text_batch(seed=0):
  r = np.random.default_rng(seed)
  tokens = jnp.asarray(r.integers(1, 20, (4, 6)))
  return tokens, jnp.array([6, 3, 5, 1]), jnp.asarray(r.integers(0, 3, (4,)))


@pytest.fixture(scope='module')
def classifier_init():
  tokens, lengths, _ = text_batch()
  return init(CLASSIFIER, {'params': 0, 'dropout': 1}, tokens, lengths, deterministic=True)


@pytest.fixture
def classifier(classifier_init):
  return bridge.clone(classifier_init)


def dropout_key(seed):
  """The Linen ``dropout`` key a call with ``rngs=rngs(dropout=seed)`` uses."""
  return rngs(dropout=seed).dropout()


def test_classifier_forward_with_dropout_matches_apply_with_the_same_key(classifier):
  tokens, lengths, _ = text_batch(1)
  variables = linen_variables(classifier, 'params')
  assert jax.tree.map(jnp.shape, variables) == linen_shapes(CLASSIFIER, tokens, lengths)
  assert isinstance(classifier.lstm_cell['ii']['kernel'], bridge.Param)

  np.testing.assert_array_equal(
    classifier(tokens, lengths, deterministic=True),
    CLASSIFIER.apply(variables, tokens, lengths, deterministic=True))
  y = classifier(tokens, lengths, deterministic=False, rngs=rngs(dropout=7))
  expected = CLASSIFIER.apply(variables, tokens, lengths, deterministic=False,
                              rngs={'dropout': dropout_key(7)})
  np.testing.assert_array_equal(y, expected)
  other = CLASSIFIER.apply(variables, tokens, lengths, deterministic=False,
                           rngs={'dropout': dropout_key(8)})
  assert not np.array_equal(y, other)


def test_classifier_dropout_is_fresh_per_call_and_reseed_reproduces(classifier):
  tokens, lengths, _ = text_batch(1)
  a = classifier(tokens, lengths, deterministic=False)
  b = classifier(tokens, lengths, deterministic=False)
  assert not np.array_equal(a, b)
  bridge.reseed(classifier, dropout=key(3))
  c = classifier(tokens, lengths, deterministic=False)
  bridge.reseed(classifier, dropout=key(3))
  np.testing.assert_array_equal(classifier(tokens, lengths, deterministic=False), c)


def test_classifier_eager_grad_with_dropout_matches_jax_grad_of_apply(classifier):
  tokens, lengths, labels = text_batch(2)
  params = linen_variables(classifier, 'params')['params']

  def loss_fn(m):
    logits = m(tokens, lengths, deterministic=False, rngs=rngs(dropout=5))
    return xent(logits, labels)

  def linen_loss(p):
    logits = CLASSIFIER.apply({'params': p}, tokens, lengths, deterministic=False,
                              rngs={'dropout': dropout_key(5)})
    return xent(logits, labels)

  loss, grads = bridge.value_and_grad(loss_fn)(classifier)
  expected_loss, expected = jax.value_and_grad(linen_loss)(params)
  np.testing.assert_array_equal(loss, expected_loss)
  assert_trees_equal(grads.to_pure_dict(), expected)
  assert np.any(expected['lstm_cell']['hf']['kernel'] != 0)


def test_classifier_adam_step_with_dropout_under_jit(classifier):
  """An ``Rngs`` passed through ``bridge.jit`` into the loss draws the key Linen is given
  and advances its counter."""
  tx = optax.adam(1e-2)
  optimizer = bridge.Optimizer(classifier, tx, wrt=bridge.Param)
  params = linen_variables(classifier, 'params')['params']
  tokens, lengths, labels = text_batch(3)

  @bridge.jit
  def steps(model, optimizer, rngs, params, opt_state, key, tokens, lengths, labels):
    def loss_fn(m, rngs):
      return xent(m(tokens, lengths, deterministic=False, rngs=rngs), labels)

    def linen_loss(p):
      logits = CLASSIFIER.apply({'params': p}, tokens, lengths, deterministic=False,
                                rngs={'dropout': key})
      return xent(logits, labels), None
    # the Rngs is an argument of the grad'd function: its counter changes inside
    return (bridge_step(model, optimizer, loss_fn, rngs),
            linen_step(tx, params, opt_state, linen_loss))

  dropout_rngs = rngs(dropout=11)
  (loss, grads), (new_params, opt_state, expected_loss, _, expected_grads) = steps(
    classifier, optimizer, dropout_rngs, params, tx.init(params), dropout_key(11), tokens,
    lengths, labels)
  np.testing.assert_array_equal(loss, expected_loss)
  assert_trees_equal(grads.to_pure_dict(), expected_grads)
  assert_trees_equal(linen_variables(classifier, 'params')['params'], new_params)
  assert_opt_state_equal(optimizer, opt_state)
  assert int(dropout_rngs.dropout.count.value) == 1


# -- encoder-decoder with encode / decode methods ---------------------------------------------
SEQ2SEQ_CONFIG = lm.TransformerConfig(vocab_size=24, output_vocab_size=20, emb_dim=16,
                                      num_heads=2, num_layers=1, qkv_dim=16, mlp_dim=32,
                                      max_len=8, dropout_rate=0.0, attention_dropout_rate=0.0,
                                      deterministic=True)
SEQ2SEQ = lm.Transformer(SEQ2SEQ_CONFIG)


def seq2seq_batch(seed=0):
  r = np.random.default_rng(seed)
  inputs, targets = r.integers(1, 24, (2, 8)), r.integers(1, 20, (2, 7))
  inputs[1, 6:], targets[0, 5:] = 0, 0  # padding
  return jnp.asarray(inputs), jnp.asarray(targets)


@pytest.fixture(scope='module')
def seq2seq_init():
  model = bridge.ToNNX(SEQ2SEQ, rngs=rngs(params=0))
  bridge.lazy_init(model, *seq2seq_batch())
  return model


@pytest.fixture
def seq2seq(seq2seq_init):
  return bridge.clone(seq2seq_init)


def seq2seq_loss(logits, targets):
  weights = (targets > 0).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return (losses * weights).sum() / weights.sum()


def test_seq2seq_encode_decode_methods_match_apply(seq2seq):
  inputs, targets = seq2seq_batch(1)
  variables = linen_variables(seq2seq, 'params')
  assert jax.tree.map(jnp.shape, variables) == linen_shapes(SEQ2SEQ, inputs, targets)

  encoded = seq2seq.encode(inputs)
  np.testing.assert_array_equal(encoded, SEQ2SEQ.apply(variables, inputs, method='encode'))
  logits = seq2seq.decode(encoded, inputs, targets)
  np.testing.assert_array_equal(
    logits, SEQ2SEQ.apply(variables, encoded, inputs, targets, method=SEQ2SEQ.decode))
  np.testing.assert_array_equal(seq2seq(inputs, targets),
                                SEQ2SEQ.apply(variables, inputs, targets))


def test_seq2seq_lazy_init_one_method_at_a_time():
  """``lazy_init(model.encode, ...)`` creates the encoder only; ``decode`` then asks for its
  own ``lazy_init``, after which the wrapper holds what a full Linen ``init`` creates."""
  inputs, targets = seq2seq_batch()
  model = bridge.ToNNX(SEQ2SEQ, rngs=rngs(params=0))
  bridge.lazy_init(model.encode, inputs)
  assert set(linen_variables(model, 'params')['params']) == {'encoder'}
  encoded = model.encode(inputs)
  with pytest.raises(ValueError, match=r'lazy_init\(model.decode'):
    model.decode(encoded, inputs, targets)
  bridge.lazy_init(model.decode, encoded, inputs, targets)
  variables = linen_variables(model, 'params')
  assert jax.tree.map(jnp.shape, variables) == linen_shapes(SEQ2SEQ, inputs, targets)
  np.testing.assert_array_equal(model.encode(inputs), encoded)  # encoder kept its weights
  np.testing.assert_array_equal(model(inputs, targets),
                                SEQ2SEQ.apply(variables, inputs, targets))


def test_seq2seq_grads_through_encode_and_decode_and_sgd_step_match_linen(seq2seq):
  tx = optax.sgd(0.5)
  optimizer = bridge.Optimizer(seq2seq, tx, wrt=bridge.Param)
  params = linen_variables(seq2seq, 'params')['params']
  inputs, targets = seq2seq_batch(3)

  @bridge.jit
  def steps(model, optimizer, params, opt_state, inputs, targets):
    def loss_fn(m):
      return seq2seq_loss(m.decode(m.encode(inputs), inputs, targets), targets)

    def linen_loss(p):
      encoded = SEQ2SEQ.apply({'params': p}, inputs, method='encode')
      logits = SEQ2SEQ.apply({'params': p}, encoded, inputs, targets, method='decode')
      return seq2seq_loss(logits, targets), None
    return bridge_step(model, optimizer, loss_fn), linen_step(tx, params, opt_state, linen_loss)

  (loss, grads), (new_params, _, expected_loss, _, expected_grads) = steps(
    seq2seq, optimizer, params, tx.init(params), inputs, targets)
  np.testing.assert_array_equal(loss, expected_loss)
  assert_trees_equal(grads.to_pure_dict(), expected_grads)
  assert np.any(expected_grads['encoder']['encoderblock_0']['MlpBlock_0']['fc1']['kernel'] != 0)
  assert_trees_equal(linen_variables(seq2seq, 'params')['params'], new_params)
