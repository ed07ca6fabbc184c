"""Whole-horizon antithetic ES, for short horizons and tests."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from metatrain import antithetic


class FullESState(NamedTuple):
  """Full-horizon ES keeps nothing between estimates."""


@dataclasses.dataclass(frozen=True)
class FullES:
  """Antithetic ES over whole inner runs: fresh runs of ``horizon`` steps per estimate.

  Unbiased for the gradient of the full-horizon meta-loss smoothed with one
  perturbation per run; costs a whole run per estimate.

  Args:
    num_pairs: antithetic pairs.
    std: perturbation standard deviation.
    clip: optional bound on each pair's loss difference.
  """

  num_pairs: int = 8
  std: float = 0.01
  clip: float | None = None

  def init(self, problem: Any, theta: Any, key: jax.Array) -> FullESState:
    del problem, theta, key
    return FullESState()

  def step(self, problem: Any, state: FullESState, theta: Any, key: jax.Array):
    """One estimate: ``(state, theta, key) -> (state, gradient estimate, metrics)``."""
    noise_key, init_key, data_key = jax.random.split(key, 3)
    eps = antithetic.sample_noise(noise_key, theta, self.num_pairs, self.std)
    runs = antithetic.init_particles(problem, theta, init_key, self.num_pairs)
    _, _, loss_pos, loss_neg = antithetic.unroll_perturbed(problem, theta, eps, runs, runs, data_key, problem.horizon)
    grad, metrics = antithetic.estimate(loss_pos, loss_neg, eps, std=self.std, clip=self.clip)
    return state, grad, metrics
