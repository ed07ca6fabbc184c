"""Kendall's tau, the rank correlation by which the experiment scores a predictor.

Example:
  >>> from experiments.rnn_zoo.stats import kendall_tau
  >>> round(kendall_tau([1, 2, 3], [1, 3, 2]), 4)
  0.3333
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
