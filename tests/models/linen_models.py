"""Linen models in the style of the flax examples (imagenet, lm1b, sst2, wmt), trimmed to
tiny sizes: a ResNet with BatchNorm, a decoder-only Transformer LM with a ``decode`` cache,
an LSTM text classifier with dropout, and an encoder-decoder Transformer with separate
``encode``/``decode`` methods.

Submodules are named explicitly where a migration would swap them for ``bridge`` modules
(ResNet blocks, the Transformer MLP, the classifier head), and the swappable parts are
attributes (``block_cls``, ``mlp_cls``, ``head_cls``), as real projects do for their own
variants.
"""

from __future__ import annotations

import functools
import typing as tp

import flax.linen as nn
import jax.numpy as jnp
from flax import struct
from jax import lax

ModuleDef = tp.Any


# -- ResNet (flax/examples/imagenet) ------------------------------------------------------
class ResNetBlock(nn.Module):
  """Two 3x3 convolutions with BatchNorm and a projected shortcut when the shape changes."""
  filters: int
  strides: tuple[int, int] = (1, 1)
  dtype: tp.Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    residual = x
    y = conv(self.filters, (3, 3), self.strides, name='conv1')(x)
    y = norm(name='bn1')(y)
    y = nn.relu(y)
    y = conv(self.filters, (3, 3), name='conv2')(y)
    y = norm(name='bn2')(y)
    if residual.shape != y.shape:
      residual = conv(self.filters, (1, 1), self.strides, name='conv_proj')(residual)
      residual = norm(name='norm_proj')(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """A stem (conv, BatchNorm, max-pool), ``stage_sizes`` stages of blocks, a linear head."""
  stage_sizes: tp.Sequence[int]
  num_classes: int
  num_filters: int = 64
  block_cls: ModuleDef = ResNetBlock
  dtype: tp.Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                dtype=self.dtype, name='conv_init')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name='bn_init')(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(self.num_filters * 2**i, strides=strides,
                           name=f'stage{i}_block{j}')(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return jnp.asarray(x, self.dtype)


# -- Transformer (flax/examples/lm1b and wmt) -----------------------------------------------
@struct.dataclass
class TransformerConfig:
  """Hyperparameters of the Transformer LM and the encoder-decoder."""
  vocab_size: int
  output_vocab_size: int | None = None
  dtype: tp.Any = jnp.float32
  emb_dim: int = 512
  num_heads: int = 8
  num_layers: int = 6
  qkv_dim: int = 512
  mlp_dim: int = 2048
  max_len: int = 2048
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  deterministic: bool = False
  decode: bool = False
  kernel_init: tp.Callable = nn.initializers.xavier_uniform()
  bias_init: tp.Callable = nn.initializers.normal(stddev=1e-6)
  posemb_init: tp.Callable | None = nn.initializers.normal(stddev=0.02)


def shift_right(x, axis=1):
  """Shifts the input to the right by padding on ``axis`` (teacher forcing)."""
  pad_widths = [(0, 0)] * len(x.shape)
  pad_widths[axis] = (1, 0)
  padded = jnp.pad(x, pad_widths, mode='constant', constant_values=x.dtype.type(0))
  return padded[:, :-1]


class AddPositionEmbs(nn.Module):
  """Adds learned positional embeddings; with ``decode`` one position per call, counted
  by a ``cache_index`` in the ``cache`` collection."""
  config: TransformerConfig
  decode: bool = False

  @nn.compact
  def __call__(self, inputs):
    cfg = self.config
    length = inputs.shape[1]
    pos_emb_shape = (1, cfg.max_len, inputs.shape[-1])
    pos_embedding = self.param('pos_embedding', cfg.posemb_init, pos_emb_shape)
    pe = pos_embedding[:, :length, :]
    if self.decode:
      is_initialized = self.has_variable('cache', 'cache_index')
      cache_index = self.variable('cache', 'cache_index',
                                  lambda: jnp.array(0, dtype=jnp.uint32))
      if is_initialized:
        i = cache_index.value
        cache_index.value = i + 1
        _, _, df = pos_embedding.shape
        pe = lax.dynamic_slice(pos_embedding, jnp.array((0, i, 0)), (1, 1, df))
    return inputs + pe


class MlpBlock(nn.Module):
  """Transformer MLP / feed-forward block."""
  config: TransformerConfig
  out_dim: int | None = None

  @nn.compact
  def __call__(self, inputs):
    cfg = self.config
    out_dim = inputs.shape[-1] if self.out_dim is None else self.out_dim
    x = nn.Dense(cfg.mlp_dim, dtype=cfg.dtype, kernel_init=cfg.kernel_init,
                 bias_init=cfg.bias_init, name='fc1')(inputs)
    x = nn.relu(x)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)
    x = nn.Dense(out_dim, dtype=cfg.dtype, kernel_init=cfg.kernel_init,
                 bias_init=cfg.bias_init, name='fc2')(x)
    return nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)


