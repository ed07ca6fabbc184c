"""The one timing rule of every benchmark: warm up (compile) once, then the best of ``repeats`` runs."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax


def best_seconds(run: Callable[[], object], repeats: int) -> float:
  """Seconds of the fastest of ``repeats`` calls of ``run`` after one warm-up call (outputs awaited)."""
  jax.block_until_ready(run())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    best = min(best, time.perf_counter() - start)
  return best
