"""The outer loop: the meta-optimizer, and meta-training in this process with one estimator.

:func:`outer_optimizer` is the optax transformation that applies meta-gradients
(here and in the main job's learner); :func:`outer_loop` meta-trains a learned
optimizer on one task in this process, one jitted outer step at a time, with
no files, workers or checkpoints (the main job is :func:`metatrain.train`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np
import optax

from metatrain.estimators import Estimator
from metatrain.learned_optimizers import LearnedOptimizer
from metatrain.problem import LearnedOptimizerProblem
from metatrain.types import Metrics, PyTree, Theta
from tasks import Task


def outer_optimizer(
  learning_rate: float = 1e-3,
  *,
  total_steps: int,
  warmup_steps: int = 0,
  final_fraction: float = 0.1,
  max_grad_norm: float = 1.0,
) -> optax.GradientTransformation:
  """The meta-optimizer: gradient-norm clipping, then Adam with linear warm-up and cosine decay.

  Args:
    learning_rate: peak learning rate.
    total_steps: outer steps of the run (the schedule's length).
    warmup_steps: linear warm-up from 0.
    final_fraction: the learning rate at the end, as a fraction of the peak.
    max_grad_norm: global-norm clip (the paper's 1.0).

  Returns:
    ``clipped_adam(outer_schedule(...), max_grad_norm=max_grad_norm)``.
  """
  schedule = outer_schedule(
    learning_rate, total_steps=total_steps, warmup_steps=warmup_steps, final_fraction=final_fraction
  )
  return clipped_adam(schedule, max_grad_norm=max_grad_norm)


def clipped_adam(schedule: optax.Schedule, *, max_grad_norm: float = 1.0) -> optax.GradientTransformation:
  """Gradient-norm clipping, then Adam stepping by ``schedule``: :func:`outer_optimizer` on a schedule built once.

  The main job's learner is built on it, so that the rate it logs is the schedule its Adam steps by
  (:meth:`metatrain.runtime.learner.Learner.learning_rate`).

  Args:
    schedule: Adam's learning rate at each update (e.g. :func:`outer_schedule`).
    max_grad_norm: global-norm clip.

  Returns:
    ``optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(schedule))``.
  """
  return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(schedule))


def outer_schedule(
  learning_rate: float, *, total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.1
) -> optax.Schedule:
  """Linear warm-up from 0 to ``learning_rate``, then cosine decay to ``final_fraction`` of it.

  At step ``t``: ``learning_rate * t / warmup_steps`` while ``t < warmup_steps``, then
  ``final + (learning_rate - final) * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps))) / 2``
  with ``final = final_fraction * learning_rate``, and ``final`` after ``total_steps``.

  Args:
    learning_rate: the peak rate.
    total_steps: the step at which the decay ends.
    warmup_steps: the length of the warm-up.
    final_fraction: the final rate as a fraction of the peak.

  Returns:
    An optax schedule (step -> learning rate).
  """
  return optax.warmup_cosine_decay_schedule(
    0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1), learning_rate * final_fraction
  )


OuterStep = Callable[..., tuple[Theta, PyTree, PyTree, Metrics]]


def make_outer_step(estimator: Estimator, outer: optax.GradientTransformation) -> OuterStep:
  """A jitted outer step ``(problem, theta, opt_state, est_state, key) -> (theta, opt_state, est_state, metrics)``.

  Args:
    estimator: the gradient estimator (static).
    outer: the meta-optimizer (static).

  Returns:
    The jitted step; its metrics are the estimator's plus ``grad_norm``.
  """

  @jax.jit
  def outer_step(problem, theta, opt_state, est_state, key):
    est_state, grad, metrics = estimator.step(problem, est_state, theta, key)
    updates, opt_state = outer.update(grad, opt_state, theta)
    metrics["grad_norm"] = optax.tree.norm(grad)
    return optax.apply_updates(theta, updates), opt_state, est_state, metrics

  return outer_step


def outer_loop(
  task: Task,
  learned_optimizer: LearnedOptimizer,
  estimator: Estimator,
  *,
  outer_steps: int,
  horizon: int,
  learning_rate: float = 1e-3,
  warmup_steps: int = 0,
  seed: int = 0,
  meta_loss_split: str = "train",
  theta: Theta | None = None,
) -> tuple[Theta, list[dict[str, float]]]:
  """Meta-trains ``learned_optimizer`` on ``task`` with ``estimator`` for ``outer_steps`` steps, in this process.

  Args:
    task: the inner task.
    learned_optimizer: the learned optimizer to meta-train.
    estimator: a gradient estimator, e.g. :class:`metatrain.PES`.
    outer_steps: number of meta-gradient steps.
    horizon: inner steps per run (a multiple of the estimator's truncation).
    learning_rate: peak outer learning rate (Adam, warm-up, cosine decay, clip 1.0).
    warmup_steps: outer warm-up steps.
    seed: everything random (initial theta, inner runs, noise) derives from it.
    meta_loss_split: ``"train"`` or ``"valid"`` loss as the meta-objective.
    theta: initial meta-parameters (default: ``learned_optimizer.init_meta``).

  Returns:
    ``(theta, metrics)``: the final meta-parameters and, per outer step, a
    dict of floats: meta_loss, grad_norm, nan_pairs, resets, inner_steps
    (all inner steps of both signs) and inner_steps_per_second (wall clock).
  """
  estimator.check(horizon)
  theta_key, init_key, run_key = jax.random.split(jax.random.key(seed), 3)
  theta = learned_optimizer.init_meta(theta_key) if theta is None else theta
  problem = LearnedOptimizerProblem(task, learned_optimizer, horizon, meta_loss_split)
  outer = outer_optimizer(learning_rate, total_steps=outer_steps, warmup_steps=warmup_steps)
  opt_state = outer.init(theta)
  est_state = estimator.init(problem, theta, init_key)
  outer_step = make_outer_step(estimator, outer)
  inner_steps = estimator.inner_steps(horizon)
  history = []
  for step in range(outer_steps):
    start = time.perf_counter()
    theta, opt_state, est_state, metrics = outer_step(
      problem, theta, opt_state, est_state, jax.random.fold_in(run_key, step)
    )
    metrics = {name: float(np.asarray(value)) for name, value in metrics.items()}
    metrics["inner_steps"] = float(inner_steps)
    metrics["inner_steps_per_second"] = inner_steps / (time.perf_counter() - start)
    history.append(metrics)
  return theta, history
