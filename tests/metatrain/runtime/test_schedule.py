"""The pools' scheduling rule: each rule of :mod:`metatrain.runtime.pool`'s docstring, on the pure function.

:func:`schedule` takes the time as an argument, so these tests need no
threads, no clock and no Ray. The last ones drive :class:`WorkerPool` itself
through its hooks with a scripted pool (calls end, are lost, workers come back
in the order a script says), to check that the pool applies the rule.
"""

import collections
import time

import pytest

from metatrain.runtime.estimate import Estimate
from metatrain.runtime.pool import PoolView, WorkerPool, schedule, waiting_for

PATIENCE = 60.0


def _view(idle, started=(), down_since=None, in_flight=0):
  return PoolView(idle=list(idle), started=frozenset(started), down_since=down_since or {}, in_flight=in_flight)


# --- publish and gather start idle workers -------------------------------------------------------------


def test_publish_starts_every_idle_worker_lowest_index_first():
  assert schedule(_view([0, 1, 2]), 3, now=0.0, patience=PATIENCE) == (0, 1, 2)
  # Worker 1 still computes on the previous theta: the others start on the new one.
  assert schedule(_view([0, 2], in_flight=1), 3, now=0.0, patience=PATIENCE) == (0, 2)


def test_workers_not_started_on_this_theta_go_before_those_that_were():
  view = _view([0, 1, 2], started={0, 1})
  assert schedule(view, 2, now=0.0, patience=PATIENCE) == (2, 0)


def test_nothing_starts_when_the_estimates_needed_are_in_flight():
  assert schedule(_view([0, 1], in_flight=2), 2, now=0.0, patience=PATIENCE) == ()
  assert schedule(_view([0, 1]), 0, now=0.0, patience=PATIENCE) == ()


# --- a returned worker restarts only while needed > in flight ------------------------------------------


def test_a_returned_worker_restarts_only_while_the_estimates_needed_outnumber_the_calls_in_flight():
  # Worker 0 returned its estimate on this theta; 1 and 2 compute theirs.
  view = _view([0], started={0, 1, 2}, in_flight=2)
  assert schedule(view, 2, now=0.0, patience=PATIENCE) == ()  # it would start on a theta about to be replaced
  assert schedule(view, 3, now=0.0, patience=PATIENCE) == (0,)


def test_estimates_ended_but_not_handed_out_count_as_in_flight():
  # Both calls ended in one batch; gather handed out one, the other waits in the queue.
  view = _view([0, 1], started={0, 1}, in_flight=1)
  assert schedule(view, 1, now=0.0, patience=PATIENCE) == ()


@pytest.mark.parametrize("batched", [False, True], ids=["one at a time", "ended together"])
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_a_synchronous_step_starts_each_worker_exactly_once(order, batched):
  """publish, gather(num_workers): the pool's loop, modelled with the pure rule alone."""
  num_workers, busy, started, queued = 3, set(), set(), 0
  starts = collections.Counter()

  def start_idle(needed):
    idle = [index for index in range(num_workers) if index not in busy]
    for index in schedule(_view(idle, started, in_flight=len(busy) + queued), needed, now=0.0, patience=PATIENCE):
      busy.add(index)
      started.add(index)
      starts[index] += 1

  start_idle(num_workers)  # publish
  start_idle(num_workers)  # gather begins
  if batched:
    busy, queued = set(), num_workers
  for returned, index in enumerate(order, start=1):
    if batched:
      queued -= 1
    else:
      busy.discard(index)
    start_idle(num_workers - returned)
  assert starts == {0: 1, 1: 1, 2: 1}


def test_an_asynchronous_learner_keeps_every_worker_busy():
  # gather(1) returned worker 0's estimate; publish of the next theta: 0 starts on it, 1 computes on.
  assert schedule(_view([0], started=(), in_flight=1), 2, now=0.0, patience=PATIENCE) == (0,)


# --- a down worker is waited for, up to patience -------------------------------------------------------


def test_a_down_worker_within_patience_stops_the_others_going_again_on_this_theta():
  # 0 and 1 returned theirs; 2 went down at time 100 before starting on this theta.
  view = _view([0, 1], started={0, 1}, down_since={2: 100.0})
  assert waiting_for(view, now=159.0, patience=PATIENCE) == (2,)
  assert schedule(view, 1, now=159.0, patience=PATIENCE) == ()


def test_workers_that_have_not_started_on_this_theta_still_start_while_one_is_waited_for():
  view = _view([0, 1], started={0}, down_since={2: 100.0})
  assert schedule(view, 2, now=101.0, patience=PATIENCE) == (1,)


