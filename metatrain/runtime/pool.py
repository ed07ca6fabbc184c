"""Pools of gradient workers: the scheduling every pool shares, and a pool in this process. No Ray here.

A pool turns published meta-parameters into a stream of
:class:`metatrain.runtime.worker.Estimate`. The learner loop is::

  pool.publish(theta, step)
  while training:
    estimates = pool.gather(count)  # computed at `step` or, asynchronously, earlier
    theta, step = apply(estimates)  # drops estimates older than the staleness allows
    pool.publish(theta, step)

Scheduling rules, shared by :class:`InProcessPool` and
:class:`metatrain.runtime.ray_pool.RayPool` through :class:`WorkerPool`:

- ``publish`` starts every idle worker on the new theta;
- ``gather`` first starts every idle worker on the latest published theta,
  then returns estimates in the order they finish; a worker whose estimate
  was returned is started again only while the estimates still needed
  outnumber the calls in flight (otherwise it waits, idle, for the next
  ``publish`` or ``gather``, so it never starts on a theta about to be
  replaced).

So a synchronous learner (publish, gather ``num_workers``) gets exactly one
estimate per worker, all computed at the current step, and an asynchronous
one (gather fewer than ``num_workers``) keeps every worker busy and gets
estimates tagged with the older ``theta_step`` they were computed at. An
estimate is returned at most once; estimates lost to dead workers are
counted in ``lost`` and replaced by new calls on the latest theta.

A worker that is down (its actor restarting, or waiting for resources) is
waited for: while such a worker has not started on the current theta, the
workers that have are not started on it again, for up to ``patience``
seconds after it went down. So a synchronous learner whose worker was
restarted gets that worker's estimate, computed on the inner runs it had
(when the pool keeps them, see :class:`metatrain.runtime.ray_pool.RayPool`),
and the run retraces the one without the fault; a worker down for longer
(a lost node, a cluster without room for it) is given up on for this
theta, and the live ones compute the estimates it owes.

:meth:`WorkerPool.interrupt` (a SIGTERM handler calls it) makes a ``gather`` in
progress return at once, with the estimates it has.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import jax
import numpy as np

from metatrain.runtime.config import WorkerConfig
from metatrain.runtime.worker import Estimate, GradientWorker
from metatrain.types import Theta


class WorkerPool:
  """The scheduling rules of every pool (see the module docstring); subclasses say how a call runs.

  Subclasses implement ``_put(theta)`` (how a theta is shared with workers),
  ``_start(index)`` (start worker ``index`` on ``self._theta`` at
  ``self._step``; returns a handle kept in ``self._busy[index]``) and
  ``_next(deadline)``: wait for the next event, and return ``(index,
  estimate)`` when a call ended (removing it from ``self._busy``), with
  ``estimate=None`` when the call was lost (the subclass counts it in
  ``self.lost``) or when worker ``index`` became available again; return
  ``None`` when ``deadline`` passed first or nothing is left to wait for.
  ``_available(index)`` says whether a worker can take a call now (a
  restarting one cannot).

  ``_down_since(index)`` says since when a worker has been down (None: it is up).

  Args:
    num_workers: the number of workers (at least 1).
    patience: seconds a down worker is waited for before the others compute its estimates.
  """

  def __init__(self, num_workers: int, *, patience: float = 60.0):
    if num_workers < 1:
      raise ValueError(f"a pool needs at least one worker, got num_workers={num_workers}.")
    if patience < 0:
      raise ValueError(f"patience must not be negative, got {patience}.")
    self.num_workers, self.patience = num_workers, patience
    self.lost = 0
    self._theta: Any = None
    self._step: int | None = None
    self._busy: dict[int, Any] = {}
    self._started: set[int] = set()  # workers started on the current theta
    self._needed = num_workers  # the calls in flight that the latest publish or gather wants
    self._closed = False
    self._interrupt = threading.Event()

  def publish(self, theta: Theta, step: int) -> None:
    """Makes ``theta`` (a numpy pytree) at outer step ``step`` the latest; idle workers start on it.

    Args:
      theta: the meta-parameters, a pytree of numpy arrays.
      step: the outer step they belong to; estimates computed on them carry it as ``theta_step``.
    """
    self._check_open()
    self._theta, self._step = self._put(theta), int(step)
    self._started = set()
    self._published()
    self._start_idle(self.num_workers)

  def gather(self, count: int, timeout: float | None = None) -> list[Estimate]:
    """Returns the next ``count`` estimates to finish, in the order they finish.

    Args:
      count: the number of estimates wanted.
      timeout: seconds to wait at most (``None``: no limit).

    Returns:
      ``count`` estimates, or fewer when ``timeout`` passed first or the pool
      was interrupted (the calls still in flight deliver theirs to later gathers).
    """
    self._check_open()
    if self._theta is None:
      raise RuntimeError("publish a theta before gathering estimates.")
    deadline = None if timeout is None else time.monotonic() + timeout
    self._start_idle(self.num_workers)
    estimates: list[Estimate] = []
    while len(estimates) < count and not self.interrupted:
      finished = self._next(deadline)
      if finished is None:
        break
      _, estimate = finished
      if estimate is not None:
        estimates.append(estimate)
      self._start_idle(count - len(estimates))
    return estimates

  def interrupt(self) -> None:
    """Makes the ``gather`` in progress, and every later one, return at once (safe from a signal handler)."""
    self._interrupt.set()

  @property
  def interrupted(self) -> bool:
    """Whether :meth:`interrupt` was called."""
    return self._interrupt.is_set()

  def live_workers(self) -> int:
    """The workers up now (not restarting, not waiting for resources)."""
    return sum(self._down_since(index) is None for index in range(self.num_workers))

  def published_particles(self) -> dict[str, dict]:
    """Every worker's particles as they were at the latest ``publish``, ``{"worker_<i>": leaves}``.

    What a checkpoint at the published step holds when the run stops in the
    middle of a gather (a preemption); ``{}`` when the pool keeps no copies.
    """
    return {}

  def particles(self) -> dict[str, dict]:
    """The particle states of the workers not computing now, ``{"worker_<i>": leaves}``, for checkpoints.

    A synchronous learner calls it between ``gather`` and ``publish``, when
    every worker is idle and its particles belong to the learner's step.
    """
    self._check_open()
    indices = [index for index in range(self.num_workers) if self._settled(index)]
    saved = zip(indices, self._get_particles(indices))
    return {f"worker_{index}": leaves for index, leaves in saved if leaves}

  def load_particles(self, saved: dict[str, dict]) -> list[int]:
    """Gives each worker its particles from :meth:`particles`; returns the workers that took them.

    Workers with none saved, or whose saved particles do not fit their
    configuration (another estimator or number of pairs), start fresh runs.
    """
    self._check_open()
    loaded = []
    for index in range(self.num_workers):
      leaves = saved.get(f"worker_{index}")
      if leaves and self._set_particles(index, leaves):
        loaded.append(index)
    return loaded

  def close(self) -> None:
    """Stops the workers and forgets the calls in flight."""
    if not self._closed:
      self._closed = True
      self._busy.clear()
      self._stop()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def _start_idle(self, needed: int) -> None:
    """Starts idle workers until ``needed`` calls are in flight (or all are busy).

    Workers not yet started on the current theta go first, lowest index first;
    one already started on it goes again only when no worker that has not
    been is down for less than ``patience`` seconds.
    """
    self._needed = needed
    if self._in_flight() >= needed:
      return
    idle = [i for i in range(self.num_workers) if i not in self._busy and self._available(i)]
    fresh = [i for i in idle if i not in self._started]
    again = [i for i in idle if i in self._started]
    if again and self._in_flight() + len(fresh) < needed and self._waiting():
      again = []
    for index in fresh + again:
      if self._in_flight() >= needed:
        return
      self._start_worker(index)

  def _in_flight(self) -> int:
    """Estimates on their way: the calls computing, and those ended but not yet handed to ``gather``."""
    return len(self._busy) + self._queued()

  def _start_worker(self, index: int) -> None:
    self._busy[index] = self._start(index)
    self._started.add(index)

  def _came_up(self, index: int) -> None:
    """A worker that was down is up: it starts on the latest theta if it has not yet and is needed."""
    if self._theta is None or self._closed or index in self._started or index in self._busy:
      return
    if self._in_flight() < self._needed:
      self._start_worker(index)

  def _waiting(self) -> bool:
    """Whether a worker not started on the current theta is down, for less than ``patience`` seconds."""
    now = time.monotonic()
    for index in range(self.num_workers):
      since = self._down_since(index) if index not in self._started else None
      if since is not None and now - since < self.patience:
        return True
    return False

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("this pool is closed.")

  def _put(self, theta: Any) -> Any:
    return theta

  def _available(self, index: int) -> bool:
    return True

  def _queued(self) -> int:
    """Estimates that ended and wait to be handed out by ``gather`` (a subclass that batches them)."""
    return 0

  def _down_since(self, index: int) -> float | None:
    return None

  def _published(self) -> None:
    """Called by ``publish`` before it starts the workers (a subclass may snapshot what it keeps)."""

  def _settled(self, index: int) -> bool:
    """Whether worker ``index``'s particles can be read now (no call computing on them)."""
    return index not in self._busy

  def _get_particles(self, indices: list[int]) -> list[dict | None]:
    raise NotImplementedError

  def _set_particles(self, index: int, leaves: dict) -> bool:
    raise NotImplementedError

  def _start(self, index: int) -> Any:
    raise NotImplementedError

  def _next(self, deadline: float | None) -> tuple[int, Estimate | None] | None:
    raise NotImplementedError

  def _stop(self) -> None:
    pass


