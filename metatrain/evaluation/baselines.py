"""Hand-designed optimizers, the baselines learned optimizers are compared with, and their tuning.

:func:`sgdm` and :func:`adam` are optax transformations; :func:`grid_search`
picks a learning rate for one of them on a task the way the paper tunes its
baselines (Zhou, Finn, Harrison 2024, Sec. 5.2): train with each rate, keep
the one with the lowest final validation loss.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatrain.evaluation.curves import train_run
from tasks.base import Task


def sgdm(learning_rate: float | jax.Array, *, momentum: float = 0.9) -> optax.GradientTransformation:
  """SGD with heavy-ball momentum: ``v <- momentum * v + g``, ``W <- W - learning_rate * v``.

  Args:
    learning_rate: the step size (a float or a traced scalar).
    momentum: the decay of the velocity.

  Returns:
    An optax transformation (``optax.sgd`` with momentum).
  """
  return optax.sgd(learning_rate, momentum=momentum)


def adam(
  learning_rate: float | jax.Array, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
  """Adam (Kingma and Ba 2015) with bias correction.

  Args:
    learning_rate: the step size (a float or a traced scalar).
    b1, b2: decays of the first and second moment estimates.
    eps: added to the root of the second moment.

  Returns:
    An optax transformation (``optax.adam``).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> params, grads = {"w": jnp.zeros(2)}, {"w": jnp.array([3.0, -0.5])}
    >>> optimizer = adam(1e-3)
    >>> state = optimizer.init(params)
    >>> updates, state = optimizer.update(grads, state)
    >>> optax.apply_updates(params, updates)["w"]  # the first step: -lr * sign(g)
    Array([-0.001,  0.001], dtype=float32)
  """
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


@functools.partial(jax.jit, static_argnames=("make_optimizer", "steps", "split"))
def _final_losses(
  task: Task,
  learning_rates: jax.Array,
  keys: jax.Array,
  *,
  make_optimizer: Callable[[jax.Array], optax.GradientTransformation],
  steps: int,
  split: str,
) -> jax.Array:
  """Final ``split`` loss of every (learning rate, seed) run: shape ``(rates, seeds)``."""

  def run(learning_rate: jax.Array, key: jax.Array) -> jax.Array:
    params, _ = train_run(task, make_optimizer(learning_rate), key, steps)
    return task.eval_loss(params, split)

  return jax.vmap(lambda lr: jax.vmap(lambda k: run(lr, k))(keys))(learning_rates)


def grid_search(
  task: Task,
  make_optimizer: Callable[[jax.Array], optax.GradientTransformation],
  learning_rates: Sequence[float],
  *,
  steps: int,
  seeds: Sequence[int] = (0,),
  split: str = "valid",
) -> tuple[float, list[tuple[float, float]]]:
  """Tunes a learning rate: trains with each rate and keeps the lowest mean final loss.

  Every (rate, seed) run starts from ``task.init`` and takes ``steps`` steps
  on training batches; all runs are one jitted program (a ``lax.scan`` over
  steps, vmapped over seeds and rates), and a seed gives every rate the same
  initial params and batches: with ``init_key, data_key =
  jax.random.split(jax.random.key(seed))``, the params are
  ``task.init(init_key)`` and step ``i`` trains on
  ``task.sample_batch(jax.random.split(data_key, steps)[i], "train")``. A run is scored by ``task.eval_loss(params,
  split)`` after its last step; a non-finite final loss (a diverged run)
  counts as ``+inf``, so the mean over seeds of a rate with any diverged run
  is ``+inf``.

  Args:
    task: the inner task (passed to ``jax.jit`` as an argument, not baked in).
    make_optimizer: ``make_optimizer(learning_rate) -> optax.GradientTransformation``;
      it is called with a traced scalar (as :func:`sgdm`, :func:`adam` and
      ``optax``'s optimizers accept) and is a static argument of the jitted
      program: pass the same function object again to reuse the compilation.
    learning_rates: the candidate rates.
    steps: training steps per run.
    seeds: one run per seed and rate.
    split: the split the final loss is measured on.

  Returns:
    ``(best_lr, table)``: the rate with the lowest mean final loss (the
    first listed on ties), and a list of ``(lr, mean final loss)`` sorted from
    best to worst (ties keep the order of ``learning_rates``).

  Example:
    >>> import tasks
    >>> best_lr, table = grid_search(tasks.get("mlp_fashion8"), adam, [1e-4, 1e-2], steps=20, seeds=(0, 1))
    >>> best_lr, [lr for lr, _ in table]  # 20 steps at 1e-4 barely move
    (0.01, [0.01, 0.0001])
  """
  if not learning_rates:
    raise ValueError("grid_search needs at least one learning rate.")
  if not seeds:
    raise ValueError("grid_search needs at least one seed.")
  rates = jnp.asarray(learning_rates, jnp.float32)
  keys = jnp.stack([jax.random.key(seed) for seed in seeds])
  losses = np.asarray(_final_losses(task, rates, keys, make_optimizer=make_optimizer, steps=steps, split=split))
  losses = np.where(np.isfinite(losses), losses, np.inf)
  table = [(float(lr), float(np.mean(row))) for lr, row in zip(learning_rates, losses)]
  table.sort(key=lambda row: row[1])  # stable: ties keep the order given
  if math.isinf(table[0][1]):
    raise FloatingPointError(f"every run diverged (learning rates {list(learning_rates)}).")
  return table[0][0], table
