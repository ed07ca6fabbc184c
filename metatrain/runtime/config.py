"""The configuration of a meta-training run, as plain values: :class:`TrainConfig` and :class:`WorkerConfig`.

Both are frozen dataclasses. gin fills them from ``configs/*.gin`` at the
entry point (:mod:`metatrain.cli`); everything after it takes plain values,
and :class:`WorkerConfig` travels unchanged to remote worker processes.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

import jax

import tasks
from metatrain.estimators import ESTIMATORS, PES, Estimator
from metatrain.estimators import from_json as estimator_from_json
from metatrain.learned_optimizers import LEARNED_OPTIMIZERS, PRESETS, LearnedOptimizer, fan_ins, option_names
from metatrain.problem import META_OBJECTIVES, LearnedOptimizerProblem

#: JAX's persistent compilation cache folder unless configured otherwise.
DEFAULT_COMPILATION_CACHE = "~/.cache/unf-metatrain/jax"


def check_types(config: Any) -> None:
  """Raises a TypeError naming the field when a dataclass field holds a value of the wrong type.

  Args:
    config: a dataclass instance whose fields carry type annotations (``int``, ``float | None``, ``dict[str, float]``,
      a class...). An ``int`` is accepted where a ``float`` is expected.
  """
  hints = typing.get_type_hints(type(config))
  for field in dataclasses.fields(config):
    value, hint = getattr(config, field.name), hints[field.name]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    allowed = tuple(typing.get_origin(a) or a for a in allowed)  # dict[str, float] -> dict
    allowed = tuple(a for a in allowed if isinstance(a, type))
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
      continue  # an int where a float is expected is fine
    if allowed and not isinstance(value, allowed):
      raise TypeError(
        f"{type(config).__name__}.{field.name} must be {' or '.join(a.__name__ for a in allowed)}, "
        f"got {value!r} ({type(value).__name__})."
      )


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
  """What a gradient worker computes: the task, the learned optimizer, the estimator and the meta-objective.

  In gin: ``WorkerConfig.task = "mlp_fashion8"``, ``WorkerConfig.estimator = @PES()`` and ``PES.num_pairs = 8``
  (the estimator's own hyper-parameters are set on its class: :class:`metatrain.PES`,
  :class:`metatrain.TruncatedES`, :class:`metatrain.FullES`).

  Attributes:
    task: a registered task (``tasks.names()``).
    learned_optimizer: the kind of learned optimizer (``metatrain.LEARNED_OPTIMIZERS``: "unf", "deep_sets",
      "sgdm").
    width: hidden features per parameter of the learned optimizer.
    estimator: the gradient estimator and its hyper-parameters.
    horizon: inner steps of one whole inner run (a multiple of the estimator's truncation).
    meta_loss_split: the meta-objective's loss: the normalised loss on "train" or "valid" batches.
    meta_objective: "mean" (the loss averaged over every step of the run) or "final" (over its last
      tenth, the end-of-horizon loss of the paper): :class:`metatrain.LearnedOptimizerProblem`.
    preset: named options of the learned optimizer (``metatrain.learned_optimizers.PRESETS``); with
      ``update_scale="fan_in"`` the reference fan-ins are the task's.
    options: options of the learned optimizer that override the preset's (``{"initial_alpha": 1.0}``).
    task_family: a task family (``tasks.families()``) to sample every estimate's task from, each variant of
      the architecture of ``task`` (whose space the learned optimizer is built for); "" trains on ``task``.
  """

  task: str = "mlp_fashion8"
  learned_optimizer: str = "unf"
  width: int = 32
  estimator: Estimator = PES()
  horizon: int = 2000
  meta_loss_split: str = "train"
  meta_objective: str = "mean"
  preset: str = "v1"
  options: dict[str, Any] | None = None
  task_family: str = ""

  def __post_init__(self):
    check_types(self)
    if self.learned_optimizer not in LEARNED_OPTIMIZERS:
      raise ValueError(
        f"unknown learned optimizer {self.learned_optimizer!r}; choose one of {sorted(LEARNED_OPTIMIZERS)}."
      )
    if self.task not in tasks.names():
      raise ValueError(f"unknown task {self.task!r}; known tasks: {', '.join(tasks.names())}.")
    if self.meta_loss_split not in ("train", "valid"):
      raise ValueError(f"meta_loss_split must be 'train' or 'valid', got {self.meta_loss_split!r}.")
    if self.meta_objective not in META_OBJECTIVES:
      raise ValueError(f"meta_objective must be one of {META_OBJECTIVES}, got {self.meta_objective!r}.")
    if self.preset not in PRESETS:
      raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}.")
    if self.task_family and self.task_family not in tasks.families():
      raise ValueError(f"unknown task family {self.task_family!r}; known: {', '.join(sorted(tasks.families()))}.")
    self.estimator.check(self.horizon)

  def learned_optimizer_options(self) -> dict[str, Any]:
    """The learned optimizer's keyword options: the preset's, then ``options``, then ``width`` and ``horizon``."""
    return {**PRESETS[self.preset], **(self.options or {}), "width": self.width, "horizon": self.horizon}

  def resolved(self) -> WorkerConfig:
    """This config with every option that is derived from data filled in (the same config when there is none).

    A ``"nominal"`` learned optimizer without an ``initial_alpha`` starts at the peak rate of Adam-cosine
    (AdamW-cosine at its ``initial_weight_decay``) tuned on the task's validation loss at the horizon, as the
    evaluator tunes its reference (:func:`metatrain.evaluation.baselines.tune_adam_cosine`: a grid search,
    seconds to a minute): at its initial theta the optimizer is that reference. :func:`metatrain.train`
    resolves its config once, before any worker starts, and checkpoints keep the resolved one.
    """
    options = self.learned_optimizer_options()
    if options.get("base") != "nominal" or "initial_alpha" in options:
      return self
    from metatrain.evaluation.baselines import tune_adam_cosine

    rate, _ = tune_adam_cosine(
      tasks.get(self.task), self.horizon, weight_decay=float(options.get("initial_weight_decay", 0.0))
    )
    return dataclasses.replace(self, options={**(self.options or {}), "initial_alpha": rate})

  def build_learned_optimizer(self) -> LearnedOptimizer:
    """The learned optimizer for the task's weight space (loads the task's data on first use)."""
    task = tasks.get(self.task)
    kind = LEARNED_OPTIMIZERS[self.learned_optimizer]
    # A preset's options and the width are for every kind: a kind without f (sgdm) takes the base term's only.
    # What ``options`` names explicitly is passed on, and a kind that does not take it says so.
    taken = set(option_names(kind))
    generic = {**PRESETS[self.preset], "width": self.width, "horizon": self.horizon}
    options = {name: value for name, value in generic.items() if name in taken}
    last: dict[str, Any] = {name: generic[name] for name in ("width", "horizon") if name in taken}
    options = {**options, **(self.options or {}), **last}
    if options.get("update_scale") == "fan_in" and options.get("reference_fan_in") is None:
      options["reference_fan_in"] = fan_ins(jax.eval_shape(task.init, jax.random.key(0)))
    try:
      return kind(task.space, **options)
    except TypeError as error:
      raise ValueError(f"WorkerConfig.options {self.options!r}: {error}") from error

  def build_problem(
    self, learned_optimizer: LearnedOptimizer, task: tasks.Task | None = None
  ) -> LearnedOptimizerProblem:
    """The inner problem the estimator runs on: ``task`` (default: the configured one) trained by the optimizer."""
    task = tasks.get(self.task) if task is None else task
    return LearnedOptimizerProblem(task, learned_optimizer, self.horizon, self.meta_loss_split, self.meta_objective)

  @property
  def inner_steps_per_estimate(self) -> int:
    """Inner steps of one estimate, both signs of every pair counted (``estimator.inner_steps(horizon)``)."""
    return self.estimator.inner_steps(self.horizon)

  def to_json(self) -> dict[str, Any]:
    """JSON-ready values (the estimator as ``{"name": ..., <its fields>}``); :meth:`from_json` reads them back."""
    values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
    return {**values, "estimator": self.estimator.to_json()}

  @classmethod
  def from_json(cls, values: dict[str, Any]) -> WorkerConfig:
    """The config that :meth:`to_json` wrote, or one from a checkpoint written before the estimator field.

    Older checkpoints hold ``optimizer`` for ``learned_optimizer`` and the estimator as a name with its
    hyper-parameters (``num_pairs``, ``truncation``, ``std``, ``clip``) beside the other fields.
    """
    values = dict(values)
    if "optimizer" in values:
      values["learned_optimizer"] = values.pop("optimizer")
    estimator = values.get("estimator", "pes")
    if isinstance(estimator, str):
      estimator = {"name": estimator}
      accepted = {f.name for f in dataclasses.fields(ESTIMATORS.get(estimator["name"], PES))}
      for name in ("num_pairs", "truncation", "std", "clip"):
        if name in values:
          value = values.pop(name)
          if name in accepted:
            estimator[name] = value
    values["estimator"] = estimator_from_json(estimator)
    known = {field.name for field in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in values.items() if name in known})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A meta-training run (set from a gin file: ``TrainConfig.outer_steps = 1000``).

  Attributes:
    outer_steps: meta-gradient steps.
    learning_rate: peak outer learning rate (Adam, warm-up, cosine decay, clip 1.0).
    warmup_steps: outer warm-up steps.
    per_part_learning_rate: each part of theta steps by ``learning_rate`` times its factor of
      :meth:`metatrain.LearnedOptimizer.noise_scales` (a UNF's last layer less than the rest, by the number
      of inputs of each output entry against Deep Sets'; every other factor is 1). Adam moves every
      coordinate about as far per step whatever its gradient, so without it a UNF's large last layer
      random-walks its output further than Deep Sets' does. May be changed on resume (the outer optimizer's
      state is the same).
    num_workers: gradient workers (0: one per CPU of this machine; see :attr:`worker_count`).
    estimates_per_step: estimates averaged per outer step (0: one per worker).
    staleness: largest accepted age of an estimate in outer steps (0: synchronous).
    checkpoint_every: outer steps between checkpoints (and one at exit).
    keep_checkpoints: checkpoints kept.
    checkpoint_particles: save the workers' particles in checkpoints, for an exact resume;
      they cost 2 x pairs x (params + optimizer state) per worker: turn off for many workers on big tasks.
    seed: seeds theta's initialisation and every worker.
    use_ray: run workers as Ray actors (False: in this process, one after another).
    address: Ray address (None: a local Ray; "auto": the cluster this runs on).
    worker_cpus: CPUs reserved per worker actor (Ray scheduling).
    worker_gpus: GPUs per worker actor (a worker shards its pairs over every device it is given).
    worker_resources: custom Ray resources per worker actor, e.g. ``{"TPU": 4}`` for one worker per
      4-chip TPU VM (a TPU can be opened by one process only).
    compilation_cache: folder of JAX's persistent compilation cache, shared by the learner and every
      worker (a second run with the same config compiles nothing); None turns it off. The environment
      variable ``JAX_COMPILATION_CACHE_DIR``, when set, takes precedence.
    keep_particles: Ray workers return their particles with every estimate, kept in Ray's object store,
      so that a restarted worker recomputes its lost estimate exactly and a preempted run checkpoints
      the step it was on (:class:`metatrain.runtime.ray_pool.RayPool`); costs one copy of each
      worker's particles per call.
    worker_patience: seconds a down worker (restarting, or waiting for resources) is waited for before
      the live workers compute the estimates it owes.
    aggregate_per_node: with ``use_ray``, the learner makes one Ray call per node per step, to an actor on
      that node that starts its workers and returns the sum of their estimates
      (:class:`metatrain.runtime.ray_nodes.AggregatingRayPool`): for clusters of many workers per node,
      where Ray's per-call cost limits the learner. The mean is the same up to float rounding (bit for bit
      with one worker per node); requires ``use_ray``.
    eval_every: outer steps between evaluations of theta (0: none): ``eval_seeds`` fresh inner runs over
      the whole horizon, beside a tuned Adam (:mod:`metatrain.runtime.evaluator`), under ``eval/`` in
      TensorBoard. An evaluation runs in the background; one due while another runs is skipped.
    eval_seeds: fresh inner runs per evaluation (seeds ``SELECTION_SEED + i``, never used in meta-training nor
      by ``metatrain eval``).
    eval_cpus: CPUs reserved for the Ray evaluation actor (``use_ray``); 0 shares the workers' CPUs. Where
      the workers leave fewer free (a local Ray has as many CPUs as the machine, and ``num_workers = 0``
      gives them all to workers), the actor gets the free ones, with a warning: asking for more, it would
      never start (:func:`metatrain.runtime.train.evaluator_cpus`).
  """

  outer_steps: int = 100
  learning_rate: float = 1e-3
  warmup_steps: int = 0
  per_part_learning_rate: bool = False
  num_workers: int = 0
  estimates_per_step: int = 0
  staleness: int = 0
  checkpoint_every: int = 50
  keep_checkpoints: int = 3
  checkpoint_particles: bool = True
  seed: int = 0
  use_ray: bool = True
  address: str | None = None
  worker_cpus: int = 1
  worker_gpus: float = 0.0
  worker_resources: dict[str, float] | None = None
  compilation_cache: str | None = DEFAULT_COMPILATION_CACHE
  keep_particles: bool = True
  worker_patience: float = 60.0
  aggregate_per_node: bool = False
  eval_every: int = 0
  eval_seeds: int = 4
  eval_cpus: float = 1.0

  def __post_init__(self):
    check_types(self)
    if self.eval_every < 0 or self.eval_cpus < 0 or self.eval_seeds < 1:
      raise ValueError("TrainConfig.eval_every and eval_cpus must not be negative, and eval_seeds must be at least 1.")
    if self.outer_steps < 1 or self.checkpoint_every < 1:
      raise ValueError("TrainConfig.outer_steps and checkpoint_every must be at least 1.")
    if self.num_workers < 0 or self.estimates_per_step < 0 or self.staleness < 0 or self.worker_patience < 0:
      raise ValueError(
        "TrainConfig.num_workers, estimates_per_step, staleness and worker_patience must not be negative."
      )
    if self.aggregate_per_node and not self.use_ray:
      raise ValueError(
        "TrainConfig.aggregate_per_node sums estimates per Ray node, so it needs use_ray = True; "
        "set use_ray = True or aggregate_per_node = False."
      )

  @property
  def worker_count(self) -> int:
    """The number of workers, ``num_workers`` or one per CPU of this machine when it is 0."""
    return self.num_workers or os.cpu_count() or 1

  @property
  def estimates_per_outer_step(self) -> int:
    """Estimates averaged per outer step, ``estimates_per_step`` or one per worker when it is 0."""
    return self.estimates_per_step or self.worker_count

  def compilation_cache_dir(self) -> str | None:
    """The persistent compilation cache folder in effect (``JAX_COMPILATION_CACHE_DIR`` first), or None."""
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or self.compilation_cache
    return os.path.abspath(os.path.expanduser(folder)) if folder else None
