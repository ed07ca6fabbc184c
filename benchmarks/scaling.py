"""Scaling of `metatrain train` with the number of Ray workers on this machine.

Runs the main job (local Ray, synchronous PES on mlp_fashion8 with the UNF
learned optimizer) with 1 and with 2 workers and prints outer and inner steps
per second (after the first steps, which compile) and the learner's share of
wall time (aggregation, outer update, publishing). Not a test. Run with
`python -m benchmarks.scaling`.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from metatrain import PES, TrainConfig, WorkerConfig
from metatrain.runtime import train
from metatrain.runtime.learner import Learner


def measure(workers: int, steps: int, warmup: int) -> dict[str, float]:
  worker = WorkerConfig(task="mlp_fashion8", learned_optimizer="unf", estimator=PES(num_pairs=8), horizon=1000)
  config = TrainConfig(outer_steps=steps, num_workers=workers, checkpoint_every=10**6, learning_rate=1e-3)
  learner_seconds = []
  apply = Learner.apply

  def timed_apply(self, estimates):
    start = time.perf_counter()
    out = apply(self, estimates)
    learner_seconds.append(time.perf_counter() - start)
    return out

  Learner.apply = timed_apply
  try:
    with tempfile.TemporaryDirectory() as workdir:
      _, history = train.train(config, worker, workdir)
  finally:
    Learner.apply = apply
  timed = history[warmup:]
  outer = 1.0 / np.mean([1.0 / h["outer_steps_per_second"] for h in timed])
  inner = outer * workers * worker.inner_steps_per_estimate
  share = np.sum(learner_seconds[warmup:]) / np.sum([1.0 / h["outer_steps_per_second"] for h in timed])
  return {"outer": outer, "inner": inner, "learner_share": share}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=5)
  args = parser.parse_args()
  rows = {n: measure(n, args.steps, args.warmup) for n in (1, 2)}
  print("| workers | outer steps/s | inner steps/s | speed-up | learner share of wall time |")
  print("|---|---|---|---|---|")
  for n, r in rows.items():
    speedup = r["inner"] / rows[1]["inner"]
    print(f"| {n} | {r['outer']:.2f} | {r['inner']:,.0f} | {speedup:.2f}x | {100 * r['learner_share']:.1f}% |")


if __name__ == "__main__":
  main()
