"""The gradient worker on a multi-device host: pairs sharded over the devices, particles saved and restored."""

import subprocess
import sys
import textwrap


def test_pairs_are_sharded_over_local_devices_with_unchanged_numbers():
  # Four CPU devices stand in for a 4-GPU host; XLA_FLAGS must be set before JAX starts, hence a subprocess.
  code = textwrap.dedent(
    """
      import os
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
      import jax, numpy as np
      from metatrain import PES, WorkerConfig
      from metatrain.runtime.worker import GradientWorker
      config = WorkerConfig(estimator=PES(num_pairs=4, truncation=5), horizon=20)
      sharded, single = GradientWorker(config, 0, 0), GradientWorker(config, 0, 0, shard_pairs=False)
      assert sharded.mesh.devices.size == 4 and single.mesh is None
      theta = sharded.initial_theta(0)
      for step in range(3):  # crosses a horizon: resets happen on sharded state too
        a, b = sharded.compute(theta, step), single.compute(theta, step)
        np.testing.assert_allclose(a.meta_loss, b.meta_loss, rtol=1e-5)
        for x, y in zip(jax.tree.leaves(a.grad), jax.tree.leaves(b.grad)):
          np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)
      for leaf in jax.tree.leaves(sharded.state):
        assert len(leaf.sharding.device_set) == 4 and leaf.addressable_shards[0].data.shape[0] == 1
      # Saved particles restore into a fresh worker, which then computes what the original does.
      restored = GradientWorker(config, 0, 0)
      assert restored.load_particles(sharded.particles())
      a, b = sharded.compute(theta, 3), restored.compute(theta, 3)
      np.testing.assert_array_equal(a.meta_loss, b.meta_loss)
      other = GradientWorker(WorkerConfig(estimator=PES(num_pairs=2, truncation=5), horizon=20), 0, 0)
      assert not other.load_particles(sharded.particles()) and other.state is None
      print("ok", jax.tree.leaves(sharded.state)[0].sharding.spec)
      """
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split()[0] == "ok"


def test_pairs_mesh_uses_the_devices_that_divide_the_pairs():
  from metatrain.runtime.worker import pairs_mesh

  assert pairs_mesh(8, ["d0"]) is None
  assert pairs_mesh(6, ["d0", "d1", "d2", "d3"]).devices.size == 3
  assert pairs_mesh(8, ["d0", "d1", "d2", "d3"]).devices.size == 4
  assert pairs_mesh(7, ["d0", "d1", "d2", "d3"]) is None


def test_a_worker_on_a_task_family_draws_each_estimates_task_from_it():
  import jax
  import numpy as np
  import pytest

  import tasks
  from metatrain import PES, WorkerConfig
  from metatrain.runtime.worker import GradientWorker

  config = WorkerConfig(
    learned_optimizer="sgdm", estimator=PES(num_pairs=1, truncation=2), horizon=4, task_family="mlp_fashion8_widths"
  )
  worker = GradientWorker(config, 0, 0)
  theta = worker.initial_theta(0)
  estimates = [worker.compute(theta, step) for step in range(6)]
  drawn = set(worker.family_states)
  assert len(drawn) >= 2 and drawn <= {f"mlp_fashion8_{w}_relu" for w in tasks.registry.MLP_WIDTHS}
  for estimate in estimates:
    assert jax.tree.structure(estimate.grad) == jax.tree.structure(theta)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(estimate.grad))
  # A second worker with the same seed draws the same tasks and the same estimates; its pools are not saved.
  again = GradientWorker(config, 0, 0)
  for step, estimate in enumerate(estimates):
    np.testing.assert_array_equal(again.compute(theta, step).meta_loss, estimate.meta_loss)
  assert worker.particles() is None and not worker.load_particles({})
  with pytest.raises(ValueError, match="unknown task family"):
    WorkerConfig(task_family="mlps")
