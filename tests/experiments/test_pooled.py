"""The pooled comparison of meta-training seeds, against an independent computation (numpy and scipy)."""

import csv

import numpy as np
import scipy.stats

from experiments.learned_optimizers import pooled


def test_pooled_means_and_paired_intervals(tmp_path):
  rng = np.random.default_rng(0)
  seeds = [10_000, 10_001, 10_002, 10_003]
  losses = {
    "adam": rng.normal(0.45, 0.01, 4),
    "unf": rng.normal(0.60, 0.01, 4),  # a baseline that shares the learned optimizer's kind name
    "unf (step 9) [unf_s0]": rng.normal(0.42, 0.01, 4),
    "unf (step 9) [unf_s1]": rng.normal(0.43, 0.01, 4),
  }
  with open(tmp_path / "curves.csv", "w", newline="") as file:
    writer = csv.writer(file)
    writer.writerow(["optimizer", "learning_rate", "seed", "step", "split", "loss"])
    for name, values in losses.items():
      for seed, value in zip(seeds, values):
        for split, shift in (("train", 0.0), ("test", 0.05)):
          writer.writerow([name, "", seed, 0, split, 2.3])  # the first evaluation: not the final loss
          writer.writerow([name, "", seed, 20, split, value + shift])
  text = pooled.pooled(tmp_path)
  unf = (losses["unf (step 9) [unf_s0]"] + losses["unf (step 9) [unf_s1]"]) / 2
  row = next(line for line in text.splitlines() if line.startswith("| unf (meta-trained) | adam |"))
  interval = scipy.stats.ttest_rel(unf, losses["adam"]).confidence_interval(0.95)
  expected = f"{np.mean(unf - losses['adam']):+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]"
  assert row.split("|")[3].strip().startswith(expected)  # final train
  assert row.split("|")[4].strip().startswith(expected)  # final test: the same shift on both
  summary = next(line for line in text.splitlines() if line.startswith("| unf (meta-trained) | 2 |"))
  assert f"{unf.mean():.4f} +- {unf.std(ddof=1) / 2:.4f}" in summary
  assert any(line.startswith("| unf | - |") for line in text.splitlines())  # kept apart from the learned one
