"""Gradient workers as Ray actors: :class:`RayPool`. One of the two modules that import Ray (and `ray_nodes`).

The layer is thin: ``GradientWorkerActor`` (a Ray actor class) wraps
:class:`metatrain.runtime.worker.GradientWorker` unchanged, and :class:`RayPool` follows
the scheduling rules of :class:`metatrain.runtime.pool.WorkerPool`, so it returns the
same estimates as :class:`metatrain.runtime.pool.InProcessPool` for the same seed and
thetas. Theta is put in Ray's object store once per publish and every actor
call receives the reference (one copy per node, not one per call).

Faults: an actor that dies during a call loses that call's estimate (counted
in ``pool.lost``; with ``max_task_retries=0`` a call is never run twice, so an
estimate is returned at most once). Ray restarts the actor (``max_restarts``,
unlimited by default; it re-creates its GradientWorker, whose particles start
afresh) and the pool starts it again on the latest theta; an actor that is
dead for good is replaced by a new one with the same worker id.

Devices: an actor sees the accelerators it asks Ray for (``num_gpus``, or
``resources={"TPU": n}``) and nothing else; its GradientWorker computes with
``jax.jit`` on what its JAX shows it (how it spreads the pairs over several
local devices is the worker's business). Without accelerators the actor's JAX
is pinned to the CPU (``JAX_PLATFORMS=cpu``).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
import tqdm  # noqa: E402
from ray.exceptions import ActorDiedError, RayActorError, RayError  # noqa: E402

from metatrain.runtime.config import WorkerConfig  # noqa: E402
from metatrain.runtime.estimate import packed_tree  # noqa: E402
from metatrain.runtime.evaluator import REFERENCE_RATES, Evaluation, EvaluationActor, Evaluator  # noqa: E402
from metatrain.runtime.pool import WorkerPool  # noqa: E402
from metatrain.runtime.worker import Estimate, GradientWorker  # noqa: E402
from metatrain.types import Theta  # noqa: E402

PROBE_SECONDS = 0.5  # how often a restarting actor is asked whether it is back
WAIT_SECONDS = 0.5  # the longest a gather blocks in one ray.wait (an interrupt is seen within it)
BACKUP_TIMEOUT = 30.0  # seconds to read the kept particles back for a checkpoint


@ray.remote(max_restarts=-1, max_task_retries=0)
class GradientWorkerActor:
  """A :class:`GradientWorker` in its own process; its particles never leave it.

  Args: as :class:`GradientWorker`.
  """

  def __init__(self, config: WorkerConfig, worker_id: int, seed: int = 0):
    self.worker = GradientWorker(config, worker_id, seed)

  def compute(self, theta: Any, theta_step: int) -> Estimate:
    """One estimate at ``theta`` (Ray resolves a published ObjectRef to the numpy pytree)."""
    return self.worker.compute(theta, theta_step)

  def compute_and_keep(self, theta: Any, theta_step: int) -> tuple[Estimate, dict | None]:
    """:meth:`compute`, and the particles after it (call with ``num_returns=2``: the pool keeps the second)."""
    estimate = self.worker.compute(theta, theta_step)
    return estimate, self.worker.particles()

  def initial_theta(self, seed: int) -> Any:
    """The learned optimizer's initial meta-parameters for ``seed``, as numpy."""
    return self.worker.initial_theta(seed)

  def particles(self) -> dict | None:
    """The particles as numpy (see :meth:`GradientWorker.particles`)."""
    return self.worker.particles()

  def load_particles(self, leaves: dict) -> bool:
    """Replaces the particles (see :meth:`GradientWorker.load_particles`)."""
    return self.worker.load_particles(leaves)

  def node_id(self) -> str:
    """The Ray node this worker runs on (the pool's probe: a restarted actor may be on another node)."""
    return ray.get_runtime_context().get_node_id()

  def devices(self) -> list[str]:
    """The JAX devices this worker computes on (for logs and tests)."""
    import jax

    return [str(device) for device in jax.devices()]

  def pid(self) -> int:
    """The worker process's id (changes when Ray restarts the actor)."""
    return os.getpid()


