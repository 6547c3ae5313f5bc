"""A one-line text progress bar for the examples (no dependency)."""

from __future__ import annotations

import sys
import time


class Progress:
  """``with Progress(total, 'train') as bar: bar.update(loss=...)`` redraws one line."""

  def __init__(self, total: int, label: str, stream=None, width: int = 30):
    self.total, self.label, self.width = total, label, width
    self.stream = stream or sys.stdout
    self.done = 0
    self.start = time.perf_counter()

  def __enter__(self):
    return self

  def update(self, n: int = 1, **metrics) -> None:
    self.done += n
    if self.done < self.total and not self.stream.isatty():
      return  # into a file or a pipe: only the final state, not every redraw
    filled = int(self.width * self.done / max(self.total, 1))
    shown = ' '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                     for k, v in metrics.items())
    elapsed = time.perf_counter() - self.start
    self.stream.write(f'\r{self.label} [{"#" * filled}{"." * (self.width - filled)}] '
                      f'{self.done}/{self.total} {elapsed:.1f}s {shown}')
    self.stream.flush()

  def __exit__(self, *exc):
    self.stream.write('\n')
    self.stream.flush()
