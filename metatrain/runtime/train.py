"""The main job: meta-training with a pool of gradient workers, a learner, checkpoints and TensorBoard.

:func:`train` is ``metatrain train`` without the command line. It is built
from small pieces: :func:`resume` (from the workdir's checkpoints),
:func:`make_pool` (workers in Ray or in this process), and :class:`Run` (the
loop of outer steps, its checkpoints, summaries and progress bar).

Preemption: SIGTERM (what Slurm, Kubernetes and preemptible TPU hosts send
before they reclaim a host), or Ctrl-C, stops the run at once: the gather in progress
returns within half a second (an in-process pool finishes the estimate it is
computing), a checkpoint of the step the learner is on is written, with the
workers' particles as they were at that step when the pool keeps them
(:attr:`TrainConfig.keep_particles`), and :func:`train` raises
:class:`Preempted`; ``metatrain train`` then exits with status 75
(:data:`~metatrain.exit_status.PREEMPTED_EXIT_STATUS`; after Ctrl-C 130,
:data:`~metatrain.exit_status.INTERRUPTED_EXIT_STATUS`). Run it again and it
resumes from that step, in a synchronous run exactly where it stopped. A second
Ctrl-C while that checkpoint is written stops at once: the partial checkpoint is
removed, the previous one is intact, and the status is 130.

Checkpoints that cannot be written (a full disk, a quota, lost permissions)
stop the run with :class:`metatrain.runtime.checkpoint.SaveFailed` rather
than go on without them: the failed save leaves nothing behind, the earlier
checkpoints are intact, and ``metatrain train`` exits with status 74
(:data:`~metatrain.exit_status.SAVE_FAILED_EXIT_STATUS`, EX_IOERR) and a
one-line message; run it again once there is room.

Evaluation (:attr:`TrainConfig.eval_every` > 0): an evaluator
(:func:`make_evaluator`, :mod:`metatrain.runtime.evaluator`; a Ray actor with
``use_ray``, else a thread of this process) trains fresh particles with the
theta of every outer step that is a multiple of ``eval_every`` (step 0, or
the step a run resumes at, included), in the background: a theta due while
the previous one is still being evaluated is skipped (``faults/skipped_evals``),
an evaluation whose actor died is lost (``faults/lost_evals``), and neither
delays an outer step. Results are written under ``eval/`` at the step of the
theta evaluated as they arrive. At the end of a run that did every outer step,
after its last checkpoint, the evaluation running is waited for and the final
theta is evaluated (unless it was the one running), both within
:data:`FINAL_EVALUATION_TIMEOUT` seconds; what has not ended then is abandoned.
A run stopped early (SIGTERM, Ctrl-C, an error) waits for no evaluation.
Evaluations draw no randomness of the learner or the workers: a resumed run
computes the same thetas with or without them. The evaluated theta with the
lowest validation loss, the start included, is kept in ``WORKDIR/selected``
(:mod:`metatrain.runtime.selection`): what a run ships.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
import tqdm
from etils import epath

from metatrain.exit_status import INTERRUPTED_EXIT_STATUS, PREEMPTED_EXIT_STATUS
from metatrain.learned_optimizers import LearnedOptimizer
from metatrain.loading import CheckpointError, as_path
from metatrain.outer import clipped_adam, outer_schedule
from metatrain.runtime.checkpoint import Checkpoints, SaveFailed
from metatrain.runtime.compilation_cache import cache_env, enable_compilation_cache
from metatrain.runtime.config import TrainConfig, WorkerConfig
from metatrain.runtime.evaluator import Evaluation, Evaluator, InProcessEvaluator
from metatrain.runtime.learner import Learner
from metatrain.runtime.pool import InProcessPool, WorkerPool
from metatrain.runtime.selection import FOLDER as SELECTED
from metatrain.runtime.selection import Selection
from metatrain.runtime.summaries import MAIN_RUN, Summaries
from metatrain.types import Theta

# Fields of the worker config that a checkpoint must agree with to be resumed.
_COMPATIBLE = ("task", "learned_optimizer", "width", "preset", "options")

#: The longest the end of a run waits for its final evaluation (seconds).
FINAL_EVALUATION_TIMEOUT = 120.0


class Preempted(Exception):
  """The run was stopped by SIGTERM or Ctrl-C; a checkpoint of ``step`` is written (run again to resume).

  Attributes:
    workdir, step: where and at which outer step.
    signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
    exit_status: ``metatrain train``'s status: :data:`PREEMPTED_EXIT_STATUS` or :data:`INTERRUPTED_EXIT_STATUS`.
  """

  def __init__(self, workdir: str, step: int, signal_name: str = "SIGTERM"):
    how = "Ctrl-C (SIGINT)" if signal_name == "SIGINT" else signal_name
    super().__init__(f"stopped by {how} at outer step {step}; checkpoint written in {workdir}: run again to resume.")
    self.workdir, self.step, self.signal_name = workdir, step, signal_name
    self.exit_status = INTERRUPTED_EXIT_STATUS if signal_name == "SIGINT" else PREEMPTED_EXIT_STATUS


def train(
  config: TrainConfig, worker: WorkerConfig, workdir: str | os.PathLike, *, operative_config: str = ""
) -> tuple[Theta, list[dict[str, float]]]:
  """Meta-trains with ``config`` and ``worker`` in ``workdir``, resuming from its latest checkpoint.

  Writes ``workdir/checkpoints`` (orbax, see :mod:`metatrain.runtime.checkpoint`) and
  ``workdir/tensorboard`` (tensorboardX). Saves a checkpoint every
  ``checkpoint_every`` steps and at exit, Ctrl-C included. Turns on JAX's
  persistent compilation cache (:meth:`TrainConfig.compilation_cache_dir`)
  in this process and in every worker.

  Args:
    config: the run (outer steps, workers, checkpoints...).
    worker: what the workers compute (task, learned optimizer, estimator...).
    workdir: the run's folder: a local path, or a URL that ``etils.epath`` and orbax understand
      (``gs://bucket/run``; ``launch/README.md``).
    operative_config: the gin config text, saved in checkpoints and TensorBoard.

  Returns:
    ``(theta, history)``: final meta-parameters and the metrics of every outer step run.
  """
  folder = _writable(as_path(workdir))  # an epath: local, or gs://... (s3:// is refused by as_path)
  cache = enable_compilation_cache(config.compilation_cache_dir())
  with contextlib.closing(Checkpoints(folder, keep=config.keep_checkpoints)) as checkpoints:
    worker = resolve(worker, checkpoints)
    learned_optimizer = worker.build_learned_optimizer()
    learner = make_learner(config, learned_optimizer)
    particles = resume(learner, checkpoints, worker)
    if learner.step >= config.outer_steps:  # nothing to do: no workers to start
      tqdm.tqdm.write(f"the run in {folder} is done: step {learner.step} of {config.outer_steps}")
      return learner.theta, []
    events = contextlib.closing(Summaries(folder / "tensorboard", run=MAIN_RUN))
    with (
      events as summaries,
      make_pool(config, worker, cache=cache) as pool,  # first: it starts Ray, where the evaluator runs
      _closing(make_evaluator(config, worker, cache=cache)) as evaluator,
    ):
      summaries.text("operative_config", f"```\n{operative_config}\n```", learner.step)
      if particles:
        pool.load_particles(particles)
      saved = {
        "config": {"gin": operative_config, "worker": worker.to_json(), "train": dataclasses.asdict(config)},
        "learned_optimizer": learned_optimizer.to_json(),
      }
      selection = Selection(folder / SELECTED, learned_optimizer, worker.to_json()) if evaluator else None
      run = Run(config, worker, learner, pool, checkpoints, summaries, saved, evaluator=evaluator, selection=selection)
      stops: list[str] = []

      def stop(name: str) -> None:
        stops.append(name)
        pool.interrupt()

      with _on_stop_signals(stop):
        history = run.loop()
      if pool.interrupted:
        raise Preempted(str(folder), learner.step, stops[0] if stops else "SIGTERM")
  return learner.theta, history


@contextlib.contextmanager
def _closing(thing):
  """``contextlib.closing`` that also takes None."""
  try:
    yield thing
  finally:
    if thing is not None:
      thing.close()


@contextlib.contextmanager
def _on_stop_signals(handler):
  """While the block runs, SIGTERM and a first Ctrl-C call ``handler(name)``; a second Ctrl-C raises at once.

  ``name`` is ``"SIGTERM"`` or ``"SIGINT"``: the run stops its gather and checkpoints the current step. A
  second Ctrl-C raises ``KeyboardInterrupt`` wherever the run is, the checkpoint being written included (it is
  then discarded: :meth:`metatrain.runtime.checkpoint.Checkpoints.save`). In the main thread only; elsewhere,
  nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received: list[int] = []

  def on_signal(signum, frame):
    if signum == signal.SIGINT and signal.SIGINT in received:
      raise KeyboardInterrupt
    received.append(signum)
    handler(signal.Signals(signum).name)

  previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for signum, old in previous.items():
      signal.signal(signum, old)


def _writable(workdir: epath.Path) -> epath.Path:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write-test"
    probe.write_text("ok")
    probe.unlink()
  except OSError as error:
    raise PermissionError(f"workdir {workdir} is not writable ({error}): choose another --workdir.") from error
  return workdir


def make_learner(config: TrainConfig, learned_optimizer: LearnedOptimizer) -> Learner:
  """The learner at the initial theta of ``config.seed``, with the outer optimizer of ``config``.

  The outer schedule is built here once: Adam steps by it, and the learner reports it
  (:meth:`Learner.learning_rate`, TensorBoard's ``meta/learning_rate``).
  """
  theta = jax.tree.map(np.asarray, learned_optimizer.init_meta(jax.random.key(config.seed)))
  schedule = outer_schedule(config.learning_rate, total_steps=config.outer_steps, warmup_steps=config.warmup_steps)
  scales = None
  if config.per_part_learning_rate:
    scales = jax.tree.map(np.asarray, learned_optimizer.noise_scales(theta))
  return Learner(clipped_adam(schedule), theta, staleness=config.staleness, schedule=schedule, part_scales=scales)


def resolve(worker: WorkerConfig, checkpoints: Checkpoints) -> WorkerConfig:
  """``worker`` with its derived options filled in (:meth:`WorkerConfig.resolved`): the checkpoint's, if any.

  A run resumes with the options its first start derived (the tuned starting rate of a ``"nominal"``
  optimizer), without deriving them again; a config that differs from the checkpoint's in anything else is
  resolved afresh, and :func:`resume` then names the difference.
  """
  saved = checkpoints.latest_config() if checkpoints.steps() else None
  if saved is not None and "worker" in saved:
    old = WorkerConfig.from_json(saved["worker"])
    derived = {k: v for k, v in (old.options or {}).items() if k not in (worker.options or {})}
    candidate = dataclasses.replace(worker, options={**(worker.options or {}), **derived}) if derived else worker
    if candidate == old:
      return candidate
  resolved = worker.resolved()
  if resolved is not worker:
    tqdm.tqdm.write(f"derived from the task: {resolved.options} (WorkerConfig.resolved)")
  return resolved


def particles_fit(saved: WorkerConfig, worker: WorkerConfig) -> bool:
  """Whether the particles that workers of ``saved`` checkpointed may be restored into workers of ``worker``.

  Only into the same kind of estimator (the workers then check the shapes): estimators of different kinds
  can keep leaves of the same shapes that mean different things (PES's accumulated noise and noise-reuse
  ES's noise), so a resume with another estimator starts fresh runs.
  """
  return saved.estimator.name == worker.estimator.name


def resume(learner: Learner, checkpoints: Checkpoints, worker: WorkerConfig) -> dict:
  """Loads the newest checkpoint that restores into ``learner``; returns the workers' saved particles.

  Damaged checkpoints newer than it are moved aside (:meth:`Checkpoints.restore_latest`).

  Returns:
    ``{"worker_<i>": leaves}`` (empty when there is no checkpoint or it holds no particles).

  Raises:
    CheckpointError: the checkpoints are for another task or learned optimizer, or none of them restores.
  """

  def compatible(old: dict) -> None:
    saved = WorkerConfig.from_json(old["worker"])
    mismatched = {
      k: (getattr(saved, k), getattr(worker, k)) for k in _COMPATIBLE if getattr(saved, k) != getattr(worker, k)
    }
    if mismatched:
      raise CheckpointError(
        f"the checkpoint in {checkpoints.directory} is for a different learned optimizer or task "
        f"(checkpoint vs config: {mismatched}); use a new --workdir."
      )

  restored = checkpoints.restore_latest(learner.state(), check=compatible)
  if restored is None:
    return {}
  step, state, saved = restored
  learner.load(state)
  saved_worker = WorkerConfig.from_json(saved["worker"])
  if not particles_fit(saved_worker, worker):
    tqdm.tqdm.write(
      f"resuming from step {learner.step}; the particles of the {saved_worker.estimator.name} workers are "
      f"not restored into {worker.estimator.name} workers: they start fresh runs"
    )
    return {}
  particles = checkpoints.restore_particles(step)
  tqdm.tqdm.write(f"resuming from step {learner.step} ({len(particles)} workers' particles restored)")
  return particles


def make_pool(config: TrainConfig, worker: WorkerConfig, *, cache: str | None = None) -> WorkerPool:
  """``config.worker_count`` workers: Ray actors (``config.use_ray``) or in this process.

  Args:
    config: the run's configuration (Ray address and per-worker resources).
    worker: what every worker computes.
    cache: the persistent compilation cache folder the Ray workers use (None: theirs is off).
  """
  if not config.use_ray:
    return InProcessPool(worker, config.worker_count, config.seed)
  from metatrain.runtime.ray_pool import RayPool  # Ray only where it is used

  if config.aggregate_per_node:
    from metatrain.runtime.ray_nodes import AggregatingRayPool

    pool_class: type[RayPool] = AggregatingRayPool
  else:
    pool_class = RayPool
  return pool_class(
    worker,
    config.worker_count,
    config.seed,
    address=config.address,
    num_cpus=config.worker_cpus,
    num_gpus=config.worker_gpus,
    resources=dict(config.worker_resources or {}),
    env_vars=cache_env(cache),
    keep_particles=config.keep_particles,
    patience=config.worker_patience,
  )


def make_evaluator(config: TrainConfig, worker: WorkerConfig, *, cache: str | None = None) -> Evaluator | None:
  """The run's evaluator: None without evaluations, a Ray actor with ``config.use_ray``, else a thread.

  Args:
    config: the run's configuration (``eval_every``, ``eval_seeds``, ``eval_cpus``).
    worker: the task, learned optimizer and horizon evaluated.
    cache: the persistent compilation cache folder of the Ray actor (None: its cache is off).
  """
  if not config.eval_every:
    return None
  if not config.use_ray:
    return InProcessEvaluator(worker, config.eval_seeds)
  from metatrain.runtime.ray_pool import RayEvaluator, cluster_cpus  # Ray only where it is used

  cpus, warning = evaluator_cpus(config.eval_cpus, cluster_cpus(), config.worker_count * config.worker_cpus)
  if warning:
    tqdm.tqdm.write(f"warning: {warning}")
  return RayEvaluator(worker, config.eval_seeds, num_cpus=cpus, env_vars=cache_env(cache))


def evaluator_cpus(requested: float, cluster_cpus: float, workers_cpus: float) -> tuple[float, str]:
  """The CPUs the Ray evaluation actor asks for: ``requested``, or what is free beside the workers.

  An actor that asks for more CPUs than the workers leave would never be scheduled: every evaluation
  would be skipped and the end of the run would wait for one in vain. It gets the free CPUs instead (0:
  it shares the workers'), with a warning that names the setting.

  Args:
    requested: ``TrainConfig.eval_cpus``.
    cluster_cpus: the Ray cluster's CPUs (``ray.cluster_resources()``).
    workers_cpus: the CPUs the workers reserve (``worker_count * worker_cpus``).

  Returns:
    ``(cpus, warning)``: the actor's CPUs, and ``""`` or why they are fewer than asked.
  """
  free = max(0.0, cluster_cpus - workers_cpus)
  if requested <= free:
    return requested, ""
  return float(int(free)), (
    f"TrainConfig.eval_cpus = {requested:g} asks for more CPUs than are free: the cluster has {cluster_cpus:g}, "
    f"the workers reserve {workers_cpus:g}, {free:g} free. The evaluator gets {int(free)} "
    f"({'it shares the CPUs of the workers' if free < 1 else 'what is free'}); set TrainConfig.eval_cpus = "
    f"{int(free)} (or fewer workers: TrainConfig.num_workers) to silence this."
  )


class Run:
  """The loop of one meta-training run: gather, apply, checkpoint, publish, log.

  A checkpoint is saved before publishing, so that in synchronous mode every
  worker is idle and its particles belong to the learner's step; one more is
  saved at exit (Ctrl-C and errors included) when the last one is older.

  Args:
    config, worker: the run's configuration.
    learner: the learner (resumed or fresh).
    pool: the workers.
    checkpoints: where checkpoints go.
    summaries: where TensorBoard scalars go.
    saved: the JSON items every checkpoint carries (``config``, ``learned_optimizer``).
    evaluator: evaluates theta every ``config.eval_every`` steps (None: no evaluations).
    selection: keeps the evaluated theta with the lowest validation loss (:mod:`metatrain.runtime.selection`).
    final_timeout: the longest the end of the run waits for evaluations (seconds; None:
      :data:`FINAL_EVALUATION_TIMEOUT`).
  """

  def __init__(
    self,
    config: TrainConfig,
    worker: WorkerConfig,
    learner: Learner,
    pool: WorkerPool,
    checkpoints: Checkpoints,
    summaries: Summaries,
    saved: dict[str, Any],
    *,
    evaluator: Evaluator | None = None,
    selection: Selection | None = None,
    final_timeout: float | None = None,
  ):
    self.config, self.worker, self.learner, self.pool = config, worker, learner, pool
    self.checkpoints, self.summaries, self.saved = checkpoints, summaries, saved
    self.evaluator, self.selection = evaluator, selection
    self.reference_reported = False
    self.final_timeout = FINAL_EVALUATION_TIMEOUT if final_timeout is None else final_timeout
    self.last_saved = learner.step
    self.stopped = False  # a gather was interrupted: the workers' particles are not at the learner's step
    self.save_failed = False  # a checkpoint could not be written (disk full): the exit does not try again

  def loop(self) -> list[dict[str, float]]:
    """Runs outer steps until ``config.outer_steps``; returns the metrics of each."""
    history: list[dict[str, float]] = []
    progress = None
    try:
      if self.learner.step < self.config.outer_steps:
        tqdm.tqdm.write(
          "compiling the workers' step: the first estimate waits for it "
          "(a minute on 2 cores; seconds when the compilation cache has it)"
        )
      self.pool.publish(self.learner.host_theta(), self.learner.step)
      self.evaluate_if_due()
      while self.learner.step < self.config.outer_steps:
        metrics = self.step()
        if metrics is None:  # interrupted (SIGTERM): the finally below checkpoints the step the learner is on
          break
        history.append(metrics)
        self.summaries.scalars(metrics, self.learner.step)
        self.write(self.evaluator.poll() if self.evaluator is not None else [])
        if progress is None:  # started after the first step, so that compiling does not count in its rate
          progress = tqdm.tqdm(
            total=self.config.outer_steps, initial=self.learner.step, desc="meta-training", unit="step"
          )
        progress.update(self.learner.step - progress.n)
        progress.set_postfix(meta_loss=f"{metrics.get('meta_loss', float('nan')):.4f}")
    finally:
      if not self.save_failed and (self.learner.step > self.last_saved or not self.checkpoints.steps()):
        self.save()
      if progress is not None:
        progress.close()
    if self.evaluator is not None and not self.stopped and self.learner.step >= self.config.outer_steps:
      self.finish_evaluations()
    return history

  def evaluate_if_due(self) -> None:
    """Submits the learner's theta to the evaluator when its step is a multiple of ``eval_every``."""
    if self.evaluator is not None and self.learner.step % self.config.eval_every == 0:
      self.evaluator.submit(self.learner.host_theta(), self.learner.step)

  def write(self, evaluations: list[Evaluation]) -> None:
    """Writes evaluations to TensorBoard (:meth:`Summaries.evaluation`)."""
    for evaluation in evaluations:
      reference = evaluation.reference
      if reference is not None and not self.reference_reported:
        self.reference_reported = True
        tqdm.tqdm.write(
          f"evaluation: Adam-cosine reference at peak rate {reference.learning_rate:.3g} "
          f"(tuned and run in {reference.seconds:.1f} s); theta of step {evaluation.step} in {evaluation.seconds:.1f} s"
        )
      self.summaries.evaluation(evaluation)
      if self.selection is not None and self.selection.offer(evaluation):
        self.summaries.scalars({"eval/selected_step": float(evaluation.step)}, evaluation.step)

  def finish_evaluations(self) -> None:
    """The end of the run: waits for the running evaluation and one of the final theta (bounded)."""
    assert self.evaluator is not None
    tqdm.tqdm.write(f"evaluating the final theta (waiting {self.final_timeout:.0f} s at most)")
    self.write(
      self.evaluator.finish(
        self.learner.host_theta(),
        self.learner.step,
        timeout=self.final_timeout,
        stop=lambda: self.pool.interrupted,
      )
    )
    if self.evaluator.running():
      tqdm.tqdm.write("warning: an evaluation did not end in time; it is abandoned.")

  def step(self) -> dict[str, float] | None:
    """One outer step: gather estimates, apply them, checkpoint when due, publish the new theta.

    Returns:
      The step's metrics, or None when the pool was interrupted (nothing applied).
    """
    start = time.perf_counter()
    estimates = self.pool.gather(self.config.estimates_per_outer_step)
    if self.pool.interrupted:
      self.stopped = True
      return None
    metrics = self.learner.apply(estimates)
    if self.learner.step - self.last_saved >= self.config.checkpoint_every:
      self.save()
    if self.learner.step < self.config.outer_steps:
      self.pool.publish(self.learner.host_theta(), self.learner.step)
    self.evaluate_if_due()  # after the publish: the workers are busy on the new theta already
    seconds = time.perf_counter() - start
    metrics.update(
      outer_steps_per_second=1.0 / seconds,
      inner_steps_per_second=len(estimates) * self.worker.inner_steps_per_estimate / seconds,
    )
    learning_rate = self.learner.learning_rate()  # the one Adam steps by (make_learner)
    if learning_rate is not None:
      metrics["learning_rate"] = learning_rate
    metrics.update(lost_estimates=float(self.pool.lost), live_workers=float(self.pool.live_workers()))
    if self.evaluator is not None:
      metrics.update(skipped_evals=float(self.evaluator.skipped), lost_evals=float(self.evaluator.lost))
    return metrics

  def save(self) -> None:
    """A checkpoint at the learner's step, with the idle workers' particles when configured.

    After an interrupt, the particles are the ones the pool kept at the latest publish (the learner's
    step): the workers may have moved on, or be gone.

    Raises:
      SaveFailed: the checkpoint could not be written (disk full...): the run stops there, and its exit
        tries no other save; the checkpoints already written are intact, and a rerun resumes from the latest.
    """
    try:
      if not self.config.checkpoint_particles:
        particles = {}
      elif self.stopped:
        particles = self.pool.published_particles()
      else:
        particles = self.pool.particles()
    except Exception as error:  # noqa: BLE001 - the learner state is what must be saved
      tqdm.tqdm.write(f"warning: the workers' particles are not saved ({error}); a resume restarts them.")
      particles = {}
    try:
      self.checkpoints.save(self.learner.step, self.learner.state(), particles=particles, **self.saved)
    except SaveFailed:
      self.save_failed = True
      raise
    self.last_saved = self.learner.step
