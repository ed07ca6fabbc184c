"""Hybrid ES and reparameterization gradients, by inverse variance (Metz et al. 2019)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from metatrain.estimators import common
from metatrain.types import Metrics, PyTree, Theta


class HybridESState(NamedTuple):
  """Per pair: the inner run both members start each truncation from, and its step (as truncated ES)."""

  runs: PyTree
  step: jax.Array


def variance_of_mean(samples: Theta, finite: jax.Array) -> jax.Array:
  """The total variance ``sum_k Var[mean_i x_ik]`` of the mean of the finite per-pair ``samples`` (leading axis).

  Estimated from the samples themselves (the unbiased sample variance of each
  coordinate, summed over every coordinate of every leaf, over the number of
  samples): a scalar, so the whole of theta gets one weight.
  """
  count = jnp.sum(finite)

  def leaf(x):
    mask = finite.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    mean = jnp.sum(mask * x, axis=0) / jnp.maximum(count, 1)
    return jnp.sum(mask * jnp.square(x - mean))

  total = sum(leaf(x) for x in jax.tree.leaves(samples))
  return total / jnp.maximum(count - 1, 1) / jnp.maximum(count, 1)


def inverse_variance_weight(es_variance: jax.Array, reparam_variance: jax.Array) -> jax.Array:
  """The reparameterization gradient's weight ``v_es / (v_es + v_rp)`` (1 - it is the ES estimate's).

  It minimises the variance of ``w g_rp + (1 - w) g_es`` for independent
  estimates of variances ``v_rp`` and ``v_es``. Both variances zero: 1/2;
  both infinite: 0 (the ES estimate, whose loss differences ``clip`` can bound).
  """
  total = es_variance + reparam_variance
  weight = jnp.where(total > 0, es_variance / jnp.where(total > 0, total, 1.0), 0.5)
  return jnp.where(jnp.isnan(weight), 0.0, weight)


@dataclasses.dataclass(frozen=True)
class HybridES(common.TruncatedEstimator):
  """Truncated ES and reparameterization gradients of the same perturbed runs, weighted by inverse variance.

  Metz, Maheswaranathan, Nixon, Freeman, Sohl-Dickstein 2019, "Understanding
  and correcting pathologies in the training of learned optimizers": with
  ``L(theta'; s)`` a run's mean meta-loss over the next ``K`` steps from its
  state ``s`` under ``theta'``, both

  - the antithetic ES estimate ``g_es = mean_i (L(theta + eps_i) - L(theta - eps_i)) / (2 std^2) eps_i``
    (exactly :class:`metatrain.TruncatedES`'s, same runs and noise for the same key), and
  - the reparameterization gradient ``g_rp = mean_i (grad L(theta + eps_i) + grad L(theta - eps_i)) / 2``
    (``jax.grad`` through the unrolled truncation of each member)

  are unbiased for ``grad_theta E_eps[L(theta + eps; s)]``, the gradient of the
  Gaussian-smoothed truncation loss. ES is robust where the loss surface is
  rough or chaotic (its variance stays bounded), the reparameterization
  gradient has low variance where it is smooth. The estimate is
  ``w g_rp + (1 - w) g_es`` with ``w = v_es / (v_es + v_rp)``, ``v`` each
  estimate's total variance (summed over theta) estimated from its per-pair
  values. The weight depends on the same samples, so the mean is unbiased only
  up to that correlation (small with many pairs). Runs continue from the
  positive member, as in truncated ES (short-horizon bias).

  Costs as many forward inner steps as truncated ES plus the backward pass
  (roughly 2-3 times the forward cost per step).

  Args:
    num_pairs: antithetic pairs (2 x num_pairs inner runs); at least 2, to estimate the variances.
    truncation: inner steps per estimate (K); the horizon is the problem's, a multiple of K.
    std: perturbation standard deviation.
    clip: optional bound on each pair's loss difference (in the ES estimate only).
    random_offsets: start pairs at random multiples of K (spreads resets over the horizon).
    per_part_noise: as :class:`metatrain.estimators.common.TruncatedEstimator`'s (both estimates are then of
      the loss smoothed with that noise).
  """

  name: ClassVar[str] = "hybrid"

  def check(self, horizon: int) -> None:
    """Raises a ValueError unless ``horizon`` is a multiple of the truncation and there are two pairs or more."""
    super().check(horizon)
    if self.num_pairs < 2:
      raise ValueError(f"HybridES needs num_pairs >= 2 to estimate its variances, got {self.num_pairs}.")

  def init(self, problem: Any, theta: Theta, key: jax.Array) -> HybridESState:
    """One fresh run per pair."""
    return HybridESState(*self._start(problem, theta, key))

  def step(
    self, problem: Any, state: HybridESState, theta: Theta, key: jax.Array
  ) -> tuple[HybridESState, Theta, Metrics]:
    """One truncation: ``(state, theta, key) -> (state, gradient estimate, metrics)``.

    Metrics beside ``meta_loss``, ``nan_pairs`` and ``resets``: ``weight`` (the
    reparameterization gradient's, ``w``), ``es_variance`` and ``reparam_variance``.
    """
    noise_key, data_key, reset_key = jax.random.split(key, 3)  # as TruncatedES: the same noise and data
    scales = common.noise_scales(problem, theta, self.per_part_noise)
    eps = common.sample_noise(noise_key, theta, self.num_pairs, self.std, scales)
    thetas = jax.tree.map(lambda t, e: jnp.stack([t + e, t - e]), theta, eps)  # (sign, pair, ...)
    keys = jax.random.split(data_key, self.truncation * self.num_pairs).reshape(self.truncation, self.num_pairs).T
    pairs = jax.vmap(common.truncation_value_and_grad, in_axes=(None, 0, 0, 0))
    signs = jax.vmap(pairs, in_axes=(None, 0, None, None))  # both members: same start, same data
    (losses, runs), grads = signs(problem, thetas, state.runs, keys)
    grads_finite = common.finite_rows(jax.tree.map(lambda g: jnp.moveaxis(g, 0, 1), grads))
    # A pair with a non-finite gradient is dropped from both estimates (`estimate` zeroes a NaN difference).
    loss_pos, loss_neg = jnp.where(grads_finite, losses[0], jnp.nan), losses[1]
    directions = common.whiten(eps, scales)
    es_grad, metrics = common.estimate(loss_pos, loss_neg, directions, std=self.std, clip=self.clip)

    # Both estimates pair by pair, for their variances.
    finite = jnp.isfinite(loss_pos - loss_neg)
    difference = jnp.where(finite, loss_pos - loss_neg, 0.0)
    if self.clip is not None:
      difference = jnp.clip(difference, -self.clip, self.clip)
    scale = difference / (2.0 * self.std**2)
    es_pairs = jax.tree.map(lambda e: e * scale.reshape((-1,) + (1,) * (e.ndim - 1)), directions)
    reparam_pairs = common.where(
      finite, jax.tree.map(lambda g: 0.5 * (g[0] + g[1]), grads), jax.tree.map(jnp.zeros_like, eps)
    )
    reparam_grad = jax.tree.map(lambda g: jnp.sum(g, axis=0) / self.num_pairs, reparam_pairs)
    es_variance = variance_of_mean(es_pairs, finite)
    reparam_variance = variance_of_mean(reparam_pairs, finite)
    weight = inverse_variance_weight(es_variance, reparam_variance)
    grad = jax.tree.map(lambda rp, es: weight * rp + (1.0 - weight) * es, reparam_grad, es_grad)

    done, fresh, steps = common.end_truncation(problem, theta, reset_key, state.step, self.truncation)
    positive = jax.tree.map(lambda x: x[0], runs)
    metrics.update(resets=jnp.sum(done), weight=weight, es_variance=es_variance, reparam_variance=reparam_variance)
    return HybridESState(common.where(done, fresh, positive), steps), grad, metrics
