"""Truncated backpropagation: the analytic gradient of one truncation's meta-loss."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from metatrain.estimators import common
from metatrain.types import Metrics, PyTree, Theta


class TruncatedGradientState(NamedTuple):
  """Per inner run (``2 * num_pairs`` of them): its state and its step."""

  runs: PyTree
  step: jax.Array  # (2 * num_pairs,) inner steps done by each run


@dataclasses.dataclass(frozen=True)
class TruncatedGradient(common.TruncatedEstimator):
  """Truncated backpropagation: ``g = mean_r d/d theta L_r(theta; s_r)`` over ``2 * num_pairs`` inner runs.

  ``L_r(theta; s_r)`` is run ``r``'s mean meta-loss over the next ``K``
  inner steps from its current state ``s_r`` under ``theta``, differentiated
  with ``jax.grad`` through the unrolled ``lax.scan``. The runs carry over
  truncations (and restart at the horizon) but ``s_r`` counts as a constant:
  how ``theta`` shaped the state in earlier truncations is ignored, so the
  estimate is biased for the full-horizon meta-loss (short-horizon bias, as
  :class:`metatrain.TruncatedES`, without its smoothing). Its expectation is
  the exact gradient of the truncation's loss from the runs' current states.

  The runs are independent (own init, own data keys); there are
  ``2 * num_pairs`` of them so that an estimate runs as many forward inner
  steps as an antithetic ES estimate with ``num_pairs`` pairs.

  Args:
    num_pairs: half the number of inner runs (``2 * num_pairs`` runs, the inner steps of ``num_pairs`` ES pairs).
    truncation: inner steps per estimate (K); the horizon is the problem's, a multiple of K.
    std: unused (no perturbation); kept so that every truncated estimator takes the same fields.
    clip: optional bound on the norm of each run's gradient.
    random_offsets: start runs at random multiples of K (spreads resets over the horizon).
    per_part_noise: unused, as ``std``.
  """

  name: ClassVar[str] = "truncated_grad"

  def init(self, problem: Any, theta: Theta, key: jax.Array) -> TruncatedGradientState:
    """``2 * num_pairs`` fresh, independent runs."""
    return TruncatedGradientState(*self._start(problem, theta, key, 2 * self.num_pairs))

  def step(
    self, problem: Any, state: TruncatedGradientState, theta: Theta, key: jax.Array
  ) -> tuple[TruncatedGradientState, Theta, Metrics]:
    """One truncation: ``(state, theta, key) -> (state, gradient estimate, metrics)``.

    ``metrics["nan_pairs"]`` counts the runs (not pairs) whose loss or gradient is not finite; they contribute zero.
    """
    data_key, reset_key = jax.random.split(key)
    num = 2 * self.num_pairs
    keys = jax.random.split(data_key, num * self.truncation).reshape(num, self.truncation)
    runs_value_and_grad = jax.vmap(common.truncation_value_and_grad, in_axes=(None, None, 0, 0))
    (losses, runs), grads = runs_value_and_grad(problem, theta, state.runs, keys)
    grad, metrics = common.mean_gradient(losses, grads, clip=self.clip)
    done, fresh, steps = common.end_truncation(problem, theta, reset_key, state.step, self.truncation)
    metrics["resets"] = jnp.sum(done)
    return TruncatedGradientState(common.where(done, fresh, runs), steps), grad, metrics

  def inner_steps(self, horizon: int) -> int:
    """``2 * num_pairs * truncation`` forward inner steps.

    Backpropagating through them costs more: roughly 2-3 times the forward
    cost per step, and memory for the activations of all ``K`` steps.
    """
    return 2 * self.num_pairs * self.truncation
