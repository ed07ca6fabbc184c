"""Summary statistics against scipy: the t quantile and the paired t interval."""

import numpy as np
import pytest
import scipy.stats

from metatrain.evaluation import stats


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30, 200])
@pytest.mark.parametrize("probability", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_scipy(probability, df):
  np.testing.assert_allclose(stats.t_quantile(probability, df), scipy.stats.t.ppf(probability, df), rtol=1e-9)
  np.testing.assert_allclose(stats.t_quantile(1 - probability, df), scipy.stats.t.ppf(1 - probability, df), rtol=1e-9)


@pytest.mark.parametrize("count, shift", [(2, 0.3), (5, 0.02), (12, -0.01)])
def test_paired_difference_is_scipys_paired_t_interval(count, shift):
  rng = np.random.default_rng(count)
  b = rng.normal(0.45, 0.05, size=count)  # a shared per-seed difficulty
  a = b + shift + rng.normal(0, 0.02, size=count)
  result = stats.paired_difference(a, b)
  interval = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
  np.testing.assert_allclose([result.low, result.high], [interval.low, interval.high], rtol=1e-9)
  np.testing.assert_allclose(result.mean, np.mean(a - b), rtol=1e-12)
  assert result.pairs == count
  narrow = stats.paired_difference(a, b, confidence=0.5)
  assert result.low < narrow.low < narrow.high < result.high


def test_paired_difference_excludes_zero_only_when_it_should():
  assert stats.paired_difference([1.0, 1.1, 0.9], [0.5, 0.6, 0.45]).excludes_zero()
  assert not stats.paired_difference([1.0, 0.2, 0.9], [0.5, 0.6, 0.45]).excludes_zero()
  with pytest.raises(ValueError, match="same length"):
    stats.paired_difference([1.0, 2.0], [1.0])
  with pytest.raises(ValueError, match="t_quantile"):
    stats.t_quantile(1.0, 3)
