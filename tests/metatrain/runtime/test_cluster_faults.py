"""Faults at cluster scale, against a real multi-node Ray on this machine.

One Ray cluster for the module (``ray.cluster_utils.Cluster``: a head with no
CPUs, so that no worker lands on it, and nodes of one CPU that each test adds
and removes). The learner is ``metatrain train`` in a subprocess that joins
the cluster (``--address``) and records every estimate it applies
(:mod:`tests.metatrain.runtime.recorded_train`), so a test can act mid-run:
remove a node, add one, kill workers, SIGTERM or SIGKILL the learner. Every
wait has a deadline: a hang fails the test instead of blocking the suite.
"""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import psutil
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metatrain import loading
from metatrain.exit_status import PREEMPTED_EXIT_STATUS
from metatrain.runtime.summaries import MAIN_RUN

ROOT = pathlib.Path(__file__).resolve().parents[3]
SMOKE = str(ROOT / "configs" / "smoke.gin")
DEADLINE = 300.0  # seconds any one run may take here
SOAK_STEPS = 200


class LocalCluster:
  """A head node without CPUs, and nodes of one CPU added and removed by the tests."""

  def __init__(self, temp_dir: str):
    from ray.cluster_utils import Cluster

    self.cluster = Cluster(
      initialize_head=True,
      connect=False,
      head_node_args={
        "num_cpus": 0,
        "include_dashboard": False,
        "temp_dir": temp_dir,
        "object_store_memory": 2e8,
        # A lost node is declared dead after ~3 s, not Ray's default ~30 s.
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
      },
    )
    self.address = self.cluster.address

  def add(self, count: int = 1, cpus: int = 1) -> list:
    return [self.cluster.add_node(num_cpus=cpus, object_store_memory=1e8) for _ in range(count)]

  def remove(self, nodes: list) -> None:
    for node in nodes:
      if node in self.cluster.worker_nodes:
        self.cluster.remove_node(node, allow_graceful=False)

  def worker_processes(self, nodes: list) -> list[psutil.Process]:
    """The gradient workers' processes on ``nodes`` (children of their raylets)."""
    found = []
    for node in nodes:
      for info in node.all_processes.get("raylet", []):
        with contextlib.suppress(psutil.NoSuchProcess):
          for child in psutil.Process(info.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
              if "GradientWorkerActor" in " ".join(child.cmdline()):
                found.append(child)
    return found


@pytest.fixture(scope="module")
def cluster():
  temp_dir = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # Ray's socket paths: 107 bytes at most
  # Ray writes the cluster's address to <system temp>/ray/ray_current_cluster, whatever temp_dir says, and
  # fails when that folder is missing (a fresh machine).
  shared = pathlib.Path(tempfile.gettempdir()) / "ray"
  created = not shared.exists()
  shared.mkdir(exist_ok=True)
  local = LocalCluster(temp_dir)
  try:
    yield local
  finally:
    local.cluster.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
    if created:
      shutil.rmtree(shared, ignore_errors=True)


class Learner:
  """``metatrain train`` (smoke config) in a subprocess on the cluster, its applied estimates in ``log``."""

  def __init__(self, workdir: pathlib.Path, address: str, env: dict, bindings: list[str]):
    self.workdir, self.log = workdir, workdir / "applied.jsonl"
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tests.metatrain.runtime.recorded_train", str(self.log), "train"]
    command += ["--config", SMOKE, "--workdir", str(workdir), "--address", address, "--gin_bindings", *bindings]
    self.output = (workdir / "learner.log").open("a")
    self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.output, stderr=subprocess.STDOUT)

  def steps(self) -> list[dict]:
    return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

  def wait_for(self, condition, what: str, timeout: float = DEADLINE) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      steps = self.steps()
      if condition(steps):
        return steps
      if self.process.poll() is not None:
        break
      time.sleep(0.05)
    raise AssertionError(f"{what}: not reached (exit {self.process.poll()}); learner log:\n{self.tail()}")

  def wait_step(self, step: int) -> list[dict]:
    return self.wait_for(lambda steps: steps and steps[-1]["step"] >= step, f"outer step {step}")

  def finish(self, timeout: float = DEADLINE) -> int:
    try:
      return self.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.process.kill()
      raise AssertionError(f"the learner did not finish in {timeout} s:\n{self.tail()}") from None
    finally:
      self.output.flush()

  def tail(self) -> str:
    self.output.flush()
    return (self.workdir / "learner.log").read_text()[-4000:]


@pytest.fixture
def learner_env(jax_cache_env):
  return {**os.environ, **jax_cache_env, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}


def _bindings(steps: int, workers: int, *extra: str) -> list[str]:
  return [
    f"TrainConfig.outer_steps = {steps}",
    f"TrainConfig.num_workers = {workers}",
    "TrainConfig.checkpoint_every = 25",
    *extra,
  ]


