"""Orbax checkpoints of meta-training, and the loader of meta-trained optimizers.

A checkpoint (``workdir/checkpoints/<step>``) holds four items:

- ``state``: the learner's pytree (theta, the outer optimizer state, the step), orbax arrays;
- ``config`` (JSON): the operative gin config, the worker config and the train config;
- ``learned_optimizer`` (JSON): the kind, width and weight space theta was built for
  (:meth:`metatrain.LearnedOptimizer.to_json`);
- ``particles`` (optional): the workers' inner runs (PES particles), for an exact resume.

Beside them, ``FILES.json`` lists every file of the checkpoint with its size
once the save is complete, so that a damaged checkpoint (a file cut short or
removed) is named by the file that is wrong. A checkpoint that does not
restore is moved aside to ``<step>.corrupt`` (never deleted) when an older one
restores, and the run resumes from that one; when none restores, nothing is
moved and the run stops with an error naming each checkpoint's damage. A save
that fails (disk full, quota, permissions) removes its partial folder and
raises :class:`SaveFailed`: the checkpoints already written are untouched.

Paths are ``etils.epath`` paths: a workdir may be a local folder or, with
gcsfs installed, a ``gs://...`` bucket (``launch/README.md``, "Checkpoints on
cloud storage"; tested against a GCS server in ``tests/metatrain/runtime/test_bucket.py``).
Other URLs (``s3://...``) are refused at start-up (:class:`UnsupportedWorkdir`):
orbax cannot write them.

:func:`load_learned_optimizer` turns a workdir or one of its checkpoint folders
back into ``(learned_optimizer, theta)``, with no dataset and no learner.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

import tasks
import unf
from metatrain import learned_optimizers, pretrained
from metatrain.learned_optimizers import LearnedOptimizer
from metatrain.runtime.config import WorkerConfig
from metatrain.types import PyTree, Theta

log = logging.getLogger(__name__)

#: The items of a checkpoint.
ITEMS = ("state", "config", "learned_optimizer", "particles")
#: The file in each checkpoint folder that lists its files and their sizes (``{"state/_METADATA": 444, ...}``).
FILES = "FILES.json"


def as_path(path: str | os.PathLike) -> epath.Path:
  """``path`` as an ``epath.Path``: absolute when local (orbax reads absolute paths only), as given for a URL.

  Raises:
    UnsupportedWorkdir: a URL that orbax cannot write checkpoints to (any but ``gs://``), before anything is written.
  """
  if "://" not in str(path):
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
  scheme = str(path).split("://", 1)[0]
  if scheme != "gs":
    # orbax's tensorstore paths keep the "//" of gs:// only: s3://bucket/run reaches tensorstore as s3:/bucket/run
    # and the first save fails ("Checkpoint path should be absolute"); tests/metatrain/runtime/test_bucket.py.
    raise UnsupportedWorkdir(
      f"{path}: orbax (orbax-checkpoint {ocp.__version__}) cannot write checkpoints to {scheme}:// URLs, only to "
      "gs:// and local folders: use a gs:// bucket, a local folder or a mounted bucket (mountpoint-s3, s3fs-fuse, "
      "gcsfuse) as --workdir."
    )
  return epath.Path(path)


class CheckpointError(ValueError):
  """The checkpoints of a workdir cannot be resumed: none restores, or they belong to another run."""


class UnsupportedWorkdir(CheckpointError):
  """A workdir on storage that orbax cannot write (an ``s3://`` URL): refused before the run starts."""


class SaveFailed(OSError):
  """A checkpoint could not be written (disk full, quota, permissions); the ones already written are intact."""


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  """Holds back orbax's error logs, and the "Event loop is closed" of its threads, while a save or restore runs.

  A failed save is then reported once, by :class:`SaveFailed`, instead of by a traceback per thread.
  """
  logger = logging.getLogger("absl")
  propagate, handlers = logger.propagate, logger.handlers[:]
  hook = sys.unraisablehook

  def unraisable(info):
    if not (isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed"):
      hook(info)

  logger.handlers, logger.propagate, sys.unraisablehook = [logging.NullHandler()], False, unraisable
  try:
    yield
  finally:
    logger.handlers, logger.propagate, sys.unraisablehook = handlers, propagate, hook


def _wait_for_threads(before: set[threading.Thread], timeout: float = 30.0) -> None:
  """Waits (at most ``timeout`` seconds) for the threads started since ``before`` to end: orbax's writers
  go on after the first of them fails."""
  deadline = time.monotonic() + timeout
  for thread in set(threading.enumerate()) - before:
    if thread is not threading.current_thread() and (not thread.daemon or type(thread).__module__.startswith("orbax")):
      with contextlib.suppress(Exception):  # orbax's threads raise their error again from join()
        thread.join(max(0.0, deadline - time.monotonic()))


def _files(folder: epath.Path) -> dict[str, int]:
  """Every file under ``folder`` (its path relative to ``folder``) with its size in bytes."""
  found: dict[str, int] = {}
  pending = [folder]
  while pending:
    for entry in pending.pop().iterdir():
      if entry.is_dir():
        pending.append(entry)
      elif entry.name != FILES:
        found[os.path.relpath(os.fspath(entry), os.fspath(folder))] = entry.stat().length
  return found


def _system_error(error: BaseException | None) -> str | None:
  """The operating system's words for the error behind ``error`` ("No space left on device"), if any."""
  while error is not None:
    if isinstance(error, OSError) and error.errno:
      return os.strerror(error.errno)
    if found := re.search(r"os_error_code='(\d+)'", str(error)):
      return os.strerror(int(found.group(1)))
    error = error.__cause__ or error.__context__
  return None


def _reason(error: BaseException) -> str:
  """The first line of an error without tensorstore's spec (kilobytes of JSON), at most 200 characters."""
  text = str(error).split(" [tensorstore_spec=")[0].splitlines()[0] if str(error) else ""
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= 200 else text[:197] + "..."


def listed_damage(folder: epath.Path) -> str | None:
  """A file of the checkpoint ``folder`` missing or cut short, by the sizes :data:`FILES` recorded; None if none.

  Checked before orbax reads a checkpoint: a restore that fails part-way leaves tensorstore's reads running
  into an event loop already closed, whose errors surface later, anywhere ("Event loop is closed").
  """
  listed = folder / FILES
  if not listed.exists():
    return None
  try:
    recorded = json.loads(listed.read_text())
  except (ValueError, OSError):
    return f"{FILES} does not read"
  for name, size in sorted(recorded.items()):
    if not (folder / name).exists():
      return f"{name} is missing"
    if (actual := (folder / name).stat().length) != size:
      return f"{name} is cut short ({actual} of {size} bytes)"
  return None


class DamagedCheckpoint(Exception):
  """A checkpoint whose files are not the ones listed at save time (:func:`listed_damage`): not read at all."""


def _check_listed(folder: epath.Path) -> None:
  if what := listed_damage(folder):
    raise DamagedCheckpoint(what)


def damage(folder: epath.Path, error: BaseException) -> str:
  """What is wrong with the checkpoint ``folder`` that raised ``error`` when read: the file, in a few words.

  The file cut short or removed, by the sizes :data:`FILES` recorded at save time; else the first file of
  the folder the error names; else the error's first line.
  """
  if listed := listed_damage(folder):
    return listed
  for named in re.findall(r"(?:file://)?(/[^\s\"']+)", str(error)):
    if named.startswith(os.fspath(folder) + "/"):
      return f"{os.path.relpath(named, os.fspath(folder))}: {_reason(error)}"
  return _reason(error)


class Checkpoints:
  """Saves and restores the learner state under ``workdir/checkpoints``, keeping the last ``keep``.

  Orbax writes to a temporary folder and renames it when complete, so a crash
  never leaves a checkpoint that looks whole. A checkpoint that is damaged
  all the same (a file cut short or removed afterwards) is moved aside by
  :meth:`restore_latest` when an older one restores, with a one-line warning
  naming the folder and the file.

  Args:
    workdir: the run's folder (checkpoints go to ``workdir/checkpoints``): a local path or an
      ``epath`` URL (``gs://bucket/run``).
    keep: the number of checkpoints kept (older ones are deleted).
  """

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 3):
    self.directory = as_path(workdir) / "checkpoints"
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
    """Saves checkpoint ``step`` and waits until it is complete, then lists its files in :data:`FILES`.

    Args:
      step: the outer step.
      state: the learner's pytree (:meth:`metatrain.runtime.learner.Learner.state`).
      config: JSON-ready configuration (gin text, worker and train configs).
      learned_optimizer: JSON-ready description of the learned optimizer (kind, width, weight space).
      particles: the workers' particle states (left out when empty).

    Raises:
      SaveFailed: the checkpoint could not be written; its partial folder is removed, the older
        checkpoints are intact.
      KeyboardInterrupt: raised into the save (a second Ctrl-C); as for SaveFailed, the partial folder is
        removed once the save's writers stop (10 s at most) and the older checkpoints are intact.
    """
    items = dict(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config),
      learned_optimizer=ocp.args.JsonSave(learned_optimizer),
    )
    if particles:
      items["particles"] = ocp.args.StandardSave(particles)
    threads = set(threading.enumerate())
    with _quiet_orbax():
      try:
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()
        folder = self.directory / str(step)
        (folder / FILES).write_text(json.dumps(_files(folder), indent=0, sort_keys=True))
      except KeyboardInterrupt:  # a second Ctrl-C (metatrain.runtime.train): stop, leaving no partial checkpoint
        _wait_for_threads(threads, timeout=10.0)
        self._discard(step)
        raise
      except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many kinds
        _wait_for_threads(threads)  # the other writers of this save, before its folder is removed
        self._discard(step)
        kept = self.steps()
        previous = f"the checkpoint of step {kept[-1]} is intact" if kept else "there is no earlier checkpoint"
        raise SaveFailed(
          f"checkpoint {step} could not be written in {self.directory}: {_system_error(error) or _reason(error)}; "
          f"{previous}. Make room (or fix the folder's permissions) and run again: it resumes from the latest "
          "checkpoint."
        ) from error

  def _discard(self, step: int) -> None:
    """Removes what a failed save of ``step`` left (its temporary or incomplete folder) and re-reads the steps."""
    for folder in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
      with contextlib.suppress(OSError):
        folder.rmtree()
    folder = self.directory / str(step)
    if folder.exists() and not (folder / FILES).exists():  # orbax finished it, but it was not listed
      with contextlib.suppress(OSError):
        folder.rmtree()
    self.manager.reload()

  def steps(self) -> list[int]:
    """The steps of the checkpoints present, oldest first."""
    return sorted(self.manager.all_steps())

  def _restore(self, step: int, *, arrays: bool = True, **items: Any) -> dict:
    """Restores ``items`` of checkpoint ``step``; with ``arrays`` (tensorstore reads), its files checked first."""
    if arrays:
      _check_listed(self.directory / str(step))
    with _quiet_orbax():
      return self.manager.restore(step, args=ocp.args.Composite(**items))

  def restore_particles(self, step: int) -> dict:
    """The workers' particles saved with checkpoint ``step`` (``{}`` when it has none or they do not restore)."""
    if not (self.directory / str(step) / "particles").exists():
      return {}
    try:
      return self._restore(step, particles=ocp.args.StandardRestore())["particles"]
    except Exception as error:  # noqa: BLE001 - particles are an optimisation of resuming: start fresh runs
      folder = self.directory / str(step)
      log.warning("the inner runs saved in %s do not restore (%s); fresh inner runs.", folder, damage(folder, error))
      return {}

  def restore_latest(
    self, target: PyTree, check: Callable[[dict], None] | None = None
  ) -> tuple[int, PyTree, dict] | None:
    """The newest checkpoint that restores into ``target``'s structure: ``(step, state, config)``.

    The damaged checkpoints newer than it are moved aside to ``<step>.corrupt``, each with a one-line
    warning naming the folder and the file.

    Args:
      target: a pytree of the learner's state (its structure, shapes and dtypes are restored).
      check: called with each checkpoint's config before its state is restored; raises
        (:class:`CheckpointError`) to stop at a checkpoint that belongs to another run.

    Returns:
      ``(step, state, config)``, or None when there is no checkpoint.

    Raises:
      CheckpointError: there are checkpoints, but none restores (nothing is moved: each one's damage is named).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    damaged: list[tuple[int, str]] = []
    for step in reversed(self.steps()):
      folder = self.directory / str(step)
      try:
        config = self._restore(step, arrays=False, config=ocp.args.JsonRestore())["config"]
        if not isinstance(config, dict):
          raise ValueError(f"config/ holds {type(config).__name__}, not a JSON object")
      except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
        damaged.append((step, damage(folder, error)))
        continue
      if check is not None:
        check(config)
      try:
        state = self._restore(step, state=ocp.args.StandardRestore(abstract))["state"]
      except Exception as error:  # noqa: BLE001
        damaged.append((step, damage(folder, error)))
        continue
      for bad, what in damaged:
        moved = self._move_aside(bad)
        log.warning(
          "checkpoint %s is damaged (%s): moved to %s; resuming from step %d.",
          self.directory / str(bad),
          what,
          moved.name,
          step,
        )
      return step, state, config
    if damaged:
      listed = "; ".join(f"{self.directory / str(step)}: {what}" for step, what in damaged)
      raise CheckpointError(
        f"no checkpoint in {self.directory} restores ({listed}). Nothing was changed: move the folder away "
        "(or repair it) and run again, or use a new --workdir."
      )
    return None

  def _move_aside(self, step: int) -> epath.Path:
    """Renames checkpoint ``step`` to ``<step>.corrupt`` (``<step>.corrupt.<n>`` if taken); never deletes it."""
    target, n = self.directory / f"{step}.corrupt", 1
    while target.exists():
      target, n = self.directory / f"{step}.corrupt.{n}", n + 1
    (self.directory / str(step)).rename(target)
    self.manager.reload()
    return target

  def latest_config(self) -> dict | None:
    """The JSON config of the newest checkpoint that has a readable one (None if there is none)."""
    for step in reversed(self.steps()):
      try:
        return self._restore(step, arrays=False, config=ocp.args.JsonRestore())["config"]
      except Exception as error:  # noqa: BLE001
        folder = self.directory / str(step)
        log.warning("checkpoint %s has no readable config (%s).", folder, damage(folder, error))
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
  path: epath.Path


def _checkpoint_folders(source: epath.Path) -> tuple[epath.Path, list[int]]:
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


def _described_optimizer(manager: ocp.CheckpointManager, step: int, folder: epath.Path) -> LearnedOptimizer:
  """The learned optimizer a checkpoint was written for: its own description, else (older runs) its task's."""
  if (folder / "learned_optimizer").is_dir():
    values = manager.restore(step, args=ocp.args.Composite(learned_optimizer=ocp.args.JsonRestore()))
    return learned_optimizers.from_json(values["learned_optimizer"])
  # Written before checkpoints described their optimizer: rebuild it from the task it was meta-trained on.
  config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  worker = WorkerConfig.from_json(config["worker"])
  return worker.build_learned_optimizer()


def _read(directory: epath.Path, step: int) -> tuple[LearnedOptimizer, Theta]:
  folder = directory / str(step)
  _check_listed(folder)
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
    source: a shipped optimizer's name, the workdir, its ``checkpoints`` folder, a step folder, or a folder
      in the shipped format (``WORKDIR/selected``: the run's theta selected on validation).
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
      LoadedOptimizer(
        learned_optimizer, theta, pretrained.info(source)["outer_steps"], epath.Path(pretrained.FOLDER / source)
      ),
      space,
    )
  source = as_path(source)
  if (epath.Path(source) / "optimizer.json").is_file():  # a shipped optimizer's folder, or a run's selected/ theta
    learned_optimizer, theta = pretrained.read(pathlib.Path(str(source)))
    step = int(pretrained.read_info(pathlib.Path(str(source))).get("outer_steps", 0))
    return _for_space(LoadedOptimizer(learned_optimizer, theta, step, source), space)
  directory, steps = _checkpoint_folders(source)
  errors = []
  for step in steps:
    try:
      learned_optimizer, theta = _read(directory, step)
    except Exception as error:  # noqa: BLE001 - orbax raises many kinds: report them all, by checkpoint
      errors.append(f"{directory / str(step)}: {damage(directory / str(step), error)}")
      log.warning("checkpoint %s does not read (%s).", directory / str(step), errors[-1].split(": ", 1)[1])
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
    # A fixed axis (infer_space's io="fixed") reads as a permutable one where the optimizer was
    # meta-trained with a label there (io="permutable", the paper's): same architecture, a larger group.
    try:
      relaxed = space.relaxed_to(loaded.learned_optimizer.space)
      learned_optimizer, theta = loaded.learned_optimizer.transfer(loaded.theta, relaxed)
    except ValueError:
      raise ValueError(
        f"the {loaded.learned_optimizer.name!r} optimizer in {loaded.path} was meta-trained on another "
        f"architecture than the weight space given: {error} (learned optimizers transfer across widths and "
        "names of the same architecture, not across architectures; fixed axes where it was meta-trained with "
        "labels are read as permutable, not the other way round)."
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


def export(
  source: str | pathlib.Path, folder: str | pathlib.Path, *, note: str = "", selected: bool = True
) -> pathlib.Path:
  """Writes the meta-trained optimizer of a workdir or checkpoint as a shipped one (:mod:`metatrain.pretrained`).

  Args:
    source: a ``metatrain train`` workdir or one of its checkpoint folders (the newest that reads).
    folder: where to write ``optimizer.json`` and ``theta.npz`` (``metatrain/pretrained/NAME`` to ship it).
    note: free text kept in the description's ``info`` (the command and wall time that produced it).
    selected: ship the workdir's theta selected on validation (``WORKDIR/selected``,
      :mod:`metatrain.runtime.selection`) where the run has one, rather than its newest checkpoint's.

  Returns:
    ``folder``.
  """
  chosen = as_path(source) / "selected"
  selection: dict[str, Any] = {}
  if selected and (chosen / "optimizer.json").is_file():
    loaded = load(chosen)
    selection = pretrained.read_info(pathlib.Path(str(chosen)))
    config = {"worker": selection["worker"]}
  else:
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
  if selection:
    info["selection"] = {k: selection[k] for k in ("selected_step", "valid_loss", "start_valid_loss") if k in selection}
  pretrained.write(folder, loaded.learned_optimizer, loaded.theta, info)
  return pathlib.Path(folder)
