"""The main job: meta-training with a pool of gradient workers, a learner, checkpoints and TensorBoard."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
import types
import typing
from typing import Any

import jax
import numpy as np
import tensorboardX
import tqdm

from metatrain.checkpoint import Checkpoints
from metatrain.learner import Learner
from metatrain.pool import InProcessPool
from metatrain.problem import outer_optimizer, outer_schedule
from metatrain.worker import WorkerConfig

# Fields of the worker config that a checkpoint must agree with to be resumed.
_COMPATIBLE = ("task", "optimizer", "width")


def check_types(config: Any) -> None:
  """Raises a TypeError naming the field when a dataclass field holds a value of the wrong type."""
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
class TrainConfig:
  """A meta-training run (set from a gin file: ``TrainConfig.outer_steps = 1000``).

  Attributes:
    outer_steps: meta-gradient steps.
    learning_rate: peak outer learning rate (Adam, warm-up, cosine decay, clip 1.0).
    warmup_steps: outer warm-up steps.
    num_workers: gradient workers (0: one per CPU of this machine).
    estimates_per_step: estimates averaged per outer step (0: one per worker).
    staleness: largest accepted age of an estimate in outer steps (0: synchronous).
    checkpoint_every: outer steps between checkpoints (and one at exit).
    keep_checkpoints: checkpoints kept.
    checkpoint_particles: save the workers' inner runs (PES particles) in checkpoints, for an exact resume;
      they cost 2 x pairs x (params + optimizer state) per worker: turn off for many workers on big tasks.
    seed: seeds theta's initialisation and every worker.
    use_ray: run workers as Ray actors (False: in this process, one after another).
    address: Ray address (None: a local Ray; "auto": the cluster this runs on).
    worker_cpus: CPUs reserved per worker actor (Ray scheduling).
    worker_gpus: GPUs per worker actor (a worker shards its pairs over every device it is given).
    worker_resources: custom Ray resources per worker actor, e.g. ``{"TPU": 4}`` for one worker per
      4-chip TPU VM (a TPU can be opened by one process only).
  """

  outer_steps: int = 100
  learning_rate: float = 1e-3
  warmup_steps: int = 0
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

  def __post_init__(self):
    check_types(self)
    if self.outer_steps < 1 or self.checkpoint_every < 1:
      raise ValueError("TrainConfig.outer_steps and checkpoint_every must be at least 1.")

  @property
  def workers(self) -> int:
    return self.num_workers or os.cpu_count() or 1


def _writable(workdir: pathlib.Path) -> None:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write-test"
    probe.write_text("ok")
    probe.unlink()
  except OSError as error:
    raise PermissionError(f"workdir {workdir} is not writable ({error}): choose another --workdir.") from error


def _make_pool(config: TrainConfig, worker: WorkerConfig):
  if not config.use_ray:
    return InProcessPool(worker, config.workers, config.seed)
  from metatrain.distributed import RayPool  # Ray only where it is used

  return RayPool(
    worker,
    config.workers,
    config.seed,
    address=config.address,
    num_cpus=config.worker_cpus,
    num_gpus=config.worker_gpus,
    resources=dict(config.worker_resources or {}),
  )


def train(
  config: TrainConfig, worker: WorkerConfig, workdir: str | os.PathLike, *, operative_config: str = ""
) -> tuple[Any, list[dict[str, float]]]:
  """Meta-trains with ``config`` and ``worker`` in ``workdir``, resuming from its latest checkpoint.

  Writes ``workdir/checkpoints`` (orbax) and ``workdir/tensorboard``
  (tensorboardX). Saves a checkpoint every ``checkpoint_every`` steps and at
  exit, Ctrl-C included.

  Returns:
    ``(theta, history)``: final meta-parameters and the metrics of every outer step run.
  """
  check_types(worker)
  workdir = pathlib.Path(workdir)
  _writable(workdir)
  lopt = worker.learned_optimizer()
  theta = jax.tree.map(np.asarray, lopt.init_meta(jax.random.key(config.seed)))
  outer = outer_optimizer(config.learning_rate, total_steps=config.outer_steps, warmup_steps=config.warmup_steps)
  schedule = outer_schedule(config.learning_rate, total_steps=config.outer_steps, warmup_steps=config.warmup_steps)
  learner = Learner(outer, theta, staleness=config.staleness)
  checkpoints = Checkpoints(workdir, keep=config.keep_checkpoints)
  saved_config = {"gin": operative_config, "worker": dataclasses.asdict(worker), "train": dataclasses.asdict(config)}
  old = checkpoints.latest_config()
  if old is not None:
    mismatched = {
      k: (old["worker"].get(k), getattr(worker, k)) for k in _COMPATIBLE if old["worker"].get(k) != getattr(worker, k)
    }
    if mismatched:
      raise ValueError(
        f"the checkpoint in {checkpoints.directory} is for a different learned optimizer or task "
        f"(checkpoint vs config: {mismatched}); use a new --workdir."
      )
    restored = checkpoints.restore_latest(learner.state())
    if restored is None:
      raise ValueError(f"no checkpoint in {checkpoints.directory} restores; move it away or use a new --workdir.")
    learner.load(restored[1])
    particles = checkpoints.restore_particles(restored[0])
    print(f"resuming from step {learner.step} ({len(particles)} workers' inner runs restored)")
  else:
    particles = {}
  writer = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))
  writer.add_text("operative_config", f"```\n{operative_config}\n```", learner.step)
  pool = _make_pool(config, worker)
  if particles:
    pool.load_particles(particles)
  per_step = config.estimates_per_step or config.workers
  history: list[dict[str, float]] = []
  progress = tqdm.tqdm(total=config.outer_steps, initial=learner.step, desc="meta-training", unit="step")
  last_saved = learner.step

  def save() -> None:
    try:
      particles = pool.particles() if config.checkpoint_particles else {}
    except Exception as error:  # noqa: BLE001 - the learner state is what must be saved
      print(f"warning: the workers' inner runs are not saved ({error}); a resume restarts them.")
      particles = {}
    checkpoints.save(learner.step, learner.state(), saved_config, particles)

  try:
    pool.publish(jax.tree.map(np.asarray, learner.theta), learner.step)
    while learner.step < config.outer_steps:
      start = time.perf_counter()
      estimates = pool.gather(per_step)
      metrics = learner.apply(estimates)
      # Saved before publishing: in synchronous mode every worker is idle, its runs at this step.
      if learner.step - last_saved >= config.checkpoint_every:
        save()
        last_saved = learner.step
      if learner.step < config.outer_steps:
        pool.publish(jax.tree.map(np.asarray, learner.theta), learner.step)
      seconds = time.perf_counter() - start
      metrics.update(
        outer_steps_per_second=1.0 / seconds,
        inner_steps_per_second=len(estimates) * worker.inner_steps_per_estimate / seconds,
        learning_rate=float(schedule(learner.step)),
        lost_estimates=float(pool.lost),
        live_workers=float(pool.num_workers),
      )
      history.append(metrics)
      for name, value in metrics.items():
        writer.add_scalar(name, value, learner.step)
      progress.update(learner.step - progress.n)
      progress.set_postfix(meta_loss=f"{metrics.get('meta_loss', float('nan')):.4f}")
  finally:
    if learner.step > last_saved or not checkpoints.manager.all_steps():
      save()
    progress.close()
    writer.close()
    pool.close()
    checkpoints.close()
  return learner.theta, history
