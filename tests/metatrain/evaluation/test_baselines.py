"""Hand-designed baselines: the optimizers against their formulas, and the learning-rate grid search."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from metatrain.evaluation import baselines


def test_sgdm_is_heavy_ball_momentum():
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(4, 3)).astype(np.float32)
  optimizer = baselines.sgdm(0.1, momentum=0.8)
  params = {"w": jnp.zeros(3)}
  state = optimizer.init(params)
  w, v = np.zeros(3), np.zeros(3)
  for g in grads:
    updates, state = optimizer.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    v = 0.8 * v + g
    w = w - 0.1 * v
    np.testing.assert_allclose(params["w"], w, rtol=1e-6, atol=1e-7)


def test_adam_takes_bias_corrected_steps():
  """Adam's first step is ``-lr * g / (|g| + eps)``: the learning rate times the sign, whatever the scale."""
  g = jnp.asarray([3e-4, -2.0, 50.0])
  updates, _ = baselines.adam(0.01).update({"w": g}, baselines.adam(0.01).init({"w": g}))
  np.testing.assert_allclose(updates["w"], -0.01 * np.sign(g), rtol=1e-4)


@pytest.fixture(scope="module")
def task():
  return tasks.get("mlp_fashion8")


RATES = (1e20, 1e-5, 0.1)  # diverges (NaN), barely moves, trains
SEEDS = (0, 1)
STEPS = 30


@pytest.fixture(scope="module")
def search(task):
  return baselines.grid_search(task, baselines.sgdm, RATES, steps=STEPS, seeds=SEEDS)


def test_grid_search_picks_the_reasonable_rate_and_ranks_the_diverged_one_last(search):
  best, table = search
  assert best == 0.1
  assert [lr for lr, _ in table] == [0.1, 1e-5, 1e20]
  losses = dict(table)
  assert losses[0.1] < 1.3  # measured 1.02; the initial loss is about 2.3
  assert losses[1e-5] > losses[0.1] + 1.0
  assert losses[1e20] == math.inf  # its runs end in NaN, counted as +inf


def test_grid_search_matches_runs_written_out(task, search):
  """Each entry is the mean over seeds of a plain step-by-step training run (the documented convention)."""
  _, table = search
  optimizer = baselines.sgdm(0.1)

  @jax.jit
  def train_step(task, params, state, batch_key):
    grads = jax.grad(task.loss)(params, task.sample_batch(batch_key, "train"))
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  finals = []
  for seed in SEEDS:
    init_key, data_key = jax.random.split(jax.random.key(seed))
    params = task.init(init_key)
    state = optimizer.init(params)
    for batch_key in jax.random.split(data_key, STEPS):
      params, state = train_step(task, params, state, batch_key)
    finals.append(float(task.eval_loss(params, "valid")))
  assert abs(finals[0] - finals[1]) > 1e-3  # the seeds differ
  np.testing.assert_allclose(dict(table)[0.1], np.mean(finals), rtol=1e-4)


def test_grid_search_refuses_when_every_run_diverges(task):
  with pytest.raises(FloatingPointError, match="every run diverged"):
    baselines.grid_search(task, baselines.sgdm, [1e20], steps=5)
  with pytest.raises(ValueError, match="at least one learning rate"):
    baselines.grid_search(task, baselines.sgdm, [], steps=5)
