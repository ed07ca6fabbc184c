"""Simulated gradient workers for the cluster-scale benchmark: real Ray actors that compute nothing.

Kept apart from :mod:`benchmarks.cluster_scale` and free of JAX, so that an
actor process imports only numpy and Ray (about 45 MB each). One actor
process hosts several workers as threads (``max_concurrency``): 512 workers
as 512 processes would not fit this machine's memory, and what is measured
(the learner's side: waits, gets, the update, publishing) sees one Ray call
per worker either way.
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import numpy as np
import ray


class SimulatedEstimate(NamedTuple):
  """An estimate as a real worker sends it: pickled to a :class:`metatrain.runtime.estimate.Estimate`
  packed in one buffer (its ``__reduce__``, without importing metatrain, which imports JAX)."""

  grad: dict[str, np.ndarray]
  meta_loss: float
  theta_step: int
  worker_id: int
  metrics: dict[str, float]

  def __reduce__(self):
    leaves = list(self.grad.values())  # a flat dict: jax.tree.leaves order is sorted keys
    flat = np.concatenate([leaf.ravel() for leaf in leaves])
    skeleton = dict.fromkeys(self.grad, 0)
    args = (flat, skeleton, [leaf.shape for leaf in leaves], self.meta_loss, self.theta_step, self.worker_id)
    return _unpack, (*args, self.metrics)


def _unpack(*args: Any) -> Any:
  """On the learner's side: :func:`metatrain.runtime.estimate.unpack` (imported there, where JAX is)."""
  from metatrain.runtime.estimate import unpack

  return unpack(*args)


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class SimulatedWorkers:
  """Hosts simulated workers: each call sleeps ``delay`` seconds and returns one fixed random gradient.

  Args:
    shapes: the leaves of theta, ``{name: shape}`` (a flat dict: the gradient has theta's structure
      when the learner's theta is the same flat dict).
    delay: seconds a call takes.
    seed: seeds the fixed gradient.
  """

  def __init__(self, shapes: dict[str, tuple[int, ...]], delay: float, seed: int = 0):
    self.configure(shapes, delay, seed)

  def configure(self, shapes: dict[str, tuple[int, ...]], delay: float, seed: int = 0) -> int:
    """Sets another theta size or delay (one process serves every configuration of the benchmark)."""
    rng = np.random.default_rng(seed)
    # Sorted keys: jax.tree.leaves order, in which the packed estimate lists the leaves.
    self.grad = {name: rng.standard_normal(shapes[name]).astype(np.float32) * 1e-3 for name in sorted(shapes)}
    self.delay = delay
    return os.getpid()

  def compute(self, theta: Any, theta_step: int, worker_id: int) -> SimulatedEstimate:
    """Sleeps, then returns the fixed gradient; ``metrics["started_<worker_id>"]`` is when theta had arrived
    (one key per worker: a node's sum of estimates, which sums their metrics, keeps every worker's)."""
    started = time.time()  # the call runs once Ray has resolved theta: the end of its publish
    if self.delay:
      time.sleep(self.delay)
    return SimulatedEstimate(self.grad, 1.0, theta_step, worker_id, {f"started_{worker_id}": started})

  def pid(self) -> int:
    """This process's id."""
    return os.getpid()

  def node_id(self) -> str:
    """This actor's Ray node (the pool's probe)."""
    return ray.get_runtime_context().get_node_id()
