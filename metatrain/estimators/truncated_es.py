"""Truncated antithetic ES: one estimate per truncation, ignoring the past."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metatrain import antithetic
from metatrain.pes import start_steps


class TruncatedESState(NamedTuple):
  """Per pair: the inner run both members start each truncation from, and its step."""

  runs: Any
  step: jax.Array


@dataclasses.dataclass(frozen=True)
class TruncatedES:
  """Antithetic ES on each truncation: ``g = mean_i (L+_i - L-_i) / (2 std^2) eps_i``.

  Both members of a pair start from the same inner state and run ``K`` steps
  under ``theta +- eps_i``; the run then continues from the positive member's
  state (one run per pair, as cheap as possible). The estimate ignores how
  ``theta`` shaped that starting state, so it is biased for the full-horizon
  meta-loss (short-horizon bias); :class:`metatrain.PES` removes that bias.

  Args: as :class:`metatrain.PES`.
  """

  num_pairs: int = 8
  truncation: int = 50
  std: float = 0.01
  clip: float | None = None
  random_offsets: bool = True

  def init(self, problem: Any, theta: Any, key: jax.Array) -> TruncatedESState:
    init_key, offset_key = jax.random.split(key)
    runs = antithetic.init_particles(problem, theta, init_key, self.num_pairs)
    steps = start_steps(offset_key, self.num_pairs, problem.horizon, self.truncation, self.random_offsets)
    return TruncatedESState(runs, steps)

  def step(self, problem: Any, state: TruncatedESState, theta: Any, key: jax.Array):
    """One truncation: ``(state, theta, key) -> (state, gradient estimate, metrics)``."""
    noise_key, data_key, reset_key = jax.random.split(key, 3)
    eps = antithetic.sample_noise(noise_key, theta, self.num_pairs, self.std)
    pos, _, loss_pos, loss_neg = antithetic.unroll_perturbed(
      problem, theta, eps, state.runs, state.runs, data_key, self.truncation
    )
    grad, metrics = antithetic.estimate(loss_pos, loss_neg, eps, std=self.std, clip=self.clip)
    done, fresh, steps = antithetic.end_truncation(problem, theta, reset_key, state.step, self.truncation)
    state = TruncatedESState(antithetic.where(done, fresh, pos), steps)
    metrics["resets"] = jnp.sum(done)
    return state, grad, metrics