def _scalars(workdir: pathlib.Path, tag: str) -> list[tuple[int, float]]:
  events = EventAccumulator(str(workdir / "tensorboard" / MAIN_RUN), size_guidance={"scalars": 0})
  events.Reload()
  return [(e.step, e.value) for e in events.Scalars(tag)]


def _assert_live_workers(workdir: pathlib.Path, last_before: int, *, up: int, after_loss: int) -> None:
  """``faults/live_workers`` in TensorBoard: all ``up`` by the loss, and ``after_loss`` at its lowest after it.

  The steps before the loss are only checked to end with every worker up: at step 1 the workers come up one
  by one (the first ones start on what the others owe once the patience has run out), so its count depends on
  how fast the actors start on a loaded machine.
  """
  live = _scalars(workdir, "faults/live_workers")
  assert [v for s, v in live if s == last_before] == [up], live
  assert min(v for s, v in live if s > last_before) == after_loss, live


def _theta(workdir: pathlib.Path):
  loaded = loading.load(workdir)
  return loaded.step, loaded.theta


def test_a_lost_node_costs_its_estimates_once_and_the_run_completes(cluster, learner_env, tmp_path):
  nodes = cluster.add(3)
  try:
    run = Learner(tmp_path, cluster.address, learner_env, _bindings(80, 3, "TrainConfig.worker_patience = 3.0"))
    before = run.wait_step(10)
    cluster.remove(nodes[1:2])  # a whole node: its raylet, object store and worker, at once
    assert run.finish() == 0, run.tail()
  finally:
    cluster.remove(nodes)
  steps = run.steps()
  assert [s["step"] for s in steps] == list(range(1, 81))  # the run completed, every step applied once
  digests = [digest for s in steps for _, _, digest in s["estimates"]]
  assert len(digests) == len(set(digests)), "an estimate was applied twice"
  # The live workers computed what the lost one owed (a call they started while it was awaited may end
  # after the step it was for: it is dropped as stale, never applied).
  assert sum(len(s["estimates"]) == 3 for s in steps) >= 75
  # The worker of the lost node found no CPU left: some steps ran without it, on the two others.
  after = steps[len(before) :]
  assert any(len({w for w, _, _ in s["estimates"]}) == 2 for s in after)
  assert all(theta_step == s["step"] - 1 for s in steps for _, theta_step, _ in s["estimates"])  # synchronous
  assert _scalars(tmp_path, "faults/lost_estimates")[-1][1] >= 1
  _assert_live_workers(tmp_path, before[-1]["step"], up=3, after_loss=2)


def test_with_an_aggregator_per_node_a_lost_node_costs_its_estimates_once_and_the_run_completes(
  cluster, learner_env, tmp_path
):
  """Two nodes of two workers, each node's estimates summed by its aggregator: one sum per node per step."""
  nodes = cluster.add(2, cpus=2)
  try:
    bindings = _bindings(60, 4, "TrainConfig.worker_patience = 3.0", "TrainConfig.aggregate_per_node = True")
    run = Learner(tmp_path, cluster.address, learner_env, bindings)
    before = run.wait_step(10)
    cluster.remove(nodes[1:2])  # its raylet, object store, aggregator and two workers, at once
    assert run.finish() == 0, run.tail()
  finally:
    cluster.remove(nodes)
  steps = run.steps()
  assert [s["step"] for s in steps] == list(range(1, 61))  # the run completed, every step applied once
  # Before the loss (from step 2: at step 1 the workers came up one by one): one message per node, the sum of
  # that node's two workers.
  pairs = [sorted(map(tuple, s["workers"])) for s in before[1:]]
  assert all(len(p) == 2 and sorted(p[0] + p[1]) == [0, 1, 2, 3] for p in pairs), pairs
  assert len({tuple(p) for p in pairs}) == 1  # the same two nodes every step
  digests = [digest for s in steps for _, _, digest in s["estimates"]]
  assert len(digests) == len(set(digests)), "a sum was applied twice"
  # Every worker's estimate counted once: 4 per step, but for a few calls dropped as stale around the loss.
  assert sum(sum(len(w) for w in s["workers"]) == 4 for s in steps) >= 55
  # After it, the live node's two workers computed the lost node's estimates too: sums of that node only.
  after = steps[len(before) :]
  assert any(all(tuple(w) == pairs[0][0] for w in s["workers"]) for s in after) or any(
    all(tuple(w) == pairs[0][1] for w in s["workers"]) for s in after
  )
  assert all(theta_step == s["step"] - 1 for s in steps for _, theta_step, _ in s["estimates"])  # synchronous
  assert _scalars(tmp_path, "faults/lost_estimates")[-1][1] >= 2  # both of the lost node's calls
  _assert_live_workers(tmp_path, before[-1]["step"], up=4, after_loss=2)


