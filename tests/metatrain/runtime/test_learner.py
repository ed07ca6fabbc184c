"""The learner: sharded aggregation, staleness and NaN handling, without Ray."""

import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from metatrain.runtime.learner import Learner
from metatrain.runtime.worker import Estimate


def _estimate(grad, step, worker=0, loss=1.0):
  return Estimate({"w": np.asarray(grad, np.float32)}, loss, step, worker, {"nan_pairs": 0.0})


def test_learner_step_equals_optax_on_the_mean():
  outer = optax.adam(0.1)
  learner = Learner(outer, {"w": np.zeros(3, np.float32)})
  grads = [np.array([1.0, 2.0, 3.0]), np.array([3.0, 0.0, -1.0]), np.array([2.0, 1.0, 1.0])]
  metrics = learner.apply([_estimate(g, 0, i) for i, g in enumerate(grads)])
  state = outer.init({"w": np.zeros(3, np.float32)})
  updates, _ = outer.update({"w": np.mean(grads, axis=0).astype(np.float32)}, state)
  np.testing.assert_allclose(learner.theta["w"], updates["w"], rtol=1e-6)
  assert learner.step == 1 and metrics["used_estimates"] == 3
  host = learner.host_theta()  # what the workers receive: numpy, theta's values
  assert type(host["w"]) is np.ndarray and np.array_equal(host["w"], np.asarray(learner.theta["w"]))
  assert learner.learning_rate() is None  # built without its schedule
  assert np.isclose(metrics["grad_norm"], np.linalg.norm(np.mean(grads, axis=0)), rtol=1e-6)


def test_stale_and_nan_estimates_are_dropped_and_counted():
  learner = Learner(optax.sgd(1.0), {"w": np.zeros(2, np.float32)}, staleness=1)
  learner.apply([_estimate([1.0, 1.0], 0)])
  learner.apply([_estimate([1.0, 1.0], 1)])  # now at step 2
  metrics = learner.apply([_estimate([5.0, 5.0], 0), _estimate([np.nan, 1.0], 2), _estimate([2.0, 0.0], 1)])
  assert metrics["stale_estimates"] == 1 and metrics["nan_estimates"] == 1 and metrics["used_estimates"] == 1
  np.testing.assert_allclose(learner.theta["w"], [-4.0, -2.0])
  skipped = learner.apply([_estimate([np.nan, 0.0], 3)])
  assert skipped["skipped_step"] == 1.0 and learner.step == 3


