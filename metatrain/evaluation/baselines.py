"""Hand-designed optimizers, the baselines learned optimizers are compared with, and their tuning.

:func:`sgdm`, :func:`adam` (constant rates), :func:`adam_cosine` and
:func:`adamw_cosine` (linear warm-up, then cosine decay to 0: what a user
would pick) are optax transformations; :func:`grid_search` tunes one of their
hyper-parameters on a task the way the paper tunes its baselines (Zhou, Finn,
Harrison 2024, Sec. 5.2): train with each value, keep the one with the lowest
final validation loss, and extend the grid while the pick lies on its edge.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatrain.evaluation.curves import train_run
from metatrain.schedules import WARMUP_FRACTION, warmup_cosine
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


#: Evaluation run ``i`` uses ``jax.random.key(EVAL_SEED + i)``.
EVAL_SEED = 10_000
#: Tuning run ``i`` uses ``jax.random.key(TUNE_SEED + i)``.
TUNE_SEED = 20_000
#: Run ``i`` of the evaluator during meta-training uses ``jax.random.key(SELECTION_SEED + i)``: thetas are
#: selected on these runs, and reported (``metatrain eval``) on the disjoint ``EVAL_SEED`` runs.
SELECTION_SEED = 30_000
#: The Adam-cosine reference's initial grid of peak rates (:func:`metatrain.grid_search` extends it past an edge,
#: at the cost of a compilation): the evaluator's reference and the ``"nominal"`` learned optimizers' start.
REFERENCE_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
#: Tuning runs per rate of the Adam-cosine reference.
REFERENCE_TUNE_SEEDS = 2


class GridEdgeWarning(UserWarning):
  """:func:`grid_search`'s pick lies on the edge of its grid (so the best value may lie beyond it)."""


def adam_cosine(
  learning_rate: float | jax.Array, *, steps: int, warmup_fraction: float = WARMUP_FRACTION
) -> optax.GradientTransformation:
  """Adam with a linear warm-up and cosine decay to 0 (:func:`metatrain.schedules.warmup_cosine`).

  Args:
    learning_rate: the peak rate (a float or a traced scalar).
    steps: the length of the run (the schedule reaches 0 there).
    warmup_fraction: the warm-up's share of the steps.
  """
  return optax.adam(warmup_cosine(learning_rate, steps, warmup_fraction=warmup_fraction))


