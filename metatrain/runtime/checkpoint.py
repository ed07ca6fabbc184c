"""Orbax checkpoints of meta-training, and the loader of meta-trained optimizers.

A checkpoint (``workdir/checkpoints/<step>``) holds four items:

- ``state``: the learner's pytree (theta, the outer optimizer state, the step), orbax arrays;
- ``config`` (JSON): the operative gin config, the worker config and the train config;
- ``learned_optimizer`` (JSON): the kind, width and weight space theta was built for
  (:meth:`metatrain.LearnedOptimizer.to_json`);
- ``particles`` (optional): the workers' inner runs (PES particles), for an exact resume.

:func:`load_learned_optimizer` turns a workdir or one of its checkpoint folders
back into ``(learned_optimizer, theta)``, with no dataset and no learner.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

import tasks
import unf
from metatrain import learned_optimizers, pretrained
from metatrain.learned_optimizers import LearnedOptimizer
from metatrain.runtime.config import WorkerConfig
from metatrain.types import PyTree, Theta

log = logging.getLogger(__name__)

#: The items of a checkpoint.
ITEMS = ("state", "config", "learned_optimizer", "particles")


class Checkpoints:
  """Saves and restores the learner state under ``workdir/checkpoints``, keeping the last ``keep``.

  Orbax writes to a temporary folder and renames it when complete, so a crash
  never leaves a checkpoint that looks whole; a checkpoint that still fails
  to restore is skipped with a warning for the one before it.

  Args:
    workdir: the run's folder (checkpoints go to ``workdir/checkpoints``).
    keep: the number of checkpoints kept (older ones are deleted).
  """

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3):
    self.directory = pathlib.Path(workdir).resolve() / "checkpoints"
    self.manager = ocp.CheckpointManager(
      self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True), item_names=ITEMS
    )

  def save(
    self,
    step: int,
    state: PyTree,
    config: dict[str, Any],
    learned_optimizer: dict[str, Any],
    particles: dict | None = None,
  ) -> None:
    """Saves checkpoint ``step`` and waits until it is complete.

    Args:
      step: the outer step.
      state: the learner's pytree (:meth:`metatrain.runtime.learner.Learner.state`).
      config: JSON-ready configuration (gin text, worker and train configs).
      learned_optimizer: JSON-ready description of the learned optimizer (kind, width, weight space).
      particles: the workers' particle states (left out when empty).
    """
    items = dict(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config),
      learned_optimizer=ocp.args.JsonSave(learned_optimizer),
    )
    if particles:
      items["particles"] = ocp.args.StandardSave(particles)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    self.manager.wait_until_finished()

  def steps(self) -> list[int]:
    """The steps of the checkpoints present, oldest first."""
    return sorted(self.manager.all_steps())

  def restore_particles(self, step: int) -> dict:
    """The workers' particles saved with checkpoint ``step`` (``{}`` when it has none or they do not restore)."""
    if not (self.directory / str(step) / "particles").exists():
      return {}
    try:
      return self.manager.restore(step, args=ocp.args.Composite(particles=ocp.args.StandardRestore()))["particles"]
    except Exception as error:  # noqa: BLE001 - particles are an optimisation of resuming: start fresh runs
      log.warning(
        "the particles of checkpoint %d in %s do not restore (%s); fresh inner runs.", step, self.directory, error
      )
      return {}

  def restore_latest(self, target: PyTree) -> tuple[int, PyTree, dict] | None:
    """The newest checkpoint that restores into ``target``'s structure: ``(step, state, config)``, or None."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in reversed(self.steps()):
      try:
        restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), config=ocp.args.JsonRestore())
        )
      except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
        log.warning("checkpoint %d in %s does not restore (%s); trying the previous one.", step, self.directory, error)
        continue
      return step, restored["state"], restored["config"]
    return None

  def latest_config(self) -> dict | None:
    """The JSON config of the newest checkpoint that has a readable one (None if there is none)."""
    for step in reversed(self.steps()):
      try:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
      except Exception as error:  # noqa: BLE001
        log.warning("checkpoint %d in %s has no readable config (%s).", step, self.directory, error)
    return None

  def close(self) -> None:
    """Waits for pending writes and releases the manager (``with contextlib.closing(Checkpoints(...))``)."""
    self.manager.close()


# --- loading a meta-trained optimizer ---------------------------------------------------------------------


class LoadedOptimizer(NamedTuple):
  """A meta-trained optimizer read from a checkpoint.

  Attributes:
    learned_optimizer: the learned optimizer, for the space asked for (or the one it was meta-trained on).
    theta: its meta-parameters (numpy arrays).
    step: the outer step of the checkpoint.
    path: the checkpoint folder it was read from.
  """

  learned_optimizer: LearnedOptimizer
  theta: Theta
  step: int
  path: pathlib.Path


def _checkpoint_folders(source: pathlib.Path) -> tuple[pathlib.Path, list[int]]:
  """``(checkpoints folder, steps to try, newest first)`` for a workdir, its checkpoints folder or a step folder."""
  if not source.is_dir():
    raise FileNotFoundError(f"{source} is not a folder: pass the workdir of a `metatrain train` run.")
  if source.name.isdigit() and (source.parent.name == "checkpoints" or (source / "_CHECKPOINT_METADATA").exists()):
    return source.parent, [int(source.name)]
  directory = source if source.name == "checkpoints" else source / "checkpoints"
  steps = (
    sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True) if directory.is_dir() else []
  )
  if not steps:
    raise FileNotFoundError(
      f"no checkpoints in {source}: pass the workdir of a `metatrain train` run (it holds checkpoints/), "
      "one of its checkpoint folders (WORKDIR/checkpoints/STEP), or the name of a shipped optimizer "
      f"({', '.join(pretrained.pretrained_names()) or 'none shipped'})."
    )
  return directory, steps


def _described_optimizer(manager: ocp.CheckpointManager, step: int, folder: pathlib.Path) -> LearnedOptimizer:
  """The learned optimizer a checkpoint was written for: its own description, else (older runs) its task's."""
  if (folder / "learned_optimizer").is_dir():
    values = manager.restore(step, args=ocp.args.Composite(learned_optimizer=ocp.args.JsonRestore()))
    return learned_optimizers.from_json(values["learned_optimizer"])
  # Written before checkpoints described their optimizer: rebuild it from the task it was meta-trained on.
  config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  worker = WorkerConfig.from_json(config["worker"])
  return worker.build_learned_optimizer()


