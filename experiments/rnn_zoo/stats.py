"""Kendall's tau, the rank correlation by which the experiment scores a predictor, and bootstrap intervals for it.

The test models are a sample from the zoo, so a predictor's tau is an estimate: :func:`bootstrap_tau` resamples
the test models with replacement for a percentile interval, and :func:`paired_tau_difference` compares two
predictors on the same resamples (:func:`bootstrap_indices`), which removes the variation both share.

Example:
  >>> import numpy as np
  >>> from experiments.rnn_zoo.stats import bootstrap_tau, kendall_tau
  >>> round(kendall_tau([1, 2, 3], [1, 3, 2]), 4)
  0.3333
  >>> rng = np.random.default_rng(0)
  >>> accuracy = rng.uniform(size=50)
  >>> predicted = accuracy + 0.1 * rng.normal(size=(3, 50))  # three training seeds of one predictor
  >>> result = bootstrap_tau(predicted, accuracy, num_resamples=200)
  >>> result["low"] <= result["tau"] <= result["high"], result["low"] > 0
  (True, True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def kendall_tau(x: Any, y: Any) -> float:
  """Kendall's tau-b of two equally long sequences, with ties.

  ``tau_b = (n_c - n_d) / sqrt((n_0 - n_x) (n_0 - n_y))`` over the ``n_0 = n (n - 1) / 2``
  pairs, where ``n_c`` / ``n_d`` count concordant / discordant pairs and
  ``n_x`` / ``n_y`` the pairs tied in x / in y. Computed from the pairwise sign
  matrices, ``sum_{i<j} sign(x_i - x_j) sign(y_i - y_j)`` over the square root of
  the number of pairs untied in x times the number untied in y: O(n^2) memory,
  fine for a zoo's few hundred models. Equals ``scipy.stats.kendalltau``
  (its default, tau-b).

  Args:
    x: a sequence of numbers (any shape; flattened).
    y: a sequence of as many numbers.

  Returns:
    tau in [-1, 1]; NaN if x or y is constant (no untied pairs) or n < 2.

  Raises:
    ValueError: x and y differ in length.
  """
  x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f"kendall_tau needs sequences of equal length, got {x.size} and {y.size}.")
  upper = np.triu_indices(x.size, k=1)
  sx = np.sign(x[:, None] - x[None, :])[upper]
  sy = np.sign(y[:, None] - y[None, :])[upper]
  denominator = math.sqrt(float(np.sum(sx != 0)) * float(np.sum(sy != 0)))
  return float(np.sum(sx * sy) / denominator) if denominator > 0 else math.nan


def bootstrap_indices(n: int, num_resamples: int, seed: int) -> np.ndarray:
  """The bootstrap resamples of ``n`` test models: indices drawn with replacement.

  Every bootstrap function here draws its resamples from this one function, so that two predictors scored
  with the same ``seed`` (and ``n``, ``num_resamples``) see the same resampled models.

  Args:
    n: the number of test models (>= 1).
    num_resamples: the number of resamples (>= 1).
    seed: the seed of ``np.random.default_rng``.

  Returns:
    An int array ``(num_resamples, n)`` of indices in ``[0, n)``; row ``r`` is resample ``r``.

  Raises:
    ValueError: ``n`` or ``num_resamples`` is below 1.
  """
  if n < 1 or num_resamples < 1:
    raise ValueError(f"bootstrap_indices needs n >= 1 and num_resamples >= 1, got {n} and {num_resamples}.")
  return np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))


def _as_rows(predictions: Any, targets: np.ndarray) -> np.ndarray:
  """``predictions`` as float64 rows ``(seeds, n)``, checked against the ``n`` targets."""
  rows = np.asarray(predictions, np.float64)
  if rows.ndim not in (1, 2) or rows.shape[-1] != targets.size or 0 in rows.shape:
    raise ValueError(
      f"predictions must be (seeds, n) or (n,) with n = {targets.size} (the targets' length), got {rows.shape}."
    )
  return np.atleast_2d(rows)


def _checked_targets(targets: Any, confidence: float) -> np.ndarray:
  """``targets`` as a float64 vector of n >= 2 values, with ``confidence`` checked to lie in (0, 1)."""
  values = np.asarray(targets, np.float64)
  if values.ndim != 1 or values.size < 2:
    raise ValueError(f"targets must be a vector of n >= 2 accuracies, got shape {values.shape}.")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
  return values


def _multiplicities(indices: np.ndarray, n: int) -> np.ndarray:
  """How often each of the ``n`` models occurs in each resample: float64 ``(num_resamples, n)``."""
  offsets = indices + n * np.arange(indices.shape[0])[:, None]
  return np.bincount(offsets.ravel(), minlength=indices.size).reshape(indices.shape).astype(np.float64)


def _sign_matrix(values: np.ndarray) -> np.ndarray:
  """``sign(values_i - values_j)`` as float64 ``(n, n)``: antisymmetric, zero on the diagonal."""
  return np.sign(values[:, None] - values[None, :])


def _pair_sums(matrix: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """``sum_{a<b} matrix[idx_a, idx_b]`` per resample, from its multiplicities ``c``: ``c^T matrix c / 2``.

  ``matrix`` is symmetric with a zero diagonal, so the sum over ordered pairs of the resample's positions,
  ``c^T matrix c``, counts each pair twice and a model's copies paired with each other zero times (they are
  tied in both rankings, which tau-b leaves out of every count). The sums are of integers below 2^53, exact
  in float64.
  """
  return np.einsum("rn,rn->r", counts @ matrix, counts) / 2


def _mean_taus(
  rows: np.ndarray, target_signs: np.ndarray, untied_targets: np.ndarray, counts: np.ndarray
) -> np.ndarray:
  """Per resample, the mean over ``rows`` of tau-b (NaN where a row or the targets are constant)."""
  taus = np.empty((rows.shape[0], counts.shape[0]))
  for seed, row in enumerate(rows):
    signs = _sign_matrix(row)
    concordance = _pair_sums(signs * target_signs, counts)
    untied = _pair_sums(np.abs(signs), counts)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 where a resample has no untied pair
      taus[seed] = concordance / np.sqrt(untied * untied_targets)
  return taus.mean(axis=0)


def _tau_statistics(predictions: list[np.ndarray], targets: np.ndarray, indices: np.ndarray) -> list[np.ndarray]:
  """For each predictions array, its statistic on the full sample (entry 0) and on each resample (entries 1..)."""
  counts = np.concatenate([np.ones((1, targets.size)), _multiplicities(indices, targets.size)])
  target_signs = _sign_matrix(targets)
  untied_targets = _pair_sums(np.abs(target_signs), counts)
  return [_mean_taus(rows, target_signs, untied_targets, counts) for rows in predictions]


def _interval(values: np.ndarray, confidence: float) -> dict[str, float]:
  """The percentile interval of a bootstrap distribution at ``confidence``, and its standard deviation."""
  low, high = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
  return {"low": float(low), "high": float(high), "se": float(np.std(values, ddof=1)) if values.size > 1 else math.nan}


def bootstrap_tau(
  predictions: Any, targets: Any, *, num_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
  """Kendall's tau of a predictor with a bootstrap percentile interval over the test models.

  The statistic of a set of models ``idx`` is ``mean_s kendall_tau(predictions[s, idx], targets[idx])``, the
  mean over the predictor's training seeds ``s``. Each resample draws ``n`` models with replacement
  (:func:`bootstrap_indices`); pairs of a model's copies are tied in both rankings and tau-b leaves them out.
  The sign matrices are computed once, and a resample's pair counts are ``c^T S c / 2`` over its
  multiplicities ``c``: O(n^2) memory and one ``(num_resamples, n) x (n, n)`` product per count, about a second
  on one core for 1000 models, 3 seeds and 2000 resamples.

  Args:
    predictions: predicted scores, ``(seeds, n)`` (one row per training seed of the predictor) or ``(n,)``.
    targets: the ``n`` true accuracies.
    num_resamples: the number of bootstrap resamples.
    seed: the seed of the resamples.
    confidence: the interval's coverage, in (0, 1).

  Returns:
    ``{"tau": the statistic of all n models, "low", "high": the (1 -+ confidence) / 2 percentiles of the
    bootstrap distribution, "se": its standard deviation (ddof 1)}``; NaN entries if some resample's tau is
    undefined (constant predictions or targets in it, likely only for a handful of models).

  Raises:
    ValueError: the predictions' last axis differs from the targets' length, n < 2, or confidence is not in
      (0, 1).
  """
  values = _checked_targets(targets, confidence)
  rows = _as_rows(predictions, values)
  (statistic,) = _tau_statistics([rows], values, bootstrap_indices(values.size, num_resamples, seed))
  return {"tau": float(statistic[0]), **_interval(statistic[1:], confidence)}


def paired_tau_difference(
  predictions_a: Any,
  predictions_b: Any,
  targets: Any,
  *,
  num_resamples: int = 2000,
  seed: int = 0,
  confidence: float = 0.95,
) -> dict[str, float]:
  """The difference of two predictors' taus (a - b), bootstrapped over the same resampled test models.

  Both statistics (see :func:`bootstrap_tau`) are computed on each resample of :func:`bootstrap_indices`, so
  models that are hard to rank for both predictors move both taus together and cancel from the difference.
  The p-value is the bootstrap's two-sided ``2 min(P*(d <= 0), P*(d >= 0))``, clipped to 1.

  Args:
    predictions_a: predictor a's scores, ``(seeds, n)`` or ``(n,)``.
    predictions_b: predictor b's scores, ``(seeds', n)`` or ``(n,)`` (its own number of seeds).
    targets: the ``n`` true accuracies.
    num_resamples: the number of bootstrap resamples.
    seed: the seed of the resamples.
    confidence: the interval's coverage, in (0, 1).

  Returns:
    ``{"difference": tau(a) - tau(b) on all n models, "low", "high": the percentile interval of the bootstrap
    differences, "se": their standard deviation (ddof 1), "p_two_sided": the bootstrap p-value of no
    difference}``.

  Raises:
    ValueError: either predictions' last axis differs from the targets' length, n < 2, or confidence is not
      in (0, 1).
  """
  values = _checked_targets(targets, confidence)
  rows_a, rows_b = _as_rows(predictions_a, values), _as_rows(predictions_b, values)
  tau_a, tau_b = _tau_statistics([rows_a, rows_b], values, bootstrap_indices(values.size, num_resamples, seed))
  difference = tau_a - tau_b
  resampled = difference[1:]
  p_two_sided = min(1.0, 2 * min(float(np.mean(resampled <= 0)), float(np.mean(resampled >= 0))))
  return {"difference": float(difference[0]), **_interval(resampled, confidence), "p_two_sided": p_two_sided}
