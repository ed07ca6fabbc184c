"""Learner capacity at cluster scale, by simulation: 8 to 512 simulated Ray workers against the real learner.

The workers are real Ray actors (:mod:`benchmarks.simulated_workers`) that
sleep and return a fixed random gradient of a real theta's shapes; the pool
is the real :class:`metatrain.runtime.ray_pool.RayPool` (only how a call is
addressed differs) and the learner the real
:class:`metatrain.runtime.learner.Learner`. For each number of workers and
theta size it measures:

- synchronous, each estimate taking ``--delay`` seconds (1 s: a worker that
  delivers one estimate per second): the outer step's wall time, the
  learner's share of it (wall time not spent blocked in ``ray.wait``),
  and the publish latency (from ``publish`` to the last worker holding the new theta);
- asynchronous, estimates returned at once (the learner is the bottleneck):
  the estimates per second the learner absorbs, half the workers' estimates
  per outer step; and the learner's capacity, estimates per second of its
  busy time (what it absorbs when the workers run on other machines and
  leave it these 2 cores);
- the learner process's peak memory (RSS).

Each configuration runs with two pools: ``plain``, one Ray call per worker
(:class:`~metatrain.runtime.ray_pool.RayPool`), and ``per-node``, one call
per simulated node of ``--per-node`` workers to that node's real
``NodeAggregatorActor``, which fans theta
out and returns the sum of its workers' estimates
(:class:`~metatrain.runtime.ray_nodes.AggregatingRayPool`). On this one
machine the aggregators share the learner's cores, as the workers do.

Thetas: the UNF learned optimizers of mlp_fashion8 (2.7k parameters, 23
leaves) and transformer_lm (84.5k, 195 leaves), and the transformer_lm one
at width 110 (1.0M, 195 leaves). Not a test. Run with
``python -m benchmarks.cluster_scale`` (``--quick`` for a smaller table).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import ray  # noqa: E402

from benchmarks.simulated_workers import SimulatedWorkers  # noqa: E402
from metatrain.outer import outer_optimizer  # noqa: E402
from metatrain.runtime.learner import Learner  # noqa: E402
from metatrain.runtime.ray_nodes import AggregatingRayPool, NodeAggregatorActor  # noqa: E402
from metatrain.runtime.ray_pool import RayPool  # noqa: E402

PROCESSES = 64  # actor processes; worker i lives in process i % PROCESSES, one thread per worker there
THETAS = {"2.7k": ("mlp_fashion8", 32), "84.5k": ("transformer_lm", 32), "1.0M": ("transformer_lm", 110)}


def theta_shapes(task: str, width: int) -> dict[str, tuple[int, ...]]:
  """The leaves of the UNF learned optimizer's theta for ``task`` at ``width``, flattened to ``{path: shape}``."""
  from metatrain import WorkerConfig

  lopt = WorkerConfig(task=task, learned_optimizer="unf", width=width).build_learned_optimizer()
  abstract = jax.eval_shape(lopt.init_meta, jax.random.key(0))
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


class SimulatedPool(RayPool):
  """The Ray pool over simulated workers: worker ``i`` is a thread of host ``i % len(hosts)``."""

  def __init__(self, hosts: list[Any], num_workers: int):
    self._hosts = hosts
    super().__init__(None, num_workers, 0)  # type: ignore[arg-type]  # no WorkerConfig: nothing is built

  def _new_actor(self, index: int) -> Any:
    return self._hosts[index % len(self._hosts)]

  def _start(self, index: int, theta: ray.ObjectRef, step: int) -> ray.ObjectRef:
    ref = self.actors[index].compute.remote(theta, step, index)
    calls = getattr(self, "_calls", None)
    if calls is not None:
      calls[ref] = index
    return ref

  def _stop(self) -> None:  # the hosts serve the next configuration
    self.actors = []