def adamw_cosine(
  learning_rate: float | jax.Array,
  *,
  steps: int,
  weight_decay: float | jax.Array = 1e-4,
  warmup_fraction: float = WARMUP_FRACTION,
) -> optax.GradientTransformation:
  """AdamW (Loshchilov and Hutter 2019) with a linear warm-up and cosine decay to 0.

  The weight decay is decoupled from the gradient: each step subtracts ``lr(t) weight_decay W``, with
  ``lr(t)`` the schedule of :func:`metatrain.schedules.warmup_cosine`.

  Args:
    learning_rate: the peak rate (a float or a traced scalar).
    steps: the length of the run.
    weight_decay: the decay factor (a float or a traced scalar).
    warmup_fraction: the warm-up's share of the steps.
  """
  return optax.adamw(warmup_cosine(learning_rate, steps, warmup_fraction=warmup_fraction), weight_decay=weight_decay)


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
  max_extensions: int = 3,
) -> tuple[float, list[tuple[float, float]]]:
  """Tunes a hyper-parameter (a learning rate): trains with each value and keeps the lowest mean final loss.

  Every (value, seed) run starts from ``task.init`` and takes ``steps`` steps
  on training batches; the runs of a grid are one jitted program (a ``lax.scan`` over
  steps, vmapped over seeds and values), and a seed gives every value the same
  initial params and batches: with ``init_key, data_key =
  jax.random.split(jax.random.key(seed))``, the params are
  ``task.init(init_key)`` and step ``i`` trains on
  ``task.sample_batch(jax.random.split(data_key, steps)[i], "train")``. A run is scored by ``task.eval_loss(params,
  split)`` after its last step; a non-finite final loss (a diverged run)
  counts as ``+inf``, so the mean over seeds of a value with any diverged run
  is ``+inf``.

  When the pick is the smallest or the largest value of a grid of at least two
  positive values, the best value may lie beyond it: a :class:`GridEdgeWarning`
  says so, and the grid is extended past that edge by two values at the ratio
  of the two outermost there (``1e-4, 1e-3`` -> ``1e-5, 1e-6``), at most
  ``max_extensions`` times; a pick still on the edge then is warned about once more.

  Args:
    task: the inner task (passed to ``jax.jit`` as an argument, not baked in).
    make_optimizer: ``make_optimizer(value) -> optax.GradientTransformation``;
      it is called with a traced scalar (as :func:`sgdm`, :func:`adam` and
      ``optax``'s optimizers accept) and is a static argument of the jitted
      program: pass the same function object again to reuse the compilation.
    learning_rates: the candidate values.
    steps: training steps per run.
    seeds: one run per seed and value.
    split: the split the final loss is measured on.
    max_extensions: how often the grid may be extended (0: never).

  Returns:
    ``(best, table)``: the value with the lowest mean final loss (the
    first listed on ties), and a list of ``(value, mean final loss)`` over every value tried (extensions
    included), sorted from best to worst (ties keep the order tried).

  Example:
    >>> import tasks
    >>> best_lr, table = grid_search(tasks.get("mlp_fashion8"), adam, [1e-4, 1e-2], steps=20, seeds=(0, 1),
    ...                              max_extensions=0)
    >>> best_lr, [lr for lr, _ in table]  # 20 steps at 1e-4 barely move
    (0.01, [0.01, 0.0001])
  """
  if not learning_rates:
    raise ValueError("grid_search needs at least one learning rate.")
  if not seeds:
    raise ValueError("grid_search needs at least one seed.")
  keys = jnp.stack([jax.random.key(seed) for seed in seeds])

  def scores(values: Sequence[float]) -> list[tuple[float, float]]:
    rates = jnp.asarray(values, jnp.float32)
    losses = np.asarray(_final_losses(task, rates, keys, make_optimizer=make_optimizer, steps=steps, split=split))
    losses = np.where(np.isfinite(losses), losses, np.inf)
    return [(float(value), float(np.mean(row))) for value, row in zip(values, losses)]

  tried = scores(list(learning_rates))
  for extension in range(max_extensions + 1):
    grid = sorted(value for value, _ in tried)
    best = min(tried, key=lambda row: row[1])[0]  # min is stable: the first tried on ties
    edge = _edge(grid, best)
    if edge is None:
      break
    if extension == max_extensions:
      warnings.warn(
        f"grid_search: the pick {best:g} is still on the edge of the grid {grid} after {max_extensions} "
        "extensions; widen learning_rates or raise max_extensions.",
        GridEdgeWarning,
        stacklevel=2,
      )
      break
    beyond = [edge * best, edge * edge * best]
    warnings.warn(
      f"grid_search: the pick {best:g} is on the edge of the grid {grid}; extending it by "
      f"{beyond[0]:g}, {beyond[1]:g}.",
      GridEdgeWarning,
      stacklevel=2,
    )
    tried += scores(beyond)
  table = sorted(tried, key=lambda row: row[1])  # stable: ties keep the order tried
  if math.isinf(table[0][1]):
    raise FloatingPointError(f"every run diverged (values {[value for value, _ in tried]}).")
  return table[0][0], table


def _edge(grid: list[float], best: float) -> float | None:
  """The ratio that steps past the edge ``best`` lies on (None inside the grid, or where it cannot be extended)."""
  if len(grid) < 2 or grid[0] <= 0:
    return None
  if best == grid[0]:
    return grid[0] / grid[1]
  if best == grid[-1]:
    return grid[-1] / grid[-2]
  return None


def tune_adam_cosine(
  task: Task,
  steps: int,
  *,
  weight_decay: float = 0.0,
  rates: Sequence[float] = REFERENCE_RATES,
  tune_seeds: int = REFERENCE_TUNE_SEEDS,
) -> tuple[float, list[tuple[float, float]]]:
  """The peak rate of Adam-cosine (AdamW-cosine at ``weight_decay``) tuned on ``task``'s validation loss.

  The evaluator's reference and the ``"nominal"`` learned optimizers' starting rate: :func:`grid_search` over
  ``rates`` (extended past an edge, quietly) on the seeds ``TUNE_SEED, TUNE_SEED + 1, ...``, scored by the
  validation loss after ``steps`` steps.

  Args:
    task: the inner task.
    steps: the length of the runs (the schedule spans them).
    weight_decay: AdamW's decoupled decay (0: Adam).
    rates: the initial grid.
    tune_seeds: runs per rate.

  Returns:
    ``(rate, table)`` as :func:`grid_search`.
  """
  make = _ADAM_COSINE.get((steps, weight_decay))
  if make is None:  # one function object per (steps, decay), so that the jitted grid is reused
    if weight_decay:
      make = functools.partial(adamw_cosine, steps=steps, weight_decay=weight_decay)
    else:
      make = functools.partial(adam_cosine, steps=steps)
    _ADAM_COSINE[(steps, weight_decay)] = make
  seeds = range(TUNE_SEED, TUNE_SEED + tune_seeds)
  with warnings.catch_warnings():  # an edge pick extends the grid: expected, not news for the user
    warnings.simplefilter("ignore", GridEdgeWarning)
    return grid_search(task, make, rates, steps=steps, seeds=seeds, split="valid")


_ADAM_COSINE: dict[tuple[int, float], Callable[[Any], optax.GradientTransformation]] = {}
