"""Module views: copies of a model with some attributes set, the original left as it is.

``view`` calls each Module's ``set_view`` (Dropout: ``deterministic``, BatchNorm:
``use_running_average``, MultiHeadAttention: ``deterministic``/``decode``/cache size);
``with_attributes`` sets plain attributes; ``view_info`` lists what ``view`` accepts. The
copy shares the original's Variables, so training the original shows in the view.

>>> import bridge as nnx
>>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Dropout(0.5))
>>> eval_model = nnx.view(model, deterministic=True)
>>> eval_model.layers[1].deterministic, model.layers[1].deterministic
(True, False)
>>> eval_model.layers[0].kernel is model.layers[0].kernel
True
"""

from __future__ import annotations

import inspect
import typing as tp

from bridge import filters as filterlib
from bridge.graph_map import recursive_map
from bridge.module import Module

A = tp.TypeVar('A')


def _accepted(method) -> set[str] | None:
  """The keyword names ``method`` takes (None if it takes ``**kwargs``)."""
  names = set()
  for name, p in inspect.signature(method).parameters.items():
    if p.kind is inspect.Parameter.VAR_KEYWORD:
      return None
    if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
      names.add(name)
  return names


def view(node: A, /, *, only: filterlib.Filter = ..., raise_if_not_found: bool = True,
         graph: bool | None = None, **kwargs) -> A:
  """A copy of ``node`` in which every Module matching ``only`` that has a ``set_view``
  method was given the ``kwargs`` its ``set_view`` accepts.

  The copy holds the same Variables as ``node``; ``node`` is not changed. A keyword no
  selected ``set_view`` accepts is a ``ValueError`` (unless ``raise_if_not_found=False``).
  ``graph`` is accepted for flax.nnx compatibility.

  >>> import bridge as nnx
  >>> bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
  >>> nnx.view(bn, use_running_average=True).use_running_average, bn.use_running_average
  (True, False)
  >>> nnx.view(bn, deterministic=True)
  Traceback (most recent call last):
  ...
  ValueError: Unused keys found in nnx.view: ['deterministic'] ...
  """
  predicate = filterlib.to_predicate(only)
  unused = set(kwargs)

  def set_view(path, x):
    if hasattr(x, 'set_view') and predicate(path, x):
      accepted = _accepted(x.set_view)
      if accepted is None:
        x.set_view(**kwargs)
        unused.clear()
      else:
        x.set_view(**{k: v for k, v in kwargs.items() if k in accepted})
        unused.difference_update(accepted)
    return x

  out = recursive_map(set_view, node, graph=graph)
  if unused and raise_if_not_found:
    raise ValueError(f'Unused keys found in nnx.view: {sorted(unused)} (no selected '
                     f"Module's set_view takes them; nnx.view_info(model) lists the keys).")
  return out


def with_attributes(node: A, /, *, only: filterlib.Filter = ..., raise_if_not_found: bool = True,
                    graph: bool | None = None, **attributes: tp.Any) -> A:
  """A copy of ``node`` in which every Module matching ``only`` that has one of the
  ``attributes`` has it set; ``node`` is not changed (unlike ``Module.set_attributes``).

  An attribute no selected Module has is a ``ValueError`` (unless
  ``raise_if_not_found=False``). ``graph`` is accepted for flax.nnx compatibility.

  >>> import bridge as nnx
  >>> model = nnx.Sequential(nnx.Dropout(0.5), nnx.Dropout(0.1))
  >>> new = nnx.with_attributes(model, rate=0.0)
  >>> [d.rate for d in new.layers], [d.rate for d in model.layers]
  ([0.0, 0.0], [0.5, 0.1])
  """
  predicate = filterlib.to_predicate(only)
  missing = set(attributes)

  def set_attributes(path, x):
    if isinstance(x, Module) and predicate(path, x):
      for name, value in attributes.items():
        if hasattr(x, name):
          setattr(x, name, value)
          missing.discard(name)
    return x

  out = recursive_map(set_attributes, node, graph=graph)
  if missing and raise_if_not_found:
    raise ValueError(f'Could not find at least one instance of the following attributes: '
                     f'{sorted(missing)} (no selected Module has them).')
  return out


def _arg_docs(doc: str) -> dict[str, str]:
  """The descriptions in the ``Args:`` section of a Google-style docstring, by name; each
  indented by four spaces."""
  start = doc.find('Args:\n')
  if start < 0:
    return {}
  end = doc.find('Returns:\n', start)
  lines = doc[start + len('Args:\n'):end if end >= 0 else len(doc)].rstrip().split('\n')
  out: dict[str, list[str]] = {}
  for line in lines:
    if line.startswith('  ') and not line.startswith('    ') and ':' in line:
      name, text = line.split(':', 1)
      out[name.strip()] = ['    ' + text.strip()]
    elif out:
      out[list(out)[-1]].append(line)
  return {name: '\n'.join(text) for name, text in out.items()}


def view_info(node: Module, /, *, only: filterlib.Filter = ..., graph: bool | None = None) -> str:
  """What ``view`` accepts for ``node``: each Module class with a ``set_view`` (sorted by
  name), its keywords with their types and defaults, and their documentation.

  >>> import bridge as nnx
  >>> print(nnx.view_info(nnx.Sequential(nnx.Dropout(0.5))))
  Dropout:
    deterministic: bool | None = None
      if True, disables dropout masking.
  """
  predicate = filterlib.to_predicate(only)
  classes: set[type] = set()

  def collect(path, x):
    if hasattr(x, 'set_view') and predicate(path, x):
      classes.add(type(x))
    return x

  recursive_map(collect, node, graph=graph)
  out = []
  for cls in sorted(classes, key=lambda c: c.__qualname__):
    out.append(f'{cls.__qualname__}:')
    signature = inspect.signature(cls.set_view)
    doc = inspect.getdoc(cls.set_view)
    if doc is None:
      out.append(f'  set_view{signature}')
      continue
    docs = _arg_docs(doc)
    for name, p in signature.parameters.items():
      if name in ('self', 'args', 'kwargs'):
        continue
      default = '' if p.default is inspect.Parameter.empty else f' = {p.default}'
      out.append(f'  {name}: {p.annotation}{default}')
      if name in docs:
        out.append(docs[name])
  return '\n'.join(out)
