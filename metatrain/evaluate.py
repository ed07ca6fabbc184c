"""Inner training curves of any optax optimizer (learned or hand-designed) on a task."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from tasks import Task


def train_run(task: Task, optimizer: optax.GradientTransformation, key: jax.Array, steps: int):
  """One inner run (pure, unjitted): fresh params from ``key``, ``steps`` steps on training batches.

  Returns:
    ``(params, losses)``: the final params and the training loss of every step.
  """
  init_key, data_key = jax.random.split(key)
  params = task.init(init_key)

  def step(carry, k):
    params, state = carry
    loss, grads = jax.value_and_grad(task.loss)(params, task.sample_batch(k, "train"))
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(data_key, steps))
  return params, losses


def _curves(task: Task, optimizer: optax.GradientTransformation, keys: jax.Array, steps: int) -> jax.Array:
  return jax.vmap(lambda key: train_run(task, optimizer, key, steps)[1])(keys)


@functools.partial(jax.jit, static_argnums=(1, 3))
def training_curves(task: Task, optimizer: optax.GradientTransformation, keys: jax.Array, steps: int) -> jax.Array:
  """Training losses of one run per key (vmapped), ``steps`` steps each: shape ``(len(keys), steps)``."""
  return _curves(task, optimizer, keys, steps)


@functools.partial(jax.jit, static_argnums=(1, 4))
def learned_curves(task: Task, lopt, theta, keys: jax.Array, steps: int) -> jax.Array:
  """:func:`training_curves` for a learned optimizer at meta-parameters ``theta`` (an argument, not static)."""
  return _curves(task, lopt.optimizer(theta), keys, steps)


def mean_normalized_loss(task: Task, curves: jax.Array) -> jax.Array:
  """The meta-objective of whole runs: mean normalised loss over steps and runs."""
  return jnp.mean(task.normalized(curves))