def test_workers_waiting_for_resources_start_on_a_node_added_mid_run(cluster, learner_env, tmp_path):
  nodes = cluster.add(1)  # room for one of the two workers
  try:
    run = Learner(tmp_path, cluster.address, learner_env, _bindings(10**6, 2, "TrainConfig.worker_patience = 1.0"))
    alone = run.wait_step(5)
    seen = {w for s in alone for w, _, _ in s["estimates"]}
    nodes += cluster.add(1)
    both = run.wait_for(
      lambda steps: any(len({w for w, _, _ in s["estimates"]}) == 2 for s in steps[len(alone) :]),
      "an estimate from the worker that waited for the new node",
    )
    run.wait_step(both[-1]["step"] + 3)
    run.process.send_signal(signal.SIGTERM)
    assert run.finish(timeout=60) == PREEMPTED_EXIT_STATUS, run.tail()
  finally:
    cluster.remove(nodes)
  assert len(seen) == 1  # before the node came, one worker did everything
  live = [v for _, v in _scalars(tmp_path, "faults/live_workers")]
  assert live[0] == 1 and live[-1] == 2 and live.index(2) > 0  # the count rose in TensorBoard


@pytest.fixture(scope="module")
def uninterrupted(cluster, jax_cache_env, tmp_path_factory):
  """The soak's configuration run without faults, on two nodes: ``(step, theta)`` of its end."""
  env = {**os.environ, **jax_cache_env, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
  workdir = tmp_path_factory.mktemp("uninterrupted")
  nodes = cluster.add(2)
  try:
    run = Learner(workdir, cluster.address, env, _bindings(SOAK_STEPS, 2))
    assert run.finish() == 0, run.tail()
  finally:
    cluster.remove(nodes)
  return _theta(workdir)


@pytest.mark.slow
def test_chaos_soak_ends_bit_identical_to_the_uninterrupted_run(cluster, learner_env, tmp_path, uninterrupted):
  """Workers SIGKILLed every ~20 steps, the learner stopped by SIGTERM once and SIGKILLed twice.

  Its second and fourth lives send their calls through an aggregator per node
  (``aggregate_per_node``): one worker per node, so the sums are the
  estimates, bit for bit, and the end is still the uninterrupted run's.
  """
  nodes = cluster.add(2)
  bindings = _bindings(SOAK_STEPS, 2)
  stops = {40: signal.SIGTERM, 100: signal.SIGKILL, 150: signal.SIGKILL}
  kills, lives = 0, 0
  try:
    deadline = time.monotonic() + 2 * DEADLINE
    while True:
      aggregate = f"TrainConfig.aggregate_per_node = {lives % 2 == 1}"
      run = Learner(tmp_path, cluster.address, learner_env, [*bindings, aggregate])
      lives += 1
      done = run.steps()[-1]["step"] if run.log.exists() and run.steps() else 0
      next_kill = done + 20
      stop = next((step for step in sorted(stops) if step > done), None)
      while run.process.poll() is None and time.monotonic() < deadline:
        step = run.steps()[-1]["step"] if run.steps() else 0
        if step >= next_kill:
          victims = cluster.worker_processes(nodes)
          if victims:
            victims[kills % len(victims)].kill()
            kills += 1
          next_kill = step + 20
        if stop is not None and step >= stop:
          signal_sent, sent_at = stops[stop], time.monotonic()
          run.process.send_signal(signal_sent)
          code = run.finish(timeout=60)
          if signal_sent == signal.SIGTERM:
            # Preemption: a checkpoint of the step the learner was on, written within a bounded time.
            assert code == PREEMPTED_EXIT_STATUS, run.tail()
            assert time.monotonic() - sent_at < 30
            assert _theta(tmp_path)[0] == run.steps()[-1]["step"]
          else:
            assert code == -signal.SIGKILL
          break
        time.sleep(0.05)
      else:
        assert run.finish(timeout=60) == 0, run.tail()
        break
      assert time.monotonic() < deadline, "the soak ran past its deadline"
  finally:
    cluster.remove(nodes)
  assert lives == 4 and kills >= 6
  records = run.steps()  # every life's applied steps: sums of one worker in the aggregated lives
  assert any(s["workers"] and all(len(w) == 1 for w in s["workers"]) for s in records)
  assert any(not any(s["workers"]) for s in records)
  step, theta = _theta(tmp_path)
  assert step == uninterrupted[0] == SOAK_STEPS
  for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(uninterrupted[1]), strict=True):
    np.testing.assert_array_equal(a, b)
  assert max(v for _, v in _scalars(tmp_path, "faults/lost_estimates")) >= 1  # the killed workers' calls
