"""Evaluation while meta-training: how well the current theta trains fresh networks over the whole horizon.

The PES meta-loss that the learner sees is a noisy average over truncations
of inner runs at many different thetas. An evaluation answers the user's
question instead: start ``eval_seeds`` fresh networks of the worker config's
task, train each for the whole :attr:`WorkerConfig.horizon` with the learned
optimizer at one theta, and report the final training loss, the training loss
averaged over the horizon, the final validation loss and the mean curve
(:class:`Evaluation`).

Evaluation runs use ``jax.random.key(SELECTION_SEED + i)`` (:func:`evaluation_keys`),
apart from ``metatrain eval``'s (which reports the theta selected on them, :mod:`metatrain.runtime.selection`);
workers derive theirs from ``fold_in(key(seed), worker_id)``, so meta-training never sees them, and an
evaluation touches no randomness of the learner or the workers (a resumed run stays deterministic).
With a task family, every evaluation also runs a fixed sample of the family
(:func:`family_members`: the distinct variants that the evaluation keys draw),
each under its name (``eval/<member>/valid_loss`` in TensorBoard), and the
selection (:mod:`metatrain.runtime.selection`) compares thetas on the mean
validation loss over that sample: what the run meta-trains for.

Once per run the evaluator also computes a reference: Adam with warm-up and
cosine decay (:func:`metatrain.adam_cosine`), its peak rate tuned by
:func:`metatrain.grid_search` on the validation loss after the horizon with
tuning seeds (``TUNE_SEED + i``, never the evaluation seeds, never the test
split), then trained on the evaluation seeds (:class:`Reference`).

Two evaluators share one interface (:class:`Evaluator`): :class:`InProcessEvaluator`
computes on a background thread of this process, :class:`metatrain.runtime.ray_pool.RayEvaluator` in a Ray
actor. Neither ever blocks the training loop: :meth:`Evaluator.submit`
refuses a theta while an evaluation is running (counted in
:attr:`Evaluator.skipped`), :meth:`Evaluator.poll` returns the evaluations
that ended, and an evaluation whose process died or that raised is counted in
:attr:`Evaluator.lost` (a dead actor is replaced). A slow or dead evaluator
costs evaluations, never an outer step.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

import tasks
from metatrain.evaluation.baselines import (
  REFERENCE_RATES,
  REFERENCE_TUNE_SEEDS,
  SELECTION_SEED,
  adam_cosine,
  tune_adam_cosine,
)
from metatrain.evaluation.curves import evaluation_curves
from metatrain.runtime.config import WorkerConfig
from metatrain.types import Theta

#: How often the evaluator looks whether an evaluation ended, while waiting for it (seconds).
POLL_SECONDS = 0.05

#: Draws from a task family for its evaluation sample (:func:`family_members`; repeated variants count once).
FAMILY_DRAWS = 4


def family_members(worker: WorkerConfig, draws: int = FAMILY_DRAWS) -> list[tasks.Task]:
  """The fixed sample of ``worker.task_family`` that every evaluation runs: ``[]`` without a family.

  The distinct variants (by name, in order of first draw) that keys ``SELECTION_SEED + i``, ``i < draws``, draw:
  the same members in every evaluation, every run and every resume.

  Example:
    >>> from metatrain import WorkerConfig
    >>> [task.name for task in family_members(WorkerConfig(task_family="mlp_fashion8_sizes"))]
    ['mlp_fashion8_32_relu_n5000', 'mlp_fashion8_32_relu', 'mlp_fashion8_32_relu_n2000']
  """
  if not worker.task_family:
    return []
  family = tasks.families()[worker.task_family]
  members: dict[str, tasks.Task] = {}
  for i in range(draws):
    task = family.sample(jax.random.key(SELECTION_SEED + i))
    members.setdefault(task.name, task)
  return list(members.values())


def evaluation_keys(seeds: int) -> jax.Array:
  """The PRNG keys of ``seeds`` evaluation runs: ``jax.random.key(SELECTION_SEED + i)``, stacked.

  Not ``metatrain eval``'s seeds (``EVAL_SEED + i``): a run selects its theta on these, and the report of
  the selected theta is then on runs it was not selected on.
  """
  return jnp.stack([jax.random.key(SELECTION_SEED + i) for i in range(seeds)])


@dataclasses.dataclass(frozen=True)
class Losses:
  """One optimizer's whole inner runs on the evaluation seeds, as means over seeds.

  Attributes:
    final_train_loss: ``task.eval_loss`` on the train split after the last inner step.
    mean_train_loss: the training batch loss averaged over every inner step.
    valid_loss: ``task.eval_loss`` on the valid split after the last inner step.
    curve: the training batch loss of every inner step, shape ``(horizon,)``.
  """

  final_train_loss: float
  mean_train_loss: float
  valid_loss: float
  curve: np.ndarray

  @classmethod
  def of(cls, batch: Any, evals: Any) -> Losses:
    """From :func:`metatrain.evaluation.curves.evaluation_curves`' ``(batch_losses, evals)`` with ``every=horizon``.

    Args:
      batch: training batch losses, shape ``(seeds, horizon)``.
      evals: ``task.eval_loss`` on train, valid and test at steps 0 and horizon, shape ``(seeds, 2, 3)``.
    """
    batch, evals = np.asarray(batch, np.float64), np.asarray(evals, np.float64)
    return cls(
      final_train_loss=float(np.mean(evals[:, -1, 0])),
      mean_train_loss=float(np.mean(batch)),
      valid_loss=float(np.mean(evals[:, -1, 1])),
      curve=np.mean(batch, axis=0),
    )

  def scalars(self) -> dict[str, float]:
    """``{"final_train_loss": ..., "mean_train_loss": ..., "valid_loss": ...}``."""
    return {
      "final_train_loss": self.final_train_loss,
      "mean_train_loss": self.mean_train_loss,
      "valid_loss": self.valid_loss,
    }


@dataclasses.dataclass(frozen=True)
class Reference:
  """Tuned Adam with warm-up and cosine decay on the evaluation seeds.

  Attributes:
    learning_rate: the peak rate :func:`metatrain.grid_search` picked.
    losses: its runs on the evaluation seeds.
    table: ``(rate, mean final validation loss)`` of every rate tried, best first.
    seconds: the wall time of the tuning and the runs (compilation included).
  """

  learning_rate: float
  losses: Losses
  table: list[tuple[float, float]]
  seconds: float


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The evaluation of one theta.

  Attributes:
    step: the outer step of the theta evaluated.
    losses: the learned optimizer's runs on the evaluation seeds.
    seconds: the wall time of the runs (compilation included in the first; the reference's not).
    reference: the run's Adam reference (None where it failed: every tuning run diverged...).
    theta: the meta-parameters evaluated (numpy leaves), for the run's selection of the best theta.
    members: with a task family, the learned optimizer's runs on each member of its sample, by name
      (:func:`family_members`); empty without one.
  """

  step: int
  losses: Losses
  seconds: float
  reference: Reference | None = None
  theta: Theta | None = None
  members: Mapping[str, Losses] = dataclasses.field(default_factory=dict)

  @property
  def selection_loss(self) -> float:
    """The validation loss that the run's selection compares (with a task family, its mean over the sample)."""
    if self.members:
      return float(np.mean([losses.valid_loss for losses in self.members.values()]))
    return self.losses.valid_loss


