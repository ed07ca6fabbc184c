"""Summary statistics of repeated runs: means with standard errors, and paired differences with t intervals."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np


def mean_se(values: Any, axis: int = 0) -> tuple[Any, Any]:
  """Mean and standard error of the mean along ``axis`` (NaN standard error for a single value).

  The standard error is ``std(values, ddof=1) / sqrt(n)`` over the ``n`` values along ``axis``.

  Args:
    values: an array-like of repeated measurements (e.g. one per seed).
    axis: the axis of the repetitions.

  Returns:
    ``(mean, se)``: floats for 1-D ``values``, arrays otherwise.

  Example:
    >>> mean, se = mean_se([1.0, 2.0, 3.0])
    >>> mean, round(se, 6)  # std 1 (ddof 1) over sqrt(3)
    (2.0, 0.57735)
  """
  values = np.asarray(values, np.float64)
  count = values.shape[axis]
  mean = values.mean(axis)
  se = values.std(axis, ddof=1) / np.sqrt(count) if count > 1 else np.full_like(mean, np.nan)
  return (float(mean), float(se)) if values.ndim == 1 else (mean, se)


def _t_central(t: float, df: int) -> float:
  """``P(|T| <= t)`` for Student's t with integer ``df``: the finite series of Abramowitz and Stegun 26.7.3-4.

  With ``theta = atan(t / sqrt(df))``, ``s = sin(theta)`` and ``c = cos(theta)``:

  - odd ``df``: ``(2 / pi) (theta + s c (1 + (2/3) c^2 + (2 4)/(3 5) c^4 + ...))``, the last term
    ``(2 ... (df-3)) / (3 ... (df-2)) c^(df-3)`` (``2 theta / pi`` for ``df = 1``);
  - even ``df``: ``s (1 + (1/2) c^2 + (1 3)/(2 4) c^4 + ...)``, the last term
    ``(1 ... (df-3)) / (2 ... (df-2)) c^(df-2)``.
  """
  theta = math.atan(t / math.sqrt(df))
  s, c = math.sin(theta), math.cos(theta)
  if df % 2:
    if df == 1:
      return 2 * theta / math.pi
    term, total = 1.0, 1.0
    for k in range(2, df - 1, 2):  # (2 4 ... k) / (3 5 ... k+1) c^k
      term *= k / (k + 1) * c * c
      total += term
    return 2 / math.pi * (theta + s * c * total)
  term, total = 1.0, 1.0
  for k in range(2, df - 1, 2):  # (1 3 ... k-1) / (2 4 ... k) c^k
    term *= (k - 1) / k * c * c
    total += term
  return s * total


def t_quantile(probability: float, df: int) -> float:
  """The ``probability`` quantile of Student's t distribution with ``df`` (an integer) degrees of freedom.

  Inverts the exact CDF ``F(t) = (1 + P(|T| <= t)) / 2`` (a finite series for integer ``df``, in float64)
  by bisection to a relative 1e-12 in ``t``.

  Args:
    probability: the quantile's probability, in (0, 1).
    df: the degrees of freedom (``n - 1`` for ``n`` paired values).

  Example:
    >>> round(t_quantile(0.975, 4), 6)  # the 95% two-sided critical value for 5 paired values
    2.776445
  """
  if not 0 < probability < 1 or df < 1 or int(df) != df:
    raise ValueError(f"t_quantile needs 0 < probability < 1 and an integer df >= 1, got {probability}, {df}.")
  if probability < 0.5:
    return -t_quantile(1 - probability, df)
  target = 2 * probability - 1
  low, high = 0.0, 1.0
  while _t_central(high, int(df)) < target:
    low, high = high, 2 * high
  while high - low > 1e-12 * high:
    middle = 0.5 * (low + high)
    low, high = (middle, high) if _t_central(middle, int(df)) < target else (low, middle)
  return 0.5 * (low + high)


class PairedDifference(NamedTuple):
  """The mean of paired differences ``a_i - b_i`` and its confidence interval ``[low, high]`` over ``pairs`` pairs."""

  mean: float
  low: float
  high: float
  pairs: int

  def excludes_zero(self) -> bool:
    """Whether the interval lies wholly on one side of zero."""
    return self.low > 0 or self.high < 0

  def __str__(self) -> str:
    return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def paired_difference(a: Any, b: Any, *, confidence: float = 0.95) -> PairedDifference:
  """The paired t interval of ``mean(a - b)``: runs that share a seed (same initial params and batches).

  ``mean(d) +- t_{(1 + confidence) / 2, n - 1} * std(d, ddof=1) / sqrt(n)`` with ``d = a - b``: pairing
  removes the variation that both share (a hard seed is hard for every optimizer).

  Args:
    a, b: one value per seed, in the same seed order.
    confidence: the interval's coverage.

  Returns:
    A :class:`PairedDifference` (``mean(a - b)`` and its interval).

  Example:
    >>> print(paired_difference([0.40, 0.42, 0.41], [0.45, 0.46, 0.47]))
    -0.0500 [-0.0748, -0.0252]
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size < 2:
    raise ValueError(f"paired_difference needs two vectors of the same length >= 2, got shapes {a.shape}, {b.shape}.")
  d = a - b
  mean, se = mean_se(d)
  half = t_quantile((1 + confidence) / 2, d.size - 1) * se
  return PairedDifference(mean, mean - half, mean + half, int(d.size))
