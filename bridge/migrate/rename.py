"""Rename rules: regular expressions rewriting variable paths written as strings.

A path is its keys joined by ``/``, the Linen collection first for Linen variables
(``'params/Dense_0/kernel'``) and for a model's Variables (``'params/linear0/kernel'``,
the collection of the Variable's type). Rules are ``{pattern: replacement}`` (or a sequence
of pairs), applied in order, each to the result of the one before, with ``re.sub``
semantics (``\\1`` refers to a group). A pattern only matches whole keys, or runs of whole
keys: ``'Dense_1'`` rewrites the key ``Dense_1`` but not ``Dense_10``, and ``'Block_0/Dense'``
spans two keys.

>>> from bridge.migrate import rename_path
>>> rename_path('params/Dense_0/kernel', {r'Dense_(\\d+)': r'linear\\1'})
'params/linear0/kernel'
>>> rename_path('params/Block_1/Dense_10/bias', {'Dense_1': 'x', r'Block_(\\d+)': r'blocks/\\1'})
'params/blocks/1/Dense_10/bias'
"""

from __future__ import annotations

import re
import typing as tp

Rules = tp.Mapping[str, str] | tp.Sequence[tuple[str, str]]


def compile_rules(rules: Rules | None) -> tuple[tuple[re.Pattern, str], ...]:
  """The rules as ``(compiled pattern, replacement)`` pairs; a pattern that does not
  compile, or a replacement that does not fit its pattern (a group it does not have), is
  an error naming the rule."""
  if not rules:
    return ()
  pairs = rules.items() if isinstance(rules, tp.Mapping) else rules
  compiled = []
  for pattern, replacement in pairs:
    try:
      regex = re.compile(rf'(?<![^/])(?:{pattern})(?![^/])')
    except re.error as e:
      raise ValueError(f'Rename rule {pattern!r} is not a valid regular expression: {e}') \
        from None
    try:
      regex.sub(replacement, '')  # parses the replacement, whether or not anything matches
    except (re.error, IndexError) as e:
      raise ValueError(f'Rename rule {pattern!r}: {replacement!r} is not a valid replacement '
                       f'for it: {e}') from None
    compiled.append((regex, replacement))
  return tuple(compiled)


def apply_rules(path: str, compiled: tp.Sequence[tuple[re.Pattern, str]]) -> str:
  """``path`` rewritten by compiled rules (``compile_rules``) in turn."""
  for pattern, replacement in compiled:
    path = pattern.sub(replacement, path)
  return path


def rename_path(path: str, rules: Rules | None) -> str:
  """``path`` rewritten by each rule in turn (see the module docstring)."""
  return apply_rules(path, compile_rules(rules))