class EvaluationRuns:
  """The computations of an evaluation in one process (no thread, no Ray).

  Every evaluation is one jitted program (:func:`metatrain.evaluation.curves.evaluation_curves`:
  a ``lax.scan`` over the horizon, vmapped over seeds) with theta an argument:
  it compiles on the first evaluation only.

  Args:
    worker: the run's worker config (its task, learned optimizer and horizon).
    seeds: evaluation runs per theta.
    reference_rates: the Adam reference's initial grid of peak rates.
    tune_seeds: tuning runs per rate.
  """

  def __init__(
    self,
    worker: WorkerConfig,
    seeds: int,
    *,
    reference_rates: Sequence[float] = REFERENCE_RATES,
    tune_seeds: int = REFERENCE_TUNE_SEEDS,
  ):
    self.task = tasks.get(worker.task)
    self.learned_optimizer = worker.build_learned_optimizer()
    # The family's sample, each with the learned optimizer on its space (as the workers build it).
    self.members = [
      (
        task,
        functools.partial(
          dataclasses.replace(self.learned_optimizer, space=task.space).optimizer, total_steps=worker.horizon
        ),
      )
      for task in family_members(worker)
    ]
    self.horizon = worker.horizon
    self.keys = evaluation_keys(seeds)
    self.reference_rates, self.tune_seeds = tuple(reference_rates), tune_seeds
    # The same function object for every call, so the jitted programs are reused.
    self._adam = functools.partial(adam_cosine, steps=self.horizon)
    self._learned = functools.partial(self.learned_optimizer.optimizer, total_steps=self.horizon)

  def learned(self, theta: Theta) -> Losses:
    """The learned optimizer's runs at ``theta`` on the evaluation seeds."""
    theta = jax.tree.map(jnp.asarray, theta)
    return self._losses(theta, self._learned)

  def member_losses(self, theta: Theta) -> dict[str, Losses]:
    """The learned optimizer's runs at ``theta`` on each member of the family's sample, by name."""
    theta = jax.tree.map(jnp.asarray, theta)
    return {task.name: self._losses(theta, learned, task) for task, learned in self.members}

  def _losses(self, hyper: Any, make_optimizer: Callable, task: tasks.Task | None = None) -> Losses:
    batch, evals = evaluation_curves(
      task or self.task, hyper, self.keys, make_optimizer=make_optimizer, steps=self.horizon, every=self.horizon
    )
    return Losses.of(batch, evals)

  def reference(self) -> Reference:
    """Adam-cosine tuned on the tuning seeds' validation loss, then run on the evaluation seeds.

    Raises:
      FloatingPointError: every tuning run diverged.
    """
    start = time.perf_counter()
    rate, table = tune_adam_cosine(self.task, self.horizon, rates=self.reference_rates, tune_seeds=self.tune_seeds)
    losses = self._losses(jnp.float32(rate), self._adam)
    return Reference(rate, losses, table, time.perf_counter() - start)

  def evaluate(self, theta: Theta, step: int, *, reference: bool = False) -> Evaluation:
    """:meth:`learned` at ``theta``, with :meth:`reference` first when asked (None where it fails)."""
    adam = None
    if reference:
      try:
        adam = self.reference()
      except FloatingPointError as error:
        tqdm.tqdm.write(f"warning: no Adam reference for the evaluations ({error}).")
    start = time.perf_counter()
    losses, members = self.learned(theta), self.member_losses(theta)
    theta = jax.tree.map(np.asarray, theta)
    return Evaluation(int(step), losses, time.perf_counter() - start, adam, theta, members)


