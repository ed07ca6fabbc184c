"""The central learner: aggregates gradient estimates over its devices and applies the outer optimizer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metatrain.runtime.worker import Estimate
from metatrain.types import Theta


def local_mesh() -> Mesh:
  """A 1-D mesh over this process's devices (axis ``"estimates"``)."""
  return Mesh(np.array(jax.local_devices()), ("estimates",))


def sharded_mean(stacked: Any, count: int, mesh: Mesh) -> Any:
  """Mean over the leading axis of ``stacked``, the sum split over the devices of ``mesh``.

  ``stacked`` leaves have a leading axis padded with zeros to a multiple of
  the device count; ``count`` is the number of real rows.
  """

  def partial_sums(x):
    return jax.lax.psum(jnp.sum(x, axis=0), "estimates")

  summed = jax.shard_map(
    lambda tree: jax.tree.map(partial_sums, tree),
    mesh=mesh,
    in_specs=PartitionSpec("estimates"),
    out_specs=PartitionSpec(),
  )(stacked)
  return jax.tree.map(lambda s: s / count, summed)


class Learner:
  """Holds theta and the outer optimizer state; turns batches of estimates into outer steps.

  Estimates computed more than ``staleness`` outer steps ago, or with a
  non-finite gradient, are dropped and counted. The rest are averaged with a
  reduction sharded over the local devices, and the outer optimizer is
  applied once. Plain Python around jitted pure functions; no Ray.

  Args:
    outer: the outer optax optimizer.
    theta: initial meta-parameters.
    staleness: the largest accepted ``step - estimate.theta_step`` (0: synchronous).
    mesh: devices for the reduction (default: all local devices).
    schedule: the learning-rate schedule ``outer`` steps by (:func:`metatrain.outer.clipped_adam`), for
      :meth:`learning_rate` (None: not known).
    part_scales: a factor per part of theta (a pytree like it, each leaf broadcastable to its part) that
      multiplies ``outer``'s update of that part: a learning rate per part
      (``TrainConfig.per_part_learning_rate``). Outside ``outer``, so that its state, and the checkpoints
      that hold it, are the same with and without (None: every factor 1).
  """

  def __init__(
    self,
    outer: optax.GradientTransformation,
    theta: Theta,
    *,
    staleness: int = 0,
    mesh: Mesh | None = None,
    schedule: optax.Schedule | None = None,
    part_scales: Theta | None = None,
  ):
    self.outer, self.staleness, self.schedule = outer, staleness, schedule
    self.mesh = local_mesh() if mesh is None else mesh
    # Replicated on the mesh from the start, as the update's outputs are: one compilation.
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self.theta = jax.device_put(jax.tree.map(jnp.asarray, theta), replicated)
    self.opt_state = jax.device_put(outer.init(self.theta), replicated)
    self.step = 0
    devices = self.mesh.devices.size

    # Every batch is stacked into one (rows, parameters) buffer (one copy per estimate; a packed estimate
    # from a Ray worker is one buffer already: metatrain.runtime.estimate), split into theta's leaves in jit.
    leaves = jax.tree.leaves(self.theta)
    self._treedef = jax.tree.structure(self.theta)
    self._shapes = [leaf.shape for leaf in leaves]
    self._dtype = np.result_type(*[leaf.dtype for leaf in leaves])
    self._bounds = np.cumsum([0] + [leaf.size for leaf in leaves])
    bounds, dtypes = self._bounds, [leaf.dtype for leaf in leaves]

    @jax.jit
    def update(theta, opt_state, stacked, count):
      # Split before the sum: the reductions are per leaf, as a tree of stacked leaves would give.
      rows = stacked.shape[0]
      parts = [
        stacked[:, a:b].reshape(rows, *shape).astype(dtype)
        for a, b, shape, dtype in zip(bounds[:-1], bounds[1:], self._shapes, dtypes)
      ]
      grad = sharded_mean(jax.tree.unflatten(self._treedef, parts), count, self.mesh)
      updates, opt_state = outer.update(grad, opt_state, theta)
      if part_scales is not None:
        updates = jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, part_scales)
      return optax.apply_updates(theta, updates), opt_state, optax.tree.norm(grad)

    self._update = update
    self._devices = devices

  def _stack(self, estimates: list[Estimate], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The gradients as the rows of one ``(rows, parameters)`` buffer (zeros below), and which are finite."""
    stacked = np.zeros((rows, int(self._bounds[-1])), self._dtype)
    for row, estimate in enumerate(estimates):
      if estimate.flat is not None and estimate.flat.size == stacked.shape[1]:
        stacked[row] = estimate.flat
      else:
        for a, b, leaf in zip(self._bounds[:-1], self._bounds[1:], jax.tree.leaves(estimate.grad)):
          stacked[row, a:b] = np.ravel(leaf)
    return stacked, np.asarray(np.isfinite(stacked[: len(estimates)]).all(axis=1))

  def host_theta(self) -> Theta:
    """Theta as numpy arrays in this process's memory: what the workers and the evaluator receive."""
    return jax.tree.map(np.asarray, self.theta)

  def learning_rate(self) -> float | None:
    """The schedule's rate at the learner's step: the rate of its next update (None without a schedule).

    Adam's step count is the learner's step: both count the updates applied (a skipped step is neither).
    """
    return None if self.schedule is None else float(np.asarray(self.schedule(self.step)))

  def state(self) -> dict:
    """What a checkpoint holds of the learner."""
    return {"theta": self.theta, "opt_state": self.opt_state, "step": jnp.asarray(self.step, jnp.int32)}

  def load(self, state: dict) -> None:
    self.theta, self.opt_state, self.step = state["theta"], state["opt_state"], int(state["step"])

  def apply(self, estimates: Sequence[Estimate]) -> dict[str, float]:
    """One outer step from ``estimates``; returns metrics (dropped counts, gradient norm, meta-loss).

    An estimate that is a sum of ``count`` workers' (a node's aggregator:
    :func:`metatrain.runtime.estimate.sum_estimates`) counts as ``count`` estimates everywhere: in the
    mean (the sum of the rows over the sum of the counts) and in every count below.
    """
    fresh = [e for e in estimates if self.step - e.theta_step <= self.staleness]
    stale = sum(e.count for e in estimates) - sum(e.count for e in fresh)
    # A fixed summation order, for reproducible means; a worker that computed twice at one step (for a down
    # one) is told apart by what it computed, not by when it arrived.
    fresh.sort(key=lambda e: (e.theta_step, e.worker_id, e.workers, e.meta_loss))
    padded = math.ceil(len(fresh) / self._devices) * self._devices
    stacked, finite = self._stack(fresh, padded)
    usable = [e for e, ok in zip(fresh, finite) if ok]
    if len(usable) < len(fresh):  # rare: restack without the non-finite ones
      padded = math.ceil(len(usable) / self._devices) * self._devices
      stacked, _ = self._stack(usable, padded)
    used = sum(e.count for e in usable)
    counts = np.array([e.count for e in fresh], float)
    metrics = {
      "stale_estimates": float(stale),
      "nan_estimates": float(sum(e.count for e in fresh) - used),
      "used_estimates": float(used),
      "staleness": float(np.average([self.step - e.theta_step for e in fresh], weights=counts)) if fresh else 0.0,
    }
    if not usable:
      metrics["skipped_step"] = 1.0
      return metrics
    self.theta, self.opt_state, grad_norm = self._update(self.theta, self.opt_state, stacked, used)
    self.step += 1
    metrics["grad_norm"] = float(grad_norm)
    metrics["meta_loss"] = float(np.average([e.meta_loss for e in usable], weights=[e.count for e in usable]))
    metrics["nan_pairs"] = float(sum(e.metrics.get("nan_pairs", 0.0) for e in usable))
    metrics["skipped_step"] = 0.0
    return metrics
