"""Noise-reuse ES, truncated backpropagation and hybrid ES against exact gradients of the quadratic inner problem.

The contract suite of ``test_estimators.py`` already runs over them (registry); here each is checked
against an independent oracle: its mean over many estimates against the gradient it is documented to be
unbiased for, and a negative control where the test could otherwise pass by accident.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatrain.estimators import HybridES, NoiseReuseES, TruncatedES, TruncatedGradient, common
from metatrain.estimators.truncated_es import TruncatedESState
from tests.metatrain.estimators.test_estimators import (
  STD,
  THETA,
  K,
  Quadratic,
  _exact_gradient,
  _full_loss,
  _horizon_estimates,
  _z_scores,
)

#: Frequency of the rough term: Gaussian smoothing with STD removes it (exp(-(2000 STD)^2 / 2) ~ 0).
FREQUENCY = 2000.0


@functools.partial(jax.tree_util.register_dataclass, data_fields=["amplitude"], meta_fields=["horizon", "noise"])
@dataclasses.dataclass(frozen=True)
class Rough(Quadratic):
  """The quadratic plus ``amplitude * sin(FREQUENCY * log_lr)`` on every step's loss.

  A rough loss surface: its gradient swings by ``amplitude * FREQUENCY`` within one perturbation, so the
  reparameterization gradient is noisy, while the smoothed loss (and its gradient) is the quadratic's.
  ``amplitude`` is data, so every amplitude runs the same compiled program.
  """

  amplitude: float = 1e-2

  def step(self, theta, state, key):
    state, loss = super().step(theta, state, key)
    return state, loss + self.amplitude * jnp.sin(FREQUENCY * theta["log_lr"])


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["horizon", "noise"])
@dataclasses.dataclass(frozen=True)
class HalfNaN(Quadratic):
  """The quadratic whose runs start at NaN for about half of the init keys (a diverged inner run)."""

  def init(self, theta, key):
    state = super().init(theta, key)
    return {**state, "w": jnp.where(jax.random.bernoulli(key), jnp.nan, state["w"])}


def _truncation_gradients(problem, truncation, eps):
  """Plain Python loops, no jit: per truncation j, the exact gradient of its mean loss at ``THETA + eps[j]``.

  The run continues under ``THETA + eps[j]`` through truncation j; each truncation's gradient holds the
  state it starts from fixed (what truncated backpropagation differentiates).

  Returns:
    A list of gradients, one per truncation.
  """
  state, grads = problem.init(None, None), []
  for j in range(problem.horizon // truncation):
    theta = jax.tree.map(lambda t, e, j=j: t + e[j], THETA, eps)

    def loss(theta, state=state):
      losses = []
      for _ in range(truncation):
        state, step_loss = problem.step(theta, state, None)
        losses.append(step_loss)
      return jnp.mean(jnp.stack(losses)), state

    grad, state = jax.grad(loss, has_aux=True)(theta)
    grads.append(grad)
  return grads


def _truncated_smoothed_gradient(problem, truncation, std, samples=4000):
  """E over eps_j ~ N(0, std^2), independent per truncation, of the mean of :func:`_truncation_gradients`.

  The gradient of the Gaussian-smoothed truncation losses from the states the runs reach: what truncated
  ES and hybrid ES (runs continuing from the positive member) are unbiased for.
  """
  per_truncation = jax.tree.map(lambda t: jnp.zeros((problem.horizon // truncation,)), THETA)

  def one(key):
    eps = jax.tree.map(lambda e: e[0], common.sample_noise(key, per_truncation, 1, std))
    grads = _truncation_gradients(problem, truncation, eps)
    return jax.tree.map(lambda *g: jnp.mean(jnp.stack(g)), *grads)

  grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), samples))
  return jax.tree.map(lambda g: np.asarray(g).mean(0), grads)


@functools.cache
def _shared_noise_gradient():
  """The gradient NoiseReuseES is unbiased for (computed once per session)."""
  return _exact_gradient(Quadratic(), K, STD, shared=True)


@functools.cache
def _smoothed_truncated_gradient():
  """The gradient HybridES is unbiased for on the quadratic (computed once per session)."""
  return _truncated_smoothed_gradient(Quadratic(), K, STD)


def _assert_matches(samples, exact):
  """The samples' mean is within 4 standard errors of ``exact``, and that interval is tight (the test has power)."""
  z = _z_scores(samples, exact)
  assert all(abs(v) < 4.0 for v in z.values()), (z, exact, {k: v.mean() for k, v in samples.items()})
  se = np.array([samples[k].std(ddof=1) / np.sqrt(len(samples[k])) for k in exact])
  assert np.linalg.norm(se) < 0.05 * np.linalg.norm([exact[k] for k in exact]), (se, exact)


# Noise-reuse ES.