class Evaluator:
  """Evaluates thetas in the background, one at a time, without ever blocking the caller.

  Subclasses start an evaluation (``_start``), say whether one is running
  (:meth:`running`) and collect the ended ones (``_collect``); this class
  counts the skipped and lost ones and carries the Adam reference, computed
  by the first evaluation, into every later one.

  Attributes:
    skipped: thetas refused by :meth:`submit` because an evaluation was running.
    lost: evaluations that did not end with a result (the process died, or the evaluation raised).
    submitted: the step of the latest theta accepted (None before the first).
  """

  def __init__(self):
    self.skipped = 0
    self.lost = 0
    self.submitted: int | None = None
    self.reference: Reference | None = None
    self._reference_tried = False

  def submit(self, theta: Theta, step: int) -> bool:
    """Starts evaluating ``theta`` (numpy leaves, not changed afterwards) unless an evaluation is running.

    Returns:
      Whether it started; False counts in :attr:`skipped`.
    """
    if self.running():
      self.skipped += 1
      return False
    self._start(theta, int(step), reference=not self._reference_tried)
    self._reference_tried = True
    self.submitted = int(step)
    return True

  def poll(self) -> list[Evaluation]:
    """The evaluations that ended since the last call (non-blocking), the Adam reference in each."""
    ended = []
    for evaluation in self._collect():
      if evaluation is None:
        self.lost += 1
        self._reference_tried = self.reference is not None  # a lost first evaluation lost the reference too
        continue
      if evaluation.reference is not None:
        self.reference = evaluation.reference
      ended.append(dataclasses.replace(evaluation, reference=self.reference))
    return ended

  def wait(self, timeout: float, *, stop: Callable[[], bool] | None = None) -> list[Evaluation]:
    """:meth:`poll` until no evaluation is running, ``timeout`` seconds have passed or ``stop()`` is true."""
    deadline = time.monotonic() + timeout
    ended = self.poll()
    while self.running() and time.monotonic() < deadline and not (stop is not None and stop()):
      time.sleep(POLL_SECONDS)
      ended += self.poll()
    return ended + self.poll()

  def finish(
    self, theta: Theta, step: int, *, timeout: float, stop: Callable[[], bool] | None = None
  ) -> list[Evaluation]:
    """The end of a run: the running evaluation, then one of ``theta`` unless it is the one running.

    Waits ``timeout`` seconds at most in all (or until ``stop()``); an evaluation still running then
    is abandoned.

    Returns:
      The evaluations that ended meanwhile.
    """
    deadline = time.monotonic() + timeout
    ended = self.wait(timeout, stop=stop)
    if self.submitted != step and not self.running() and not (stop is not None and stop()):
      self.submit(theta, step)
      ended += self.wait(max(0.0, deadline - time.monotonic()), stop=stop)
    return ended

  def running(self) -> bool:
    """Whether an evaluation is running (or waiting to start)."""
    raise NotImplementedError

  def _start(self, theta: Theta, step: int, *, reference: bool) -> None:
    raise NotImplementedError

  def _collect(self) -> list[Evaluation | None]:
    """The evaluations that ended, None for each lost one."""
    raise NotImplementedError

  def close(self) -> None:
    """Stops evaluating; a running evaluation is abandoned."""


