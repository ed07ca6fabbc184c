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


# --- schedules against their closed form ----------------------------------------------------------------------


def _warmup_cosine(t, *, peak, steps, warmup):
  """The documented schedule, written out."""
  if t < warmup:
    return peak * t / warmup
  return peak * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (steps - warmup)))


def test_warmup_cosine_matches_its_closed_form():
  schedule = baselines.warmup_cosine(0.3, 200)  # a 5% warm-up: 10 steps
  for t in range(201):
    np.testing.assert_allclose(float(schedule(t)), _warmup_cosine(t, peak=0.3, steps=200, warmup=10), atol=1e-7)
  assert float(schedule(10)) == pytest.approx(0.3) and float(schedule(200)) == pytest.approx(0.0, abs=1e-9)
  reference = optax.warmup_cosine_decay_schedule(0.0, 0.3, 10, 200, end_value=0.0)  # optax's, for a concrete peak
  np.testing.assert_allclose(jax.vmap(schedule)(jnp.arange(230)), jax.vmap(reference)(jnp.arange(230)), atol=1e-7)
  # The peak may be traced (grid_search vmaps over it).
  peaks = jnp.asarray([0.1, 0.3])
  rates = jax.jit(jax.vmap(lambda peak: baselines.warmup_cosine(peak, 200)(50)))(peaks)
  np.testing.assert_allclose(rates, [_warmup_cosine(50, peak=p, steps=200, warmup=10) for p in (0.1, 0.3)], rtol=1e-6)


def test_adam_cosine_is_adams_direction_times_the_schedule():
  rng = np.random.default_rng(0)
  steps, peak = 40, 0.05
  adam_cosine = baselines.adam_cosine(peak, steps=steps)
  direction = optax.scale_by_adam()  # Adam's bias-corrected m_hat / (sqrt(v_hat) + eps), no learning rate
  params = {"w": jnp.zeros(5)}
  state, direction_state = adam_cosine.init(params), direction.init(params)
  for t in range(steps):
    grads = {"w": jnp.asarray(rng.normal(size=5), jnp.float32)}
    updates, state = adam_cosine.update(grads, state, params)
    d, direction_state = direction.update(grads, direction_state, params)
    expected = -_warmup_cosine(t, peak=peak, steps=steps, warmup=2) * d["w"]
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5, atol=1e-9)


def test_adamw_cosine_decays_the_weights_by_the_scheduled_rate():
  """With zero gradients Adam's direction is 0: the update is the decoupled decay ``-lr(t) * wd * W`` alone."""
  optimizer = baselines.adamw_cosine(0.1, steps=20, weight_decay=0.5)
  params = {"w": jnp.asarray([1.0, -2.0, 4.0])}
  state = optimizer.init(params)
  for t in range(20):
    updates, state = optimizer.update({"w": jnp.zeros(3)}, state, params)
    expected = -_warmup_cosine(t, peak=0.1, steps=20, warmup=1) * 0.5 * params["w"]
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5, atol=1e-9)
    params = optax.apply_updates(params, updates)


# --- the grid's edge ---------------------------------------------------------------------------------------------


def test_grid_search_extends_a_grid_whose_pick_is_on_its_edge(task):
  # 10 steps of SGDM: 1e-6 and 1e-5 barely move, so the pick is the upper edge; two values at a time are
  # added (1e-4, 1e-3; then 1e-2, 1e-1; ...) until the pick lies inside the grid.
  with pytest.warns(baselines.GridEdgeWarning, match="on the edge of the grid") as caught:
    best, table = baselines.grid_search(task, baselines.sgdm, (1e-6, 1e-5), steps=10, seeds=SEEDS)
  tried = sorted(lr for lr, _ in table)
  assert len(tried) == 2 + 2 * len(caught) and len(caught) >= 2
  np.testing.assert_allclose(tried[:4], [1e-6, 1e-5, 1e-4, 1e-3], rtol=1e-6)
  assert tried[0] < best < tried[-1]  # inside: a value on each side was tried and lost
  losses = dict(table)
  assert losses[best] == min(losses.values()) and losses[best] < losses[tried[1]] - 0.1
  # Not allowed to extend: the pick stays on the edge, and that is said.
  with pytest.warns(baselines.GridEdgeWarning, match="still on the edge"):
    edge, table = baselines.grid_search(task, baselines.sgdm, (1e-6, 1e-5), steps=10, seeds=SEEDS, max_extensions=0)
  assert edge == 1e-5 and len(table) == 2


def test_grid_search_says_nothing_when_the_pick_is_inside(task, recwarn):
  best, _ = baselines.grid_search(task, baselines.sgdm, (1e-3, 1e-1, 10.0), steps=10, seeds=SEEDS)
  assert best == 1e-1
  assert not [w for w in recwarn if issubclass(w.category, baselines.GridEdgeWarning)]
