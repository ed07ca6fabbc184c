"""The "nominal" base term: at initialisation a learned optimizer is tuned Adam-cosine (AdamW-cosine) exactly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from metatrain import learned_optimizers as lopt
from metatrain import schedules
from metatrain.evaluation import baselines

STEPS = 200
TOTAL = 400  # the schedule's horizon: the 200 steps cover the warm-up and half the decay
PEAK = 0.02


@pytest.fixture(scope="module")
def task():
  return tasks.get("mlp_fashion8")


@functools.partial(jax.jit, static_argnames=("optimizer", "steps"))
def _trajectory(optimizer, task, key, *, steps):
  """Params after every step of a plain optax loop (one leaf stacked over steps), and the batch losses."""
  init_key, data_key = jax.random.split(key)
  params = task.init(init_key)

  def step(carry, batch_key):
    params, state = carry
    loss, grads = jax.value_and_grad(task.loss)(params, task.sample_batch(batch_key, "train"))
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), (params, loss)

  _, (params, losses) = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(data_key, steps))
  return params, losses


def _close(a, b):
  """Equal to float rounding over the whole trajectory: the params of every step, leaf by leaf.

  Float32 rounding drifts over 200 Adam steps (3e-5 seen on params of order 0.1); a step of another rate or
  schedule moves them by 1e-3 or more.
  """
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(("kind", "weight_decay"), [("unf", 0.0), ("deep_sets", 1e-2), ("sgdm", 1e-2)])
def test_at_initialisation_it_is_adam_cosine(kind, weight_decay, task, key):
  cls = lopt.LEARNED_OPTIMIZERS[kind]
  options = {**lopt.PRESETS["nominal"], "initial_alpha": PEAK, "initial_weight_decay": weight_decay}
  learned = cls(task.space, **{k: v for k, v in options.items() if k in lopt.option_names(cls)})
  theta = learned.init_meta(jax.random.key(1))
  if weight_decay:
    reference = optax.adamw(schedules.warmup_cosine(PEAK, TOTAL), weight_decay=weight_decay)
  else:
    reference = optax.adam(schedules.warmup_cosine(PEAK, TOTAL))
  expected, expected_losses = _trajectory(reference, task, key, steps=STEPS)
  got, losses = _trajectory(learned.optimizer(theta, total_steps=TOTAL), task, key, steps=STEPS)
  _close(got, expected)
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)
  # The same as metatrain's own baseline, and far from plain constant-rate Adam (the schedule matters).
  if not weight_decay:
    _close(_trajectory(baselines.adam_cosine(PEAK, steps=TOTAL), task, key, steps=STEPS)[0], expected)
  constant, _ = _trajectory(optax.adam(PEAK), task, key, steps=STEPS)
  assert not np.allclose(jax.tree.leaves(constant)[1][-1], jax.tree.leaves(got)[1][-1], atol=1e-3)


def test_with_beta_zero_f_does_not_matter_and_with_beta_it_does(task, key):
  learned = lopt.UNFLOpt(task.space, **{**lopt.PRESETS["nominal"], "initial_alpha": PEAK})
  theta = learned.init_meta(jax.random.key(1))
  # A head that is not zero: f's output is then far from zero.
  head = jax.tree.map(lambda x: x + 0.3, theta["f"]["head"])
  expected, _ = _trajectory(optax.adam(schedules.warmup_cosine(PEAK, TOTAL)), task, key, steps=STEPS)
  silenced = {**theta, "log_beta": jnp.asarray(-jnp.inf), "f": {**theta["f"], "head": head}}
  _close(_trajectory(learned.optimizer(silenced, total_steps=TOTAL), task, key, steps=STEPS)[0], expected)
  active = {**theta, "f": {**theta["f"], "head": head}}
  moved, _ = _trajectory(learned.optimizer(active, total_steps=TOTAL), task, key, steps=STEPS)
  assert not np.allclose(jax.tree.leaves(moved)[1][-1], jax.tree.leaves(expected)[1][-1], atol=1e-4)


def test_schedule_correction_multiplies_the_rate(task, key):
  """With coefficients c the update is the nominal's times exp(sum_k c_k cos(k pi t / T)), step by step."""
  learned = lopt.LearnedSGDM(task.space, base="nominal", initial_alpha=PEAK)
  theta = learned.init_meta(jax.random.key(0))
  coefficients = jnp.array([0.3, -0.2, 0.1, 0.05])
  corrected = {**theta, "schedule": coefficients}
  params = task.init(key)
  grads = jax.grad(task.loss)(params, task.sample_batch(key, "train"))
  plain, bent = learned.optimizer(theta, total_steps=TOTAL), learned.optimizer(corrected, total_steps=TOTAL)
  state_plain, state_bent = plain.init(params), bent.init(params)
  for t in range(3):
    u_plain, state_plain = plain.update(grads, state_plain, params)
    u_bent, state_bent = bent.update(grads, state_bent, params)
    factor = np.exp(sum(c * np.cos((k + 1) * np.pi * t / TOTAL) for k, c in enumerate(np.asarray(coefficients))))
    if t == 0:  # the warm-up starts at 0: no update at all
      assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(u_bent))
      continue
    for a, b in zip(jax.tree.leaves(u_bent), jax.tree.leaves(u_plain)):
      np.testing.assert_allclose(np.asarray(a), factor * np.asarray(b), rtol=1e-5, atol=1e-9)


def test_total_steps_is_required_and_named(task):
  learned = lopt.UNFLOpt(task.space, **{**lopt.PRESETS["nominal"], "initial_alpha": PEAK, "horizon": 2000})
  theta = learned.init_meta(jax.random.key(0))
  with pytest.raises(ValueError, match=r"total_steps=\.\.\.\).*meta-trained at total_steps=2000"):
    learned.optimizer(theta)
  # The other bases need no horizon.
  lopt.UNFLOpt(task.space).optimizer(lopt.UNFLOpt(task.space).init_meta(jax.random.key(0)))


def test_horizon_and_weight_decay_travel_through_json(task):
  learned = lopt.DeepSetsLOpt(task.space, **{**lopt.PRESETS["nominal_adamw"], "initial_alpha": PEAK, "horizon": 2000})
  back = lopt.from_json(learned.to_json())
  assert back == learned and back.horizon == 2000 and back.initial_weight_decay == 1e-4
  assert set(learned.init_meta(jax.random.key(0))) == {
    "log_alpha",
    "log_beta",
    "logit_gamma0",
    "schedule",
    "log_weight_decay",
    "f",
  }


def test_weight_decay_needs_the_nominal_base(task):
  with pytest.raises(ValueError, match="base='nominal'"):
    lopt.UNFLOpt(task.space, initial_weight_decay=1e-4)