class InProcessEvaluator(Evaluator):
  """Evaluates on a background thread of this process (JAX releases the GIL while it computes).

  The task and the learned optimizer are built on that thread too, at the first evaluation.

  Args:
    worker: the run's worker config.
    seeds: evaluation runs per theta.
    runs: what computes the evaluations (default: an :class:`EvaluationRuns` of ``worker`` and ``seeds``).
  """

  def __init__(self, worker: WorkerConfig, seeds: int, *, runs: Any = None):
    super().__init__()
    self.worker, self.seeds, self._runs = worker, seeds, runs
    self._thread: threading.Thread | None = None
    self._ended: list[Evaluation | None] = []
    self._lock = threading.Lock()
    self._closed = False

  def running(self) -> bool:
    """Whether the evaluation thread is computing."""
    return self._thread is not None and self._thread.is_alive()

  def _start(self, theta: Theta, step: int, *, reference: bool) -> None:
    theta = jax.tree.map(np.array, theta)  # a copy: the caller's arrays may change
    self._thread = threading.Thread(
      target=self._evaluate, args=(theta, step, reference), name=f"evaluation-{step}", daemon=True
    )
    self._thread.start()

  def _evaluate(self, theta: Theta, step: int, reference: bool) -> None:
    try:
      if self._runs is None:
        self._runs = EvaluationRuns(self.worker, self.seeds)
      result: Evaluation | None = self._runs.evaluate(theta, step, reference=reference)
    except Exception:  # noqa: BLE001 - an evaluation must never stop the training loop
      tqdm.tqdm.write(f"warning: the evaluation of step {step} failed:\n{traceback.format_exc()}")
      result = None
    with self._lock:
      if not self._closed:
        self._ended.append(result)

  def _collect(self) -> list[Evaluation | None]:
    with self._lock:
      ended, self._ended = self._ended, []
    return ended

  def close(self) -> None:
    """Drops the results still to come (a running thread ends on its own; it is a daemon)."""
    with self._lock:
      self._closed = True
      self._ended = []


class EvaluationActor:
  """An :class:`EvaluationRuns` in its own process (``ray_pool.RayEvaluator`` makes it a Ray actor).

  Args: as :class:`EvaluationRuns`.
  """

  def __init__(self, worker: WorkerConfig, seeds: int, *, reference_rates: Sequence[float] = REFERENCE_RATES):
    self.runs = EvaluationRuns(worker, seeds, reference_rates=reference_rates)

  def evaluate(self, theta: Theta, step: int, reference: bool) -> Evaluation:
    """:meth:`EvaluationRuns.evaluate`."""
    return self.runs.evaluate(theta, step, reference=reference)

  def pid(self) -> int:
    """The actor process's id (for tests)."""
    return os.getpid()