def _self_attention(cfg: TransformerConfig, decode: bool, name: str | None = None):
  return nn.MultiHeadDotProductAttention(
    num_heads=cfg.num_heads, dtype=cfg.dtype, qkv_features=cfg.qkv_dim,
    kernel_init=cfg.kernel_init, bias_init=cfg.bias_init, use_bias=False,
    broadcast_dropout=False, dropout_rate=cfg.attention_dropout_rate,
    deterministic=cfg.deterministic, decode=decode, name=name)


class DecoderBlock(nn.Module):
  """Pre-LayerNorm block: causal self-attention (cached when decoding), then the MLP."""
  config: TransformerConfig
  mlp_cls: ModuleDef = MlpBlock

  @nn.compact
  def __call__(self, inputs, decoder_mask=None):
    cfg = self.config
    x = nn.LayerNorm(dtype=cfg.dtype, name='ln_attention')(inputs)
    x = _self_attention(cfg, cfg.decode, name='self_attention')(x, mask=decoder_mask)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)
    x = x + inputs
    z = nn.LayerNorm(dtype=cfg.dtype, name='ln_mlp')(x)
    z = self.mlp_cls(config=cfg, name='mlp')(z)
    return x + z


class TransformerLM(nn.Module):
  """Decoder-only Transformer language model (lm1b). With ``config.decode`` each call
  takes one token per sequence and the attention keys/values live in the ``cache``."""
  config: TransformerConfig
  mlp_cls: ModuleDef = MlpBlock

  @nn.compact
  def __call__(self, inputs):
    cfg = self.config
    if cfg.decode:
      decoder_mask = None  # the cache masks the positions not decoded yet
      y = inputs.astype('int32')
    else:
      decoder_mask = nn.combine_masks(
        nn.make_attention_mask(inputs > 0, inputs > 0, dtype=cfg.dtype),
        nn.make_causal_mask(inputs, dtype=cfg.dtype))
      y = shift_right(inputs.astype('int32'))
    y = nn.Embed(cfg.vocab_size, cfg.emb_dim, embedding_init=nn.initializers.normal(1.0),
                 name='embed')(y)
    y = AddPositionEmbs(config=cfg, decode=cfg.decode, name='posembed')(y)
    y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=cfg.deterministic)
    for layer in range(cfg.num_layers):
      y = DecoderBlock(config=cfg, mlp_cls=self.mlp_cls, name=f'block_{layer}')(
        y, decoder_mask=decoder_mask)
    y = nn.LayerNorm(dtype=cfg.dtype, name='decoder_norm')(y)
    return nn.Dense(cfg.vocab_size, dtype=cfg.dtype, kernel_init=cfg.kernel_init,
                    bias_init=cfg.bias_init, name='logits')(y)


# -- Encoder-decoder (flax/examples/wmt) ----------------------------------------------------
class EncoderBlock(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, inputs, encoder_mask=None):
    cfg = self.config
    x = nn.LayerNorm(dtype=cfg.dtype)(inputs)
    x = _self_attention(cfg, decode=False)(x, mask=encoder_mask)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)
    x = x + inputs
    y = nn.LayerNorm(dtype=cfg.dtype)(x)
    return x + MlpBlock(config=cfg)(y)


class EncoderDecoderBlock(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, targets, encoded, decoder_mask=None, encoder_decoder_mask=None):
    cfg = self.config
    x = nn.LayerNorm(dtype=cfg.dtype)(targets)
    x = _self_attention(cfg, decode=cfg.decode)(x, mask=decoder_mask)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)
    x = x + targets
    y = nn.LayerNorm(dtype=cfg.dtype)(x)
    y = _self_attention(cfg, decode=False)(y, encoded, mask=encoder_decoder_mask)
    y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=cfg.deterministic)
    y = y + x
    z = nn.LayerNorm(dtype=cfg.dtype)(y)
    return y + MlpBlock(config=cfg)(z)