class SimulatedAggregatingPool(AggregatingRayPool):
  """The aggregating pool over simulated workers: worker ``i`` on simulated node ``i // per_node``.

  Every simulated node's aggregator is a real ``NodeAggregatorActor`` (on this machine, kept
  across configurations in ``aggregators``); only how a worker is addressed differs from the real pool.
  """

  def __init__(self, hosts: list[Any], num_workers: int, per_node: int, aggregators: dict[str, Any]):
    self._hosts, self._per_node, self._shared = hosts, per_node, aggregators
    super().__init__(None, num_workers, 0)  # type: ignore[arg-type]  # no WorkerConfig: nothing is built

  def _new_actor(self, index: int) -> Any:
    return self._hosts[index % len(self._hosts)]

  def _node_of(self, index: int) -> str:
    return f"simulated-{index // self._per_node}"

  def _call_args(self, index: int) -> tuple:
    return (index,)

  def _aggregator(self, node: str) -> Any:
    if node not in self._shared:
      actor_class: Any = NodeAggregatorActor
      self._shared[node] = actor_class.options(num_cpus=0).remote()
    return self._shared[node]

  def _stop(self) -> None:  # the hosts and aggregators serve the next configuration
    self.actors = []


class WaitClock:
  """Seconds this process spends blocked in ``ray.wait`` (calls with a timeout other than 0)."""

  def __init__(self):
    self.seconds = 0.0
    self._wait = ray.wait

  def __enter__(self):
    def timed(*args, **kwargs):
      if kwargs.get("timeout") == 0:
        return self._wait(*args, **kwargs)
      start = time.perf_counter()
      try:
        return self._wait(*args, **kwargs)
      finally:
        self.seconds += time.perf_counter() - start

    ray.wait = timed
    return self

  def __exit__(self, *exc_info):
    ray.wait = self._wait


def _peak_rss() -> float:
  """This process's RSS now, in GB (``ru_maxrss`` is the peak of the whole run, not of one configuration)."""
  return psutil.Process().memory_info().rss / 1e9


def synchronous(pool: SimulatedPool, learner: Learner, theta: dict, steps: int, warmup: int) -> dict[str, float]:
  """Publish, gather one estimate per worker, apply: step time, learner share, publish latency."""
  walls, waits, latencies, rss = [], [], [], []
  pool.publish(theta, learner.step)
  published = time.time()
  for step in range(warmup + steps):
    with WaitClock() as clock:
      start = time.perf_counter()
      estimates = pool.gather(pool.num_workers)
      latency = max(v for e in estimates for k, v in e.metrics.items() if k.startswith("started")) - published
      learner.apply(estimates)
      del estimates
      published = time.time()
      pool.publish(learner.host_theta(), learner.step)
      wall = time.perf_counter() - start
    if step >= warmup:
      walls.append(wall)
      waits.append(clock.seconds)
      latencies.append(latency)
      rss.append(_peak_rss())
  return {
    "step_seconds": statistics.median(walls),
    "learner_share": 1.0 - sum(waits) / sum(walls),
    "publish_ms": 1e3 * statistics.median(latencies),
    "publish_ms_max": 1e3 * max(latencies),
    "rss_gb": max(rss),
  }


