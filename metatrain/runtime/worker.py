"""A gradient worker: a pool of particles (perturbed inner runs) that turns theta into gradient estimates. No Ray here.

:class:`GradientWorker` is plain Python around the pure estimator step; the Ray
actor in :mod:`metatrain.runtime.ray_pool` wraps it unchanged, and the in-process
pool runs it directly (tests, debugging, a single process).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import tasks
from metatrain.problem import LearnedOptimizerProblem
from metatrain.runtime.config import WorkerConfig
from metatrain.runtime.estimate import Estimate
from metatrain.types import PyTree, Theta


def pairs_mesh(num_pairs: int, devices: list | None = None) -> Mesh | None:
  """A 1-D mesh (axis ``"pairs"``) over the local devices that split ``num_pairs`` evenly (None for one device)."""
  devices = jax.local_devices() if devices is None else devices
  count = max(d for d in range(1, len(devices) + 1) if num_pairs % d == 0)
  return Mesh(np.array(devices[:count]), ("pairs",)) if count > 1 else None


class GradientWorker:
  """Owns a pool of particles (they never leave it) and computes one estimate per call.

  On a host with several local devices (a multi-GPU host, a TPU VM) the
  particle state is sharded along its leading (pair) axis over a 1-D mesh of
  the devices that divide ``num_pairs`` evenly, and the jitted step keeps it
  there: each device advances its share of the pairs, and only the estimate
  (a mean over pairs) is reduced across devices. The numbers are the same as
  on one device.

  With ``config.task_family`` set, every estimate draws its task from the
  family (from ``(seed, worker_id, theta step, n-th estimate)``: a resumed run
  draws the same), and the worker keeps one pool of particles per variant it
  has drawn; such pools are not saved in checkpoints (:meth:`particles` is None),
  so a resumed run restarts its particles.

  Args:
    config: the worker's configuration.
    worker_id: its index; seeds derive from ``(seed, worker_id)``.
    seed: the run's seed.
    shard_pairs: shard the pairs over the local devices (False: everything on the default device).
  """

  def __init__(self, config: WorkerConfig, worker_id: int, seed: int = 0, *, shard_pairs: bool = True):
    self.config, self.worker_id = config, worker_id
    self.learned_optimizer = config.build_learned_optimizer()
    self.estimator = config.estimator
    self.problem = config.build_problem(self.learned_optimizer)
    self.init_key, self.key = jax.random.split(jax.random.fold_in(jax.random.key(seed), worker_id))
    self.family = tasks.families()[config.task_family] if config.task_family else None
    self.family_states: dict[str, tuple[LearnedOptimizerProblem, PyTree]] = {}
    self.state = None
    self.calls_at_step: dict[int, int] = {}
    estimator = self.estimator
    theta = jax.eval_shape(self.learned_optimizer.init_meta, self.init_key)
    self._state_spec = jax.eval_shape(estimator.init, self.problem, theta, self.init_key)  # shapes, once
    self.mesh = pairs_mesh(config.estimator.num_pairs) if shard_pairs else None
    step = lambda problem, state, theta, key: estimator.step(problem, state, theta, key)  # noqa: E731
    self._family_step = jax.jit(step)  # one compilation per variant drawn
    if self.mesh is None:
      self._state_sharding = None
      self._step = jax.jit(step)
    else:
      # Particle leaves split along their leading (pair) axis; theta, estimate and metrics replicated.
      replicated = NamedSharding(self.mesh, PartitionSpec())
      pairs = lambda leaf: NamedSharding(self.mesh, PartitionSpec("pairs") if leaf.ndim else PartitionSpec())  # noqa: E731
      self._state_sharding = jax.tree.map(pairs, self._state_spec)
      self._step = jax.jit(step, out_shardings=(self._state_sharding, replicated, replicated))

  def _place(self, state: PyTree) -> PyTree:
    return state if self._state_sharding is None else jax.device_put(state, self._state_sharding)

  def particles(self) -> dict[str, np.ndarray] | None:
    """The particles as numpy leaves ``{"0000": ..., "0001": ...}`` (None before the first estimate).

    With :meth:`load_particles` it lets a checkpoint carry the particles, so a
    resumed PES run continues its particles instead of restarting them.
    """
    if self.state is None or self.family is not None:
      return None
    return {f"{i:04d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(self.state))}

  def load_particles(self, saved: dict[str, np.ndarray]) -> bool:
    """Replaces the particles by ``saved`` (from :meth:`particles`); False, changing nothing, if they do not fit.

    They do not fit when the estimator, the number of pairs or the task's
    shapes differ from the ones they were saved with.
    """
    if self.family is not None:
      return False
    expected = jax.tree.leaves(self._state_spec)
    leaves = [saved[name] for name in sorted(saved)]
    if len(leaves) != len(expected):
      return False
    if any(
      np.shape(leaf) != spec.shape or np.asarray(leaf).dtype != spec.dtype for leaf, spec in zip(leaves, expected)
    ):
      return False
    self.state = self._place(jax.tree.unflatten(jax.tree.structure(self._state_spec), [jnp.asarray(x) for x in leaves]))
    return True

  def _variant_problem(self, key: jax.Array) -> LearnedOptimizerProblem:
    """The inner problem of the family's variant that ``key`` draws, its learned optimizer checked against ours."""
    assert self.family is not None
    task = self.family.sample(key)
    if task.name not in self.family_states:
      mapping = self.learned_optimizer.space.match(task.space)
      if any(old != new for old, new in mapping.items()):
        raise ValueError(
          f"task family {self.family.name!r}: variant {task.name!r} names its labels differently from "
          f"{self.config.task!r} ({mapping}); a family for meta-training must keep the labels."
        )
      learned = dataclasses.replace(self.learned_optimizer, space=task.space)
      self.family_states[task.name] = (self.config.build_problem(learned, task), None)
    return self.family_states[task.name][0]

  def compute(self, theta: Theta, theta_step: int) -> Estimate:
    """One truncation (or whole run) at ``theta``; returns the estimate as numpy."""
    start = time.perf_counter()
    theta = jax.tree.map(jnp.asarray, theta)
    # The noise depends on (seed, worker, theta step, n-th estimate at that step), not on how many
    # estimates this process made: a run resumed from a checkpoint draws the same noise.
    nth = self.calls_at_step.get(theta_step, 0)
    self.calls_at_step[theta_step] = nth + 1
    key = jax.random.fold_in(jax.random.fold_in(self.key, theta_step), nth)
    if self.family is not None:
      family_key, key = jax.random.split(key)
      problem = self._variant_problem(family_key)
      name = problem.task.name
      state = self.family_states[name][1]
      if state is None:
        state = self.estimator.init(problem, theta, jax.random.fold_in(self.init_key, len(self.family_states)))
      state, grad, metrics = self._family_step(problem, state, theta, key)
      self.family_states[name] = (problem, state)
    else:
      if self.state is None:
        self.state = self._place(self.estimator.init(self.problem, theta, self.init_key))
      self.state, grad, metrics = self._step(self.problem, self.state, theta, key)
    grad = jax.tree.map(np.asarray, grad)
    metrics = {name: float(value) for name, value in metrics.items()}
    metrics["inner_steps_per_second"] = self.config.inner_steps_per_estimate / (time.perf_counter() - start)
    return Estimate(grad, metrics["meta_loss"], int(theta_step), self.worker_id, metrics)

  def initial_theta(self, seed: int) -> Theta:
    """The learned optimizer's initial meta-parameters for a run seed, as numpy."""
    return jax.tree.map(np.asarray, self.learned_optimizer.init_meta(jax.random.key(seed)))
