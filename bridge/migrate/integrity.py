"""Checksums of checkpointed values: a flipped byte on disk is an error, never wrong weights.

``save_checkpoint`` records a SHA-256 digest of each value it writes (the bytes of the
array as the host sees them, with its dtype and shape), and ``restore_checkpoint``
compares the values it read against them before writing any into the model. An array
that is not fully addressable from this process (a multi-host array) has no digest and is
not verified.

>>> import jax.numpy as jnp
>>> from bridge.migrate.integrity import ChecksumError, checksum, verify
>>> digests = {'kernel': checksum(jnp.ones((2, 3)))}
>>> verify({'kernel': jnp.ones((2, 3))}, digests, where='step 0')
>>> try:
...   verify({'kernel': jnp.zeros((2, 3))}, digests, where='step 0')
... except ChecksumError as e:
...   print(e.names)
['kernel']
"""

from __future__ import annotations

import hashlib
import typing as tp

import jax
import numpy as np


class ChecksumError(ValueError):
  """A value read back from a checkpoint differs from the one that was written;
  ``names`` lists the values that differ."""

  def __init__(self, names: tp.Sequence[str], where: str):
    self.names = list(names)
    listed = ', '.join(map(repr, self.names))
    super().__init__(
      f'Checkpoint {where} is corrupted: the value read for {listed} does not match the '
      'checksum written when it was saved. Restore another step (or re-save it).')


def checksum(value) -> str | None:
  """The hex SHA-256 digest of a value's dtype, shape and bytes (a PRNG key array by its
  key data); ``None`` for a value this process cannot read whole."""
  if isinstance(value, jax.Array):
    if not value.is_fully_addressable:
      return None
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
      value = jax.random.key_data(value)
  array = np.ascontiguousarray(np.asarray(value))
  digest = hashlib.sha256(f'{array.dtype.str}{array.shape}'.encode())
  digest.update(array.tobytes())
  return digest.hexdigest()


def verify(values: tp.Mapping[str, tp.Any], digests: tp.Mapping[str, str | None],
           where: str) -> None:
  """Raises ``ChecksumError`` naming every value whose digest differs from the recorded
  one (values without a recorded digest are not checked)."""
  bad = [name for name, value in values.items()
         if digests.get(name) is not None and (got := checksum(value)) is not None
         and got != digests[name]]
  if bad:
    raise ChecksumError(bad, where)
