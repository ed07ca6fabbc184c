"""Kendall's tau against scipy, with ties, and at its extremes; its bootstrap intervals against a naive loop."""

import math

import numpy as np
import pytest
import scipy.stats

from experiments.rnn_zoo.stats import bootstrap_indices, bootstrap_tau, kendall_tau, paired_tau_difference


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


def _naive_statistics(predictions, targets, indices):
  """The statistic on the full sample and on each resample, by gathering each resample and calling scipy."""
  rows = np.atleast_2d(predictions)

  def statistic(idx):
    return np.mean([scipy.stats.kendalltau(row[idx], targets[idx]).statistic for row in rows])

  return statistic(np.arange(targets.size)), np.array([statistic(idx) for idx in indices])


def _tied_problem(n, seeds, rng):
  """Accuracies on few levels (ties in the targets) and rounded noisy predictions (ties in them too)."""
  targets = np.round(rng.uniform(0.2, 0.9, n), 1)
  predictions = np.round(targets + 0.2 * rng.normal(size=(seeds, n)), 1)
  return (predictions[0] if seeds == 1 else predictions), targets


@pytest.mark.parametrize("seeds", [1, 3])
def test_bootstrap_tau_matches_naive_loop(seeds):
  predictions, targets = _tied_problem(40, seeds, np.random.default_rng(seeds))
  indices = bootstrap_indices(40, 200, seed=7)
  assert len(set(indices[0])) < 40  # resamples hold duplicated models, pairs tied in both rankings
  full, resampled = _naive_statistics(predictions, targets, indices)
  low, high = np.percentile(resampled, [5, 95])
  got = bootstrap_tau(predictions, targets, num_resamples=200, seed=7, confidence=0.9)
  assert got.keys() == {"tau", "low", "high", "se"}
  np.testing.assert_allclose(
    [got["tau"], got["low"], got["high"], got["se"]], [full, low, high, np.std(resampled, ddof=1)], rtol=0, atol=1e-10
  )


@pytest.mark.parametrize("seeds", [1, 3])
def test_paired_tau_difference_matches_naive_loop(seeds):
  rng = np.random.default_rng(10 + seeds)
  predictions_a, targets = _tied_problem(40, seeds, rng)
  predictions_b = np.round(targets + 0.4 * rng.normal(size=(2, 40)), 1)  # its own number of seeds
  indices = bootstrap_indices(40, 200, seed=3)
  full_a, resampled_a = _naive_statistics(predictions_a, targets, indices)
  full_b, resampled_b = _naive_statistics(predictions_b, targets, indices)
  differences = resampled_a - resampled_b
  low, high = np.percentile(differences, [2.5, 97.5])
  p_value = min(1.0, 2 * min(np.mean(differences <= 0), np.mean(differences >= 0)))
  got = paired_tau_difference(predictions_a, predictions_b, targets, num_resamples=200, seed=3)
  assert got.keys() == {"difference", "low", "high", "se", "p_two_sided"}
  np.testing.assert_allclose(
    [got["difference"], got["low"], got["high"], got["se"], got["p_two_sided"]],
    [full_a - full_b, low, high, np.std(differences, ddof=1), p_value],
    rtol=0,
    atol=1e-10,
  )


def test_bootstrap_indices_are_reproducible_draws_with_replacement():
  indices = bootstrap_indices(50, 30, seed=4)
  assert indices.shape == (30, 50) and np.issubdtype(indices.dtype, np.integer)
  assert indices.min() >= 0 and indices.max() < 50
  np.testing.assert_array_equal(indices, bootstrap_indices(50, 30, seed=4))
  assert not np.array_equal(indices, bootstrap_indices(50, 30, seed=5))
  with pytest.raises(ValueError, match="n >= 1"):
    bootstrap_indices(0, 30, seed=4)


def test_interval_of_a_strong_predictor_excludes_zero():
  rng = np.random.default_rng(0)
  targets = rng.uniform(size=100)
  predictions = targets + 0.05 * rng.normal(size=(3, 100))
  got = bootstrap_tau(predictions, targets, num_resamples=500)
  assert got["tau"] == pytest.approx(np.mean([kendall_tau(row, targets) for row in predictions]), abs=1e-12)
  assert 0 < got["low"] <= got["tau"] <= got["high"] < 1
  assert got["se"] > 0
  weak = bootstrap_tau(rng.normal(size=100), targets, num_resamples=500)
  assert weak["low"] < 0 < weak["high"]  # an unrelated predictor's interval holds 0


def test_paired_difference_of_a_predictor_with_itself_is_exactly_zero():
  predictions, targets = _tied_problem(60, 3, np.random.default_rng(1))
  got = paired_tau_difference(predictions, predictions, targets, num_resamples=300)
  assert got == {"difference": 0.0, "low": 0.0, "high": 0.0, "se": 0.0, "p_two_sided": 1.0}


def test_paired_difference_of_a_better_predictor_lies_above_zero():
  rng = np.random.default_rng(2)
  targets = rng.uniform(size=80)
  better, random = targets + 0.1 * rng.normal(size=(3, 80)), rng.normal(size=(3, 80))
  got = paired_tau_difference(better, random, targets, num_resamples=500)
  assert 0 < got["low"] <= got["difference"] <= got["high"]
  assert got["p_two_sided"] < 0.01
  reversed_ = paired_tau_difference(random, better, targets, num_resamples=500)
  assert reversed_["difference"] == -got["difference"] and reversed_["high"] < 0


def test_bootstrap_errors():
  targets = np.linspace(0, 1, 10)
  with pytest.raises(ValueError, match="targets' length"):
    bootstrap_tau(np.zeros((3, 11)), targets)
  with pytest.raises(ValueError, match="targets' length"):
    paired_tau_difference(np.zeros((3, 10)), np.zeros(9), targets)
  with pytest.raises(ValueError, match="n >= 2"):
    bootstrap_tau([0.5], [0.5])
  for confidence in (0.0, 1.0, 1.5, -0.1):
    with pytest.raises(ValueError, match="confidence"):
      bootstrap_tau(targets, targets, confidence=confidence)
    with pytest.raises(ValueError, match="confidence"):
      paired_tau_difference(targets, targets, targets, confidence=confidence)