def worker_env(
  *, num_gpus: float = 0, resources: dict[str, float] | None = None, env_vars: dict[str, str] | None = None
) -> dict[str, str]:
  """The environment variables of a worker actor.

  ``RAY_USAGE_STATS_ENABLED=0`` always; ``JAX_PLATFORMS=cpu`` when the actor
  asks for no accelerator (no GPU, no ``TPU`` resource), so its JAX neither
  probes for accelerators nor opens ones that belong to other actors.

  XLA's CPU thread pools are left at their defaults: with two workers on two
  cores (mlp_fashion8, 8 pairs, truncation 50), a pair of estimates took
  200-237 ms with the defaults and 239-283 ms with one thread per worker
  (``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``).
  To try it elsewhere, pass ``env_vars={"XLA_FLAGS": ...}``.

  Args:
    num_gpus: GPUs per actor.
    resources: custom Ray resources per actor, e.g. ``{"TPU": 4}``.
    env_vars: extra variables; they override the defaults.

  Returns:
    A dict for ``runtime_env={"env_vars": ...}``.
  """
  env = {"RAY_USAGE_STATS_ENABLED": "0"}
  if not num_gpus and not (resources or {}).get("TPU"):
    env["JAX_PLATFORMS"] = "cpu"
  env.update(env_vars or {})
  return env


