"""Timing shared by the benchmarks: interleaved rounds, medians, a markdown table."""

from __future__ import annotations

import statistics
import time
import typing as tp

import jax


def interleaved_medians(runners: dict[str, tp.Callable[[], tp.Any]], rounds: int,
                        steps: int, warmup: int = 3) -> dict[str, float]:
  """Median seconds per call of each runner; each round runs every runner ``steps`` times
  in turn, so a noisy machine slows all contestants alike."""
  for run in runners.values():
    for _ in range(warmup):
      jax.block_until_ready(run())
  samples: dict[str, list[float]] = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      for _ in range(steps):
        out = run()
      jax.block_until_ready(out)
      samples[name].append((time.perf_counter() - start) / steps)
  return {name: statistics.median(s) for name, s in samples.items()}


def print_table(title: str, results: dict[str, float], base: str, scale: float,
                unit: str) -> None:
  """A markdown table of ``results`` with each one's ratio to ``results[base]``."""
  print(f'\n{title}')
  print(f'| contestant | {unit} | vs {base} |')
  print('|---|---:|---:|')
  for name, t in results.items():
    print(f'| {name} | {t * scale:.1f} | {t / results[base]:.2f}x |')