def _read(directory: pathlib.Path, step: int) -> tuple[LearnedOptimizer, Theta]:
  folder = directory / str(step)
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False), item_names=ITEMS)
  try:
    learned_optimizer = _described_optimizer(manager, step, folder)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  finally:
    manager.close()
  theta = jax.tree.map(np.asarray, state["theta"])
  expected = jax.eval_shape(learned_optimizer.init_meta, jax.random.key(0))
  if jax.tree.map(np.shape, theta) != jax.tree.map(lambda e: e.shape, expected):  # nested dicts: keys and shapes
    raise ValueError(
      f"the meta-parameters in {folder} do not have the shapes of a {learned_optimizer.name!r} learned optimizer "
      "of the weight space saved with them: the checkpoint is damaged."
    )
  return learned_optimizer, theta


def load(source: str | pathlib.Path, *, space: unf.WeightSpace | None = None) -> LoadedOptimizer:
  """Reads a meta-trained optimizer: a shipped one by name, or a ``metatrain train`` workdir or checkpoint.

  A name of :func:`metatrain.pretrained_names` (that is not also an existing
  path) loads the optimizer shipped in the package. Given a workdir (or its
  ``checkpoints`` folder), the newest checkpoint that reads is used (a
  damaged newer one is skipped with a warning); given a step folder
  (``WORKDIR/checkpoints/STEP``), that checkpoint. No dataset is
  loaded: the weight space comes from the checkpoint (checkpoints written
  before they carried it fall back to their task's, which needs the task's data).

  Args:
    source: a shipped optimizer's name, the workdir, its ``checkpoints`` folder, or a step folder.
    space: the weight space of the networks to optimize (default: the one it was meta-trained on). It
      must match that one up to renaming (:meth:`unf.WeightSpace.match`): the same leaves in the same
      order, paths and labels renamed consistently, any widths.

  Returns:
    A :class:`LoadedOptimizer`: the learned optimizer, theta, the step and the checkpoint folder.

  Raises:
    FileNotFoundError: no checkpoint at ``source``.
    ValueError: a checkpoint that does not read, or a ``space`` that does not match (naming what differs).
  """
  if isinstance(source, str) and not pathlib.Path(source).exists() and source in pretrained.pretrained_names():
    learned_optimizer, theta = pretrained.load(source)
    return _for_space(
      LoadedOptimizer(learned_optimizer, theta, pretrained.info(source)["outer_steps"], pretrained.FOLDER / source),
      space,
    )
  source = pathlib.Path(source).absolute()  # orbax reads absolute paths only
  directory, steps = _checkpoint_folders(source)
  errors = []
  for step in steps:
    try:
      learned_optimizer, theta = _read(directory, step)
    except Exception as error:  # noqa: BLE001 - orbax raises many kinds: report them all, by checkpoint
      errors.append(f"checkpoint {step}: {type(error).__name__}: {error}")
      log.warning("checkpoint %d in %s does not read (%s).", step, directory, error)
      continue
    break
  else:
    raise ValueError(f"no checkpoint in {source} reads; " + "; ".join(errors))
  return _for_space(LoadedOptimizer(learned_optimizer, theta, step, directory / str(step)), space)


