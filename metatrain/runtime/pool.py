"""Pools of gradient workers: the scheduling every pool shares, and a pool in this process. No Ray here.

A pool turns published meta-parameters into a stream of
:class:`metatrain.runtime.worker.Estimate`. The learner loop is::

  pool.publish(theta, step)
  while training:
    estimates = pool.gather(count)  # computed at `step` or, asynchronously, earlier
    theta, step = apply(estimates)  # drops estimates older than the staleness allows
    pool.publish(theta, step)

Scheduling rules, shared by :class:`InProcessPool` and
:class:`metatrain.runtime.ray_pool.RayPool` through :class:`WorkerPool`, which
asks :func:`schedule` (a pure function of the pool's state, the time and
the patience) whom to start:

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
restarted gets that worker's estimate, computed on the particles it had
(when the pool keeps them, see :class:`metatrain.runtime.ray_pool.RayPool`),
and the run retraces the one without the fault; a worker down for longer
(a lost node, a cluster without room for it) is given up on for this
theta, and the live ones compute the estimates it owes. A worker that comes
back up starts on the latest theta if it has not yet and a call is needed.

:meth:`WorkerPool.interrupt` (a SIGTERM handler calls it) makes a ``gather`` in
progress return at once, with the estimates it has.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any, NamedTuple

import jax
import numpy as np

from metatrain.runtime.config import WorkerConfig
from metatrain.runtime.worker import Estimate, GradientWorker
from metatrain.types import Theta


class PoolView(NamedTuple):
  """A pool's workers at one moment, as :func:`schedule` sees them.

  Attributes:
    idle: the workers that can take a call now (up, not computing), in the order to try them.
    started: the workers started on the current theta (computing, done, or down since).
    down_since: the workers that are down, each with the time it went down.
    in_flight: the estimates on their way: calls computing, and estimates ended but not yet
      handed out by ``gather``.
  """

  idle: Sequence[int]
  started: Set[int]
  down_since: Mapping[int, float]
  in_flight: int


def waiting_for(view: PoolView, *, now: float, patience: float) -> tuple[int, ...]:
  """The down workers still waited for: not started on the current theta, down for less than ``patience``.

  A down worker that has not started on the current theta owes its estimate
  on it; after ``patience`` seconds it is given up on (for this theta).

  Args:
    view: the pool's workers.
    now: the time, on the clock of ``view.down_since``.
    patience: seconds a down worker is waited for.

  Returns:
    Their indices, in increasing order.
  """
  down = sorted(view.down_since.items())
  return tuple(index for index, since in down if index not in view.started and now - since < patience)


def schedule(view: PoolView, needed: int, *, now: float, patience: float) -> tuple[int, ...]:
  """The workers to start now, in order: the scheduling rule of every :class:`WorkerPool`.

  Starts idle workers until ``needed`` estimates are in flight. Workers not
  yet started on the current theta go first, in ``view.idle``'s order; one
  already started on it goes again only when no down worker is still waited
  for (:func:`waiting_for`), since that one owes its estimate on this theta
  and the others would compute it in its place. A pure function: the pool
  passes the time and applies the decision.

  Args:
    view: the pool's workers.
    needed: the estimates wanted in flight (what ``publish`` or ``gather`` still wants).
    now: the time, on the clock of ``view.down_since``.
    patience: seconds a down worker is waited for.

  Returns:
    The indices of the workers to start, at most ``needed - view.in_flight``.

  Example (worker 2 went down at time 0 before starting on this theta)::

    >>> view = PoolView(idle=[0, 1], started={0, 1}, down_since={2: 0.0}, in_flight=0)
    >>> schedule(view, 3, now=10.0, patience=60.0)  # worker 2 is waited for: nobody goes again
    ()
    >>> schedule(view, 3, now=60.0, patience=60.0)  # given up on: 0 and 1 compute what it owes
    (0, 1)
  """
  room = needed - view.in_flight
  if room <= 0:
    return ()
  fresh = [index for index in view.idle if index not in view.started]
  again = [index for index in view.idle if index in view.started]
  if len(fresh) < room and waiting_for(view, now=now, patience=patience):
    again = []  # the estimate still owed on this theta is the down worker's to compute, not theirs
  return tuple(fresh + again)[:room]


class WorkerPool:
  """The scheduling rules of every pool (see the module docstring); subclasses say how a call runs.

  The bookkeeping lives here: the latest theta, the calls in flight
  (``self._busy``: worker index -> the handle ``_start`` returned; subclasses
  read it, never write it), the workers started on the current theta, and
  ``lost``. Whom to start is :func:`schedule`'s decision. A subclass tells the
  pool what happened to its calls and workers by calling:

  - ``_call_ended(index)``: worker ``index``'s call ended (with an estimate or
    not); returns its handle;
  - ``_call_lost(index)``: that call's estimate was lost (after
    ``_call_ended``): it counts in ``lost``, and the worker owes an estimate on
    the current theta again;
  - ``_came_up(index)``: worker ``index``, down until now, is up.

  And implements these hooks:

  - ``_start(index, theta, step)``: start worker ``index`` on ``theta`` (what
    ``_put`` returned) at outer step ``step``; returns a handle for the call;
  - ``_next(deadline)``: wait for the next event and return ``(index,
    estimate)`` when a call ended, with ``estimate=None`` when the call was
    lost or when worker ``index`` came up, or ``(-1, None)`` when nothing
    happened for a while (the pool looks again: a patience may have run
    out); return ``None`` when ``deadline`` passed first or nothing is left
    to wait for;
  - ``_submit()``: called after the ``_start`` calls of one decision (a pool
    that sends the calls of one node together sends them here);
  - ``_put(theta)``: how a theta is shared with workers (default: as it is);
  - ``_down_since(index)``: since when worker ``index`` has been down (None:
    it is up; default: always up); a down worker takes no call;
  - ``_queued()``: estimates that ended and wait to be handed out (default: 0);
  - ``_published()``: called by ``publish`` before it starts the workers;
  - ``_settled``, ``_get_particles``, ``_set_particles``: the workers'
    particles, for checkpoints; ``_stop()``: called once by ``close``.

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
      A pool that sums estimates (per node) returns sums, each counting as its
      :attr:`~metatrain.runtime.estimate.Estimate.count` estimates (the last one may take the total past ``count``).
    """
    self._check_open()
    if self._theta is None:
      raise RuntimeError("publish a theta before gathering estimates.")
    deadline = None if timeout is None else time.monotonic() + timeout
    self._start_idle(self.num_workers)
    estimates: list[Estimate] = []
    got = 0
    while got < count and not self.interrupted:
      finished = self._next(deadline)
      if finished is None:
        break
      _, estimate = finished
      if estimate is not None:
        estimates.append(estimate)
        got += estimate.count
      self._start_idle(count - got)
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

  # --- scheduling: the pool's state, handed to `schedule` ----------------------------------------------

  def _start_idle(self, needed: int, among: Iterable[int] | None = None) -> None:
    """Starts the workers :func:`schedule` picks for ``needed`` estimates in flight.

    Args:
      needed: the estimates wanted in flight; the latest value is kept for :meth:`_came_up`.
      among: the workers that may start (default: all).
    """
    self._needed = needed
    candidates = range(self.num_workers) if among is None else among
    down_since = {index: since for index in range(self.num_workers) if (since := self._down_since(index)) is not None}
    idle = [index for index in candidates if index not in self._busy and index not in down_since]
    view = PoolView(idle=idle, started=frozenset(self._started), down_since=down_since, in_flight=self._in_flight())
    for index in schedule(view, needed, now=time.monotonic(), patience=self.patience):
      assert self._step is not None  # a theta is published: every caller checks it
      self._busy[index] = self._start(index, self._theta, self._step)
      self._started.add(index)
    self._submit()

  def _in_flight(self) -> int:
    """Estimates on their way: the calls computing, and those ended but not yet handed to ``gather``."""
    return len(self._busy) + self._queued()

  # --- what a subclass reports ---------------------------------------------------------------------------

  def _call_ended(self, index: int) -> Any:
    """Worker ``index``'s call ended: it is idle; returns the handle ``_start`` gave for the call."""
    return self._busy.pop(index)

  def _call_lost(self, index: int) -> None:
    """Worker ``index``'s call ended without an estimate: counted, and it owes one on this theta again."""
    self.lost += 1
    self._started.discard(index)  # so it is waited for (patience), or the others compute its estimate

  def _came_up(self, index: int) -> None:
    """Worker ``index``, down until now, is up: it starts on the latest theta if it has not yet and is needed."""
    if self._theta is None or self._closed or index in self._started:
      return
    self._start_idle(self._needed, among=[index])

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("this pool is closed.")

  # --- hooks ---------------------------------------------------------------------------------------------

  def _put(self, theta: Any) -> Any:
    return theta

  def _down_since(self, index: int) -> float | None:
    return None

  def _queued(self) -> int:
    """Estimates that ended and wait to be handed out by ``gather`` (a subclass that batches them)."""
    return 0

  def _published(self) -> None:
    """Called by ``publish`` before it starts the workers (a subclass may snapshot what it keeps)."""

  def _settled(self, index: int) -> bool:
    """Whether worker ``index``'s particles can be read now (no call computing on them)."""
    return index not in self._busy

  def _get_particles(self, indices: list[int]) -> list[dict | None]:
    raise NotImplementedError

  def _set_particles(self, index: int, leaves: dict) -> bool:
    raise NotImplementedError

  def _start(self, index: int, theta: Any, step: int) -> Any:
    raise NotImplementedError

  def _next(self, deadline: float | None) -> tuple[int, Estimate | None] | None:
    raise NotImplementedError

  def _stop(self) -> None:
    pass

  def _submit(self) -> None:
    """Called after ``_start`` has been called for every worker started at once (a subclass may send them together)."""


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

  def _start(self, index: int, theta: Any, step: int) -> tuple[Any, int]:
    return theta, step  # the call runs when gather reaches it

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
    theta, step = self._call_ended(index)
    self._cursor = index + 1
    return index, self.workers[index].compute(theta, step)
