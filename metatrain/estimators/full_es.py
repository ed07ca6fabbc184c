"""Whole-horizon antithetic ES, for short horizons and tests."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax

from metatrain.estimators import common
from metatrain.types import Metrics, Theta


class FullESState(NamedTuple):
  """Full-horizon ES keeps nothing between estimates."""


@dataclasses.dataclass(frozen=True)
class FullES(common.Estimator):
  """Antithetic ES over whole inner runs: fresh runs of ``horizon`` steps per estimate.

  Unbiased for the gradient of the full-horizon meta-loss smoothed with one
  perturbation per run; costs a whole run per estimate.

  Args:
    num_pairs: antithetic pairs.
    std: perturbation standard deviation.
    clip: optional bound on each pair's loss difference.
    per_part_noise: as :class:`metatrain.estimators.common.TruncatedEstimator`'s.
  """

  name: ClassVar[str] = "full_es"
  num_pairs: int = 8
  std: float = 0.01
  clip: float | None = None
  per_part_noise: bool = False

  def init(self, problem: Any, theta: Theta, key: jax.Array) -> FullESState:
    """The empty state."""
    del problem, theta, key
    return FullESState()

  def step(self, problem: Any, state: FullESState, theta: Theta, key: jax.Array) -> tuple[FullESState, Theta, Metrics]:
    """One estimate: ``(state, theta, key) -> (state, gradient estimate, metrics)``."""
    noise_key, init_key, data_key = jax.random.split(key, 3)
    scales = common.noise_scales(problem, theta, self.per_part_noise)
    eps = common.sample_noise(noise_key, theta, self.num_pairs, self.std, scales)
    runs = common.init_particles(problem, theta, init_key, self.num_pairs)
    _, _, loss_pos, loss_neg = common.unroll_perturbed(problem, theta, eps, runs, runs, data_key, problem.horizon)
    grad, metrics = common.estimate(loss_pos, loss_neg, common.whiten(eps, scales), std=self.std, clip=self.clip)
    return state, grad, metrics

  def inner_steps(self, horizon: int) -> int:
    """``2 * num_pairs * horizon``: both members of every pair run a whole run."""
    return 2 * self.num_pairs * horizon
