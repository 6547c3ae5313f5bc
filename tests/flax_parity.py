"""Helpers for side-by-side tests against flax: ``assert_same_signature`` (a bridge callable
takes the same arguments as flax's: names, kinds, order, defaults; callables and classes
compared by name, since bridge has its own) and ``jitted`` (one compiled call of a Module,
so a comparison costs one compilation per side instead of one per eager op)."""

import inspect


def _same_default(ours, theirs) -> bool:
  if callable(theirs):
    return getattr(ours, '__name__', None) == getattr(theirs, '__name__', None)
  return ours == theirs


def assert_same_signature(ours, theirs):
  a = inspect.signature(ours).parameters
  b = inspect.signature(theirs).parameters
  assert list(a) == list(b), (ours, list(a), list(b))
  for name, p in b.items():
    assert a[name].kind == p.kind, (ours, name)
    assert _same_default(a[name].default, p.default), (ours, name, a[name].default, p.default)


def jitted(lib, module, *args, **kwargs):
  """``module(*args, **kwargs)`` under ``lib.jit`` (bridge or flax.nnx): state updates
  (RNG counters, batch statistics, in-place weights) come back as they do eagerly;
  ``kwargs`` are closed over (static flags, constant arrays)."""
  return lib.jit(lambda m, *a: m(*a, **kwargs))(module, *args)