class InProcessPool(WorkerPool):
  """``num_workers`` :class:`GradientWorker` s in this process, run one after another (round robin).

  Same scheduling as the Ray pool, and the same estimates for the same seed
  and thetas: a "started" worker holds the theta and step it was started on
  and computes when ``gather`` reaches it, in round-robin order from the
  worker after the last one that finished. Use it for tests, debugging and
  single-process runs.

  Args:
    config: the workers' configuration.
    num_workers: the number of workers; worker ``i`` has ``worker_id=i``.
    seed: the run's seed (each worker derives its keys from ``(seed, i)``).

  Example::

    pool = InProcessPool(WorkerConfig(num_pairs=2, truncation=5, horizon=20), 2, seed=0)
    pool.publish(pool.workers[0].initial_theta(0), 0)
    estimates = pool.gather(2)  # one per worker, both at theta_step 0
  """

  def __init__(self, config: WorkerConfig, num_workers: int, seed: int = 0):
    super().__init__(num_workers, patience=0.0)
    self.workers = [GradientWorker(config, index, seed) for index in range(num_workers)]
    self._cursor = 0
    self._snapshot: list[Any] = [None] * num_workers

  def _published(self) -> None:
    self._snapshot = [worker.state for worker in self.workers]  # immutable jax arrays: no copy

  def published_particles(self) -> dict[str, dict]:
    saved = {}
    for index, (worker, state) in enumerate(zip(self.workers, self._snapshot)):
      if state is not None and worker.family is None:
        saved[f"worker_{index}"] = {f"{i:04d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}
    return saved

  def _start(self, index: int) -> tuple[Any, int]:
    assert self._step is not None  # publish() ran: gather() checks it
    return self._theta, self._step

  def _settled(self, index: int) -> bool:
    return True  # a started call computes only when gathered

  def _get_particles(self, indices: list[int]) -> list[dict | None]:
    return [self.workers[index].particles() for index in indices]

  def _set_particles(self, index: int, leaves: dict) -> bool:
    return self.workers[index].load_particles(leaves)

  def _next(self, deadline: float | None) -> tuple[int, Estimate | None] | None:
    if not self._busy or self.interrupted or (deadline is not None and time.monotonic() >= deadline):
      return None
    index = next(
      i % self.num_workers
      for i in range(self._cursor, self._cursor + self.num_workers)
      if i % self.num_workers in self._busy
    )
    theta, step = self._busy.pop(index)
    self._cursor = index + 1
    return index, self.workers[index].compute(theta, step)
