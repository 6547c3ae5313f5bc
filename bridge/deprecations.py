"""``deprecated``: an old name kept as an alias of its replacement, warning on each call.

>>> import warnings
>>> from bridge.deprecations import deprecated
>>> def double(x):
...   return 2 * x
>>> twice = deprecated(double)
>>> with warnings.catch_warnings(record=True) as caught:
...   warnings.simplefilter('always')
...   result = twice(3)
>>> result, caught[0].category.__name__
(6, 'DeprecationWarning')
"""

from __future__ import annotations

import functools
import typing as tp
import warnings

F = tp.TypeVar('F', bound=tp.Callable[..., tp.Any])


def deprecated(new_fn: F) -> F:
  """``new_fn`` under an old name: same signature and docstring (with a notice), and a
  ``DeprecationWarning`` naming ``new_fn`` on every call. See the module docstring."""
  @functools.wraps(new_fn)
  def wrapper(*args, **kwargs):
    warnings.warn(f'This function is deprecated. Use {new_fn.__qualname__} instead.',
                  DeprecationWarning, stacklevel=2)
    return new_fn(*args, **kwargs)

  wrapper.__doc__ = (f'.. deprecated::\n   Use :func:`{new_fn.__qualname__}` instead.\n\n'
                     + (new_fn.__doc__ or ''))
  return wrapper  # type: ignore[return-value]