def test_after_patience_a_down_worker_is_given_up_on_and_a_live_one_computes_what_it_owes():
  view = _view([0, 1], started={0, 1}, down_since={2: 100.0})
  assert waiting_for(view, now=160.0, patience=PATIENCE) == ()
  assert schedule(view, 1, now=160.0, patience=PATIENCE) == (0,)


def test_a_down_worker_that_started_on_this_theta_is_not_waited_for():
  # Worker 2 delivered its estimate on this theta and went down afterwards: it owes nothing.
  view = _view([0, 1], started={0, 1, 2}, down_since={2: 100.0})
  assert waiting_for(view, now=101.0, patience=PATIENCE) == ()
  assert schedule(view, 1, now=101.0, patience=PATIENCE) == (0,)


def test_a_worker_that_comes_back_is_started_on_the_latest_theta_while_needed():
  # Worker 2 is up again (no longer down, and idle), given up on or not.
  view = _view([2], started={0, 1})
  assert schedule(view, 1, now=1000.0, patience=PATIENCE) == (2,)
  assert schedule(view._replace(in_flight=1), 1, now=1000.0, patience=PATIENCE) == ()


# --- the pool applies the rule --------------------------------------------------------------------------


class ScriptedPool(WorkerPool):
  """A :class:`WorkerPool` whose events come from a script: each entry is a function of the pool that
  returns ``_next``'s answer. No threads, no Ray; a down worker went down on ``time.monotonic()``'s clock."""

  def __init__(self, num_workers, script, *, patience):
    super().__init__(num_workers, patience=patience)
    self.script = list(script)
    self.starts = []  # (index, step), in the order the workers were started
    self.down = {}  # index -> since when it is down

  def _start(self, index, theta, step):
    self.starts.append((index, step))
    return step

  def _down_since(self, index):
    return self.down.get(index)

  def _next(self, deadline):
    return self.script.pop(0)(self) if self.script else None


def _ends(index):
  def event(pool):
    step = pool._call_ended(index)
    return index, Estimate(grad={}, meta_loss=0.0, theta_step=step, worker_id=index, metrics={})

  return event


def _is_lost(index):
  """Worker ``index``'s call is lost and the worker is down (its actor restarting)."""

  def event(pool):
    pool._call_ended(index)
    pool._call_lost(index)
    pool.down[index] = time.monotonic()
    return index, None

  return event


def _comes_up(index):
  def event(pool):
    del pool.down[index]
    pool._came_up(index)
    return index, None

  return event


def test_the_pool_waits_for_a_restarted_worker_and_starts_it_when_it_comes_back():
  script = [_is_lost(1), _ends(0), _ends(2), _comes_up(1), _ends(1)]
  pool = ScriptedPool(3, script, patience=1e6)
  pool.publish({}, 7)
  estimates = pool.gather(3)
  assert [(e.worker_id, e.theta_step) for e in estimates] == [(0, 7), (2, 7), (1, 7)]
  assert pool.starts == [(0, 7), (1, 7), (2, 7), (1, 7)]  # 0 and 2 did not go again in 1's place
  assert pool.lost == 1


def test_the_pool_gives_up_on_a_worker_down_past_patience():
  script = [_is_lost(1), _ends(0), _ends(2), _ends(0)]
  pool = ScriptedPool(3, script, patience=0.0)
  pool.publish({}, 7)
  estimates = pool.gather(3)
  assert [(e.worker_id, e.theta_step) for e in estimates] == [(0, 7), (2, 7), (0, 7)]
  assert pool.starts == [(0, 7), (1, 7), (2, 7), (0, 7)]  # 0 computes the estimate 1 owes
  assert pool.lost == 1


def test_a_worker_that_comes_up_between_gathers_starts_at_once_while_needed():
  pool = ScriptedPool(2, [], patience=1e6)
  pool.down[1] = time.monotonic()  # as a Ray actor is, from its creation until it answers a probe
  pool.publish({}, 3)
  assert pool.starts == [(0, 3)]
  _comes_up(1)(pool)  # as RayPool.wait_for_workers sees it: no gather in progress
  assert pool.starts == [(0, 3), (1, 3)]


def test_a_worker_that_comes_up_when_nothing_is_needed_waits_for_the_next_publish_or_gather():
  pool = ScriptedPool(2, [_ends(0)], patience=1e6)
  pool.down[1] = time.monotonic()
  pool.publish({}, 3)
  assert len(pool.gather(1)) == 1  # the gather has what it wanted: nothing more is needed
  _comes_up(1)(pool)
  assert pool.starts == [(0, 3)]
  pool.publish({}, 4)
  assert pool.starts == [(0, 3), (0, 4), (1, 4)]
