"""The learner: sharded aggregation, staleness and NaN handling, without Ray."""

import subprocess
import sys
import textwrap

import numpy as np
import optax

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