def asynchronous(pool: SimulatedPool, learner: Learner, theta: dict, seconds: float, warmup: int) -> dict[str, float]:
  """Estimates returned at once, half the workers' per step: estimates/s absorbed and per busy second."""
  per_step = max(1, pool.num_workers // 2)
  pool.publish(theta, learner.step)
  for _ in range(warmup):
    learner.apply(pool.gather(per_step))
    pool.publish(learner.host_theta(), learner.step)
  absorbed, rss = 0, []
  with WaitClock() as clock:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
      estimates = pool.gather(per_step)
      absorbed += sum(e.count for e in estimates)
      learner.apply(estimates)
      del estimates
      pool.publish(learner.host_theta(), learner.step)
      rss.append(_peak_rss())
    wall = time.perf_counter() - start
  return {
    "estimates_per_second": absorbed / wall,
    "capacity": absorbed / max(wall - clock.seconds, 1e-9),
    "rss_gb_async": max(rss),
  }


def measure(hosts, shapes, workers, args, aggregators: dict | None = None) -> dict[str, float]:
  """One row: the plain pool, or with ``aggregators`` (a dict kept across rows) the aggregating one."""

  def make_pool():
    if aggregators is None:
      return SimulatedPool(hosts, workers)
    return SimulatedAggregatingPool(hosts, workers, args.per_node, aggregators)

  ray.get([host.configure.remote(shapes, args.delay) for host in hosts])
  theta = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
  outer = outer_optimizer(1e-3, total_steps=10**6)
  row: dict[str, float] = {}
  with make_pool() as pool:
    row.update(synchronous(pool, Learner(outer, theta), theta, args.steps, args.warmup))
  ray.get([host.configure.remote(shapes, 0.0) for host in hosts])
  with make_pool() as pool:
    learner = Learner(outer, theta, staleness=10**9)
    row.update(asynchronous(pool, learner, theta, args.seconds, args.warmup))
  gc.collect()
  return row


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 128, 512])
  parser.add_argument("--thetas", nargs="+", default=list(THETAS), choices=list(THETAS))
  parser.add_argument("--delay", type=float, default=1.0, help="seconds per estimate in the synchronous runs")
  parser.add_argument("--steps", type=int, default=6, help="synchronous outer steps timed (after --warmup)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=6.0, help="seconds of each asynchronous run")
  parser.add_argument("--quick", action="store_true", help="8 and 32 workers, the two smaller thetas")
  parser.add_argument("--json", default=None, help="also write the rows to this file")
  parser.add_argument(
    "--pools",
    nargs="+",
    default=["plain", "per-node"],
    choices=["plain", "per-node"],
    help="plain: one Ray call per worker (RayPool); per-node: one per simulated node (AggregatingRayPool)",
  )
  parser.add_argument("--per-node", type=int, default=16, help="workers per simulated node (per-node pool)")
  args = parser.parse_args(argv)
  if args.quick:
    args.workers, args.thetas = [8, 32], ["2.7k", "84.5k"]
  temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
  ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level="ERROR")
  start = time.perf_counter()
  processes = min(PROCESSES, max(args.workers))
  threads = -(-max(args.workers) // processes)
  hosts = [SimulatedWorkers.options(max_concurrency=threads).remote({}, 0.0, seed=i) for i in range(processes)]
  ray.get([host.pid.remote() for host in hosts])
  print(f"{processes} actor processes up in {time.perf_counter() - start:.0f} s", file=sys.stderr)
  rows, aggregators = [], {}
  for size in args.thetas:
    shapes = theta_shapes(*THETAS[size])
    for workers in args.workers:
      for kind in args.pools:
        shared = aggregators if kind == "per-node" else None
        row = {"theta": size, "workers": workers, "pool": kind, **measure(hosts, shapes, workers, args, shared)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
  print(
    f"\n{len(rows)} configurations in {time.perf_counter() - start:.0f} s; peak RSS of the run "
    f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB\n"
  )
  print(
    "| theta | workers | pool | sync step (delay 1 s) | learner share | publish latency median (max) "
    "| estimates/s absorbed | learner capacity (estimates/busy s) | learner RSS |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['theta']} | {r['workers']} | {r['pool']} | {r['step_seconds']:.3f} s | {100 * r['learner_share']:.1f}% "
      f"| {r['publish_ms']:.0f} ms ({r['publish_ms_max']:.0f}) | {r['estimates_per_second']:,.0f} "
      f"| {r['capacity']:,.0f} | {max(r['rss_gb'], r['rss_gb_async']):.2f} GB |"
    )
  if args.json:
    with open(args.json, "w") as file:
      json.dump(rows, file, indent=1)
  ray.shutdown()


if __name__ == "__main__":
  main()
