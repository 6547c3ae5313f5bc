"""``Embed``: a learned table of vectors indexed by integers (flax.nnx's ``Embed``).

>>> import jax.numpy as jnp
>>> import bridge as nnx
>>> embed = nnx.Embed(10, 4, rngs=nnx.Rngs(0))
>>> embed(jnp.array([[1, 2, 3]])).shape
(1, 3, 4)
"""

from __future__ import annotations

import typing as tp
from types import MappingProxyType

import jax
import jax.numpy as jnp

from bridge.module import Module
from bridge.nn import dtypes, initializers
from bridge.variables import Param

default_embed_init = initializers.variance_scaling(1.0, 'fan_in', 'normal', out_axis=0)


class Embed(Module):
  """Maps integers in ``[0, num_embeddings)`` to ``features``-dimensional vectors.

  ``embedding`` is a ``(num_embeddings, features)`` ``Param``; calling the layer takes its
  rows at the input's values, so the output has the input's shape plus ``features``.
  Negative indices count from the end; an index ``>= num_embeddings`` (or below
  ``-num_embeddings``) gives NaN. With ``num_embeddings == 1`` the single row is broadcast
  to every position. ``dtype`` is the output's (default: the embedding's). ``attend(query)``
  scores queries against every embedding (weight tying for output logits).

  >>> import jax.numpy as jnp
  >>> import bridge as nnx
  >>> layer = nnx.Embed(num_embeddings=5, features=3, rngs=nnx.Rngs(0))
  >>> layer.embedding.shape
  (5, 3)
  >>> out = layer(jnp.array([[0, 1, 2], [-1, -2, 5]]))
  >>> out.shape
  (2, 3, 3)
  >>> bool(jnp.isnan(out[1, 2]).all())   # index 5 is out of range
  True
  >>> layer.attend(jnp.ones((2, 3))).shape
  (2, 5)
  """

  def __init__(self, num_embeddings: int, features: int, *, dtype=None,
               param_dtype=jnp.float32, embedding_init=default_embed_init,
               promote_dtype=dtypes.promote_dtype, rngs,
               embedding_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({})):
    self.embedding = Param(
      embedding_init(rngs.params(), (num_embeddings, features), param_dtype),
      **embedding_metadata)
    self.num_embeddings = num_embeddings
    self.features = features
    self.dtype = dtype or self.embedding.dtype
    self.param_dtype = param_dtype
    self.promote_dtype = promote_dtype

  def __call__(self, inputs, out_sharding=None):
    """The embeddings of the integer ``inputs``: shape ``(*inputs.shape, features)``."""
    inputs = jnp.asarray(inputs)
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f'{type(self).__name__}: inputs must be integer indices, got dtype '
                       f'{inputs.dtype}; cast them with .astype(jnp.int32).')
    (embedding,) = self.promote_dtype((self.embedding[...],), dtype=self.dtype, inexact=False)
    if self.num_embeddings == 1:
      return jnp.broadcast_to(embedding, (*inputs.shape, self.features))
    if out_sharding is not None:
      take = jax.sharding.auto_axes(lambda e, i: jnp.take(e, i, axis=0),
                                    out_sharding=out_sharding)  # jnp.take has no out_sharding
      return take(embedding, inputs)
    return jnp.take(embedding, inputs, axis=0)

  def attend(self, query, out_sharding=None):
    """The inner products of ``query`` (last axis of size ``features``) with every
    embedding: shape ``(*query.shape[:-1], num_embeddings)``."""
    if jnp.ndim(query) == 0 or jnp.shape(query)[-1] != self.features:
      raise ValueError(
        f'{type(self).__name__}.attend: the last axis of the query has size '
        f'{jnp.shape(query)[-1] if jnp.ndim(query) else "(none: a scalar)"} (shape '
        f'{jnp.shape(query)}), but the embeddings have features={self.features}.')
    query, embedding = self.promote_dtype((query, self.embedding[...]), dtype=self.dtype)
    kwargs = {'out_sharding': out_sharding} if out_sharding is not None else {}
    return jnp.dot(query, embedding.T, **kwargs)
