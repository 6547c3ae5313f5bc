"""``VariableMatchError``: two sets of variables that do not pair up one to one.

Raised when Linen variables (or a checkpoint) and a model's Variables are matched: every
leaf left over on either side, every pair whose shape, dtype or collection differs and
every group that cannot be told apart is listed in one message, never dropped.

>>> from bridge.migrate import VariableMatchError
>>> err = VariableMatchError(source_only=['params/Dense_2/kernel (8, 2) float32'])
>>> print(err)
The Linen variables and the model's Variables do not match:
  in the Linen variables but not in the model (1):
    params/Dense_2/kernel (8, 2) float32
>>> err.source_only
['params/Dense_2/kernel (8, 2) float32']
"""

from __future__ import annotations

import typing as tp


class VariableMatchError(ValueError):
  """Lists what did not match; ``source_only``, ``model_only``, ``mismatched`` and
  ``ambiguous`` hold the entries (strings naming the paths). ``source`` names the other
  side (``'Linen variables'`` or ``'checkpoint'``); ``hint`` says what to do."""

  def __init__(self, *, source_only: tp.Sequence[str] = (), model_only: tp.Sequence[str] = (),
               mismatched: tp.Sequence[str] = (), ambiguous: tp.Sequence[str] = (),
               source: str = 'Linen variables', hint: str = ''):
    self.source_only = list(source_only)
    self.model_only = list(model_only)
    self.mismatched = list(mismatched)
    self.ambiguous = list(ambiguous)
    self.source = source
    self.hint = hint
    sections = [
      (f'in the {source} but not in the model', self.source_only),
      (f'in the model but not in the {source}', self.model_only),
      ('paired but different (shape, dtype or collection)', self.mismatched),
      ('ambiguous', self.ambiguous),
    ]
    lines = [f"The {source} and the model's Variables do not match:"]
    for title, entries in sections:
      if entries:
        lines.append(f'  {title} ({len(entries)}):')
        lines.extend(f'    {e}' for e in entries)
    if hint:
      lines.append(hint)
    super().__init__('\n'.join(lines))
