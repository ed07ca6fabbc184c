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


def _stack(grads: list[Any], rows: int) -> tuple[Any, np.ndarray]:
  """The gradients stacked along a new leading axis of ``rows`` (zeros below them), and which are finite.

  One copy of each gradient into a buffer per leaf, and one vectorised finiteness test per leaf: the
  learner's cost per estimate at hundreds of workers (measured in ``benchmarks/cluster_scale.py``).
  """
  finite = np.ones(len(grads), bool)
  if not grads:
    return None, finite
  leaves = [jax.tree.leaves(grad) for grad in grads]
  stacked = []
  for i, first in enumerate(leaves[0]):
    first = np.asarray(first)
    buffer = np.zeros((rows, *first.shape), first.dtype)
    for row, grad in enumerate(leaves):
      buffer[row] = grad[i]
    finite &= np.isfinite(buffer[: len(grads)].reshape(len(grads), -1)).all(axis=1)
    stacked.append(buffer)
  return jax.tree.unflatten(jax.tree.structure(grads[0]), stacked), finite


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
  """

  def __init__(
    self, outer: optax.GradientTransformation, theta: Theta, *, staleness: int = 0, mesh: Mesh | None = None
  ):
    self.outer, self.staleness = outer, staleness
    self.mesh = local_mesh() if mesh is None else mesh
    # Replicated on the mesh from the start, as the update's outputs are: one compilation.
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self.theta = jax.device_put(jax.tree.map(jnp.asarray, theta), replicated)
    self.opt_state = jax.device_put(outer.init(self.theta), replicated)
    self.step = 0
    devices = self.mesh.devices.size

    leaves = jax.tree.leaves(self.theta)
    self._treedef = jax.tree.structure(self.theta)
    self._shapes = [leaf.shape for leaf in leaves]
    self._size = sum(leaf.size for leaf in leaves)
    bounds = np.cumsum([0] + [leaf.size for leaf in leaves])

    def step(theta, opt_state, grad):
      updates, opt_state = outer.update(grad, opt_state, theta)
      return optax.apply_updates(theta, updates), opt_state, optax.tree.norm(grad)

    @jax.jit
    def update(theta, opt_state, stacked, count):
      return step(theta, opt_state, sharded_mean(stacked, count, self.mesh))

    @jax.jit
    def update_flat(theta, opt_state, stacked, count):  # stacked: (rows, parameters), packed estimates
      # Split into theta's leaves before the sum: the same reductions as unpacked estimates, bit for bit.
      rows = stacked.shape[0]
      parts = [stacked[:, a:b].reshape(rows, *shape) for a, b, shape in zip(bounds[:-1], bounds[1:], self._shapes)]
      return step(theta, opt_state, sharded_mean(jax.tree.unflatten(self._treedef, parts), count, self.mesh))

    self._update, self._update_flat = update, update_flat
    self._devices = devices

  def _stack_flat(self, flats: list[Any], rows: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Packed gradients as the rows of one ``(rows, parameters)`` buffer, and which rows are finite."""
    if not flats:
      return None, np.ones(0, bool)
    stacked = np.zeros((rows, self._size), flats[0].dtype)
    for row, flat in enumerate(flats):
      stacked[row] = flat
    return stacked, np.asarray(np.isfinite(stacked[: len(flats)]).all(axis=1))

  def state(self) -> dict:
    """What a checkpoint holds of the learner."""
    return {"theta": self.theta, "opt_state": self.opt_state, "step": jnp.asarray(self.step, jnp.int32)}

  def load(self, state: dict) -> None:
    self.theta, self.opt_state, self.step = state["theta"], state["opt_state"], int(state["step"])

  def apply(self, estimates: Sequence[Estimate]) -> dict[str, float]:
    """One outer step from ``estimates``; returns metrics (dropped counts, gradient norm, meta-loss)."""
    fresh = [e for e in estimates if self.step - e.theta_step <= self.staleness]
    stale = len(estimates) - len(fresh)
    fresh.sort(key=lambda e: (e.theta_step, e.worker_id))  # a fixed summation order: reproducible means
    # Packed estimates (from Ray workers: metatrain.runtime.estimate) stack as one row each.
    packed = all(e.flat is not None and e.flat.size == self._size for e in fresh)
    stack = self._stack_flat if packed else _stack
    padded = math.ceil(len(fresh) / self._devices) * self._devices
    stacked, finite = stack([e.flat if packed else e.grad for e in fresh], padded)
    usable = [e for e, ok in zip(fresh, finite) if ok]
    if len(usable) < len(fresh):  # rare: restack without the non-finite ones
      padded = math.ceil(len(usable) / self._devices) * self._devices
      stacked, _ = stack([e.flat if packed else e.grad for e in usable], padded)
    metrics = {
      "stale_estimates": float(stale),
      "nan_estimates": float(len(fresh) - len(usable)),
      "used_estimates": float(len(usable)),
      "staleness": float(np.mean([self.step - e.theta_step for e in fresh])) if fresh else 0.0,
    }
    if not usable:
      metrics["skipped_step"] = 1.0
      return metrics
    update = self._update_flat if packed else self._update
    self.theta, self.opt_state, grad_norm = update(self.theta, self.opt_state, stacked, len(usable))
    self.step += 1
    metrics["grad_norm"] = float(grad_norm)
    metrics["meta_loss"] = float(np.mean([e.meta_loss for e in usable]))
    metrics["nan_pairs"] = float(sum(e.metrics.get("nan_pairs", 0.0) for e in usable))
    metrics["skipped_step"] = 0.0
    return metrics
