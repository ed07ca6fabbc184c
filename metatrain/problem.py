"""The inner problem of meta-training: a task trained by a learned optimizer."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, NamedTuple

import jax
import optax

from metatrain.types import PyTree, Theta
from tasks import Task

if TYPE_CHECKING:
  from metatrain.learned_optimizers import LearnedOptimizer


class InnerState(NamedTuple):
  """One inner run: the task's params and the learned optimizer's state."""

  params: PyTree
  opt_state: PyTree


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["task"],
  meta_fields=["learned_optimizer", "horizon", "meta_loss_split"],
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

  Args:
    task: the inner task.
    learned_optimizer: the learned optimizer (its ``optimizer(theta)`` trains the task).
    horizon: inner steps of one run (T).
    meta_loss_split: ``"train"`` or ``"valid"``.
  """

  task: Task
  learned_optimizer: LearnedOptimizer
  horizon: int
  meta_loss_split: str = "train"

  def __post_init__(self):
    if self.meta_loss_split not in ("train", "valid"):
      raise ValueError(f"meta_loss_split must be 'train' or 'valid', got {self.meta_loss_split!r}.")

  def init(self, theta: Theta, key: jax.Array) -> InnerState:
    """A fresh inner run: the task's params initialised from ``key`` and the optimizer's initial state."""
    params = self.task.init(key)
    return InnerState(params, self.learned_optimizer.optimizer(theta).init(params))

  def step(self, theta: Theta, state: InnerState, key: jax.Array) -> tuple[InnerState, jax.Array]:
    """One inner step on a batch drawn with ``key``: ``(state, normalised meta-loss of the step)``."""
    loss, grads = jax.value_and_grad(self.task.loss)(state.params, self.task.sample_batch(key, "train"))
    if self.meta_loss_split == "valid":
      loss = self.task.loss(state.params, self.task.sample_batch(key, "valid"))
    updates, opt_state = self.learned_optimizer.optimizer(theta).update(grads, state.opt_state, state.params)
    return InnerState(optax.apply_updates(state.params, updates), opt_state), self.task.normalized(loss)