def test_sharded_mean_over_four_devices():
  code = textwrap.dedent(
    """
      import os
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
      import jax, numpy as np, optax
      from metatrain.runtime.learner import Learner
      from metatrain.runtime.worker import Estimate
      assert len(jax.local_devices()) == 4
      learner = Learner(optax.sgd(1.0), {"w": np.zeros(5, np.float32)})
      grads = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)  # 7 rows: padded to 8
      learner.apply([Estimate({"w": g}, 0.0, 0, i, {}) for i, g in enumerate(grads)])
      np.testing.assert_allclose(learner.theta["w"], -grads.mean(0), rtol=1e-5, atol=1e-6)
      print("ok", learner.mesh.devices.size)
      """
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["ok", "4"]


def test_learner_is_jitted_once(monkeypatch):
  learner = Learner(optax.sgd(1.0), {"w": np.zeros(2, np.float32)})
  for step in range(3):
    learner.apply([_estimate([1.0, 0.0], step)])
  assert learner._update._cache_size() == 1


def _theta():
  return {"a": np.zeros((3, 4), np.float32), "b": {"c": np.zeros(5, np.float32), "d": np.zeros((2, 1), np.float32)}}


def _random_grads(count, seed=0):
  rng = np.random.default_rng(seed)
  return [_tree_like(_theta(), rng) for _ in range(count)]


def _tree_like(tree, rng):
  if isinstance(tree, dict):
    return {key: _tree_like(value, rng) for key, value in tree.items()}
  return rng.normal(size=tree.shape).astype(tree.dtype)


def test_an_estimate_travels_as_one_buffer_and_comes_back_equal():
  import pickle

  grad = _random_grads(1)[0]
  estimate = Estimate(grad, 1.5, 3, 2, {"nan_pairs": 0.0})
  back = pickle.loads(pickle.dumps(estimate, protocol=5))
  assert (back.meta_loss, back.theta_step, back.worker_id, back.metrics) == (1.5, 3, 2, {"nan_pairs": 0.0})
  assert back.flat is not None and back.flat.size == 12 + 5 + 2
  for leaf, original in zip(_leaves(back.grad), _leaves(grad)):
    np.testing.assert_array_equal(leaf, original)
    assert np.shares_memory(leaf, back.flat)  # views into the one buffer, no copy per leaf
  mixed = Estimate({"w": np.zeros(2, np.float32), "n": np.zeros(2, np.int32)}, 0.0, 0, 0, {})
  assert pickle.loads(pickle.dumps(mixed)).flat is None  # leaves of two dtypes travel as they are


def _leaves(tree):
  import jax

  return jax.tree.leaves(tree)


def test_packed_estimates_give_the_same_step_as_unpacked_ones_bit_for_bit():
  import pickle

  grads = _random_grads(7)
  grads[4]["b"]["c"][2] = np.nan  # dropped in both forms
  estimates = [Estimate(g, float(i), 0, i, {}) for i, g in enumerate(grads)]
  packed = [pickle.loads(pickle.dumps(e, protocol=5)) for e in estimates]
  assert all(e.flat is not None for e in packed) and all(e.flat is None for e in estimates)
  results = []
  for batch in (estimates, packed):
    learner = Learner(optax.adam(0.1), _theta(), staleness=3)  # the same estimates, three steps
    for _ in range(3):
      metrics = learner.apply(batch)
    assert metrics["nan_estimates"] == 1 and metrics["used_estimates"] == 6
    results.append((learner.theta, metrics["grad_norm"]))
  for a, b in zip(_leaves(results[0][0]), _leaves(results[1][0])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert results[0][1] == results[1][1]
  # And both are optax on the mean of the finite ones (an independent computation).
  usable = [g for i, g in enumerate(grads) if i != 4]
  mean = {"a": np.mean([g["a"] for g in usable], 0), "b": {k: np.mean([g["b"][k] for g in usable], 0) for k in "cd"}}
  outer = optax.adam(0.1)
  theta, state = _theta(), outer.init(_theta())
  for _ in range(3):
    updates, state = outer.update(mean, state, theta)
    theta = optax.apply_updates(theta, updates)
  for a, b in zip(_leaves(results[1][0]), _leaves(theta)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_a_published_theta_travels_as_one_buffer_and_needs_only_numpy_to_read():
  import pickle
  import subprocess
  import sys

  from metatrain.runtime.estimate import packed_tree

  theta = _random_grads(1, seed=3)[0]
  buffers = []
  data = pickle.dumps(packed_tree(theta), protocol=5, buffer_callback=buffers.append)
  assert len(buffers) == 1  # one out-of-band buffer for the whole tree (Ray: one object-store read)
  back = pickle.loads(data, buffers=buffers)
  for a, b in zip(_leaves(back), _leaves(theta), strict=True):
    np.testing.assert_array_equal(a, b)
  # A process without JAX or this package reads it (the simulated workers of the cluster benchmark).
  code = "import pickle, sys; t = pickle.load(sys.stdin.buffer); import sys; print(sorted(t), 'jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(packed_tree(theta)), capture_output=True)
  assert out.stdout.decode().split("]")[-1].strip() == "False", out.stderr
  mixed = {"w": np.zeros(2, np.float32), "n": np.zeros(2, np.int32)}
  assert packed_tree(mixed) is mixed


def _random_estimates(count, size=6, step=0, seed=0):
  rng = np.random.default_rng(seed)
  return [
    Estimate(
      {"a": rng.normal(size=(2, size)).astype(np.float32), "b": rng.normal(size=size).astype(np.float32)},
      float(rng.uniform()),
      step,
      worker,
      {"nan_pairs": float(worker % 2)},
    )
    for worker in range(count)
  ]


def test_sums_of_estimates_per_node_give_the_learner_the_mean_over_the_estimates():
  import pickle

  from metatrain.runtime.estimate import sum_estimates

  estimates = _random_estimates(7)
  estimates[6].grad["b"][0] = np.nan  # a diverged worker: left out of its node's sum, then dropped and counted
  nodes = [[2, 0, 1], [4, 3], [5], [6]]  # arrival order within a node is not worker order
  sums = [s for node in nodes for s in pickle.loads(pickle.dumps(sum_estimates([estimates[i] for i in node])))]
  assert [s.workers for s in sums] == [(0, 1, 2), (3, 4), (5,), ()] and [s.count for s in sums] == [3, 2, 1, 1]
  # A sum of one worker's estimate is that estimate, bit for bit; the order of arrival changes no bit.
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(sums[2].grad), jax.tree.leaves(estimates[5].grad)))
  again = sum_estimates([estimates[i] for i in (1, 0, 2)])[0]
  assert np.array_equal(again.flat, sums[0].flat)
  np.testing.assert_allclose(sums[0].grad["a"], sum(estimates[i].grad["a"] for i in range(3)), rtol=1e-6)
  assert sums[0].metrics["nan_pairs"] == 1.0
  assert np.isclose(sums[0].meta_loss, np.mean([e.meta_loss for e in estimates[:3]]))

  summed, single = Learner(optax.adam(0.1), estimates[0].grad), Learner(optax.adam(0.1), estimates[0].grad)
  a, b = summed.apply(sums), single.apply(estimates)
  for key in ("used_estimates", "nan_estimates", "stale_estimates", "nan_pairs", "staleness"):
    assert a[key] == b[key], key
  assert a["used_estimates"] == 6 and a["nan_estimates"] == 1
  np.testing.assert_allclose(a["meta_loss"], b["meta_loss"], rtol=1e-6)
  np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(summed.theta), jax.tree.leaves(single.theta)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  # A stale sum is dropped whole, counted as the estimates it holds.
  late = sum_estimates(_random_estimates(3, step=0, seed=1))
  assert summed.apply([*late, *sum_estimates(_random_estimates(2, step=1, seed=2))])["stale_estimates"] == 3


def test_only_single_estimates_at_one_step_are_summed():
  from metatrain.runtime.estimate import sum_estimates

  with pytest.raises(ValueError, match="one theta_step"):
    sum_estimates([*_random_estimates(1, step=0), *_random_estimates(1, step=1)])
  with pytest.raises(ValueError, match="not sums"):
    sum_estimates(sum_estimates(_random_estimates(2)))
  assert sum_estimates([]) == []
  mixed = Estimate({"a": np.ones(2, np.float32), "b": np.ones(2, np.float64)}, 0.0, 0, 0, {})
  with pytest.raises(ValueError, match="several dtypes"):  # one buffer cannot hold it: not silently upcast
    sum_estimates([mixed, *_random_estimates(1)])


def test_estimates_of_one_worker_at_one_step_give_the_same_bits_in_any_order():
  """A worker that computed several times at a step (for down ones): the order of arrival does not change the mean."""
  rng = np.random.default_rng(3)
  grads = [rng.normal(size=64).astype(np.float32) * 10.0 ** rng.integers(-3, 4) for _ in range(8)]
  estimates = [_estimate(g, 0, worker=0, loss=float(rng.uniform())) for g in grads]
  thetas = []
  for seed in range(4):
    learner = Learner(optax.sgd(1.0), {"w": np.zeros(64, np.float32)})
    learner.apply([estimates[i] for i in np.random.default_rng(seed).permutation(8)])
    thetas.append(np.asarray(learner.theta["w"]))
  assert all(np.array_equal(thetas[0], t) for t in thetas[1:])