class RayPool(WorkerPool):
  """``num_workers`` ``GradientWorkerActor`` s on a Ray cluster (or a local Ray).

  Calls ``ray.init(address=address)`` unless Ray is already initialised (then
  ``address`` is ignored), and ``ray.shutdown()`` on ``close()`` if it did;
  ``address="auto"`` joins the cluster this process runs on (``ray start``,
  ``ray up``, a Ray job, Slurm).

  A worker is down from the moment its actor is created (or restarted) until
  it answers a probe: an actor waiting for resources (a cluster without room
  for it, until a node joins) is not live, and takes no calls.

  With ``keep_particles``, every call also returns the worker's particles
  after it, kept in Ray's object store (the latest per worker, never fetched
  by the learner on the way): a restarted or replaced actor is given them
  back before its next call, so its lost estimate is recomputed exactly,
  and a checkpoint reads them instead of asking the actors. They cost one
  copy of the particles per worker in the object store of the worker's node
  (or, when small, in the learner's memory); a node's loss loses the copies
  it held, and those workers start fresh particles.

  Args:
    config: the workers' configuration (plain values: it travels to the actors).
    num_workers: the number of actors; actor ``i`` has ``worker_id=i``.
    seed: the run's seed.
    address: the Ray address (``None``: start a local Ray; ``"auto"``: the running cluster).
    num_cpus: CPUs reserved per actor.
    num_gpus: GPUs per actor (a worker uses the devices it is given).
    resources: custom resources per actor (``{"TPU": 4}`` on a TPU VM).
    max_restarts: Ray restarts of a dead actor (-1: unlimited); once dead for good it is replaced.
    max_failures: consecutive failures of one worker (lost calls, or its actor dead at creation),
      without an estimate in between, before ``gather`` gives up with a ``RuntimeError`` (a worker
      that cannot even start).
    env_vars: extra environment variables for the actors (see :func:`worker_env`).
    keep_particles: keep every worker's latest particles in the object store (see above).
    patience: seconds a down worker is waited for (see :class:`metatrain.runtime.pool.WorkerPool`).

  Example::

    with RayPool(WorkerConfig(), 8, seed=0, address="auto") as pool:
      pool.publish(theta, 0)
      estimates = pool.gather(8)
  """

  def __init__(
    self,
    config: WorkerConfig,
    num_workers: int,
    seed: int = 0,
    *,
    address: str | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    resources: dict[str, float] | None = None,
    max_restarts: int = -1,
    max_failures: int = 3,
    env_vars: dict[str, str] | None = None,
    keep_particles: bool = False,
    patience: float = 60.0,
  ):
    super().__init__(num_workers, patience=patience)
    self._owns_ray = not ray.is_initialized()
    if self._owns_ray:
      ray.init(address=address or None)
    self.config, self.seed, self.max_failures = config, seed, max_failures
    self.keep_particles = keep_particles
    self._options = dict(
      num_cpus=num_cpus,
      num_gpus=num_gpus,
      resources=resources or {},
      max_restarts=max_restarts,
      max_task_retries=0,
      runtime_env={"env_vars": worker_env(num_gpus=num_gpus, resources=resources, env_vars=env_vars)},
    )
    self._failures = [0] * num_workers
    # Down workers: index -> (probe call or None, when to probe next, down since).
    self._restarting: dict[int, tuple[ray.ObjectRef | None, float, float]] = {}
    # The calls in flight, by reference: each one's worker index (a call per node: its workers' indices).
    self._calls: dict[ray.ObjectRef, Any] = {}
    self._events: collections.deque[tuple[int, Estimate | None]] = collections.deque()
    self._queued_estimates = 0  # the events above that carry an estimate
    self._kept: dict[int, ray.ObjectRef] = {}  # each worker's particles after its latest call
    self._in_flight_kept: dict[int, ray.ObjectRef] = {}
    self._snapshot: dict[int, ray.ObjectRef] = {}  # self._kept at the latest publish
    self._restore: set[int] = set()  # workers to give their kept particles before their next call
    self._nodes: dict[int, str] = {}  # each up worker's Ray node, from its latest probe
    self.actors: list[Any] = []
    for index in range(num_workers):
      self.actors.append(self._new_actor(index))
      self._went_down(index)

  def _new_actor(self, index: int) -> Any:
    actor_class: Any = GradientWorkerActor  # ray.remote made it an ActorClass (typed as the class it wraps)
    return actor_class.options(**self._options).remote(self.config, index, self.seed)

  def _went_down(self, index: int, probe_at: float | None = None) -> None:
    now = time.monotonic()
    since = self._restarting[index][2] if index in self._restarting else now
    self._restarting[index] = (None, now if probe_at is None else probe_at, since)
    if index in self._kept:
      self._restore.add(index)

  def _put(self, theta: Any) -> ray.ObjectRef:
    return ray.put(packed_tree(theta))  # one buffer, not one per leaf, for every worker to read

  def _published(self) -> None:
    self._snapshot = dict(self._kept)

  def _queued(self) -> int:
    return self._queued_estimates

  def _down_since(self, index: int) -> float | None:
    down = self._restarting.get(index)
    return None if down is None else down[2]

  def _start(self, index: int, theta: ray.ObjectRef, step: int) -> ray.ObjectRef:
    actor = self.actors[index]
    if index in self._restore:
      self._restore.discard(index)
      actor.load_particles.remote(self._kept[index])  # runs before the call below (one caller: in order)
    if self.keep_particles:
      ref, kept = actor.compute_and_keep.options(num_returns=2).remote(theta, step)
      self._in_flight_kept[index] = kept
    else:
      ref = actor.compute.remote(theta, step)
    self._calls[ref] = index
    return ref

  def _next(self, deadline: float | None) -> tuple[int, Estimate | None] | None:
    """The next event: an ended call, a worker back up, or (-1, None) after ``WAIT_SECONDS`` of nothing."""
    if not self._events and (self._calls or self._restarting):
      if self.interrupted or (deadline is not None and time.monotonic() >= deadline):
        return None
      self._pump(deadline)
      if not self._events:
        return -1, None  # a tick: the caller looks again at who can start (a patience may have run out)
    if not self._events:
      return None
    event = self._events.popleft()
    self._queued_estimates -= 0 if event[1] is None else event[1].count
    return event

  def wait_for_workers(self, count: int | None = None, timeout: float | None = None) -> int:
    """Waits until ``count`` workers (default: all) are up, or ``timeout`` seconds; returns how many are.

    Nothing is lost meanwhile: calls that end are kept for the next ``gather``.
    """
    count = self.num_workers if count is None else count
    deadline = None if timeout is None else time.monotonic() + timeout
    while self.live_workers() < count and self._restarting and not self.interrupted:
      if deadline is not None and time.monotonic() >= deadline:
        break
      self._pump(deadline)
    return self.live_workers()

  def _pump(self, deadline: float | None) -> bool:
    """Waits up to ``WAIT_SECONDS`` for calls and probes; queues what ended in ``self._events``.

    Returns:
      Whether anything ended.
    """
    now = time.monotonic()
    # Calls to a restarting actor fail at once (with max_task_retries=0): probe it every PROBE_SECONDS.
    for index, (probe, when, since) in list(self._restarting.items()):
      if probe is None and now >= when:
        self._restarting[index] = (self.actors[index].node_id.remote(), when, since)
    probes = {probe: index for index, (probe, _, _) in self._restarting.items() if probe is not None}
    refs = [*self._calls, *probes]
    waits = [WAIT_SECONDS] + ([deadline - now] if deadline is not None else [])
    waits += [when - now for probe, when, _ in self._restarting.values() if probe is None]
    # Everything that is ready, in one ray.wait when something is (a batch, not one call per estimate).
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
    if not ready and refs:
      ready, _ = ray.wait(refs, num_returns=1, timeout=max(0.0, min(waits)))
    elif not refs:
      time.sleep(max(0.0, min(waits)))
    for ref in ready:
      if ref in probes:
        self._probed(probes[ref], ref)
    self._finish_all([ref for ref in ready if ref in self._calls])
    return bool(ready)

  def _probed(self, index: int, probe: ray.ObjectRef) -> None:
    try:
      self._nodes[index] = ray.get(probe)
    except RayActorError as error:
      if isinstance(error, ActorDiedError):  # restarts exhausted (or its constructor raised): replace it
        self._failed(index, error)
        self._replace(index)
        self._events.append((index, None))
      else:
        self._went_down(index, probe_at=time.monotonic() + PROBE_SECONDS)
      return
    del self._restarting[index]
    self._came_up(index)
    self._events.append((index, None))

  def _finish_all(self, refs: list[ray.ObjectRef]) -> None:
    """Collects ended calls: estimates in one ``ray.get``; a call whose actor died, one at a time."""
    try:
      values = ray.get(refs)
    except RayActorError:
      values = [None] * len(refs)
    for ref, value in zip(refs, values):
      index = self._calls.pop(ref)
      self._call_ended(index)
      kept = self._in_flight_kept.pop(index, None)
      if value is None:
        try:
          value = ray.get(ref)
        except RayActorError as error:
          self._lost(index, error)
          continue
      self._failures[index] = 0
      if kept is not None:
        self._kept[index] = kept
      self._events.append((index, value))
      self._queued_estimates += 1

  def _lost(self, index: int, error: RayActorError) -> None:
    self._call_lost(index)  # it owes its estimate on this theta: it is waited for (patience)
    self._failed(index, error)
    if isinstance(error, ActorDiedError):  # dead for good (restarts exhausted or disabled)
      self._replace(index)
    else:  # ActorUnavailableError: Ray is restarting it (or lost touch with it for a while)
      self._went_down(index)
    self._events.append((index, None))

  def _failed(self, index: int, error: RayActorError) -> None:
    """Counts a lost call or a dead actor of worker ``index``; gives up after ``max_failures`` in a row."""
    self._failures[index] += 1
    if self._failures[index] >= self.max_failures:
      raise RuntimeError(
        f"worker {index} failed {self._failures[index]} times in a row (calls lost or its actor dead) without "
        f"an estimate; last error: {error}"
      ) from error

  def _settled(self, index: int) -> bool:
    return super()._settled(index) and index not in self._restarting

  def _get_particles(self, indices: list[int]) -> list[dict | None]:
    if self.keep_particles:
      return self._read_kept({index: self._kept[index] for index in indices if index in self._kept}, indices)
    refs = [self.actors[index].particles.remote() for index in indices]
    particles = []
    for ref in refs:
      try:
        particles.append(ray.get(ref))
      except RayActorError:  # died meanwhile: its runs restart fresh anyway
        particles.append(None)
    return particles

  def published_particles(self) -> dict[str, dict]:
    indices = sorted(self._snapshot)
    saved = zip(indices, self._read_kept(self._snapshot, indices))
    return {f"worker_{index}": leaves for index, leaves in saved if leaves}

  def _read_kept(self, kept: dict[int, ray.ObjectRef], indices: list[int]) -> list[dict | None]:
    """The kept particles of ``indices`` (None where none is kept or its copy was lost with its node)."""
    values: list[dict | None] = []
    for index in indices:
      try:
        values.append(ray.get(kept[index], timeout=BACKUP_TIMEOUT) if index in kept else None)
      except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
        values.append(None)
    return values

  def _set_particles(self, index: int, leaves: dict) -> bool:
    try:
      loaded = ray.get(self.actors[index].load_particles.remote(leaves))
    except RayActorError:
      return False
    if loaded and self.keep_particles:
      self._kept[index] = ray.put(leaves)
    return loaded

  def _replace(self, index: int) -> None:
    """A new actor for worker ``index``; it is down until it answers a probe."""
    ray.kill(self.actors[index], no_restart=True)
    self.actors[index] = self._new_actor(index)
    self._restarting.pop(index, None)
    self._went_down(index)

  def _stop(self) -> None:
    for actor in self.actors:
      ray.kill(actor, no_restart=True)
    self.actors = []
    self._restarting.clear()
    self._calls.clear()
    self._events.clear()
    self._queued_estimates = 0
    self._kept.clear()
    self._snapshot.clear()
    if self._owns_ray:
      ray.shutdown()


