"""One Ray call per node, not per worker: :class:`AggregatingRayPool`, and the actor on every node that it talks to.

With many workers, the learner's cost is Ray's per-call cost (to submit a
call and to collect it), paid once per worker per outer step (measured in
the Benchmarks page of the docs). Here the learner makes one
call per node per step instead: to that node's ``NodeAggregatorActor``,
which starts the node's workers on the theta (read once from the node's
object store), sums their estimates
(:func:`metatrain.runtime.estimate.sum_estimates`) and returns one message.
The learner's mean divides by the counts, so it is the mean over the
workers' estimates up to float rounding (the additions are grouped by node);
with one worker per node it is the same, bit for bit.

The pool keeps the per-worker bookkeeping of :class:`metatrain.runtime.ray_pool.RayPool`
unchanged: whom to start (:func:`metatrain.runtime.pool.schedule`), which
worker's call was lost and why (the aggregator returns each worker's error),
restarts and replacements, kept particles (a worker given its particles back
gets them from the aggregator, just before its call, so in order), and the
patience for down workers. A lost aggregator (its node lost) loses the calls
it carried, each counted in ``lost``, and the particles it kept (Ray's
objects die with their owner: those workers go on from the particles they
have); its workers are probed like any down worker, and where they come up
(the same node, or another) an aggregator is started again. Which node a
worker is on is what its latest probe answered.

A node's message comes when all of its workers' calls have ended, so an
asynchronous learner gets estimates in batches of a node; synchronous
meta-training (the default) is unchanged.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, NamedTuple

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from metatrain.runtime.estimate import Estimate, sum_estimates
from metatrain.runtime.ray_pool import RayPool, worker_env


class NodeCalls(NamedTuple):
  """What one node's aggregator returns for one call: the node's estimates, and what happened to each worker.

  Attributes:
    estimates: :func:`metatrain.runtime.estimate.sum_estimates` of the estimates that came back.
    lost: worker index -> the Ray error of its call, for the calls that ended without an estimate.
    kept: worker index -> its particles after the call (a reference), when the pool keeps them.
  """

  estimates: list[Estimate]
  lost: dict[int, ray.exceptions.RayActorError]
  kept: dict[int, Any]


@ray.remote(max_restarts=0, max_task_retries=0)
class NodeAggregatorActor:
  """Starts its node's workers on one theta and returns their summed estimates in one message.

  An asyncio actor: calls for several thetas (an asynchronous learner) are in flight at once.
  """

  async def compute(self, theta: list, theta_step: int, calls: list[tuple], keep: bool) -> NodeCalls:
    """One call per worker of ``calls``, on ``theta[0]`` (a reference: each worker reads the node's copy).

    Args:
      theta: ``[ObjectRef]`` of the published theta (in a list, so that Ray does not fetch it here).
      theta_step: the outer step of theta.
      calls: ``(index, actor, restore, args)`` per worker; ``restore`` is ``[ObjectRef]`` of particles to
        load before the call, or None; ``args`` are more arguments of the worker's call (none for a
        :class:`metatrain.runtime.ray_pool.GradientWorkerActor`).
      keep: call ``compute_and_keep`` (the pool keeps particles) instead of ``compute``.

    Returns:
      The :class:`NodeCalls`. A call that raised in the worker's code (not a lost actor) raises here.
    """
    refs = []
    for index, actor, restore, args in calls:
      if restore is not None:
        actor.load_particles.remote(restore[0])  # same caller as the call below: it runs first
      if keep:
        estimate, kept = actor.compute_and_keep.options(num_returns=2).remote(theta[0], theta_step, *args)
      else:
        estimate, kept = actor.compute.remote(theta[0], theta_step, *args), None
      refs.append((index, estimate, kept))
    results = await asyncio.gather(*(estimate for _, estimate, _ in refs), return_exceptions=True)
    estimates: list[Estimate] = []
    lost: dict[int, RayActorError] = {}
    kept_refs: dict[int, Any] = {}
    for (index, _, kept), result in zip(refs, results):
      if isinstance(result, RayActorError):
        lost[index] = result
      elif isinstance(result, BaseException):
        raise result
      else:
        estimates.append(result)
        if kept is not None:
          kept_refs[index] = kept
    return NodeCalls(sum_estimates(estimates), lost, kept_refs)


class AggregatingRayPool(RayPool):
  """A :class:`metatrain.runtime.ray_pool.RayPool` that calls one aggregating actor per node (see the module).

  Args and example: as :class:`metatrain.runtime.ray_pool.RayPool`; ``gather`` returns sums (per node
  and theta), each counting as its ``count`` estimates.
  """

  def __init__(self, *args: Any, **kwargs: Any):
    self._pending: list[tuple[int, Any, int]] = []  # the starts of one decision, sent together by _submit
    self._aggregators: dict[str, Any] = {}  # node id -> its aggregator
    self._call_nodes: dict[ray.ObjectRef, tuple[str, Any]] = {}  # a node's call -> (node, its aggregator)
    self._kept_by: dict[int, Any] = {}  # worker -> the aggregator that owns its kept particles
    super().__init__(*args, **kwargs)
    env = worker_env(env_vars=kwargs.get("env_vars"))
    self._aggregator_options = dict(num_cpus=0, runtime_env={"env_vars": env})

  def _aggregator(self, node: str) -> Any:
    if node not in self._aggregators:
      placement = NodeAffinitySchedulingStrategy(node, soft=False)
      actor_class: Any = NodeAggregatorActor
      self._aggregators[node] = actor_class.options(scheduling_strategy=placement, **self._aggregator_options).remote()
    return self._aggregators[node]

  def _node_of(self, index: int) -> str:
    """The node whose aggregator carries worker ``index``'s calls: where its latest probe found it."""
    return self._nodes[index]

  def _call_args(self, index: int) -> tuple:
    """More arguments of worker ``index``'s ``compute`` call (a ``GradientWorkerActor`` takes none)."""
    return ()

  def _start(self, index: int, theta: ray.ObjectRef, step: int) -> Any:
    self._pending.append((index, theta, step))  # sent with the others of this decision by _submit
    return None

  def _submit(self) -> None:
    by_node: dict[tuple[str, int], list[int]] = collections.defaultdict(list)
    for index, _, step in self._pending:
      by_node[self._node_of(index), step].append(index)
    thetas = {step: theta for _, theta, step in self._pending}
    self._pending = []
    for (node, step), indices in by_node.items():
      calls = []
      for index in indices:
        restore = None
        if index in self._restore:
          self._restore.discard(index)
          restore = [self._kept[index]]
        calls.append((index, self.actors[index], restore, self._call_args(index)))
      aggregator = self._aggregator(node)
      ref = aggregator.compute.remote([thetas[step]], step, calls, self.keep_particles)
      self._calls[ref] = tuple(indices)  # a node's call: its workers
      self._call_nodes[ref] = node, aggregator

  def _finish_all(self, refs: list[ray.ObjectRef]) -> None:
    for ref in refs:
      indices: tuple[int, ...] = self._calls.pop(ref)
      node, aggregator = self._call_nodes.pop(ref)
      try:
        result: NodeCalls = ray.get(ref)
      except RayActorError as error:  # the aggregator is lost (its node, most likely): so are its calls
        self._lost_aggregator(node, aggregator, indices, error)
        continue
      for index in indices:
        self._call_ended(index)
        if index in result.lost:
          self._lost(index, result.lost[index])
          continue
        self._failures[index] = 0
        if index in result.kept:
          self._kept[index], self._kept_by[index] = result.kept[index], aggregator
      for estimate in result.estimates:
        self._events.append((estimate.worker_id, estimate))
        self._queued_estimates += estimate.count

  def _lost_aggregator(self, node: str, aggregator: Any, indices: tuple[int, ...], error: RayActorError) -> None:
    """Every call through a lost aggregator is lost and counted; its workers are probed (where are they now?)."""
    ray.kill(aggregator, no_restart=True)  # dead already, most likely; dead for sure
    if self._aggregators.get(node) is aggregator:  # not a newer one, started since for the same node
      del self._aggregators[node]
    for index in [index for index, owner in self._kept_by.items() if owner is aggregator]:
      del self._kept[index], self._kept_by[index]  # the aggregator's objects: lost with it
      self._restore.discard(index)  # nothing to give back: it goes on from the particles it has
    for index in indices:
      self._call_ended(index)
      self._call_lost(index)
      self._failed(index, error)
      self._went_down(index)
      self._events.append((index, None))

  def _set_particles(self, index: int, leaves: dict) -> bool:
    self._kept_by.pop(index, None)  # a copy it keeps now is the pool's own (ray.put), not an aggregator's
    return super()._set_particles(index, leaves)

  def _stop(self) -> None:
    for aggregator in self._aggregators.values():
      ray.kill(aggregator, no_restart=True)
    self._aggregators.clear()
    super()._stop()
