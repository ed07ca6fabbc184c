"""Summary statistics of repeated runs: means with standard errors."""

from __future__ import annotations

from typing import Any

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