# --- the evaluation actor (metatrain.runtime.evaluator computes; this places it in Ray) -----------------


def cluster_cpus() -> float:
  """The CPUs of the Ray cluster this process is connected to (``ray.cluster_resources()``)."""
  return float(ray.cluster_resources().get("CPU", 0.0))


class RayEvaluator(Evaluator):
  """Evaluates in a Ray actor (``num_cpus`` CPUs), in the Ray this process is connected to.

  The actor is created at once (it builds the task and the learned optimizer
  while the workers start) with the environment of the workers
  (:func:`worker_env`: the compilation cache, CPU-only JAX).
  An evaluation whose actor dies, or that raises, is lost (counted in
  :attr:`metatrain.runtime.evaluator.Evaluator.lost`); the actor is then replaced by a new one, which evaluates the
  next theta submitted.

  Args:
    worker: the run's worker config.
    seeds: evaluation runs per theta.
    num_cpus: the actor's CPUs (0: scheduled even where the workers take every CPU).
    env_vars: extra environment variables of the actor (as the workers').
    reference_rates: the Adam reference's initial grid of peak rates.
  """

  def __init__(
    self,
    worker: WorkerConfig,
    seeds: int,
    *,
    num_cpus: float = 1.0,
    env_vars: dict | None = None,
    reference_rates: Sequence[float] = REFERENCE_RATES,
  ):
    super().__init__()
    self.worker, self.seeds, self.reference_rates = worker, seeds, tuple(reference_rates)
    self._actor_class = ray.remote(EvaluationActor).options(
      num_cpus=num_cpus,
      max_restarts=0,  # a dead actor is replaced: a new one starts clean
      max_task_retries=0,
      runtime_env={"env_vars": worker_env(env_vars=env_vars)},
    )
    self.actor = self._new_actor()
    self._call: Any = None

  def _new_actor(self) -> Any:
    return self._actor_class.remote(self.worker, self.seeds, reference_rates=self.reference_rates)

  def running(self) -> bool:
    """Whether a call to the actor has not ended yet."""
    if self._call is None:
      return False
    ready, _ = ray.wait([self._call], timeout=0)
    return not ready

  def _start(self, theta: Theta, step: int, *, reference: bool) -> None:
    self._call = self.actor.evaluate.remote(theta, step, reference)

  def _collect(self) -> list[Evaluation | None]:
    if self._call is None or self.running():
      return []
    call, self._call = self._call, None
    try:
      return [ray.get(call)]
    except RayActorError as error:
      tqdm.tqdm.write(f"warning: the evaluation actor died ({error}); starting a new one.")
      ray.kill(self.actor, no_restart=True)
      self.actor = self._new_actor()
    except RayError as error:
      tqdm.tqdm.write(f"warning: an evaluation failed: {error}")
    return [None]

  def close(self) -> None:
    """Kills the actor (a running evaluation is abandoned)."""
    if ray.is_initialized():
      ray.kill(self.actor, no_restart=True)
    self._call = None
