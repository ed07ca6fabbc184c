"""Noise-Reuse Evolution Strategies (Li, Harrison, Sohl-Dickstein, Smith, Metz 2023)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from metatrain.estimators import common
from metatrain.types import Metrics, PyTree, Theta


class NoiseReuseESState(NamedTuple):
  """Per pair: the two inner runs, the perturbation they run under until their reset, their step."""

  pos: PyTree
  neg: PyTree
  noise: Theta  # (num_pairs, ...) eps_i, kept from a run's start to its reset
  step: jax.Array  # (num_pairs,) inner steps done by the pair's current run


@dataclasses.dataclass(frozen=True)
class NoiseReuseES(common.TruncatedEstimator):
  """Antithetic noise-reuse ES: one perturbation per pair and inner run, reused by every truncation of the run.

  Each pair draws ``eps_i`` when its run starts and runs its two members under
  ``theta + eps_i`` and ``theta - eps_i`` for every truncation until the run
  reaches the horizon; then both restart from a fresh init with a new
  ``eps_i``. A truncation's estimate is the plain antithetic one,
  ``mean_i (L+_i - L-_i) / (2 std^2) eps_i`` over the truncation's losses.

  The sum over a run's truncations of these estimates is the ES estimate of
  the whole run with one perturbation, so the estimator is unbiased for the
  gradient of the full-horizon meta-loss smoothed with one noise shared by the
  whole run: ``grad_theta E_eps[L(theta + eps)]``, ``L`` the mean loss of a
  run (the objective of :class:`metatrain.FullES`, from truncations as
  :class:`metatrain.PES`). Its direction is ``eps_i`` itself, not PES's sum
  of per-truncation noises, so its variance does not grow along the run (the
  paper's argument for it over PES).

  Args: as :class:`metatrain.estimators.common.TruncatedEstimator`.
  """

  name: ClassVar[str] = "nres"

  def init(self, problem: Any, theta: Theta, key: jax.Array) -> NoiseReuseESState:
    """Fresh pairs of runs, both members from the same init, and each pair's perturbation."""
    start_key, noise_key = jax.random.split(key)
    runs, steps = self._start(problem, theta, start_key)
    scales = common.noise_scales(problem, theta, self.per_part_noise)
    noise = common.sample_noise(noise_key, theta, self.num_pairs, self.std, scales)
    return NoiseReuseESState(runs, runs, noise, steps)

  def step(
    self, problem: Any, state: NoiseReuseESState, theta: Theta, key: jax.Array
  ) -> tuple[NoiseReuseESState, Theta, Metrics]:
    """One truncation: ``(state, theta, key) -> (state, gradient estimate, metrics)``."""
    noise_key, data_key, reset_key = jax.random.split(key, 3)
    pos, neg, loss_pos, loss_neg = common.unroll_perturbed(
      problem, theta, state.noise, state.pos, state.neg, data_key, self.truncation
    )
    scales = common.noise_scales(problem, theta, self.per_part_noise)
    directions = common.whiten(state.noise, scales)
    grad, metrics = common.estimate(loss_pos, loss_neg, directions, std=self.std, clip=self.clip)
    done, fresh, steps = common.end_truncation(problem, theta, reset_key, state.step, self.truncation)
    new_noise = common.sample_noise(noise_key, theta, self.num_pairs, self.std, scales)
    state = NoiseReuseESState(
      pos=common.where(done, fresh, pos),
      neg=common.where(done, fresh, neg),
      noise=common.where(done, new_noise, state.noise),
      step=steps,
    )
    metrics["resets"] = jnp.sum(done)
    return state, grad, metrics
