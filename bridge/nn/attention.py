"""Dot-product attention, attention masks and ``MultiHeadAttention`` with a decode cache.

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> layer = nnx.MultiHeadAttention(num_heads=2, in_features=4, decode=False,
...                                rngs=nnx.Rngs(0))
>>> x = jnp.ones((1, 5, 4))
>>> layer(x, mask=nnx.make_causal_mask(jnp.ones((1, 5)))).shape
(1, 5, 4)
"""

from __future__ import annotations

import functools
import math
import typing as tp
from types import MappingProxyType

import jax
import jax.numpy as jnp
from jax import lax

from bridge.module import Module
from bridge.nn import dtypes, initializers
from bridge.nn.linear import LinearGeneral, default_kernel_init
from bridge.nn.normalization import LayerNorm
from bridge.rngs import Rngs, RngStream
from bridge.variables import Cache, Intermediate

Shape = tp.Sequence[int]

_NO_METADATA = MappingProxyType({})


def _check_qkv(query, key, value=None):
  arrays = (query, key) if value is None else (query, key, value)
  names = 'query, key' if value is None else 'query, key, value'
  if len({a.ndim for a in arrays}) != 1:
    raise ValueError(f'{names} must have the same rank, got shapes '
                     f'{tuple(a.shape for a in arrays)}.')
  if len({a.shape[:-3] for a in arrays}) != 1:
    raise ValueError(f'{names} must have the same batch dimensions (all but the last 3), '
                     f'got shapes {tuple(a.shape for a in arrays)}.')
  if query.shape[-2] % key.shape[-2]:
    raise ValueError(f'query heads ({query.shape[-2]}) must be a multiple of key/value heads '
                     f'({key.shape[-2]}) for grouped-query attention.')


def dot_product_attention_weights(query, key, bias=None, mask=None,
                                  broadcast_dropout: bool = True, dropout_rng=None,
                                  dropout_rate: float = 0.0, deterministic: bool = False,
                                  dtype=None, precision=None, module: Module | None = None,
                                  promote_dtype=dtypes.promote_dtype, is_causal: bool = False):
  """Attention weights ``softmax(q k^T / sqrt(depth) + bias)``, masked and dropped out.

  ``query`` is ``[batch..., q_length, num_heads, depth]``, ``key`` is ``[batch...,
  kv_length, num_kv_heads, depth]`` (``num_heads`` a multiple of ``num_kv_heads``: grouped
  queries share a key head); the result is ``[batch..., num_heads, q_length, kv_length]``.
  ``mask`` (``False`` = masked out) and ``bias`` broadcast to that shape; ``is_causal`` adds
  a lower-triangular mask. Dropout (``dropout_rate`` > 0, not ``deterministic``) uses
  ``dropout_rng`` and is broadcast over batch and heads when ``broadcast_dropout``. With a
  ``module``, the weights (before dropout) are sown into its ``Intermediate``
  ``attention_weights``.

  >>> import jax, jax.numpy as jnp
  >>> from bridge.nn.attention import dot_product_attention_weights
  >>> q = k = jnp.ones((3, 1, 2))  # [length, heads, depth]
  >>> w = dot_product_attention_weights(q, k, is_causal=True)
  >>> w.shape, w[0, 1].tolist()
  ((1, 3, 3), [0.5, 0.5, 0.0])
  """
  query, key = promote_dtype((query, key), dtype=dtype)
  dtype = query.dtype
  _check_qkv(query, key)
  if query.shape[-1] != key.shape[-1]:
    raise ValueError(f'query and key depths must match, got shapes {query.shape} and '
                     f'{key.shape}.')
  *batch, q_length, num_heads, depth = query.shape
  kv_heads = key.shape[-2]
  query = query / jnp.sqrt(depth).astype(dtype)
  if kv_heads == num_heads:
    weights = jnp.einsum('...qhd,...khd->...hqk', query, key, precision=precision)
  else:  # grouped-query attention: each key head serves num_heads // kv_heads query heads
    query = query.reshape(*batch, q_length, kv_heads, num_heads // kv_heads, depth)
    weights = jnp.einsum('...qhgd,...khd->...hgqk', query, key, precision=precision)
    weights = weights.reshape(*batch, num_heads, q_length, key.shape[-3])
  if bias is not None:
    weights = weights + bias
  masks = [] if mask is None else [mask]
  if is_causal:
    causal = jnp.tril(jnp.ones(weights.shape[-2:], dtype))
    masks.append(jnp.broadcast_to(causal, weights.shape if mask is None else mask.shape))
  if masks:
    weights = jnp.where(combine_masks(*masks, dtype=dtype), weights, jnp.finfo(dtype).min)
  weights = jax.nn.softmax(weights).astype(dtype)
  if module is not None:
    module.sow(Intermediate, 'attention_weights', weights)
  if not deterministic and dropout_rate > 0.0:
    keep_prob = 1.0 - dropout_rate
    shape = (1,) * (weights.ndim - 2) + weights.shape[-2:] if broadcast_dropout \
      else weights.shape
    keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
    weights = weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype=dtype))
  return weights


