"""Meta-training end to end in one process: the meta-loss falls."""

import jax
import numpy as np

import tasks
from metatrain.evaluate import learned_curves, mean_normalized_loss
from metatrain.lopt import UNFLOpt
from metatrain.pes import PES
from metatrain.problem import LearnedOptimizerProblem, outer_optimizer
from metatrain.train import train_local


def test_short_pes_meta_training_lowers_the_meta_loss():
  task = tasks.get("mlp_fashion8")
  lopt = UNFLOpt(task.space)
  theta0 = lopt.init_meta(jax.random.key(0))
  theta, history = train_local(
    task, lopt, PES(num_pairs=4, truncation=10, std=0.01), outer_steps=40, horizon=100, learning_rate=3e-2
  )
  assert len(history) == 40 and all(np.isfinite(h["meta_loss"]) and h["nan_pairs"] == 0 for h in history)
  assert all(h["inner_steps_per_second"] > 0 for h in history)
  # Judge on held-out seeds, whole 100-step runs: the meta-objective itself, not the noisy estimates.
  keys = jax.random.split(jax.random.key(123), 8)
  before = float(mean_normalized_loss(task, learned_curves(task, lopt, theta0, keys, 100)))
  after = float(mean_normalized_loss(task, learned_curves(task, lopt, theta, keys, 100)))
  assert after < before - 0.15, (before, after)  # measured 1.86 -> 1.56


def test_problem_rejects_a_bad_meta_loss_split():
  import pytest

  with pytest.raises(ValueError, match="meta_loss_split"):
    LearnedOptimizerProblem(tasks.get("mlp_fashion8"), None, 100, "test")


def test_outer_optimizer_clips_and_schedules():
  import jax.numpy as jnp

  outer = outer_optimizer(1.0, total_steps=10, warmup_steps=2)
  state = outer.init({"a": jnp.zeros(3)})
  updates, state = outer.update({"a": jnp.array([30.0, 40.0, 0.0])}, state)
  assert np.allclose(updates["a"], 0.0)  # warm-up starts at learning rate 0
  updates, _ = outer.update({"a": jnp.array([30.0, 40.0, 0.0])}, state)
  assert 0 < np.abs(np.asarray(updates["a"])).max() <= 0.5 + 1e-6  # half-way through warm-up, Adam steps <= lr
