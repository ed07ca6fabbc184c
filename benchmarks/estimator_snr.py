"""Signal-to-noise of the meta-gradient: repeated PES estimates at one theta, for several numbers of pairs.

At a fixed theta (a learned optimizer's initial meta-parameters on mlp_fashion8), one gradient worker
computes ``--estimates`` consecutive estimates (its particles advance as in meta-training, theta does not
move). With ``g_i`` the estimates, ``m`` their mean and ``s2`` the total variance
``mean_i |g_i - m|^2``, the table gives per estimate:

- ``snr = |m|^2 / s2``, the signal-to-noise ratio of one estimate (averaging ``k`` estimates, as
  ``TrainConfig.estimates_per_step = k`` does, multiplies it by ``k``);
- ``cos``, the mean cosine between one estimate and the mean of the others (leave-one-out, so
  not inflated by the estimate itself);
- the seconds per estimate.

Doubling the pairs should roughly double the SNR at twice the cost. Not a test: run with
``python -m benchmarks.estimator_snr`` (2 cores: about ten minutes with the defaults).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from metatrain import PES, WorkerConfig
from metatrain.runtime.worker import GradientWorker


def snr(config: WorkerConfig, estimates: int) -> dict[str, float]:
  """Repeated estimates at the initial theta: SNR, leave-one-out cosine, seconds per estimate."""
  worker = GradientWorker(config, 0, 0)
  theta = worker.initial_theta(0)
  worker.compute(theta, 0)  # compiles, and starts the particles
  start = time.perf_counter()
  grads = [
    np.concatenate([np.ravel(x) for x in jax.tree.leaves(worker.compute(theta, 0).grad)]) for _ in range(estimates)
  ]
  seconds = (time.perf_counter() - start) / estimates
  g = np.stack(grads)
  mean = g.mean(0)
  variance = np.mean(np.sum((g - mean) ** 2, axis=1))
  others = (g.sum(0)[None] - g) / (len(g) - 1)
  cos = np.mean(np.sum(g * others, 1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(others, axis=1)))
  return {"snr": float(np.sum(mean**2) / variance), "cos": float(cos), "seconds": seconds}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", type=int, nargs="+", default=[4, 8, 16, 32])
  parser.add_argument("--estimates", type=int, default=32)
  parser.add_argument("--preset", default="adam")
  parser.add_argument("--learned_optimizer", default="unf")
  args = parser.parse_args()
  print(
    f"{args.learned_optimizer} ({args.preset}) on mlp_fashion8, horizon 1000, truncation 50, std 0.01, "
    f"{args.estimates} estimates at the initial theta"
  )
  print("| pairs | SNR per estimate | leave-one-out cosine | s per estimate |\n|---|---|---|---|")
  for pairs in args.pairs:
    config = WorkerConfig(
      learned_optimizer=args.learned_optimizer, preset=args.preset, estimator=PES(num_pairs=pairs), horizon=1000
    )
    result = snr(config, args.estimates)
    print(f"| {pairs} | {result['snr']:.4f} | {result['cos']:.3f} | {result['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