def dot_product_attention(query, key, value, bias=None, mask=None,
                          broadcast_dropout: bool = True, dropout_rng=None,
                          dropout_rate: float = 0.0, deterministic: bool = False, dtype=None,
                          precision=None, module: Module | None = None,
                          promote_dtype=dtypes.promote_dtype, is_causal: bool = False):
  """Attention ``softmax(q k^T / sqrt(depth)) v`` (https://arxiv.org/abs/1706.03762).

  ``query`` ``[batch..., q_length, num_heads, depth]``, ``key``/``value`` ``[batch...,
  kv_length, num_kv_heads, depth]``; the result is ``[batch..., q_length, num_heads,
  v_depth]``. Arguments are those of ``dot_product_attention_weights``. As in flax.nnx, with
  no dropout (``dropout_rate == 0``) and no ``module`` to sow into, this runs
  ``jax.nn.dot_product_attention`` (the fused kernel where the backend has one); otherwise
  it computes the weights explicitly.

  >>> import jax, jax.numpy as jnp
  >>> from bridge.nn.attention import dot_product_attention
  >>> q = k = jnp.ones((2, 3, 1, 4))
  >>> v = jnp.arange(24.0).reshape(2, 3, 1, 4)
  >>> dot_product_attention(q, k, v, is_causal=True)[0, :, 0, 0].tolist()
  [0.0, 2.0, 4.0]
  """
  query, key, value = promote_dtype((query, key, value), dtype=dtype)
  dtype = query.dtype
  _check_qkv(query, key, value)
  if key.shape[-3] != value.shape[-3]:
    raise ValueError(f'key and value lengths must match, got shapes {key.shape} and '
                     f'{value.shape}.')
  if dropout_rate == 0.0 and module is None:
    batch = query.shape[:-3]
    if len(batch) > 1:  # jax.nn.dot_product_attention takes one batch dimension
      as_4d = lambda x: x if x is None else x.reshape(math.prod(x.shape[:-3]), *x.shape[-3:])
      query, key, value, bias, mask = map(as_4d, (query, key, value, bias, mask))
    if mask is not None:
      mask = mask.astype(jnp.bool_)
    out = jax.nn.dot_product_attention(query, key, value, bias, mask, is_causal=is_causal)
    return out.reshape(*batch, *out.shape[-3:])

  weights = dot_product_attention_weights(
    query, key, bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic,
    dtype, precision, module, promote_dtype, is_causal)
  *batch, num_heads, q_length, kv_length = weights.shape
  kv_heads = value.shape[-2]
  if kv_heads == num_heads:
    return jnp.einsum('...hqk,...khd->...qhd', weights, value, precision=precision)
  weights = weights.reshape(*batch, kv_heads, num_heads // kv_heads, q_length, kv_length)
  out = jnp.einsum('...hgqk,...khd->...qhgd', weights, value, precision=precision)
  return out.reshape(*batch, q_length, num_heads, value.shape[-1])


# -- masks --------------------------------------------------------------------------------


def make_attention_mask(query_input, key_input, pairwise_fn: tp.Callable = jnp.multiply,
                        extra_batch_dims: int = 0, dtype=jnp.float32):
  """A ``[batch..., 1, len_q, len_kv]`` mask: ``pairwise_fn(query_input[..., :, None],
  key_input[..., None, :])`` for ``[batch..., len_q]`` and ``[batch..., len_kv]`` inputs,
  with a singleton heads axis and ``extra_batch_dims`` leading singleton axes.

  >>> import jax.numpy as jnp
  >>> from bridge.nn.attention import make_attention_mask
  >>> tokens = jnp.array([[5, 7, 0]])  # 0 is padding
  >>> make_attention_mask(tokens > 0, tokens > 0)[0, 0].tolist()
  [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
  """
  mask = pairwise_fn(jnp.expand_dims(query_input, -1), jnp.expand_dims(key_input, -2))
  mask = jnp.expand_dims(mask, -3)
  mask = jnp.expand_dims(mask, tuple(range(extra_batch_dims)))
  return mask.astype(dtype)


def make_causal_mask(x, extra_batch_dims: int = 0, dtype=jnp.float32):
  """A ``[batch..., 1, len, len]`` mask letting position ``i`` attend to positions ``<= i``,
  for ``x`` of shape ``[batch..., len]`` (only its shape is used).

  >>> import jax.numpy as jnp
  >>> from bridge.nn.attention import make_causal_mask
  >>> make_causal_mask(jnp.ones((1, 3)))[0, 0].tolist()
  [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
  """
  positions = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
  return make_attention_mask(positions, positions, jnp.greater_equal,
                             extra_batch_dims=extra_batch_dims, dtype=dtype)


def combine_masks(*masks, dtype=jnp.float32):
  """The logical AND of the masks that are not ``None`` (all of one rank), as ``dtype``;
  ``None`` when there are none.

  >>> import jax.numpy as jnp
  >>> from bridge.nn.attention import combine_masks
  >>> combine_masks(jnp.array([1, 1, 0]), None, jnp.array([0, 1, 1])).tolist()
  [0.0, 1.0, 0.0]
  """
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  if len({m.ndim for m in masks}) != 1:
    raise ValueError(f'masks must have the same rank, got shapes '
                     f'{tuple(m.shape for m in masks)}.')
  mask = masks[0]
  for other in masks[1:]:
    mask = jnp.logical_and(mask, other)
  return mask.astype(dtype)


# -- MultiHeadAttention -------------------------------------------------------------------

class MultiHeadAttention(Module):
  """Multi-head dot-product attention (flax.nnx's ``MultiHeadAttention``).

  ``query``, ``key`` and ``value`` project the inputs to ``(num_heads, head_dim)`` (key and
  value to ``num_kv_heads`` heads: grouped-query attention when fewer), ``attention_fn``
  combines them and ``out`` projects back to ``out_features``. ``layer(q)`` is
  self-attention, ``layer(q, kv)`` or ``layer(q, k, v)`` cross-attention; ``mask``
  (``[batch..., num_heads or 1, q_length, kv_length]``, ``False`` = masked) and
  ``is_causal`` restrict what each query sees. ``sow_weights=True`` stores the attention
  weights as the ``Intermediate`` ``attention_weights``.

  Dropout on the attention weights (``dropout_rate`` > 0) needs ``deterministic=False`` (at
  construction, at the call, or ``model.train()``) and draws keys from the ``dropout``
  stream: the layer keeps a fork of ``rngs.dropout`` (``keep_rngs=True``) unless ``rngs``
  is passed to the call.

  Decoding (``decode=True`` at construction or call; left unset it means no decoding,
  where flax.nnx 0.12.8 raises) feeds one position at a time after ``init_cache``: each call
  writes its key and value at ``cache_index`` in ``cached_key``/``cached_value``, attends to
  the positions written so far and advances ``cache_index``. Writing past the cache length
  is an error when ``cache_index`` is concrete (eager calls); under a transform, where it is
  traced, the overflowing call returns NaNs instead of silently reusing a cache slot (and
  ``cache_index`` keeps counting, so the next eager call raises).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.MultiHeadAttention(num_heads=2, in_features=3, qkv_features=6,
  ...                                out_features=6, decode=True, rngs=nnx.Rngs(0))
  >>> layer.init_cache((1, 4, 3))  # batch 1, up to 4 positions, 3 features
  >>> for _ in range(4):
  ...   y = layer(jnp.ones((1, 1, 3)))
  >>> y.shape, int(layer.cache_index.value)
  ((1, 1, 6), 4)
  >>> layer(jnp.ones((1, 1, 3)))
  Traceback (most recent call last):
  ...
  ValueError: MultiHeadAttention: the decode cache is full: cache_index=4 ...
  """

  def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
               out_features: int | None = None, num_kv_heads: int | None = None,
               in_kv_features: int | None = None, *, dtype=None, param_dtype=jnp.float32,
               broadcast_dropout: bool = True, dropout_rate: float = 0.0,
               deterministic: bool | None = None, precision=None,
               kernel_init=default_kernel_init, out_kernel_init=None,
               bias_init=initializers.zeros_init(), out_bias_init=None,
               use_bias: bool = True, attention_fn: tp.Callable = dot_product_attention,
               decode: bool | None = None, normalize_qk: bool = False,
               qkv_promote_dtype=dtypes.promote_dtype, out_promote_dtype=dtypes.promote_dtype,
               ln_promote_dtype=dtypes.promote_dtype, qkv_dot_general=None,
               out_dot_general=None, qkv_dot_general_cls=None, out_dot_general_cls=None,
               rngs: Rngs, keep_rngs: bool = True, kernel_metadata=_NO_METADATA,
               out_kernel_metadata=_NO_METADATA, bias_metadata=_NO_METADATA,
               out_bias_metadata=_NO_METADATA, query_ln_scale_metadata=_NO_METADATA,
               key_ln_scale_metadata=_NO_METADATA):
    self.num_heads = num_heads
    self.in_features = in_features
    self.qkv_features = in_features if qkv_features is None else qkv_features
    self.out_features = in_features if out_features is None else out_features
    self.in_kv_features = in_features if in_kv_features is None else in_kv_features
    self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'MultiHeadAttention: num_heads ({num_heads}) must be divisible by '
                       f'num_kv_heads ({self.num_kv_heads}).')
    if self.qkv_features % num_heads:
      raise ValueError(f'MultiHeadAttention: qkv_features ({self.qkv_features}) must be '
                       f'divisible by num_heads ({num_heads}).')
    self.head_dim = self.qkv_features // num_heads
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.broadcast_dropout = broadcast_dropout
    self.dropout_rate = dropout_rate
    self.deterministic = deterministic
    self.precision = precision
    self.use_bias = use_bias
    self.attention_fn = attention_fn
    self.decode = decode
    self.normalize_qk = normalize_qk
    self.qkv_promote_dtype = qkv_promote_dtype
    self.out_promote_dtype = out_promote_dtype
    self.ln_promote_dtype = ln_promote_dtype
    self.qkv_dot_general = qkv_dot_general
    self.out_dot_general = out_dot_general
    self.qkv_dot_general_cls = qkv_dot_general_cls
    self.out_dot_general_cls = out_dot_general_cls

    linear = functools.partial(
      LinearGeneral, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      precision=precision, rngs=rngs)
    qkv = functools.partial(
      linear, kernel_init=kernel_init, bias_init=bias_init, promote_dtype=qkv_promote_dtype,
      dot_general=qkv_dot_general, dot_general_cls=qkv_dot_general_cls,
      kernel_metadata=kernel_metadata, bias_metadata=bias_metadata)
    # Parameters are created in flax.nnx's order (query, key, value, the LayerNorms, out),
    # so that the same seed gives the same weights.
    self.query = qkv(in_features, (num_heads, self.head_dim))
    self.key = qkv(self.in_kv_features, (self.num_kv_heads, self.head_dim))
    self.value = qkv(self.in_kv_features, (self.num_kv_heads, self.head_dim))
    if normalize_qk:
      # Normalizing queries and keys stabilizes training at high learning rates
      # (ViT-22B, https://arxiv.org/abs/2302.05442).
      layer_norm = functools.partial(
        LayerNorm, self.head_dim, use_bias=False, dtype=dtype, param_dtype=param_dtype,
        promote_dtype=ln_promote_dtype, rngs=rngs)
      self.query_ln = layer_norm(scale_metadata=query_ln_scale_metadata)
      self.key_ln = layer_norm(scale_metadata=key_ln_scale_metadata)
    else:
      self.query_ln = None
      self.key_ln = None
    self.out = linear((num_heads, self.head_dim), self.out_features, axis=(-2, -1),
                      kernel_init=out_kernel_init or kernel_init,
                      bias_init=out_bias_init or bias_init, promote_dtype=out_promote_dtype,
                      dot_general=out_dot_general, dot_general_cls=out_dot_general_cls,
                      kernel_metadata=out_kernel_metadata or kernel_metadata,
                      bias_metadata=out_bias_metadata or bias_metadata)
    self.rngs = rngs.dropout.fork() if keep_rngs and dropout_rate > 0 else None
    self.cached_key = None
    self.cached_value = None
    self.cache_index = None

  def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, mask=None,
               deterministic: bool | None = None, rngs: Rngs | RngStream | None = None,
               sow_weights: bool = False, decode: bool | None = None, is_causal: bool = False,
               out_sharding=None, qkv_sharding=None):
    """Attends from ``inputs_q`` (``[batch..., length, in_features]``) to ``inputs_k`` and
    ``inputs_v`` (default: ``inputs_q``, then ``inputs_k``); ``[batch..., length,
    out_features]``. ``deterministic``, ``rngs`` and ``decode`` override the layer's."""
    name = type(self).__name__
    if inputs_k is None:
      if inputs_v is not None:
        raise ValueError(f'{name}: inputs_v given without inputs_k; for keys and values '
                         'from the same input pass it as inputs_k and leave inputs_v None.')
      inputs_k = inputs_q
    if inputs_v is None:
      inputs_v = inputs_k
    if inputs_q.shape[-1] != self.in_features:
      raise ValueError(f'{name}: expected inputs_q with last dimension '
                       f'in_features={self.in_features}, got shape {inputs_q.shape}.')
    for arg, x in (('inputs_k', inputs_k), ('inputs_v', inputs_v)):
      if x.shape[-1] != self.in_kv_features:
        raise ValueError(f'{name}: expected {arg} with last dimension '
                         f'in_kv_features={self.in_kv_features}, got shape {x.shape}.')

    query = self.query(inputs_q, out_sharding=qkv_sharding)
    key = self.key(inputs_k, out_sharding=qkv_sharding)
    value = self.value(inputs_v, out_sharding=qkv_sharding)
    if self.normalize_qk:
      query = self.query_ln(query)
      key = self.key_ln(key)

    decode = self.decode if decode is None else decode
    overflow = None
    if decode:
      key, value, mask, overflow = self._decode_step(key, value, mask)

    dropout_rng = None
    if self.dropout_rate > 0.0:
      deterministic = self.deterministic if deterministic is None else deterministic
      if deterministic is None:
        raise ValueError(f'{name}: dropout_rate={self.dropout_rate} needs `deterministic`: '
                         'pass deterministic= to the constructor or the call, or call '
                         'model.train() / model.eval().')
      if not deterministic:
        stream = rngs.dropout if isinstance(rngs, Rngs) else rngs
        stream = self.rngs if stream is None else stream
        if stream is None:
          raise ValueError(f"{name}: dropout needs keys from the 'dropout' RNG stream, but "
                           'the layer keeps none (keep_rngs=False); pass '
                           'rngs=nnx.Rngs(dropout=...) to the call, or deterministic=True.')
        dropout_rng = stream()
    else:
      deterministic = True

    x = self.attention_fn(query, key, value, mask=mask, dropout_rng=dropout_rng,
                          dropout_rate=self.dropout_rate,
                          broadcast_dropout=self.broadcast_dropout,
                          deterministic=deterministic, dtype=self.dtype,
                          precision=self.precision, module=self if sow_weights else None,
                          is_causal=is_causal)
    out = self.out(x, out_sharding=out_sharding)
    if overflow is not None:
      out = jnp.where(overflow, jnp.asarray(jnp.nan, out.dtype), out)
    return out

  def _decode_step(self, key, value, mask):
    """Writes ``key``/``value`` (one position) into the cache at ``cache_index`` and
    advances it; the whole cache, the mask extended to the positions written so far, and
    (when the index is traced) whether this call ran past the end of the cache."""
    name = type(self).__name__
    if self.cached_key is None or self.cached_value is None or self.cache_index is None:
      raise ValueError(f'{name}: decode=True needs a cache; call '
                       'layer.init_cache(input_shape) first, with input_shape = (*batch, '
                       'max_length, in_features).')
    *batch, max_length, kv_heads, head_dim = self.cached_key.shape
    expected = (*batch, 1, kv_heads, head_dim)
    if key.shape != expected:
      raise ValueError(f'{name}: decoding takes one position at a time for the cache made '
                       f'by init_cache: expected keys of shape {expected}, got {key.shape} '
                       f'(inputs of shape (*batch={tuple(batch)}, 1, features)).')
    if key.dtype != self.cached_key.dtype or value.dtype != self.cached_value.dtype:
      raise ValueError(f'{name}: keys and values are {key.dtype}, the cache is '
                       f'{self.cached_key.dtype}; call init_cache(..., dtype={key.dtype}).')
    index = self.cache_index[...]
    overflow = None
    if isinstance(index, jax.core.Tracer):
      overflow = index >= max_length
    elif int(index) >= max_length:
      raise ValueError(f'{name}: the decode cache is full: cache_index={int(index)} but '
                       f'init_cache made room for max_length={max_length} positions; call '
                       'init_cache with a longer max_length (input_shape[-2]) or again to '
                       'start a new sequence.')
    zero = jnp.zeros((), index.dtype)
    start = (zero,) * len(batch) + (index, zero, zero)
    key = lax.dynamic_update_slice(self.cached_key[...], key, start)
    value = lax.dynamic_update_slice(self.cached_value[...], value, start)
    self.cached_key[...] = key
    self.cached_value[...] = value
    self.cache_index[...] = index + 1
    # The query attends only to the positions written so far, not the cache's zeros.
    written = jnp.broadcast_to(jnp.arange(max_length) <= index, (*batch, 1, 1, max_length))
    return key, value, combine_masks(mask, written), overflow

  def set_view(self, deterministic: bool | None = None, decode: bool | None = None,
               batch_size: int | Shape | None = None, max_length: int | None = None):
    """Class method used by ``nnx.view``.

    With ``decode`` and both ``batch_size`` and ``max_length`` given, a layer without a
    cache gets one (as ``init_cache`` makes it); otherwise call ``init_cache`` before decoding.

    Args:
      deterministic: if True, the module is set to deterministic mode.
      decode: if True, the module is set to decode mode.
      batch_size: the batch size to use for the cache.
      max_length: the max length to use for the cache.
    """
    if deterministic is not None:
      self.deterministic = deterministic
    if decode is not None:
      self.decode = decode
      if self.cached_key is None and batch_size is not None and max_length is not None:
        batch = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
        self.init_cache((*batch, max_length, self.in_features), self.dtype or jnp.float32)

  def init_cache(self, input_shape, dtype=jnp.float32):
    """Creates the decode cache for inputs of shape ``(*batch, max_length, features)``:
    ``cached_key``/``cached_value`` of shape ``(*batch, max_length, num_kv_heads,
    head_dim)`` in ``dtype`` and ``cache_index`` (an int32 scalar), all ``Cache``\\ s. Call
    it again to start a new sequence.

    >>> import jax, jax.numpy as jnp
    >>> import bridge as nnx
    >>> layer = nnx.MultiHeadAttention(num_heads=2, in_features=3, qkv_features=6,
    ...                                out_features=6, decode=True, rngs=nnx.Rngs(0))
    >>> layer.init_cache((1, 3))
    >>> {'/'.join(p): v.value.shape for p, v in nnx.state(layer, nnx.Cache).flat_state()}
    {'cache_index': (), 'cached_key': (1, 2, 3), 'cached_value': (1, 2, 3)}
    """
    shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
    self.cached_key = Cache(jnp.zeros(shape, dtype))
    self.cached_value = Cache(jnp.zeros(shape, dtype))
    self.cache_index = Cache(jnp.array(0, dtype=jnp.int32))
