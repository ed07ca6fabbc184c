"""Kendall's tau against scipy, with ties, and at its extremes."""

import math

import numpy as np
import pytest
import scipy.stats

from experiments.rnn_zoo.stats import kendall_tau


@pytest.mark.parametrize("n, levels", [(2, 2), (7, 3), (30, 4), (60, 1000), (100, 5)])
def test_kendall_tau_matches_scipy_with_ties(n, levels):
  rng = np.random.default_rng(n)
  for _ in range(5):
    x, y = rng.integers(0, levels, n), rng.integers(0, levels, n) + 0.5 * rng.integers(0, 2, n)
    expected = scipy.stats.kendalltau(x, y).statistic
    got = kendall_tau(x, y)
    assert (math.isnan(got) and math.isnan(expected)) or abs(got - expected) < 1e-12


def test_kendall_tau_extremes():
  x = np.arange(10.0)
  assert kendall_tau(x, 2 * x + 1) == pytest.approx(1.0)
  assert kendall_tau(x, -x) == pytest.approx(-1.0)
  assert math.isnan(kendall_tau(x, np.ones(10)))
  with pytest.raises(ValueError, match="equal length"):
    kendall_tau([1, 2], [1, 2, 3])
