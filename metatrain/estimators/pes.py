"""Persistent Evolution Strategies (Vicol, Metz, Sohl-Dickstein 2021)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from metatrain.estimators import common
from metatrain.types import Metrics, PyTree, Theta


class PESState(NamedTuple):
  """Per pair: the two inner runs, the perturbations accumulated since their reset, their step."""

  pos: PyTree
  neg: PyTree
  accumulated: Theta
  step: jax.Array  # (num_pairs,) inner steps done by the pair's current run


@dataclasses.dataclass(frozen=True)
class PES(common.TruncatedEstimator):
  """Antithetic PES: unbiased gradients of the full-horizon smoothed meta-loss from truncations.

  Each pair keeps its two inner runs (under ``theta + eps_j`` and
  ``theta - eps_j`` for every past truncation j) and the sum of the
  perturbations since its last reset, ``xi = sum_j eps_j``. A truncation's
  estimate is ``mean_i (L+_i - L-_i) / (2 std^2) xi_i``: the accumulated noise
  credits the perturbations that shaped the runs' current state, which is what
  truncated ES drops. Its expectation is the gradient of the meta-loss of
  whole runs smoothed with independent noise per truncation. A run that
  reaches the horizon restarts (new init, accumulator zero) at a truncation
  boundary.

  Args: as :class:`metatrain.estimators.common.TruncatedEstimator`.
  """

  name: ClassVar[str] = "pes"

  def init(self, problem: Any, theta: Theta, key: jax.Array) -> PESState:
    """Fresh pairs of runs, both members from the same init, with zero accumulated noise."""
    runs, steps = self._start(problem, theta, key)
    accumulated = jax.tree.map(lambda t: jnp.zeros((self.num_pairs, *jnp.shape(t)), jnp.result_type(t)), theta)
    return PESState(runs, runs, accumulated, steps)

  def step(self, problem: Any, state: PESState, theta: Theta, key: jax.Array) -> tuple[PESState, Theta, Metrics]:
    """One truncation: ``(state, theta, key) -> (state, gradient estimate, metrics)``."""
    noise_key, data_key, reset_key = jax.random.split(key, 3)
    scales = common.noise_scales(problem, theta, self.per_part_noise)
    eps = common.sample_noise(noise_key, theta, self.num_pairs, self.std, scales)
    accumulated = jax.tree.map(jnp.add, state.accumulated, eps)
    pos, neg, loss_pos, loss_neg = common.unroll_perturbed(
      problem, theta, eps, state.pos, state.neg, data_key, self.truncation
    )
    directions = common.whiten(accumulated, scales)
    grad, metrics = common.estimate(loss_pos, loss_neg, directions, std=self.std, clip=self.clip)
    done, fresh, steps = common.end_truncation(problem, theta, reset_key, state.step, self.truncation)
    state = PESState(
      pos=common.where(done, fresh, pos),
      neg=common.where(done, fresh, neg),
      accumulated=common.where(done, jax.tree.map(jnp.zeros_like, accumulated), accumulated),
      step=steps,
    )
    metrics["resets"] = jnp.sum(done)
    return state, grad, metrics
