"""Checks of layer constructor arguments: sizes, strides and the ``rngs`` to initialize with.

flax.nnx fails on these deep inside an initializer or at the first call (a
``ZeroDivisionError`` for a zero size, a ``TypeError`` for a negative one, an
``AttributeError`` for ``rngs=None``). bridge raises up front, naming the layer and the
argument, with exceptions that are also of those types, so code that catches them still
does.

>>> check_sizes('Linear', in_features=3, out_features=(4, 5))
>>> check_sizes('Linear', in_features=0, out_features=4)
Traceback (most recent call last):
  ...
bridge.nn._checks.SizeError: Linear: in_features must be a positive int, got 0.
"""

from __future__ import annotations

import numbers

from bridge.rngs import Rngs


class SizeError(ValueError, TypeError, ZeroDivisionError):
  """A layer size, stride or dilation that is not a positive int.

  Also a ``TypeError`` and a ``ZeroDivisionError``: what flax.nnx raises for these.

  >>> issubclass(SizeError, ValueError), issubclass(SizeError, ZeroDivisionError)
  (True, True)
  """


class RngsError(TypeError, AttributeError):
  """A layer that draws initial parameters got no ``Rngs``.

  Also an ``AttributeError``: what flax.nnx raises (``'NoneType' object has no attribute
  'params'``).

  >>> check_rngs('Linear', None)
  Traceback (most recent call last):
    ...
  bridge.nn._checks.RngsError: Linear: rngs must be an nnx.Rngs ... got None.
  """


def _positive(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def check_sizes(layer: str, **sizes) -> None:
  """Raises a :class:`SizeError` naming the first of ``sizes`` (each an int or a sequence
  of ints) that is not made of positive ints.

  >>> check_sizes('Einsum', kernel_shape=(2, -1))
  Traceback (most recent call last):
    ...
  bridge.nn._checks.SizeError: Einsum: every entry of kernel_shape must be ... got (2, -1).
  """
  for name, value in sizes.items():
    sequence = isinstance(value, (tuple, list))
    if not all(map(_positive, value if sequence else (value,))):
      what = 'every entry of ' if sequence else ''
      raise SizeError(f'{layer}: {what}{name} must be a positive int, got {value!r}.')


def check_rngs(layer: str, rngs) -> None:
  """Raises an :class:`RngsError` unless ``rngs`` is an ``Rngs``.

  >>> import bridge as nnx
  >>> check_rngs('Conv', nnx.Rngs(0))
  """
  if not isinstance(rngs, Rngs):
    raise RngsError(f'{layer}: rngs must be an nnx.Rngs to draw the initial parameters from '
                    f'(e.g. rngs=nnx.Rngs(0)), got {rngs!r}.')
