"""The inner problem of meta-training: a task trained by a learned optimizer."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import optax

from tasks import Task


class InnerState(NamedTuple):
  """One inner run: the task's params and the learned optimizer's state."""

  params: Any
  opt_state: Any


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["task"], meta_fields=["optimizer", "horizon", "meta_loss_split"]
)
@dataclasses.dataclass(frozen=True)
class LearnedOptimizerProblem:
  """Training ``task`` with ``optimizer.optimizer(theta)`` for ``horizon`` steps.

  Implements the inner-problem interface of :mod:`metatrain.antithetic`:
  ``init(theta, key)`` starts a run (fresh params from the key), and
  ``step(theta, state, key)`` takes one inner step on a batch drawn with
  ``key`` and returns the step's meta-loss: the task's normalised training
  loss (``meta_loss_split="train"``) or its normalised loss on a validation
  batch drawn with the same key (``"valid"``). A pytree: pass it to ``jit``.

  Args:
    task: the inner task.
    optimizer: a learned optimizer (``init_meta``, ``optimizer(theta)``).
    horizon: inner steps of one run (T).
    meta_loss_split: ``"train"`` or ``"valid"``.
  """

  task: Task
  optimizer: Any
  horizon: int
  meta_loss_split: str = "train"

  def __post_init__(self):
    if self.meta_loss_split not in ("train", "valid"):
      raise ValueError(f"meta_loss_split must be 'train' or 'valid', got {self.meta_loss_split!r}.")

  def init(self, theta: Any, key: jax.Array) -> InnerState:
    params = self.task.init(key)
    return InnerState(params, self.optimizer.optimizer(theta).init(params))

  def step(self, theta: Any, state: InnerState, key: jax.Array) -> tuple[InnerState, jax.Array]:
    loss, grads = jax.value_and_grad(self.task.loss)(state.params, self.task.sample_batch(key, "train"))
    if self.meta_loss_split == "valid":
      loss = self.task.loss(state.params, self.task.sample_batch(key, "valid"))
    updates, opt_state = self.optimizer.optimizer(theta).update(grads, state.opt_state, state.params)
    return InnerState(optax.apply_updates(state.params, updates), opt_state), self.task.normalized(loss)


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
  """
  schedule = outer_schedule(
    learning_rate, total_steps=total_steps, warmup_steps=warmup_steps, final_fraction=final_fraction
  )
  return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(schedule))


def outer_schedule(
  learning_rate: float, *, total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.1
) -> optax.Schedule:
  """Linear warm-up from 0 to ``learning_rate``, then cosine decay to ``final_fraction`` of it."""
  return optax.warmup_cosine_decay_schedule(
    0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1), learning_rate * final_fraction
  )
