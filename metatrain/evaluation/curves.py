"""Inner training curves of any optax optimizer (learned or hand-designed) on a task."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metatrain.types import PyTree, Theta
from tasks import Task

Step = Callable[[tuple[PyTree, PyTree], jax.Array], tuple[tuple[PyTree, PyTree], jax.Array]]


def _train_step(task: Task, optimizer: optax.GradientTransformation) -> Step:
  """``(params, opt_state), key -> ((params, opt_state), training batch loss)``."""

  def step(carry, key):
    params, state = carry
    loss, grads = jax.value_and_grad(task.loss)(params, task.sample_batch(key, "train"))
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  return step


def train_run(
  task: Task, optimizer: optax.GradientTransformation, key: jax.Array, steps: int
) -> tuple[PyTree, jax.Array]:
  """One inner run (pure, unjitted): fresh params from ``key``, ``steps`` steps on training batches.

  Args:
    task: the inner task.
    optimizer: any optax transformation (its ``update`` is given the params).
    key: splits into the init key and one data key per step.
    steps: training steps.

  Returns:
    ``(params, losses)``: the final params and the training loss of every step.
  """
  init_key, data_key = jax.random.split(key)
  params = task.init(init_key)
  step = _train_step(task, optimizer)
  (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(data_key, steps))
  return params, losses


def evaluated_run(
  task: Task, optimizer: optax.GradientTransformation, key: jax.Array, steps: int, every: int
) -> tuple[jax.Array, jax.Array]:
  """:func:`train_run` (same params and batches for the same key) with evaluations every ``every`` steps.

  Returns:
    ``(batch_losses, evals)``: the training batch loss of every step, shape
    ``(steps,)``, and ``task.eval_loss`` on the train, valid and test splits at
    steps ``0, every, 2 every, ..., steps``, shape ``(steps // every + 1, 3)``.
  """
  if steps % every:
    raise ValueError(f"steps ({steps}) must be a multiple of the evaluation interval ({every}).")
  init_key, data_key = jax.random.split(key)
  params = task.init(init_key)
  step = _train_step(task, optimizer)

  def evaluate(params):
    return jnp.stack([task.eval_loss(params, split) for split in ("train", "valid", "test")])

  def chunk(carry, keys):
    carry, losses = jax.lax.scan(step, carry, keys)
    return carry, (losses, evaluate(carry[0]))

  keys = jax.random.split(data_key, steps).reshape(steps // every, every)
  _, (losses, evals) = jax.lax.scan(chunk, (params, optimizer.init(params)), keys)
  return losses.reshape(steps), jnp.concatenate([evaluate(params)[None], evals])


@functools.partial(jax.jit, static_argnames=("make_optimizer", "steps", "every"))
def evaluation_curves(
  task: Task,
  hyper: Any,
  keys: jax.Array,
  *,
  make_optimizer: Callable[[Any], optax.GradientTransformation],
  steps: int,
  every: int,
) -> tuple[jax.Array, jax.Array]:
  """:func:`evaluated_run` of ``make_optimizer(hyper)`` for every key (vmapped, one program).

  ``make_optimizer`` is static (a learning-rate function such as
  :func:`metatrain.adam`, or a learned optimizer's ``optimizer`` method) and
  ``hyper`` traced (a learning rate, or theta): other values reuse the compilation.

  Returns:
    ``(batch_losses, evals)`` with a leading seed axis.
  """
  return jax.vmap(lambda key: evaluated_run(task, make_optimizer(hyper), key, steps, every))(keys)


def _curves(task: Task, optimizer: optax.GradientTransformation, keys: jax.Array, steps: int) -> jax.Array:
  return jax.vmap(lambda key: train_run(task, optimizer, key, steps)[1])(keys)


@functools.partial(jax.jit, static_argnums=(1, 3))
def training_curves(task: Task, optimizer: optax.GradientTransformation, keys: jax.Array, steps: int) -> jax.Array:
  """Training losses of one run per key (vmapped), ``steps`` steps each: shape ``(len(keys), steps)``."""
  return _curves(task, optimizer, keys, steps)


@functools.partial(jax.jit, static_argnums=(1, 4))
def learned_curves(task: Task, lopt: Any, theta: Theta, keys: jax.Array, steps: int) -> jax.Array:
  """:func:`training_curves` for a learned optimizer at meta-parameters ``theta`` (an argument, not static).

  The runs are ``steps`` long, and a learned optimizer with a schedule is told so (``total_steps=steps``).
  """
  return _curves(task, lopt.optimizer(theta, total_steps=steps), keys, steps)


def mean_normalized_loss(task: Task, curves: jax.Array) -> jax.Array:
  """The meta-objective of whole runs: mean normalised loss over steps and runs.

  Args:
    task: the task whose ``normalized`` maps losses (clipped at its ceiling, NaN to the ceiling).
    curves: training losses, shape ``(runs, steps)`` (e.g. :func:`learned_curves`).

  Returns:
    A scalar.
  """
  return jnp.mean(task.normalized(curves))
