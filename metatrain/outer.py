"""Single-process meta-training: ``train_local``."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
import optax

from metatrain.problem import LearnedOptimizerProblem, outer_optimizer
from tasks import Task


def make_outer_step(estimator: Any, outer: optax.GradientTransformation):
  """A jitted outer step ``(problem, theta, opt_state, est_state, key) -> (theta, opt_state, est_state, metrics)``."""

  @jax.jit
  def outer_step(problem, theta, opt_state, est_state, key):
    est_state, grad, metrics = estimator.step(problem, est_state, theta, key)
    updates, opt_state = outer.update(grad, opt_state, theta)
    metrics["grad_norm"] = optax.tree.norm(grad)
    return optax.apply_updates(theta, updates), opt_state, est_state, metrics

  return outer_step


def train_local(
  task: Task,
  optimizer: Any,
  estimator: Any,
  *,
  outer_steps: int,
  horizon: int,
  learning_rate: float = 1e-3,
  warmup_steps: int = 0,
  seed: int = 0,
  meta_loss_split: str = "train",
  theta: Any = None,
) -> tuple[Any, list[dict[str, float]]]:
  """Meta-trains ``optimizer`` on ``task`` with ``estimator`` for ``outer_steps`` steps, in this process.

  Args:
    task: the inner task.
    optimizer: a learned optimizer (``init_meta``, ``optimizer(theta)``).
    estimator: :class:`metatrain.PES`, :class:`metatrain.TruncatedES` or :class:`metatrain.FullES`.
    outer_steps: number of meta-gradient steps.
    horizon: inner steps per run (a multiple of the estimator's truncation).
    learning_rate: peak outer learning rate (Adam, warm-up, cosine decay, clip 1.0).
    warmup_steps: outer warm-up steps.
    seed: everything random (initial theta, inner runs, noise) derives from it.
    meta_loss_split: ``"train"`` or ``"valid"`` loss as the meta-objective.
    theta: initial meta-parameters (default: ``optimizer.init_meta``).

  Returns:
    ``(theta, metrics)``: the final meta-parameters and, per outer step, a
    dict of floats: meta_loss, grad_norm, nan_pairs, resets, and
    inner_steps_per_second (all inner steps of both signs, wall clock).
  """
  key = jax.random.key(seed)
  theta_key, init_key, run_key = jax.random.split(key, 3)
  theta = optimizer.init_meta(theta_key) if theta is None else theta
  problem = LearnedOptimizerProblem(task, optimizer, horizon, meta_loss_split)
  outer = outer_optimizer(learning_rate, total_steps=outer_steps, warmup_steps=warmup_steps)
  opt_state = outer.init(theta)
  est_state = estimator.init(problem, theta, init_key)
  outer_step = make_outer_step(estimator, outer)
  inner_per_step = 2 * estimator.num_pairs * getattr(estimator, "truncation", horizon)
  history = []
  for step in range(outer_steps):
    start = time.perf_counter()
    theta, opt_state, est_state, metrics = outer_step(
      problem, theta, opt_state, est_state, jax.random.fold_in(run_key, step)
    )
    metrics = {name: float(np.asarray(value)) for name, value in metrics.items()}
    metrics["inner_steps_per_second"] = inner_per_step / (time.perf_counter() - start)
    history.append(metrics)
  return theta, history
