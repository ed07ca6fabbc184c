"""The maths shared by the antithetic ES estimators: noise, perturbation, unrolls, the estimate.

An *inner problem* is any pytree object with

- ``horizon``: the number of inner steps of one run (static int);
- ``init(theta, key) -> state``: a fresh inner run;
- ``step(theta, state, key) -> (state, loss)``: one inner step and its
  (normalised) meta-loss.

:class:`metatrain.problem.LearnedOptimizerProblem` is the one meta-training
uses; the statistical tests plug in a quadratic. Everything here is pure.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Theta = Any


def sample_noise(key: jax.Array, theta: Theta, num: int, std: float) -> Theta:
  """``num`` Gaussian perturbations of ``theta`` with standard deviation ``std`` (leading axis ``num``)."""
  leaves, treedef = jax.tree.flatten(theta)
  keys = jax.random.split(key, len(leaves))
  noise = [std * jax.random.normal(k, (num, *jnp.shape(x)), jnp.result_type(x)) for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, noise)


def add(theta: Theta, delta: Theta, sign: float = 1.0) -> Theta:
  """``theta + sign * delta`` where ``delta`` has a leading particle axis."""
  return jax.tree.map(lambda t, d: t + sign * d, theta, delta)


def where(mask: jax.Array, new: Any, old: Any) -> Any:
  """Per particle (leading axis), ``new`` where ``mask`` else ``old``."""

  def pick(n, o):
    return jnp.where(mask.reshape(mask.shape + (1,) * (o.ndim - mask.ndim)), n, o)

  return jax.tree.map(pick, new, old)


def init_particles(problem: Any, theta: Theta, key: jax.Array, num: int) -> Any:
  """``num`` fresh inner runs (leading axis ``num``)."""
  return jax.vmap(problem.init, in_axes=(None, 0))(theta, jax.random.split(key, num))


def unroll_pairs(
  problem: Any, theta_pos: Theta, theta_neg: Theta, state_pos: Any, state_neg: Any, key: jax.Array, length: int
) -> tuple[Any, Any, jax.Array, jax.Array]:
  """Advances every antithetic pair ``length`` steps in one vmapped ``lax.scan``.

  The two members of a pair share their data keys; both signs and all pairs
  run in the same vectorised call.

  Returns:
    ``(state_pos, state_neg, loss_pos, loss_neg)``, losses averaged over the
    ``length`` steps, shape ``(num_pairs,)``.
  """
  stack = lambda a, b: jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)  # noqa: E731
  thetas, states = stack(theta_pos, theta_neg), stack(state_pos, state_neg)
  num = jax.tree.leaves(state_pos)[0].shape[0]
  signs = jax.vmap(problem.step, in_axes=(0, 0, None))  # both signs, one key
  pairs = jax.vmap(signs, in_axes=(1, 1, 0), out_axes=1)  # every pair, its own key

  def body(states, keys):
    return pairs(thetas, states, keys)

  keys = jax.random.split(key, length * num).reshape(length, num)
  states, losses = jax.lax.scan(body, states, keys)
  mean = jnp.mean(losses, axis=0)  # (2, num)
  first, second = (jax.tree.map(lambda x, i=i: x[i], states) for i in (0, 1))
  return first, second, mean[0], mean[1]


def unroll_perturbed(
  problem: Any, theta: Theta, eps: Theta, state_pos: Any, state_neg: Any, key: jax.Array, length: int
) -> tuple[Any, Any, jax.Array, jax.Array]:
  """:func:`unroll_pairs` under ``theta + eps_i`` and ``theta - eps_i``."""
  return unroll_pairs(problem, add(theta, eps), add(theta, eps, -1.0), state_pos, state_neg, key, length)


def end_truncation(
  problem: Any, theta: Theta, key: jax.Array, steps: jax.Array, truncation: int
) -> tuple[jax.Array, Any, jax.Array]:
  """Bookkeeping at a truncation boundary: which runs reached the horizon, fresh runs, new step counters.

  Returns:
    ``(done, fresh, steps)``: a mask per pair, fresh inner runs to select with
    :func:`where`, and the step counters (0 where the run restarts).
  """
  steps = steps + truncation
  done = steps >= problem.horizon
  fresh = init_particles(problem, theta, key, steps.shape[0])
  return done, fresh, jnp.where(done, 0, steps)


def estimate(
  loss_pos: jax.Array,
  loss_neg: jax.Array,
  directions: Theta,
  *,
  std: float,
  clip: float | None,
) -> tuple[Theta, dict[str, jax.Array]]:
  """The antithetic estimate ``mean_i (L+_i - L-_i) / (2 std^2) * direction_i``.

  ``direction_i`` is the pair's perturbation (ES) or its accumulated
  perturbations (PES). A pair whose loss difference is NaN or infinite
  contributes zero and is counted; ``clip`` bounds each loss difference.
  """
  difference = loss_pos - loss_neg
  finite = jnp.isfinite(difference)
  difference = jnp.where(finite, difference, 0.0)
  if clip is not None:
    difference = jnp.clip(difference, -clip, clip)
  num = difference.shape[0]
  grad = jax.tree.map(lambda d: jnp.tensordot(difference, d, axes=1) / (2.0 * std**2 * num), directions)
  both = jnp.where(finite, 0.5 * (loss_pos + loss_neg), 0.0)
  metrics = {
    "meta_loss": jnp.sum(both) / jnp.maximum(jnp.sum(finite), 1),
    "nan_pairs": num - jnp.sum(finite),
  }
  return grad, metrics
