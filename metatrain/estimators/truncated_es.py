"""Truncated antithetic ES: one estimate per truncation, ignoring the past."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from metatrain.estimators import common
from metatrain.types import Metrics, PyTree, Theta


class TruncatedESState(NamedTuple):
  """Per pair: the inner run both members start each truncation from, and its step."""

  runs: PyTree
  step: jax.Array


@dataclasses.dataclass(frozen=True)
class TruncatedES(common.TruncatedEstimator):
  """Antithetic ES on each truncation: ``g = mean_i (L+_i - L-_i) / (2 std^2) eps_i``.

  Both members of a pair start from the same inner state and run ``K`` steps
  under ``theta +- eps_i``; the run then continues from the positive member's
  state (one run per pair, as cheap as possible). The estimate ignores how
  ``theta`` shaped that starting state, so it is biased for the full-horizon
  meta-loss (short-horizon bias); :class:`metatrain.PES` removes that bias.

  Args: as :class:`metatrain.estimators.common.TruncatedEstimator`.
  """

  name: ClassVar[str] = "truncated_es"

  def init(self, problem: Any, theta: Theta, key: jax.Array) -> TruncatedESState:
    """One fresh run per pair."""
    return TruncatedESState(*self._start(problem, theta, key))

  def step(
    self, problem: Any, state: TruncatedESState, theta: Theta, key: jax.Array
  ) -> tuple[TruncatedESState, Theta, Metrics]:
    """One truncation: ``(state, theta, key) -> (state, gradient estimate, metrics)``."""
    noise_key, data_key, reset_key = jax.random.split(key, 3)
    scales = common.noise_scales(problem, theta, self.per_part_noise)
    eps = common.sample_noise(noise_key, theta, self.num_pairs, self.std, scales)
    pos, _, loss_pos, loss_neg = common.unroll_perturbed(
      problem, theta, eps, state.runs, state.runs, data_key, self.truncation
    )
    grad, metrics = common.estimate(loss_pos, loss_neg, common.whiten(eps, scales), std=self.std, clip=self.clip)
    done, fresh, steps = common.end_truncation(problem, theta, reset_key, state.step, self.truncation)
    metrics["resets"] = jnp.sum(done)
    return TruncatedESState(common.where(done, fresh, pos), steps), grad, metrics
