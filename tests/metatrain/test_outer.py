"""The outer loop: the meta-optimizer against its formulas, and meta-training in one process lowers the meta-loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from metatrain import PES, LearnedOptimizerProblem, UNFLOpt, learned_curves, mean_normalized_loss
from metatrain.learned_optimizers import LearnedSGDM
from metatrain.outer import outer_loop, outer_optimizer, outer_schedule


def test_short_pes_meta_training_lowers_the_meta_loss():
  task = tasks.get("mlp_fashion8")
  lopt = UNFLOpt(task.space)
  theta0 = lopt.init_meta(jax.random.key(0))
  estimator = PES(num_pairs=4, truncation=10, std=0.01)
  theta, history = outer_loop(task, lopt, estimator, outer_steps=40, horizon=100, learning_rate=3e-2)
  assert len(history) == 40 and all(np.isfinite(h["meta_loss"]) and h["nan_pairs"] == 0 for h in history)
  # 4 pairs x 2 signs x 10 steps per outer step; a run reaches the horizon every 10 truncations.
  assert all(h["inner_steps"] == 4 * 2 * 10 for h in history)
  assert sum(h["resets"] for h in history) == 4 * 40 // 10
  # Judge on held-out seeds, whole 100-step runs: the meta-objective itself, not the noisy estimates.
  keys = jax.random.split(jax.random.key(123), 8)
  before = float(mean_normalized_loss(task, learned_curves(task, lopt, theta0, keys, 100)))
  after = float(mean_normalized_loss(task, learned_curves(task, lopt, theta, keys, 100)))
  assert after < before - 0.15, (before, after)  # measured 1.86 -> 1.56


def test_problem_rejects_a_bad_meta_loss_split():
  with pytest.raises(ValueError, match="meta_loss_split"):
    LearnedOptimizerProblem(tasks.get("mlp_fashion8"), None, 100, "test")


def _schedule(step, *, peak, total, warmup, final_fraction=0.1):
  """The documented schedule, written out."""
  if step < warmup:
    return peak * step / warmup
  final = final_fraction * peak
  progress = min(step - warmup, total - warmup) / (total - warmup)
  return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))


def test_outer_schedule_warms_up_then_decays_by_a_cosine():
  schedule = outer_schedule(2.0, total_steps=12, warmup_steps=4)
  for step in range(16):
    np.testing.assert_allclose(float(schedule(step)), _schedule(step, peak=2.0, total=12, warmup=4), rtol=1e-6)
  assert float(schedule(4)) == pytest.approx(2.0) and float(schedule(12)) == pytest.approx(0.2)


def test_outer_optimizer_steps_by_the_schedule():
  """With a constant gradient, Adam's bias-corrected step is exactly the learning rate: the updates trace it."""
  outer = outer_optimizer(0.5, total_steps=10, warmup_steps=3)
  theta = {"a": jnp.zeros(2)}
  state = outer.init(theta)
  for step in range(10):
    updates, state = outer.update({"a": jnp.array([0.3, -0.4])}, state, theta)
    expected = _schedule(step, peak=0.5, total=10, warmup=3)
    np.testing.assert_allclose(np.asarray(updates["a"]), [-expected, expected], rtol=1e-4, atol=1e-7)


def test_outer_optimizer_clips_the_gradient_norm_before_adam():
  """Adam is invariant to a constant gradient scale, so clipping shows only when norms change from step to step."""
  gradients = [np.array([30.0, 40.0]), np.array([0.3, -0.4]), np.array([6.0, 8.0])]  # norms 50, 0.5, 10

  def adam_on(grads, clip):
    m, v, out = np.zeros(2), np.zeros(2), []
    for t, g in enumerate(grads, start=1):
      norm = np.linalg.norm(g)
      g = g * min(1.0, clip / norm) if clip else g
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
      out.append(-1e-2 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8))
    return out

  outer = outer_optimizer(1e-2, total_steps=3, final_fraction=1.0, max_grad_norm=1.0)  # a constant rate
  state = outer.init({"a": jnp.zeros(2)})
  got = []
  for g in gradients:
    updates, state = outer.update({"a": jnp.asarray(g, jnp.float32)}, state)
    got.append(np.asarray(updates["a"]))
  np.testing.assert_allclose(got, adam_on(gradients, clip=1.0), rtol=1e-4)
  # The check has power: without the clip the second and third steps differ.
  assert not np.allclose(got[1:], adam_on(gradients, clip=None)[1:], rtol=1e-2)


def test_final_meta_objective_counts_the_last_tenth_of_the_run_only():
  """``meta_objective="final"``: 0 before step 0.9 T, then 10x the normalised loss (the mean: the last tenth's)."""
  task = tasks.get("mlp_fashion8")
  lopt = LearnedSGDM(task.space)
  theta = lopt.init_meta(jax.random.key(0))
  horizon, keys = 20, jax.random.split(jax.random.key(1), 20)
  runs = {}
  for objective in ("mean", "final"):
    problem = LearnedOptimizerProblem(task, lopt, horizon, meta_objective=objective)
    state, losses = problem.init(theta, jax.random.key(2)), []
    step = jax.jit(problem.step)
    for key in keys:
      state, loss = step(theta, state, key)
      losses.append(float(loss))
    runs[objective] = np.asarray(losses)
  mean, final = runs["mean"], runs["final"]
  assert np.all(final[:18] == 0)
  np.testing.assert_allclose(final[18:], 10 * mean[18:], rtol=1e-6)
  np.testing.assert_allclose(final.mean(), mean[18:].mean(), rtol=1e-6)
  with pytest.raises(ValueError, match="meta_objective"):
    LearnedOptimizerProblem(task, lopt, horizon, meta_objective="best")
