"""Worker pools: the Ray pool is a thin layer over the in-process one, survives dead actors and diverging runs.

Ray starts once per session (the ``ray_session`` fixture, 2 CPUs: at most two
actors at a time, so every test closes its pool). Workers share a JAX
compilation cache: the tiny config compiles once per session, not once per
worker.
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import jax
import jsonschema
import numpy as np
import pytest
import yaml

from metatrain import PES, WorkerConfig
from metatrain.runtime.pool import InProcessPool
from metatrain.runtime.worker import GradientWorker

CONFIG = WorkerConfig(
  task="mlp_fashion8", learned_optimizer="unf", estimator=PES(num_pairs=2, truncation=5), horizon=20
)
SEED = 3
TIMEOUT = 120.0  # seconds: a hang fails the test instead of blocking the suite
ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(jax_cache_env):
  """This process's JAX uses the session's compilation cache too (restored afterwards)."""
  from jax.experimental.compilation_cache import compilation_cache as cache

  settings = {
    "jax_compilation_cache_dir": jax_cache_env["JAX_COMPILATION_CACHE_DIR"],
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
  }
  old = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  cache.reset_cache()
  yield
  for name, value in old.items():
    jax.config.update(name, value)
  cache.reset_cache()


@pytest.fixture(scope="module")
def thetas():
  """Two meta-parameter settings, as numpy: the initial one and a perturbed one."""
  theta = jax.tree.map(np.asarray, CONFIG.build_learned_optimizer().init_meta(jax.random.key(0)))
  return [theta, jax.tree.map(lambda x: x + np.float32(0.05), theta)]


def _by_origin(estimates):
  """Estimates keyed by (worker id, theta step); fails on a duplicate."""
  keyed = {(e.worker_id, e.theta_step): e for e in estimates}
  assert len(keyed) == len(estimates), "an estimate came back twice"
  return keyed


def _assert_same(a, b):
  assert (a.worker_id, a.theta_step) == (b.worker_id, b.theta_step)
  assert jax.tree.structure(a.grad) == jax.tree.structure(b.grad)
  for x, y in zip(jax.tree.leaves(a.grad), jax.tree.leaves(b.grad)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a.meta_loss, b.meta_loss, rtol=1e-6)
  assert a.metrics["nan_pairs"] == b.metrics["nan_pairs"] and a.metrics["resets"] == b.metrics["resets"]


def _synchronous(pool, thetas):
  """Publish each theta, gather one estimate per worker: all of them at the current step."""
  estimates = []
  for step, theta in enumerate(thetas):
    pool.publish(theta, step)
    batch = pool.gather(pool.num_workers, timeout=TIMEOUT)
    assert sorted(e.worker_id for e in batch) == list(range(pool.num_workers))
    assert all(e.theta_step == step for e in batch)
    estimates += batch
  return _by_origin(estimates)


def test_ray_pool_gives_the_in_process_pool_estimates(ray_session, thetas):
  from metatrain.runtime.ray_pool import RayPool

  local = InProcessPool(CONFIG, 2, SEED)
  expected = _synchronous(local, thetas)  # first: the compile cache is warm for the actors
  with RayPool(CONFIG, 2, SEED) as pool:
    remote = _synchronous(pool, thetas)
    assert pool.lost == 0
  assert remote.keys() == expected.keys()
  for origin, estimate in expected.items():
    _assert_same(remote[origin], estimate)
  # A different seed gives different estimates: the comparison above can fail.
  other = _synchronous(InProcessPool(CONFIG, 2, SEED + 1), thetas[:1])
  assert not np.allclose(other[(0, 0)].meta_loss, expected[(0, 0)].meta_loss, rtol=0, atol=1e-7)


def test_calls_that_end_together_start_no_repeat_on_the_same_theta(ray_session, thetas):
  """Calls that end in one batch stay in flight until gather hands them out: no worker goes again on the
  same theta (it did: the next step then found the repeat, stale, among its estimates)."""
  from metatrain.runtime.ray_pool import RayPool

  with RayPool(CONFIG, 2, SEED) as pool:
    assert pool.wait_for_workers(timeout=TIMEOUT) == 2
    for step, theta in enumerate(thetas):
      pool.publish(theta, step)
      ray_session.wait(list(pool._calls), num_returns=2, timeout=TIMEOUT)  # both end before the gather
      batch = pool.gather(2, timeout=TIMEOUT)
      assert sorted(e.worker_id for e in batch) == [0, 1] and all(e.theta_step == step for e in batch)


def test_asynchronous_estimates_carry_the_step_they_were_computed_at(ray_session, thetas):
  from metatrain.runtime.ray_pool import RayPool

  with RayPool(CONFIG, 2, SEED) as pool:
    assert pool.wait_for_workers(timeout=TIMEOUT) == 2  # both start on theta 0 when it is published
    pool.publish(thetas[0], 0)
    (first,) = pool.gather(1, timeout=TIMEOUT)
    # An idle worker starts on 1; the other is still on 0, or done with it and its estimate not handed out.
    pool.publish(thetas[1], 1)
    rest = pool.gather(2, timeout=TIMEOUT)
  got = _by_origin([first, *rest])
  assert first.theta_step == 0 and {origin for origin in got if origin[1] == 0} == {(0, 0), (1, 0)}
  assert len(got) == 3  # and one at theta 1
  # Each estimate is the one its worker computes on that theta, in that order.
  for worker_id in (0, 1):
    reference = GradientWorker(CONFIG, worker_id, SEED)
    for step in sorted(step for w, step in got if w == worker_id):
      _assert_same(got[(worker_id, step)], reference.compute(thetas[step], step))


def test_in_process_pool_interleaves_steps_asynchronously(thetas):
  pool = InProcessPool(CONFIG, 2, SEED)
  pool.publish(thetas[0], 0)
  (first,) = pool.gather(1)
  pool.publish(thetas[1], 1)
  rest = pool.gather(3)
  assert [(e.worker_id, e.theta_step) for e in [first, *rest]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
  assert pool.gather(1, timeout=0.0) == []  # the deadline passed before any call ran
  pool.close()
  with pytest.raises(RuntimeError, match="closed"):
    pool.publish(thetas[0], 2)


def _identical(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.grad), jax.tree.leaves(b.grad)))


def test_dead_actors_are_restarted_or_replaced_and_their_estimates_counted_lost(ray_session, thetas):
  from metatrain.runtime.ray_pool import RayPool

  with RayPool(CONFIG, 2, SEED) as pool:
    assert pool.wait_for_workers(timeout=TIMEOUT) == 2  # both up: the kills hit the calls
    pids = ray_session.get([actor.pid.remote() for actor in pool.actors])
    restarted, replaced = pool.actors
    pool.publish(thetas[0], 0)
    ray_session.kill(restarted, no_restart=False)  # Ray restarts it
    ray_session.kill(replaced, no_restart=True)  # dead for good: the pool replaces it
    estimates = pool.gather(2, timeout=TIMEOUT)
    assert pool.lost == 2
    # Under load the replaced worker may deliver both estimates before the restarted one is back:
    # any two *different* estimates at step 0 are right; the same one returned twice is not.
    assert [e.theta_step for e in estimates] == [0, 0]
    assert not _identical(estimates[0], estimates[1])
    assert pool.actors[0] is restarted and pool.actors[1] is not replaced
    assert ray_session.get(pool.actors[0].pid.remote()) != pids[0]
    pool.publish(thetas[1], 1)
    estimates += pool.gather(2, timeout=TIMEOUT)
    assert pool.lost == 2 and len(estimates) == 4
    assert not any(_identical(a, b) for i, a in enumerate(estimates) for b in estimates[i + 1 :])


def test_a_worker_that_cannot_start_fails_the_gather_instead_of_looping(ray_session, thetas):
  from metatrain.runtime.ray_pool import RayPool

  broken = dataclasses.replace(CONFIG)
  object.__setattr__(broken, "task", "no_such_task")  # bypasses validation: the actor's constructor raises
  with RayPool(broken, 1, SEED, max_failures=2) as pool:
    pool.publish(thetas[0], 0)
    with pytest.raises(RuntimeError, match="worker 0 failed 2 times in a row"):
      pool.gather(1, timeout=TIMEOUT)
    assert pool.lost == 0  # its actor never came up: no call was made, none was lost


def test_diverging_inner_runs_still_return_estimates(ray_session, thetas):
  from metatrain.runtime.ray_pool import RayPool

  def let_nan_losses_through(actor):
    # Tasks map NaN losses to their loss ceiling (so divergence alone gives finite pairs); undo that here.
    import tasks.base

    tasks.base.Task.normalized = lambda self, loss: loss

  diverging = {**thetas[0], "log_alpha": np.float32(80.0)}  # inner step size e^80: params overflow at once
  with RayPool(CONFIG, 1, SEED) as pool:
    ray_session.get(pool.actors[0].__ray_call__.remote(let_nan_losses_through))
    pool.publish(diverging, 0)
    (estimate,) = pool.gather(1, timeout=TIMEOUT)
    pool.publish(thetas[0], 1)
    (after,) = pool.gather(1, timeout=TIMEOUT)
  assert estimate.metrics["nan_pairs"] == CONFIG.estimator.num_pairs and after.theta_step == 1
  assert all(np.all(np.isfinite(leaf)) for e in (estimate, after) for leaf in jax.tree.leaves(e.grad))


def _assert_sum_of(summed, *estimates):
  for x, *parts in zip(*(jax.tree.leaves(e.grad) for e in (summed, *estimates)), strict=True):
    np.testing.assert_allclose(x, sum(parts), rtol=1e-5, atol=1e-6)


def test_aggregating_pool_sums_one_call_per_node_and_recomputes_a_killed_workers_estimate_exactly(ray_session, thetas):
  """One call per node, returning the sum of its workers' estimates; then a worker killed mid-call gets its
  kept particles back through the aggregator, before its next call, and recomputes its lost estimate."""
  from metatrain.runtime.ray_nodes import AggregatingRayPool

  expected = _synchronous(InProcessPool(CONFIG, 2, SEED), thetas)
  with AggregatingRayPool(CONFIG, 2, SEED, keep_particles=True) as pool:
    assert pool.wait_for_workers(timeout=TIMEOUT) == 2
    pool.publish(thetas[0], 0)
    assert len(pool._calls) == 1  # the session's Ray is one node: one call carries both workers
    (summed,) = pool.gather(2, timeout=TIMEOUT)
    assert summed.workers == (0, 1) and summed.count == 2 and summed.theta_step == 0
    _assert_sum_of(summed, expected[(0, 0)], expected[(1, 0)])
    pool.publish(thetas[1], 1)
    ray_session.kill(pool.actors[1], no_restart=False)  # Ray restarts it: its call on theta 1 is lost
    got = {e.workers: e for e in pool.gather(2, timeout=TIMEOUT)}
    assert pool.lost == 1 and set(got) == {(0,), (1,)}  # worker 0 waited for it: no repeat in its place
    _assert_same(got[(0,)], expected[(0, 1)])
    _assert_same(got[(1,)], expected[(1, 1)])  # recomputed from the particles it had, not fresh ones


def test_a_lost_aggregator_loses_its_calls_counted_and_a_new_one_takes_over(ray_session, thetas):
  from metatrain.runtime.ray_nodes import AggregatingRayPool

  with AggregatingRayPool(CONFIG, 2, SEED) as pool:
    assert pool.wait_for_workers(timeout=TIMEOUT) == 2
    pool.publish(thetas[0], 0)
    (lost,) = pool._aggregators.values()
    ray_session.kill(lost, no_restart=True)
    first = pool.gather(2, timeout=TIMEOUT)
    assert pool.lost == 2 and sum(e.count for e in first) == 2 and all(e.theta_step == 0 for e in first)
    assert list(pool._aggregators.values()) != [lost]
    pool.publish(thetas[1], 1)
    (summed,) = pool.gather(2, timeout=TIMEOUT)
    assert summed.workers == (0, 1) and summed.theta_step == 1 and pool.lost == 2


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _wait_for(path: pathlib.Path, text: str, process: subprocess.Popen, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while text not in (path.read_text() if path.exists() else ""):
    if process.poll() is not None or time.monotonic() > deadline:
      raise AssertionError(f"ray start did not come up:\n{path.read_text() if path.exists() else ''}")
    time.sleep(0.2)


@pytest.mark.slow
def test_ray_pool_joins_a_running_cluster(tmp_path, jax_cache_env):
  """``ray start --head`` (its own Ray, in subprocesses: no clash with the session's), then ``address="auto"``."""
  env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
  temp_dir = pathlib.Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths: 107 bytes at most
  log = tmp_path / "head.log"
  # --block keeps `ray start` in the foreground; in its own session, SIGTERM to it stops exactly this head
  # (`ray stop` would stop every Ray on the machine, the session's included).
  head = subprocess.Popen(
    [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={_free_port()}", "--num-cpus=1"]
    + ["--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=200000000"]
    + [f"--temp-dir={temp_dir}", "--block"],
    env=env,
    stdout=log.open("w"),
    stderr=subprocess.STDOUT,
    start_new_session=True,
  )
  try:
    _wait_for(log, "block forever", head, timeout=60)
    address = (temp_dir / "ray_current_cluster").read_text().strip()
    snippet = textwrap.dedent(f"""
      import json, ray
      from metatrain.runtime.ray_pool import RayPool
      from metatrain import WorkerConfig
      config = WorkerConfig.from_json({CONFIG.to_json()!r})
      pool = RayPool(config, 1, {SEED}, address="auto", env_vars={jax_cache_env!r})
      theta = ray.get(pool.actors[0].initial_theta.remote(0))
      pool.publish(theta, 0)
      estimates = pool.gather(2, timeout={TIMEOUT})  # one worker: it is started again within the gather
      gcs = ray.get_runtime_context().gcs_address
      pool.close()
      print(json.dumps({{"gcs": gcs, "origins": [[e.worker_id, e.theta_step] for e in estimates]}}))
    """)
    run = subprocess.run(
      [sys.executable, "-c", snippet],
      env={**env, "RAY_ADDRESS": address},
      capture_output=True,
      text=True,
      timeout=TIMEOUT,
      cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["gcs"] == address
    assert result["origins"] == [[0, 0], [0, 0]]
  finally:
    head.send_signal(signal.SIGTERM)
    try:
      head.wait(timeout=60)
    except subprocess.TimeoutExpired:
      os.killpg(head.pid, signal.SIGKILL)  # the group holds only what this `ray start` spawned
      head.wait()
    shutil.rmtree(temp_dir, ignore_errors=True)


LAUNCH = ROOT / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
CLUSTERS = sorted(LAUNCH.glob("*.yaml"))


def test_launch_scripts_parse_and_are_executable():
  assert {p.name for p in SCRIPTS} == {"local.sh", "submit.sh", "slurm.sbatch"}
  for script in SCRIPTS:
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, f"{script.name}: {check.stderr}"
    assert "set -euo pipefail" in script.read_text(), script.name
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
  if shutil.which("shellcheck"):
    check = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_cluster_configs_are_valid_ray_cluster_configs():
  import ray

  schema = json.loads((pathlib.Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
  assert {p.name for p in CLUSTERS} == {"cluster_gpu.yaml", "cluster_tpu.yaml"}
  for path in CLUSTERS:
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, schema)  # what `ray up` checks first
    assert config["head_node_type"] in config["available_node_types"]
    setup = [
      *config["setup_commands"],
      *config.get("head_setup_commands", []),
      *config.get("worker_setup_commands", []),
    ]
    assert any(re.search(r"pip install .*-e \.", command) for command in setup), path.name
    assert config["file_mounts"] == {"~/unf-metatrain": "."}
    text = path.read_text()
    assert "RAY_USAGE_STATS_ENABLED=0" in text and "--disable-usage-stats" in text, path.name
    assert any("ray start --head" in command for command in config["head_start_ray_commands"]), path.name
    assert any("ray start --address" in command for command in config["worker_start_ray_commands"]), path.name
  assert "jax[cuda12]" in (LAUNCH / "cluster_gpu.yaml").read_text()
  assert "jax[tpu]" in (LAUNCH / "cluster_tpu.yaml").read_text()
