"""Gradient workers as Ray actors: :class:`RayPool`. The only module that imports Ray.

The layer is thin: ``GradientWorkerActor`` (a Ray actor class) wraps
:class:`metatrain.runtime.worker.GradientWorker` unchanged, and :class:`RayPool` follows
the scheduling rules of :class:`metatrain.runtime.pool.WorkerPool`, so it returns the
same estimates as :class:`metatrain.runtime.pool.InProcessPool` for the same seed and
thetas. Theta is put in Ray's object store once per publish and every actor
call receives the reference (one copy per node, not one per call).

Faults: an actor that dies during a call loses that call's estimate (counted
in ``pool.lost``; with ``max_task_retries=0`` a call is never run twice, so an
estimate is returned at most once). Ray restarts the actor (``max_restarts``,
unlimited by default; it re-creates its GradientWorker, whose inner runs start
afresh) and the pool starts it again on the latest theta; an actor that is
dead for good is replaced by a new one with the same worker id.

Devices: an actor sees the accelerators it asks Ray for (``num_gpus``, or
``resources={"TPU": n}``) and nothing else; its GradientWorker computes with
``jax.jit`` on what its JAX shows it (how it spreads the pairs over several
local devices is the worker's business). Without accelerators the actor's JAX
is pinned to the CPU (``JAX_PLATFORMS=cpu``).
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray.exceptions import ActorDiedError, RayActorError  # noqa: E402

from metatrain.runtime.config import WorkerConfig  # noqa: E402
from metatrain.runtime.pool import WorkerPool  # noqa: E402
from metatrain.runtime.worker import Estimate, GradientWorker  # noqa: E402

PROBE_SECONDS = 0.5  # how often a restarting actor is asked whether it is back


@ray.remote(max_restarts=-1, max_task_retries=0)
class GradientWorkerActor:
  """A :class:`GradientWorker` in its own process; its inner runs never leave it.

  Args: as :class:`GradientWorker`.
  """

  def __init__(self, config: WorkerConfig, worker_id: int, seed: int = 0):
    self.worker = GradientWorker(config, worker_id, seed)

  def compute(self, theta: Any, theta_step: int) -> Estimate:
    """One estimate at ``theta`` (Ray resolves a published ObjectRef to the numpy pytree)."""
    return self.worker.compute(theta, theta_step)

  def initial_theta(self, seed: int) -> Any:
    """The learned optimizer's initial meta-parameters for ``seed``, as numpy."""
    return self.worker.initial_theta(seed)

  def particles(self) -> dict | None:
    """The inner runs' state as numpy (see :meth:`GradientWorker.particles`)."""
    return self.worker.particles()

  def load_particles(self, leaves: dict) -> bool:
    """Replaces the inner runs (see :meth:`GradientWorker.load_particles`)."""
    return self.worker.load_particles(leaves)

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

  Args:
    config: the workers' configuration (plain values: it travels to the actors).
    num_workers: the number of actors; actor ``i`` has ``worker_id=i``.
    seed: the run's seed.
    address: the Ray address (``None``: start a local Ray; ``"auto"``: the running cluster).
    num_cpus: CPUs reserved per actor.
    num_gpus: GPUs per actor (a worker uses the devices it is given).
    resources: custom resources per actor (``{"TPU": 4}`` on a TPU VM).
    max_restarts: Ray restarts of a dead actor (-1: unlimited); once dead for good it is replaced.
    max_failures: consecutive lost calls of one worker, without an estimate in between, before
      ``gather`` gives up with a ``RuntimeError`` (a worker that cannot even start).
    env_vars: extra environment variables for the actors (see :func:`worker_env`).

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
  ):
    super().__init__(num_workers)
    self._owns_ray = not ray.is_initialized()
    if self._owns_ray:
      ray.init(address=address or None)
    self.config, self.seed, self.max_failures = config, seed, max_failures
    self._options = dict(
      num_cpus=num_cpus,
      num_gpus=num_gpus,
      resources=resources or {},
      max_restarts=max_restarts,
      max_task_retries=0,
      runtime_env={"env_vars": worker_env(num_gpus=num_gpus, resources=resources, env_vars=env_vars)},
    )
    self.actors = [self._new_actor(index) for index in range(num_workers)]
    self._failures = [0] * num_workers
    # Workers whose actor Ray is restarting: index -> (probe call or None, when to probe next).
    self._restarting: dict[int, tuple[ray.ObjectRef | None, float]] = {}

  def _new_actor(self, index: int) -> Any:
    actor_class: Any = GradientWorkerActor  # ray.remote made it an ActorClass (typed as the class it wraps)
    return actor_class.options(**self._options).remote(self.config, index, self.seed)

  def _put(self, theta: Any) -> ray.ObjectRef:
    return ray.put(theta)

  def _available(self, index: int) -> bool:
    return index not in self._restarting

  def _start(self, index: int) -> ray.ObjectRef:
    return self.actors[index].compute.remote(self._theta, self._step)

  def _next(self, deadline: float | None) -> tuple[int, Estimate | None] | None:
    while self._busy or self._restarting:
      now = time.monotonic()
      # Calls to a restarting actor fail at once (with max_task_retries=0): probe it every PROBE_SECONDS.
      for index, (probe, when) in list(self._restarting.items()):
        if probe is None and now >= when:
          self._restarting[index] = (self.actors[index].pid.remote(), when)
      calls = {ref: index for index, ref in self._busy.items()}
      probes = {probe: index for index, (probe, _) in self._restarting.items() if probe is not None}
      waits = [deadline - now] if deadline is not None else []
      waits += [when - now for probe, when in self._restarting.values() if probe is None]
      ready, _ = ray.wait([*calls, *probes], num_returns=1, timeout=max(0.0, min(waits)) if waits else None)
      if ready and ready[0] in probes:
        index = probes[ready[0]]
        try:
          ray.get(ready[0])
        except RayActorError as error:
          if isinstance(error, ActorDiedError):  # restarts exhausted: replace it
            self._replace(index)
            return index, None
          self._restarting[index] = (None, time.monotonic() + PROBE_SECONDS)
          continue
        del self._restarting[index]
        return index, None
      if ready:
        return self._finish(calls[ready[0]], ready[0])
      if deadline is not None and time.monotonic() >= deadline:
        return None
    return None

  def _finish(self, index: int, ref: ray.ObjectRef) -> tuple[int, Estimate | None]:
    """Collects worker ``index``'s ended call: its estimate, or ``None`` when its actor died during it."""
    del self._busy[index]
    try:
      estimate = ray.get(ref)
    except RayActorError as error:
      self.lost += 1
      self._failures[index] += 1
      if self._failures[index] >= self.max_failures:
        raise RuntimeError(
          f"worker {index} lost {self._failures[index]} calls in a row without an estimate; last error: {error}"
        ) from error
      if isinstance(error, ActorDiedError):  # dead for good (restarts exhausted or disabled)
        self._replace(index)
      else:  # ActorUnavailableError: Ray is restarting it (or lost touch with it for a while)
        self._restarting[index] = (None, time.monotonic())
      return index, None
    self._failures[index] = 0
    return index, estimate

  def _settled(self, index: int) -> bool:
    return index not in self._busy and index not in self._restarting

  def _get_particles(self, indices: list[int]) -> list[dict | None]:
    refs = [self.actors[index].particles.remote() for index in indices]
    particles = []
    for ref in refs:
      try:
        particles.append(ray.get(ref))
      except RayActorError:  # died meanwhile: its runs restart fresh anyway
        particles.append(None)
    return particles

  def _set_particles(self, index: int, leaves: dict) -> bool:
    try:
      return ray.get(self.actors[index].load_particles.remote(leaves))
    except RayActorError:
      return False

  def _replace(self, index: int) -> None:
    """A new actor for worker ``index``; calls to it wait until it is created."""
    ray.kill(self.actors[index], no_restart=True)
    self.actors[index] = self._new_actor(index)
    self._restarting.pop(index, None)

  def _stop(self) -> None:
    for actor in self.actors:
      ray.kill(actor, no_restart=True)
    self.actors = []
    self._restarting.clear()
    if self._owns_ray:
      ray.shutdown()