class Encoder(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, inputs, encoder_mask=None):
    cfg = self.config
    x = nn.Embed(cfg.vocab_size, cfg.emb_dim, embedding_init=nn.initializers.normal(1.0),
                 name='embed')(inputs.astype('int32'))
    x = AddPositionEmbs(config=cfg, name='posembed_input')(x)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)
    for layer in range(cfg.num_layers):
      x = EncoderBlock(config=cfg, name=f'encoderblock_{layer}')(x, encoder_mask)
    return nn.LayerNorm(dtype=cfg.dtype, name='encoder_norm')(x)


class Decoder(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, encoded, targets, decoder_mask=None, encoder_decoder_mask=None):
    cfg = self.config
    y = targets.astype('int32')
    if not cfg.decode:
      y = shift_right(y)
    y = nn.Embed(cfg.output_vocab_size, cfg.emb_dim, embedding_init=nn.initializers.normal(1.0),
                 name='embed')(y)
    y = AddPositionEmbs(config=cfg, decode=cfg.decode, name='posembed_output')(y)
    y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=cfg.deterministic)
    for layer in range(cfg.num_layers):
      y = EncoderDecoderBlock(config=cfg, name=f'encoderdecoderblock_{layer}')(
        y, encoded, decoder_mask=decoder_mask, encoder_decoder_mask=encoder_decoder_mask)
    y = nn.LayerNorm(dtype=cfg.dtype, name='encoderdecoder_norm')(y)
    return nn.Dense(cfg.output_vocab_size, dtype=cfg.dtype, kernel_init=cfg.kernel_init,
                    bias_init=cfg.bias_init, name='logitdense')(y)


class Transformer(nn.Module):
  """Encoder-decoder Transformer for sequence-to-sequence tasks (wmt). ``encode`` and
  ``decode`` are separate methods so that inference encodes once and decodes many times."""
  config: TransformerConfig

  def setup(self):
    self.encoder = Encoder(config=self.config)
    self.decoder = Decoder(config=self.config)

  def encode(self, inputs):
    cfg = self.config
    encoder_mask = nn.make_attention_mask(inputs > 0, inputs > 0, dtype=cfg.dtype)
    return self.encoder(inputs, encoder_mask=encoder_mask)

  def decode(self, encoded, inputs, targets):
    cfg = self.config
    decoder_mask = nn.combine_masks(
      nn.make_attention_mask(targets > 0, targets > 0, dtype=cfg.dtype),
      nn.make_causal_mask(targets, dtype=cfg.dtype))
    encoder_decoder_mask = nn.make_attention_mask(targets > 0, inputs > 0, dtype=cfg.dtype)
    return self.decoder(encoded, targets, decoder_mask=decoder_mask,
                        encoder_decoder_mask=encoder_decoder_mask)

  def __call__(self, inputs, targets):
    return self.decode(self.encode(inputs), inputs, targets)


# -- LSTM text classifier (flax/examples/sst2) ----------------------------------------------
class MLPHead(nn.Module):
  """The classifier head: a tanh hidden layer, dropout, and the output layer."""
  hidden_size: int
  num_classes: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool):
    x = nn.tanh(nn.Dense(self.hidden_size, name='hidden')(x))
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    return nn.Dense(self.num_classes, name='output')(x)


class TextClassifier(nn.Module):
  """Embeds tokens, runs an LSTM over each sequence up to its length, classifies the final
  hidden state. Dropout on the embeddings and in the head."""
  vocab_size: int
  embedding_size: int
  hidden_size: int
  num_classes: int
  dropout_rate: float = 0.0
  head_cls: ModuleDef = MLPHead

  @nn.compact
  def __call__(self, token_ids, lengths, deterministic: bool = True):
    x = nn.Embed(self.vocab_size, self.embedding_size, name='embedder')(token_ids)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    cell = nn.OptimizedLSTMCell(self.hidden_size, name='lstm_cell')
    (_, hidden), _ = nn.RNN(cell, return_carry=True)(x, seq_lengths=lengths)
    return self.head_cls(hidden_size=self.hidden_size, num_classes=self.num_classes,
                         dropout_rate=self.dropout_rate, name='head')(
      hidden, deterministic=deterministic)
