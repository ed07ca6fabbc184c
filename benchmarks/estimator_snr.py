"""Signal-to-noise of the meta-gradient at one theta: PES by number of pairs, or every estimator with its bias.

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

``--mode parts`` splits PES's signal-to-noise by part of theta (the scalars, ``f``'s pointwise layers, its
last layer) for the UNF and the Deep Sets learned optimizer, with each part's share of the total variance,
on ``--task`` (mlp_fashion8), with one std for all or ``--per_part_noise``.

``--mode estimators`` compares every registered estimator (``metatrain.ESTIMATORS``) instead, on a short
horizon (``--horizon``, 200 by default, so that a long-horizon reference is affordable), each with
``--num_pairs`` pairs, truncation ``--truncation`` and std 0.01, ``--estimates`` consecutive estimates at the
initial theta of ``--learned_optimizer`` (UNF) with ``--preset`` ("adam"). Per estimator the table gives

- ``snr``, debiased: ``(|m|^2 - s2 / n) / s2`` with ``s2`` the unbiased total variance of one estimate
  (``|m|^2`` alone counts the noise left in the mean of ``n`` estimates as signal, and the ES estimators'
  true ratio is of the order of ``pairs / dim(theta)``, below ``1 / n``);
- ``snr / s``, the SNR per second of this machine's wall clock per estimate (what a CPU-second buys);
- the bias: the cosine between the mean of its estimates and a reference gradient ``r`` of the
  full-horizon meta-loss, beside the cosine an unbiased estimator of that SNR would reach with as many
  estimates (``sqrt(n snr / (1 + n snr))``: noise alone keeps the cosine below 1), and the mean projection
  ``<g_i, r> / |r|^2`` with its standard error (1 for an estimator unbiased for ``r``, below 1 for a
  short-horizon bias that shrinks the gradient).

Both the debiasing and the standard error treat consecutive estimates as independent, which PES's and
noise-reuse ES's (they share noise across truncations) are not: read those rows' errors as lower bounds.

The reference, from a separate worker (its own seed and inner runs):

- ``--reference full_grad`` (default): backpropagation through whole runs (``TruncatedGradient`` with
  truncation = horizon): the exact gradient of the unsmoothed full-horizon meta-loss of each run, averaged
  over ``--reference_estimates`` estimates of ``2 * --reference_pairs`` runs. Cheap and of low variance
  (only the runs' data and init vary), which no ES reference over thousands of meta-parameters is: an
  antithetic pair's SNR is about 1 / dim(theta). It differs from the ES estimators' target, the
  Gaussian-smoothed loss, by O(std^2) where the meta-loss is smooth at the scale of std, which a short
  horizon at the initial theta makes likely; it is NaN where the meta-gradient is (the column ``nan``
  counts an estimate's non-finite runs or pairs, which contribute zero).
- ``--reference full_es``: the mean of as many ``FullES`` estimates (unbiased for the smoothed loss, but
  it needs on the order of dim(theta) pairs for a useful direction: hours, not minutes).

With the defaults (6 estimators, horizon 200, 12 estimates each, a reference of 4 x 4 runs) it should take
about five minutes on 2 cores, most of it compiling (about 30 s per estimator and for the reference, from a
run with small flags on a shared machine; the defaults were not timed): ``python -m benchmarks.estimator_snr
--mode estimators``. With small flags, ``--horizon 40 --truncation 20 --num_pairs 2 --estimates 3
--reference_estimates 2 --reference_pairs 1`` checks that it runs (about 4 minutes, nearly all compiling).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

from metatrain import ESTIMATORS, PES, FullES, TruncatedGradient, WorkerConfig
from metatrain.estimators import Estimator
from metatrain.runtime.worker import GradientWorker


def repeated_estimates(config: WorkerConfig, estimates: int, seed: int = 0) -> tuple[np.ndarray, float, float]:
  """``estimates`` consecutive estimates of one worker at the initial theta (of seed 0), after one to compile.

  Returns:
    ``(g, seconds, nan)``: the estimates as rows of a ``(estimates, dim theta)`` array, the wall-clock
    seconds per estimate, and the mean ``nan_pairs`` metric.
  """
  worker = GradientWorker(config.resolved(), 0, seed)  # a "nominal" preset starts at its tuned rate
  theta = worker.initial_theta(0)
  worker.compute(theta, 0)  # compiles, and starts the particles
  start = time.perf_counter()
  results = [worker.compute(theta, 0) for _ in range(estimates)]
  seconds = (time.perf_counter() - start) / estimates
  g = np.stack([np.concatenate([np.ravel(x) for x in jax.tree.leaves(r.grad)]) for r in results])
  return g, seconds, float(np.mean([r.metrics.get("nan_pairs", 0.0) for r in results]))


def signal_to_noise(g: np.ndarray, *, debiased: bool = False) -> float:
  """``|m|^2 / mean_i |g_i - m|^2``: the signal-to-noise ratio of one estimate (rows of ``g``).

  With ``debiased``, ``(|m|^2 - s2 / n) / s2`` with ``s2`` the unbiased total variance of one estimate:
  ``|m|^2`` counts the noise left in the mean of ``n`` estimates (``s2 / n``) as signal, which dominates
  when the true ratio is below ``1 / n``. Exact for independent estimates; can come out negative.
  """
  n, mean = len(g), g.mean(0)
  spread = np.sum((g - mean) ** 2, axis=1)
  if not debiased:
    return float(np.sum(mean**2) / np.mean(spread))
  variance = np.sum(spread) / (n - 1)
  return float((np.sum(mean**2) - variance / n) / variance)


def snr(config: WorkerConfig, estimates: int) -> dict[str, float]:
  """Repeated estimates at the initial theta: SNR, leave-one-out cosine, seconds per estimate."""
  g, seconds, _ = repeated_estimates(config, estimates)
  others = (g.sum(0)[None] - g) / (len(g) - 1)
  cos = np.mean(np.sum(g * others, 1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(others, axis=1)))
  return {"snr": signal_to_noise(g), "cos": float(cos), "seconds": seconds}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  """The cosine between two vectors (NaN if one is zero)."""
  norms = np.linalg.norm(a) * np.linalg.norm(b)
  return float(np.dot(a, b) / norms) if norms > 0 else float("nan")


def build(name: str, *, num_pairs: int, truncation: int, std: float = 0.01) -> Estimator:
  """The registered estimator ``name`` with these hyper-parameters (those it does not have left out)."""
  cls = ESTIMATORS[name]
  fields = {field.name for field in dataclasses.fields(cls)}
  values = {"num_pairs": num_pairs, "truncation": truncation, "std": std}
  return cls(**{key: value for key, value in values.items() if key in fields})


def bias(g: np.ndarray, reference: np.ndarray) -> dict[str, float]:
  """The mean of the estimates ``g`` (rows) against ``reference``: cosine, noise ceiling, projection."""
  n, ratio = len(g), max(signal_to_noise(g, debiased=True), 0.0)
  projections = g @ reference / np.sum(reference**2)
  return {
    "cos": cosine(g.mean(0), reference),
    "ceiling": float(np.sqrt(n * ratio / (1 + n * ratio))),
    "projection": float(projections.mean()),
    "projection_se": float(projections.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
  }


def compare(args: argparse.Namespace) -> None:
  """``--mode estimators``: every registered estimator against a full-horizon reference (a markdown table)."""
  common = {"learned_optimizer": args.learned_optimizer, "preset": args.preset, "horizon": args.horizon}
  if args.reference == "full_grad":
    reference_estimator: Estimator = TruncatedGradient(num_pairs=args.reference_pairs, truncation=args.horizon)
  else:
    reference_estimator = FullES(num_pairs=args.reference_pairs)
  start = time.perf_counter()
  ref, _, ref_nan = repeated_estimates(
    WorkerConfig(estimator=reference_estimator, **common), args.reference_estimates, seed=1
  )
  reference = ref.mean(0)
  half = len(ref) // 2
  split = cosine(ref[:half].mean(0), ref[half:].mean(0)) if half else float("nan")
  print(
    f"{args.learned_optimizer} ({args.preset}) on mlp_fashion8 at the initial theta, horizon {args.horizon}, "
    f"truncation {args.truncation}, {args.num_pairs} pairs, std 0.01, {args.estimates} estimates each.\n"
    f"Reference: {args.reference_estimates} x {reference_estimator} ({time.perf_counter() - start:.0f} s), "
    f"split-half cosine {split:.3f}, non-finite runs per estimate {ref_nan:.1f}.\n"
  )
  print(
    "| estimator | inner steps | s / estimate | SNR | SNR / s | cos(mean, ref) | cos if unbiased "
    "| projection on ref | nan |\n|---|---|---|---|---|---|---|---|---|"
  )
  for name in args.estimators:
    estimator = build(name, num_pairs=args.num_pairs, truncation=args.truncation)
    g, seconds, nan = repeated_estimates(WorkerConfig(estimator=estimator, **common), args.estimates)
    ratio, result = signal_to_noise(g, debiased=True), bias(g, reference)
    print(
      f"| {name} | {estimator.inner_steps(args.horizon)} | {seconds:.3f} | {ratio:.4f} | {ratio / seconds:.4f} "
      f"| {result['cos']:.3f} | {result['ceiling']:.3f} "
      f"| {result['projection']:.2f} +- {result['projection_se']:.2f} | {nan:.1f} |",
      flush=True,
    )


def parts(args: argparse.Namespace) -> None:
  """``--mode parts``: PES's signal-to-noise per part of theta (the scalars, f's pointwise layers, its head),
  for the UNF and the Deep Sets learned optimizer at their initial theta (issue 22, part 5)."""
  noise = "noise scaled per part (per_part_noise)" if args.per_part_noise else "one std for every part"
  print(
    f"PES ({args.num_pairs} pairs, truncation {args.truncation}, std 0.01, {noise}) on {args.task} at the initial "
    f"theta of preset {args.preset}, horizon {args.horizon}, {args.estimates} estimates each; debiased SNR per "
    "part.\n"
  )
  print(
    "| learned optimizer | part | meta-parameters | SNR | share of the variance | non-finite pairs |\n"
    "|---|---|---|---|---|---|"
  )
  for kind in ("unf", "deep_sets"):
    config = WorkerConfig(
      task=args.task,
      learned_optimizer=kind,
      preset=args.preset,
      horizon=args.horizon,
      estimator=PES(num_pairs=args.num_pairs, truncation=args.truncation, per_part_noise=args.per_part_noise),
    )
    g, _, nan = repeated_estimates(config, args.estimates)
    theta = jax.eval_shape(config.resolved().build_learned_optimizer().init_meta, jax.random.key(0))
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(theta)[0]]
    sizes = [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(theta)]
    part_of = ["head" if "'head'" in p else "pointwise" if "'f'" in p else "scalars" for p in paths]
    columns = np.repeat(np.asarray(part_of), sizes)
    total = np.sum(np.var(g, axis=0, ddof=1))
    for part in ("scalars", "pointwise", "head"):
      block = g[:, columns == part]
      share = np.sum(np.var(block, axis=0, ddof=1)) / total
      print(
        f"| {kind} | {part} | {block.shape[1]:,} | {signal_to_noise(block, debiased=True):.4f} | {share:.3f} "
        f"| {nan:.2f} |",
        flush=True,
      )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--mode",
    choices=("pairs", "estimators", "parts"),
    default="pairs",
    help="PES by pairs, every estimator, or PES per part of theta (UNF and Deep Sets)",
  )
  parser.add_argument("--pairs", type=int, nargs="+", default=[4, 8, 16, 32], help="pairs mode: the numbers of pairs")
  parser.add_argument("--estimates", type=int, default=None, help="estimates per row (32 by pairs, 12 by estimator)")
  parser.add_argument("--preset", default="adam")
  parser.add_argument("--learned_optimizer", default="unf")
  parser.add_argument("--estimators", nargs="+", default=sorted(ESTIMATORS), choices=sorted(ESTIMATORS))
  parser.add_argument("--horizon", type=int, default=200, help="estimators mode: inner steps of a run")
  parser.add_argument("--truncation", type=int, default=20, help="estimators mode: inner steps per truncation")
  parser.add_argument("--num_pairs", type=int, default=8, help="estimators mode: pairs (or 2 x runs) per estimate")
  parser.add_argument("--reference", choices=("full_grad", "full_es"), default="full_grad")
  parser.add_argument("--reference_pairs", type=int, default=2, help="pairs (or 2 x runs) per reference estimate")
  parser.add_argument("--reference_estimates", type=int, default=4)
  parser.add_argument("--task", default="mlp_fashion8", help="parts mode: the task")
  parser.add_argument("--per_part_noise", action="store_true", help="parts mode: noise scaled per part of theta")
  args = parser.parse_args()
  if args.mode == "estimators":
    args.estimates = args.estimates or 12
    compare(args)
    return
  if args.mode == "parts":
    args.estimates = args.estimates or 24
    parts(args)
    return
  args.estimates = args.estimates or 32
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
