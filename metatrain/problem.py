"""The inner problem of meta-training: a task trained by a learned optimizer."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metatrain.types import PyTree, Theta
from tasks import Task

if TYPE_CHECKING:
  from metatrain.learned_optimizers import LearnedOptimizer

#: The meta-objectives, the loss averaged over every step of a run ("mean") or over its last tenth ("final").
META_OBJECTIVES = ("mean", "final")
#: The fraction of the horizon whose loss the "final" meta-objective averages.
FINAL_FRACTION = 0.1


class InnerState(NamedTuple):
  """One inner run: the task's params, the learned optimizer's state and the number of steps taken."""

  params: PyTree
  opt_state: PyTree
  step: jax.Array


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["task"],
  meta_fields=["learned_optimizer", "horizon", "meta_loss_split", "meta_objective"],
)
@dataclasses.dataclass(frozen=True)
class LearnedOptimizerProblem:
  """Training ``task`` with ``learned_optimizer.optimizer(theta)`` for ``horizon`` steps.

  Implements the inner-problem interface of :mod:`metatrain.estimators.common`:
  ``init(theta, key)`` starts a run (fresh params from the key), and
  ``step(theta, state, key)`` takes one inner step on a batch drawn with
  ``key`` and returns the step's meta-loss: the task's normalised training
  loss (``meta_loss_split="train"``) or its normalised loss on a validation
  batch drawn with the same key (``"valid"``). A pytree: pass it to ``jit``.

  With ``meta_objective="final"`` a step's meta-loss is ``1 / FINAL_FRACTION``
  times its loss in the last tenth of the run (steps ``t >= 0.9 T``, read from
  the run's step count) and 0 before: the mean over a whole run is then
  the mean loss of its last tenth, the paper's end-of-horizon objective
  smoothed over 0.1 T steps (a single step's loss would be far noisier).

  Args:
    task: the inner task.
    learned_optimizer: the learned optimizer (its ``optimizer(theta)`` trains the task).
    horizon: inner steps of one run (T).
    meta_loss_split: ``"train"`` or ``"valid"``.
    meta_objective: ``"mean"`` or ``"final"``.
  """

  task: Task
  learned_optimizer: LearnedOptimizer
  horizon: int
  meta_loss_split: str = "train"
  meta_objective: str = "mean"

  def __post_init__(self):
    if self.meta_loss_split not in ("train", "valid"):
      raise ValueError(f"meta_loss_split must be 'train' or 'valid', got {self.meta_loss_split!r}.")
    if self.meta_objective not in META_OBJECTIVES:
      raise ValueError(f"meta_objective must be one of {META_OBJECTIVES}, got {self.meta_objective!r}.")

  def optimizer(self, theta: Theta) -> optax.GradientTransformation:
    """The learned optimizer at ``theta`` for runs of ``horizon`` steps (its ``total_steps``)."""
    return self.learned_optimizer.optimizer(theta, total_steps=self.horizon)

  def noise_scales(self, theta: Theta) -> Theta:
    """The scale of every part of ``theta`` for ES perturbations: the learned optimizer's
    (:meth:`metatrain.LearnedOptimizer.noise_scales`), read by estimators with ``per_part_noise=True``."""
    return self.learned_optimizer.noise_scales(theta)

  def init(self, theta: Theta, key: jax.Array) -> InnerState:
    """A fresh inner run: the task's params initialised from ``key`` and the optimizer's initial state."""
    params = self.task.init(key)
    return InnerState(params, self.optimizer(theta).init(params), jnp.zeros((), jnp.int32))

  def step(self, theta: Theta, state: InnerState, key: jax.Array) -> tuple[InnerState, jax.Array]:
    """One inner step on a batch drawn with ``key``: ``(state, normalised meta-loss of the step)``."""
    loss, grads = jax.value_and_grad(self.task.loss)(state.params, self.task.sample_batch(key, "train"))
    if self.meta_loss_split == "valid":
      loss = self.task.loss(state.params, self.task.sample_batch(key, "valid"))
    updates, opt_state = self.optimizer(theta).update(grads, state.opt_state, state.params)
    meta_loss = self.task.normalized(loss)
    if self.meta_objective == "final":
      start = self.horizon - max(1, round(FINAL_FRACTION * self.horizon))
      weight = self.horizon / (self.horizon - start)
      meta_loss = jnp.where(state.step >= start, weight * meta_loss, jnp.zeros_like(meta_loss))
    return InnerState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), meta_loss