def _for_space(loaded: LoadedOptimizer, space: unf.WeightSpace | None) -> LoadedOptimizer:
  """``loaded`` transferred to ``space`` (unchanged for None), or a clear error for another architecture."""
  if space is None:
    return loaded
  try:
    learned_optimizer, theta = loaded.learned_optimizer.transfer(loaded.theta, space)
  except ValueError as error:
    raise ValueError(
      f"the {loaded.learned_optimizer.name!r} optimizer in {loaded.path} was meta-trained on another "
      f"architecture than the weight space given: {error} (learned optimizers transfer across widths and "
      "names of the same architecture, not across architectures)."
    ) from error
  return loaded._replace(learned_optimizer=learned_optimizer, theta=theta)


def load_learned_optimizer(
  source: str | pathlib.Path, *, space: unf.WeightSpace | None = None
) -> tuple[LearnedOptimizer, Theta]:
  """A meta-trained optimizer, ready for an optax loop: ``lopt, theta = load_learned_optimizer(workdir)``.

  ``lopt.optimizer(theta)`` is an ``optax.GradientTransformation`` for the
  networks of ``space`` (default: the space it was meta-trained on). See
  :func:`load` for what ``source`` may be and for the errors.

  Args:
    source: a shipped optimizer's name (:func:`metatrain.pretrained_names`), or a ``metatrain train``
      workdir or one of its checkpoint folders.
    space: the weight space of your network (e.g. ``unf.mlp_space(params)``), if not the meta-training one.

  Returns:
    ``(learned_optimizer, theta)``.
  """
  loaded = load(source, space=space)
  return loaded.learned_optimizer, loaded.theta


def export(source: str | pathlib.Path, folder: str | pathlib.Path, *, note: str = "") -> pathlib.Path:
  """Writes the meta-trained optimizer of a workdir or checkpoint as a shipped one (:mod:`metatrain.pretrained`).

  Args:
    source: a ``metatrain train`` workdir or one of its checkpoint folders (the newest that reads).
    folder: where to write ``optimizer.json`` and ``theta.npz`` (``metatrain/pretrained/NAME`` to ship it).
    note: free text kept in the description's ``info`` (the command and wall time that produced it).

  Returns:
    ``folder``.
  """
  loaded = load(source)
  manager = ocp.CheckpointManager(
    loaded.path.parent, options=ocp.CheckpointManagerOptions(create=False), item_names=ITEMS
  )
  try:
    config = manager.restore(loaded.step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  finally:
    manager.close()
  task_name = config["worker"]["task"]
  task = tasks.get(task_name)
  lopt, theta = loaded.learned_optimizer.transfer(loaded.theta, task.space)
  from metatrain.evaluation.compare import EVAL_SEED
  from metatrain.evaluation.curves import learned_curves

  key = jax.random.key(EVAL_SEED)[None]
  losses = np.asarray(learned_curves(task, lopt, jax.tree.map(jax.numpy.asarray, theta), key, pretrained.CHECK_STEPS))
  info = {
    "task": task_name,
    "outer_steps": loaded.step,
    "worker": config["worker"],
    "gin": config.get("gin", ""),
    "note": note,
    "check": {"seed": EVAL_SEED, "train_batch_losses": [float(x) for x in losses[0]]},
  }
  pretrained.write(folder, loaded.learned_optimizer, loaded.theta, info)
  return pathlib.Path(folder)