def test_noise_reuse_es_matches_the_gradient_of_the_loss_smoothed_with_one_noise_per_run(key):
  problem = Quadratic()
  exact = _shared_noise_gradient()
  estimator = NoiseReuseES(num_pairs=32, truncation=K, std=STD, random_offsets=False)
  _assert_matches(_horizon_estimates(estimator, problem, key, repeats=200), exact)


def test_without_noise_reuse_the_same_estimate_is_biased(key):
  """Negative control: a fresh noise every truncation (truncated ES) misses the shared-noise gradient by far."""
  problem = Quadratic()
  exact = _shared_noise_gradient()
  samples = _horizon_estimates(
    TruncatedES(num_pairs=32, truncation=K, std=STD, random_offsets=False), problem, key, 200
  )
  z = _z_scores(samples, exact)
  assert max(abs(v) for v in z.values()) > 10.0, (z, exact)


def test_noise_reuse_es_keeps_its_noise_until_the_run_resets(key):
  problem = Quadratic(horizon=8)
  estimator = NoiseReuseES(num_pairs=6, truncation=4, std=0.1)
  state = estimator.init(problem, THETA, key)
  assert 0 < np.sum(np.asarray(state.step) == 4) < 6  # random offsets: some pairs reset at each truncation
  step = jax.jit(lambda s, k: estimator.step(problem, s, THETA, k))
  for i in range(4):
    before, noise = np.asarray(state.step), np.asarray(state.noise["log_lr"])
    state, grad, metrics = step(state, jax.random.fold_in(key, i))
    done = before + 4 >= 8
    assert int(metrics["resets"]) == done.sum()
    after = np.asarray(state.noise["log_lr"])
    np.testing.assert_array_equal(after[~done], noise[~done])  # reused
    assert np.all(after[done] != noise[done])  # redrawn at the reset
    np.testing.assert_array_equal(np.asarray(state.pos["w"])[done], np.ones((done.sum(), 2)))  # fresh runs
    np.testing.assert_array_equal(np.asarray(state.neg["w"])[done], np.ones((done.sum(), 2)))
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(grad))


# Truncated backpropagation.


