"""``display`` (flax.nnx.visualization): show objects with Treescope in IPython, else print them.

>>> import bridge as nnx
>>> nnx.display(nnx.Dropout(0.5))
Dropout(
  rate=0.5,
  broadcast_dims=(),
  deterministic=False,
  rng_collection='dropout',
  rngs=None
)
"""

from __future__ import annotations


def _in_ipython() -> bool:
  try:
    from IPython import get_ipython
  except ImportError:
    return False
  return get_ipython() is not None


def display(*args) -> None:
  """Shows each argument: with ``treescope.display`` inside IPython (a notebook) when
  treescope is installed, otherwise with ``print``.

  >>> import bridge as nnx
  >>> nnx.display(1, 'two')
  1
  two
  """
  if _in_ipython():
    try:
      import treescope
    except ImportError:
      pass
    else:
      for x in args:
        treescope.display(x, ignore_exceptions=True, autovisualize=True)
      return
  for x in args:
    print(x)
