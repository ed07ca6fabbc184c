"""Statistical tests of the ES estimators against exact gradients of a quadratic inner problem."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatrain.estimators import ESTIMATORS, PES, Estimator, FullES, TruncatedES, common
from metatrain.estimators import from_json as estimator_from_json

CURVATURE = jnp.array([1.0, 0.1])
THETA = {"log_lr": jnp.log(0.3), "logit_momentum": jnp.array(0.0)}


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["horizon", "noise"])
@dataclasses.dataclass(frozen=True)
class Quadratic:
  """Momentum SGD with meta-learned log learning rate and logit momentum on 0.5 w^T diag(c) w.

  With ``noise`` the inner gradients get Gaussian noise drawn from the step's key (minibatch noise), so
  that every estimator's estimate depends on its key; without, the problem ignores its keys.
  """

  horizon: int = 20
  noise: float = 0.0

  def init(self, theta, key):
    del theta, key
    return {"w": jnp.array([1.0, 1.0]), "v": jnp.zeros(2)}

  def step(self, theta, state, key):
    lr, momentum = jnp.exp(theta["log_lr"]), jax.nn.sigmoid(theta["logit_momentum"])
    grad = CURVATURE * state["w"]
    if self.noise:
      grad = grad + self.noise * jax.random.normal(key, (2,))
    v = momentum * state["v"] + grad
    w = state["w"] - lr * v
    return {"w": w, "v": v}, 0.5 * jnp.sum(CURVATURE * w**2)


def _full_loss(problem, thetas, truncation):
  """Mean loss of a whole run where truncation j uses thetas[j] (leading axis)."""
  state = problem.init(None, None)
  losses = []
  for j in range(problem.horizon // truncation):
    theta = jax.tree.map(lambda t, j=j: t[j], thetas)
    for _ in range(truncation):
      state, loss = problem.step(theta, state, None)
      losses.append(loss)
  return jnp.mean(jnp.stack(losses))


def _exact_gradient(problem, truncation, std, *, shared, samples=4000, scales=None):
  """E over the smoothing noise of the autodiff gradient (independent noise per truncation, or one shared).

  ``scales``: the noise of each part of theta is ``std * scale`` (``per_part_noise``).
  """
  m = problem.horizon // truncation

  def one(key):
    eps = common.sample_noise(key, THETA, 1 if shared else m, std, scales)
    eps = jax.tree.map(lambda e: jnp.broadcast_to(e, (m,)), eps)
    return jax.grad(lambda th: _full_loss(problem, common.add(th, eps), truncation))(THETA)

  grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(7), samples))
  return jax.tree.map(lambda g: np.asarray(g).mean(0), grads)


def _horizon_estimates(estimator, problem, key, repeats):
  """``repeats`` independent means of the estimator over one whole horizon of truncations."""
  steps = problem.horizon // getattr(estimator, "truncation", problem.horizon)

  def run(key):
    init_key, step_key = jax.random.split(key)
    state = estimator.init(problem, THETA, init_key)

    def body(state, k):
      state, grad, _ = estimator.step(problem, state, THETA, k)
      return state, grad

    _, grads = jax.lax.scan(body, state, jax.random.split(step_key, steps))
    return jax.tree.map(lambda g: g.mean(0), grads)

  samples = jax.jit(jax.vmap(run))(jax.random.split(key, repeats))
  return jax.tree.map(np.asarray, samples)


def _z_scores(samples, exact):
  return {k: (samples[k].mean() - exact[k]) / (samples[k].std(ddof=1) / np.sqrt(len(samples[k]))) for k in exact}


STD, K = 0.05, 4


@pytest.mark.parametrize(
  "estimator, shared",
  [
    (PES(num_pairs=32, truncation=K, std=STD, random_offsets=False), False),
    (FullES(num_pairs=32, std=STD), True),
  ],
  ids=["PES", "FullES"],
)
def test_unbiased_estimators_match_the_exact_gradient(estimator, shared, key):
  problem = Quadratic()
  exact = _exact_gradient(problem, K, STD, shared=shared)
  samples = _horizon_estimates(estimator, problem, key, repeats=200)
  z = _z_scores(samples, exact)
  assert all(abs(v) < 4.0 for v in z.values()), (z, exact, {k: v.mean() for k, v in samples.items()})
  # The test has power: the confidence interval is tight relative to the gradient itself.
  se = np.array([samples[k].std(ddof=1) / np.sqrt(len(samples[k])) for k in exact])
  assert np.linalg.norm(se) < 0.05 * np.linalg.norm([exact[k] for k in exact]), (se, exact)


def test_truncated_es_is_biased_where_pes_is_not(key):
  problem = Quadratic()
  exact = _exact_gradient(problem, K, STD, shared=False)
  samples = _horizon_estimates(
    TruncatedES(num_pairs=32, truncation=K, std=STD, random_offsets=False), problem, key, 200
  )
  z = _z_scores(samples, exact)
  assert max(abs(v) for v in z.values()) > 10.0, (z, exact, {k: v.mean() for k, v in samples.items()})


def test_nan_pairs_contribute_zero_and_are_counted():
  loss_pos = jnp.array([1.0, jnp.nan, 3.0, jnp.inf])
  loss_neg = jnp.array([0.5, 1.0, 2.0, 1.0])
  directions = {"a": jnp.array([1.0, 100.0, -1.0, 7.0])}
  grad, metrics = common.estimate(loss_pos, loss_neg, directions, std=0.5, clip=None)
  # Only pairs 0 and 2 count: (0.5 * 1 + 1.0 * -1) / (2 * 0.25 * 4).
  assert np.isclose(grad["a"], (0.5 - 1.0) / 2.0)
  assert int(metrics["nan_pairs"]) == 2
  assert np.isclose(metrics["meta_loss"], (0.75 + 2.5) / 2)
  clipped, _ = common.estimate(loss_pos, loss_neg, directions, std=0.5, clip=0.25)
  assert np.isclose(clipped["a"], (0.25 - 0.25) / 2.0)


def test_pes_resets_runs_and_accumulators_at_the_horizon(key):
  problem = Quadratic(horizon=8)
  estimator = PES(num_pairs=4, truncation=4, std=0.1)
  state = estimator.init(problem, THETA, key)
  assert set(np.asarray(state.step).tolist()) <= {0, 4}
  step = jax.jit(lambda s, k: estimator.step(problem, s, THETA, k))
  for i in range(4):
    before = np.asarray(state.step)
    state, grad, metrics = step(state, jax.random.fold_in(key, i))
    done = before + 4 >= 8
    assert int(metrics["resets"]) == done.sum()
    np.testing.assert_array_equal(np.asarray(state.step), np.where(done, 0, before + 4))
    acc = np.asarray(state.accumulated["log_lr"])
    assert np.all(acc[done] == 0) and np.all(acc[~done] != 0)
    w = np.asarray(state.pos["w"])
    np.testing.assert_array_equal(w[done], np.ones((done.sum(), 2)))  # fresh runs
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(grad))


def test_horizon_must_be_a_multiple_of_the_truncation(key):
  with pytest.raises(ValueError, match="multiple of the truncation"):
    PES(truncation=3).init(Quadratic(horizon=8), THETA, key)


def _small(cls):
  """The registered estimator with few pairs and short truncations (fields it does not have are left out)."""
  fields = {field.name for field in dataclasses.fields(cls)}
  small = {"num_pairs": 4, "truncation": 4, "std": 0.05}
  return cls(**{name: value for name, value in small.items() if name in fields})


def test_every_estimator_is_registered():
  """The contract below runs over the registry: an estimator class that is not in it would escape the tests."""

  def subclasses(cls):
    return {sub for direct in cls.__subclasses__() for sub in {direct, *subclasses(direct)}}

  concrete = {cls for cls in subclasses(Estimator) if "name" in vars(cls)}
  assert concrete == set(ESTIMATORS.values())
  assert all(ESTIMATORS[cls.name] is cls for cls in concrete)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimator_contract(name, key):
  """Every estimator: jittable step, a gradient shaped like theta, metrics as values, reproducible from its key."""
  estimator, problem = _small(ESTIMATORS[name]), Quadratic(noise=0.1)
  estimator.check(problem.horizon)
  state = estimator.init(problem, THETA, key)
  step = jax.jit(lambda problem, state, theta, k: estimator.step(problem, state, theta, k))
  new_state, grad, metrics = step(problem, state, THETA, key)
  assert jax.tree.structure(grad) == jax.tree.structure(THETA)
  assert all(
    np.shape(g) == np.shape(t) and np.isfinite(g).all() for g, t in zip(jax.tree.leaves(grad), jax.tree.leaves(THETA))
  )
  assert {"meta_loss", "nan_pairs"} <= set(metrics) and np.isfinite(metrics["meta_loss"])
  again = step(problem, state, THETA, key)[1]
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(again)))
  other = step(problem, state, THETA, jax.random.fold_in(key, 1))[1]
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(other)))
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  # Static under jit (hashable, equal by value) and written to checkpoints as JSON.
  assert hash(estimator) == hash(_small(ESTIMATORS[name])) and estimator == _small(ESTIMATORS[name])
  assert estimator_from_json(estimator.to_json()) == estimator


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_inner_steps_count_the_steps_an_estimate_runs(name, key):
  """``inner_steps(horizon)`` equals the forward calls of the problem's step in one estimate (every run, both signs).

  The step must also be traced once: every run advances in the same vectorised call.
  """
  estimator = _small(ESTIMATORS[name])
  traced, ran = [], []

  @functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["horizon", "noise"])
  @dataclasses.dataclass(frozen=True)
  class Counting(Quadratic):
    def step(self, theta, state, key):
      traced.append(1)
      # vmap unrolls a callback over its batched argument and scan runs it every step, so it runs once per
      # step of every run; backpropagation (transposed scans) does not run it again.
      jax.debug.callback(lambda w: ran.append(1), state["w"])
      return super().step(theta, state, key)

  problem = Counting()
  state = estimator.init(problem, THETA, key)
  jax.block_until_ready(jax.jit(lambda s: estimator.step(problem, s, THETA, key))(state))
  jax.effects_barrier()
  assert len(traced) == 1
  assert estimator.inner_steps(problem.horizon) == len(ran)


def test_estimators_read_back_from_json_and_refuse_unknown_ones():
  assert estimator_from_json({"name": "pes", "num_pairs": 3}) == PES(num_pairs=3)
  with pytest.raises(ValueError, match="unknown estimator 'reinforce'"):
    estimator_from_json({"name": "reinforce"})
  with pytest.raises(ValueError, match="does not take these fields"):
    estimator_from_json({"name": "full_es", "truncation": 5})