def test_truncated_gradient_is_the_exact_gradient_of_each_truncation(key):
  problem = Quadratic()
  estimator = TruncatedGradient(num_pairs=2, truncation=K, random_offsets=False)
  zero = jax.tree.map(lambda t: jnp.zeros((problem.horizon // K,)), THETA)
  expected = _truncation_gradients(problem, K, zero)
  state = estimator.init(problem, THETA, key)
  step = jax.jit(lambda s, k: estimator.step(problem, s, THETA, k))
  for j, exact in enumerate(expected):
    state, grad, metrics = step(state, jax.random.fold_in(key, j))
    for name in THETA:
      np.testing.assert_allclose(grad[name], exact[name], rtol=1e-5, atol=1e-8)
    assert int(metrics["resets"]) == (4 if j == len(expected) - 1 else 0)
  # Negative control, the documented short-horizon bias: the full-horizon gradient is another vector.
  mean = np.array([np.mean([g[name] for g in expected]) for name in THETA])
  every_truncation = functools.partial(jax.tree.map, lambda t: jnp.broadcast_to(t, (problem.horizon // K,)))
  full = jax.grad(lambda theta: _full_loss(problem, every_truncation(theta), K))(THETA)
  full = np.array([full[name] for name in THETA])
  assert np.linalg.norm(mean - full) > 0.2 * np.linalg.norm(full), (mean, full)


def test_truncated_gradient_drops_non_finite_runs_and_clips_each_run(key):
  problem = HalfNaN()
  exact = _truncation_gradients(Quadratic(), K, jax.tree.map(lambda t: jnp.zeros((5,)), THETA))[0]
  exact = np.array([exact[name] for name in THETA])
  clip = 1e-3
  assert np.linalg.norm(exact) > 10 * clip
  estimator = TruncatedGradient(num_pairs=4, truncation=K, clip=clip, random_offsets=False)
  state = estimator.init(problem, THETA, key)
  nan_runs = int(np.isnan(np.asarray(state.runs["w"][:, 0])).sum())
  assert 0 < nan_runs < 8
  _, grad, metrics = jax.jit(estimator.step)(problem, state, THETA, key)
  assert int(metrics["nan_pairs"]) == nan_runs and np.isfinite(metrics["meta_loss"])
  # The finite runs are identical: the mean is their clipped gradient, the non-finite ones count as zero.
  clipped = exact * clip / np.linalg.norm(exact)
  np.testing.assert_allclose([grad[name] for name in THETA], clipped * (8 - nan_runs) / 8, rtol=1e-5)


@pytest.mark.parametrize("cls", [NoiseReuseES, HybridES])
def test_non_finite_pairs_contribute_zero_and_are_counted(cls, key):
  problem = HalfNaN()
  estimator = cls(num_pairs=8, truncation=K, std=STD)
  state = estimator.init(problem, THETA, key)
  runs = state.pos if cls is NoiseReuseES else state.runs
  nan_pairs = int(np.isnan(np.asarray(runs["w"][:, 0])).sum())
  assert 0 < nan_pairs < 8
  _, grad, metrics = jax.jit(lambda s: estimator.step(problem, s, THETA, key))(state)
  assert int(metrics["nan_pairs"]) == nan_pairs and np.isfinite(metrics["meta_loss"])
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))


# Hybrid ES.


@functools.cache
def _hybrid_horizon_estimates():
  """200 means of HybridES over a horizon and their mean weight, on a rough problem (jitted once, amplitude as data)."""
  estimator = HybridES(num_pairs=32, truncation=K, std=STD, random_offsets=False)

  def run(problem, key):
    state = estimator.init(problem, THETA, key)

    def body(state, k):
      state, grad, metrics = estimator.step(problem, state, THETA, k)
      return state, (grad, metrics["weight"])

    _, (grads, weight) = jax.lax.scan(body, state, jax.random.split(key, problem.horizon // K))
    return jax.tree.map(lambda g: g.mean(0), grads), weight.mean()

  return jax.jit(jax.vmap(run, in_axes=(None, 0)))


@pytest.mark.parametrize("amplitude, weights", [(0.0, (0.99, 1.0)), (1e-2, (0.0, 0.1))], ids=["smooth", "rough"])
def test_hybrid_es_matches_the_smoothed_truncated_gradient(amplitude, weights, key):
  """Smooth: the reparameterization gradient gets the weight; rough: ES does. Both means are unbiased.

  The rough term vanishes from the smoothed loss, so the plain quadratic's oracle is exact for both.
  """
  exact = _smoothed_truncated_gradient()
  samples, weight = _hybrid_horizon_estimates()(Rough(amplitude=amplitude), jax.random.split(key, 200))
  samples = jax.tree.map(np.asarray, samples)
  assert weights[0] <= float(np.mean(weight)) <= weights[1], np.mean(weight)
  _assert_matches(samples, exact)
  if amplitude == 0.0:
    # Negative control, the short-horizon bias: the full-horizon gradient is out of reach.
    z = _z_scores(samples, _shared_noise_gradient())
    assert max(abs(v) for v in z.values()) > 10.0, z


def test_hybrid_es_is_the_inverse_variance_mix_of_truncated_es_and_reparameterization(key):
  """One estimate, rebuilt from independent parts: TruncatedES's estimate and hand-made gradients and variances."""
  problem, pairs = Rough(amplitude=1e-3), 16
  estimator = HybridES(num_pairs=pairs, truncation=K, std=STD)
  state = estimator.init(problem, THETA, key)
  _, grad, metrics = jax.jit(estimator.step)(problem, state, THETA, key)
  es_step = jax.jit(TruncatedES(num_pairs=pairs, truncation=K, std=STD).step)
  _, es_grad, _ = es_step(problem, TruncatedESState(*state), THETA, key)
  eps = common.sample_noise(jax.random.split(key, 3)[0], THETA, pairs, STD)  # the noise TruncatedES drew
  members = jax.jit(jax.vmap(functools.partial(_first_truncation_value_and_grad, problem)))
  (loss_pos, pos), (loss_neg, neg) = (members(common.add(THETA, eps, sign)) for sign in (1.0, -1.0))
  rp = np.stack([(pos[name] + neg[name]) / 2 for name in THETA], axis=1)
  es = np.stack([eps[name] * (loss_pos - loss_neg) / (2 * STD**2) for name in THETA], axis=1)
  np.testing.assert_allclose(es.mean(0), [es_grad[name] for name in THETA], rtol=1e-4)
  v_rp, v_es = (x.var(0, ddof=1).sum() / pairs for x in (rp, es))
  weight = v_es / (v_es + v_rp)
  assert 0.1 < weight < 0.9, weight  # a real mix: both parts matter
  np.testing.assert_allclose(
    [metrics["weight"], metrics["es_variance"], metrics["reparam_variance"]], [weight, v_es, v_rp], rtol=1e-3
  )
  expected = weight * rp.mean(0) + (1 - weight) * es.mean(0)
  np.testing.assert_allclose([grad[name] for name in THETA], expected, rtol=1e-3)


def _first_truncation_value_and_grad(problem, theta):
  """The first truncation's mean loss from a fresh run at ``theta`` and its gradient (a plain loop)."""

  def loss(theta):
    state, losses = problem.init(None, None), []
    for _ in range(K):
      state, step_loss = problem.step(theta, state, None)
      losses.append(step_loss)
    return jnp.mean(jnp.stack(losses))

  return jax.value_and_grad(loss)(theta)


def test_hybrid_es_needs_two_pairs():
  with pytest.raises(ValueError, match="num_pairs >= 2"):
    HybridES(num_pairs=1, truncation=4).check(8)
