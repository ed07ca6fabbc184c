"""Persistent Evolution Strategies (Vicol, Metz, Sohl-Dickstein 2021)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metatrain import antithetic


class PESState(NamedTuple):
  """Per pair: the two inner runs, the perturbations accumulated since their reset, their step."""

  pos: Any
  neg: Any
  accumulated: Any
  step: jax.Array  # (num_pairs,) inner steps done by the pair's current run


def start_steps(key: jax.Array, num: int, horizon: int, truncation: int, random_offsets: bool) -> jax.Array:
  """Initial step counters: random multiples of the truncation length, so resets are spread out."""
  if horizon % truncation:
    raise ValueError(f"the horizon ({horizon}) must be a multiple of the truncation length ({truncation}).")
  if not random_offsets:
    return jnp.zeros((num,), jnp.int32)
  return truncation * jax.random.randint(key, (num,), 0, horizon // truncation)


@dataclasses.dataclass(frozen=True)
class PES:
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

  Args:
    num_pairs: antithetic pairs (2 x num_pairs inner runs).
    truncation: inner steps per estimate (K); the horizon is the problem's.
    std: perturbation standard deviation.
    clip: optional bound on each pair's loss difference.
    random_offsets: start pairs at random multiples of K (spreads resets).
  """

  num_pairs: int = 8
  truncation: int = 50
  std: float = 0.01
  clip: float | None = None
  random_offsets: bool = True

  def init(self, problem: Any, theta: Any, key: jax.Array) -> PESState:
    init_key, offset_key = jax.random.split(key)
    runs = antithetic.init_particles(problem, theta, init_key, self.num_pairs)
    accumulated = jax.tree.map(lambda t: jnp.zeros((self.num_pairs, *jnp.shape(t)), jnp.result_type(t)), theta)
    steps = start_steps(offset_key, self.num_pairs, problem.horizon, self.truncation, self.random_offsets)
    return PESState(runs, runs, accumulated, steps)

  def step(self, problem: Any, state: PESState, theta: Any, key: jax.Array) -> tuple[PESState, Any, dict]:
    """One truncation: ``(state, theta, key) -> (state, gradient estimate, metrics)``."""
    noise_key, data_key, reset_key = jax.random.split(key, 3)
    eps = antithetic.sample_noise(noise_key, theta, self.num_pairs, self.std)
    accumulated = jax.tree.map(jnp.add, state.accumulated, eps)
    pos, neg, loss_pos, loss_neg = antithetic.unroll_perturbed(
      problem, theta, eps, state.pos, state.neg, data_key, self.truncation
    )
    grad, metrics = antithetic.estimate(loss_pos, loss_neg, accumulated, std=self.std, clip=self.clip)
    done, fresh, steps = antithetic.end_truncation(problem, theta, reset_key, state.step, self.truncation)
    state = PESState(
      pos=antithetic.where(done, fresh, pos),
      neg=antithetic.where(done, fresh, neg),
      accumulated=antithetic.where(done, jax.tree.map(jnp.zeros_like, accumulated), accumulated),
      step=steps,
    )
    metrics["resets"] = jnp.sum(done)
    return state, grad, metrics
