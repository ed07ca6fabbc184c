"""Loading meta-trained optimizers, and exporting them as shipped ones: the user's path from a run to optax.

:func:`load_learned_optimizer` (``metatrain.load_learned_optimizer``) turns a shipped optimizer's name
(:mod:`metatrain.pretrained`), a ``metatrain train`` workdir, one of its checkpoint folders or its
``WORKDIR/selected`` theta back into ``(learned_optimizer, theta)``, with no dataset and no learner;
:func:`load` gives the step and the folder too. :func:`export` (``metatrain export``) writes a run's
optimizer in the shipped format.

A run's checkpoint (``WORKDIR/checkpoints/<step>``, written by :mod:`metatrain.runtime.checkpoint`)
holds four orbax items (:data:`ITEMS`):

- ``state``: the learner's pytree (theta, the outer optimizer state, the step), orbax arrays;
- ``config`` (JSON): the operative gin config, the worker config and the train config;
- ``learned_optimizer`` (JSON): the kind, width and weight space theta was built for
  (:meth:`metatrain.LearnedOptimizer.to_json`);
- ``particles`` (optional): the workers' particles, for an exact resume.

Beside them, :data:`FILES` lists every file of the checkpoint with its size once the save is
complete, so that a damaged checkpoint (a file cut short or removed) is named by the file that is
wrong (:func:`damage`). :class:`CheckpointReader` is the one reader of these items, for the loader
here and for the runtime, whose :class:`metatrain.runtime.checkpoint.Checkpoints` also writes them.

This module imports neither :mod:`metatrain.runtime` nor :mod:`metatrain.evaluation` when it is
imported (tested in ``tests/test_package.py``): the runtime builds on it, and ``metatrain eval``
(:mod:`metatrain.evaluation.compare`) loads the optimizers it compares with it. It imports orbax, so
``import metatrain`` imports it on the first call of :func:`metatrain.load_learned_optimizer`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import re
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

import tasks
import unf
from metatrain import learned_optimizers, pretrained
from metatrain.learned_optimizers import LearnedOptimizer
from metatrain.types import Theta

log = logging.getLogger(__name__)

#: The items of a checkpoint.
ITEMS = ("state", "config", "learned_optimizer", "particles")
#: The file in each checkpoint folder that lists its files and their sizes (``{"state/_METADATA": 444, ...}``).
FILES = "FILES.json"


class CheckpointError(ValueError):
  """Checkpoints that cannot be used: on storage orbax cannot reach, none restores, or they belong to another run."""


class UnsupportedWorkdir(CheckpointError):
  """A workdir on storage that orbax cannot read or write (an ``s3://`` URL): refused before anything is done."""


def as_path(path: str | os.PathLike) -> epath.Path:
  """``path`` as an ``epath.Path``: absolute when local (orbax reads absolute paths only), as given for a URL.

  Raises:
    UnsupportedWorkdir: a URL that orbax cannot read or write checkpoints at (any but ``gs://``), before
      anything is read or written.
  """
  if "://" not in str(path):
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
  scheme = str(path).split("://", 1)[0]
  if scheme != "gs":
    # orbax's tensorstore paths keep the "//" of gs:// only: s3://bucket/run reaches tensorstore as s3:/bucket/run
    # and the first save fails ("Checkpoint path should be absolute"); tests/metatrain/runtime/test_bucket.py.
    raise UnsupportedWorkdir(
      f"{path}: orbax (orbax-checkpoint {ocp.__version__}) cannot write checkpoints to {scheme}:// URLs, nor read "
      "them there, only gs:// and local folders: use a gs:// bucket, a local folder or a mounted bucket "
      "(mountpoint-s3, s3fs-fuse, gcsfuse) as the workdir."
    )
  return epath.Path(path)


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
  """Holds back orbax's error logs, and the "Event loop is closed" of its threads, while a save or restore runs.

  A failed save or restore is then reported once, by the error raised, instead of by a traceback per thread.
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


def error_line(error: BaseException) -> str:
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


def damage(folder: epath.Path, error: BaseException) -> str:
  """What is wrong with the checkpoint ``folder`` that raised ``error`` when read: the file, in a few words.

  The file cut short or removed, by the sizes :data:`FILES` recorded at save time; else the first file of
  the folder the error names; else the error's first line.
  """
  if listed := listed_damage(folder):
    return listed
  for named in re.findall(r"(?:file://)?(/[^\s\"']+)", str(error)):
    if named.startswith(os.fspath(folder) + "/"):
      return f"{os.path.relpath(named, os.fspath(folder))}: {error_line(error)}"
  return error_line(error)


class CheckpointReader:
  """The checkpoints of a run (``WORKDIR/checkpoints/<step>``), read through one orbax manager.

  The loader reads with it; :class:`metatrain.runtime.checkpoint.Checkpoints` is a reader that also
  writes, keeps the last few and resumes.

  Args:
    directory: the ``checkpoints`` folder: a local absolute path or a ``gs://`` URL (:func:`as_path`).
    options: orbax's manager options; the default reads only (nothing is created).
  """

  def __init__(self, directory: epath.Path, *, options: ocp.CheckpointManagerOptions | None = None):
    self.directory = directory
    options = options if options is not None else ocp.CheckpointManagerOptions(create=False)
    self.manager = ocp.CheckpointManager(directory, options=options, item_names=ITEMS)

  def steps(self) -> list[int]:
    """The steps of the checkpoints present, oldest first."""
    return sorted(self.manager.all_steps())

  def restore(self, step: int, *, arrays: bool = True, **items: Any) -> dict:
    """Restores ``items`` of checkpoint ``step``: orbax's restore arguments by item name.

    Args:
      step: the checkpoint.
      arrays: whether an item is read by tensorstore (``StandardRestore``): then the checkpoint's files are
        checked against :data:`FILES` first.
      items: ``config=ocp.args.JsonRestore()``, ``state=ocp.args.StandardRestore(target)``, ...

    Returns:
      ``{item name: restored value}``.

    Raises:
      DamagedCheckpoint: with ``arrays``, a file missing or cut short (nothing is read).
    """
    if arrays and (what := listed_damage(self.directory / str(step))):
      raise DamagedCheckpoint(what)
    with quiet_orbax():
      return self.manager.restore(step, args=ocp.args.Composite(**items))

  def config(self, step: int) -> dict[str, Any]:
    """The JSON config of checkpoint ``step``: ``{"gin": ..., "worker": ..., "train": ...}``.

    Raises:
      ValueError: ``config/`` holds something other than a JSON object.
    """
    config = self.restore(step, arrays=False, config=ocp.args.JsonRestore())["config"]
    if not isinstance(config, dict):
      raise ValueError(f"config/ holds {type(config).__name__}, not a JSON object")
    return config

  def read_optimizer(self, step: int) -> tuple[LearnedOptimizer, Theta]:
    """The learned optimizer checkpoint ``step`` was written for, and its theta (numpy arrays).

    The optimizer is the checkpoint's own description; checkpoints written before they carried one
    rebuild it from their worker config (the task's weight space, which needs the task's data).

    Raises:
      ValueError: theta does not have the shapes of that optimizer's meta-parameters (a damaged checkpoint).
    """
    folder = self.directory / str(step)
    if (folder / "learned_optimizer").is_dir():
      described = self.restore(step, arrays=False, learned_optimizer=ocp.args.JsonRestore())["learned_optimizer"]
      learned_optimizer = learned_optimizers.from_json(described)
    else:
      # The runtime's config, for old checkpoints only: importing it here keeps this module below the runtime.
      from metatrain.runtime.config import WorkerConfig

      learned_optimizer = WorkerConfig.from_json(self.config(step)["worker"]).build_learned_optimizer()
    state = self.restore(step, state=ocp.args.StandardRestore())["state"]
    theta = jax.tree.map(np.asarray, state["theta"])
    expected = jax.eval_shape(learned_optimizer.init_meta, jax.random.key(0))
    if jax.tree.map(np.shape, theta) != jax.tree.map(lambda e: e.shape, expected):  # nested dicts: keys and shapes
      raise ValueError(
        f"the meta-parameters in {folder} do not have the shapes of a {learned_optimizer.name!r} learned optimizer "
        "of the weight space saved with them: the checkpoint is damaged."
      )
    return learned_optimizer, theta

  def close(self) -> None:
    """Waits for pending writes and releases the manager (``with contextlib.closing(CheckpointReader(...))``)."""
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
    UnsupportedWorkdir: a URL that orbax cannot read (a ``ValueError`` too).
  """
  if isinstance(source, str) and not pathlib.Path(source).exists() and source in pretrained.pretrained_names():
    learned_optimizer, theta = pretrained.load(source)
    return _for_space(
      LoadedOptimizer(
        learned_optimizer, theta, pretrained.info(source)["outer_steps"], epath.Path(pretrained.FOLDER / source)
      ),
      space,
    )
  path = as_path(source)
  if (path / "optimizer.json").is_file():  # a shipped optimizer's folder, or a run's selected/ theta
    learned_optimizer, theta = pretrained.read(pathlib.Path(str(path)))
    step = int(pretrained.read_info(pathlib.Path(str(path))).get("outer_steps", 0))
    return _for_space(LoadedOptimizer(learned_optimizer, theta, step, path), space)
  directory, steps = _checkpoint_folders(path)
  errors = []
  with contextlib.closing(CheckpointReader(directory)) as reader:
    for step in steps:
      try:
        learned_optimizer, theta = reader.read_optimizer(step)
      except Exception as error:  # noqa: BLE001 - orbax raises many kinds: report them all, by checkpoint
        errors.append(f"{directory / str(step)}: {damage(directory / str(step), error)}")
        log.warning("checkpoint %s does not read (%s).", directory / str(step), errors[-1].split(": ", 1)[1])
        continue
      break
    else:
      raise ValueError(f"no checkpoint in {path} reads; " + "; ".join(errors))
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


# --- exporting one as a shipped optimizer -----------------------------------------------------------------


def export(
  source: str | pathlib.Path, folder: str | pathlib.Path, *, note: str = "", selected: bool = True
) -> pathlib.Path:
  """Writes the meta-trained optimizer of a workdir or checkpoint as a shipped one (:mod:`metatrain.pretrained`).

  With it goes a reference trajectory (``info["check"]``): the training-batch loss of each step of one
  :data:`metatrain.pretrained.CHECK_STEPS`-step run on its task, which the tests reproduce.

  Args:
    source: a ``metatrain train`` workdir, one of its checkpoint folders (the newest that reads), or its
      ``selected`` folder.
    folder: where to write ``optimizer.json`` and ``theta.npz`` (``metatrain/pretrained/NAME`` to ship it).
    note: free text kept in the description's ``info`` (the command and wall time that produced it).
    selected: ship the workdir's theta selected on validation (``WORKDIR/selected``,
      :mod:`metatrain.runtime.selection`) where the run has one, rather than its newest checkpoint's.

  Returns:
    ``folder``.
  """
  # The evaluation's seed and curves, for the reference trajectory only: imported here, since
  # metatrain.evaluation.compare imports this module.
  from metatrain.evaluation.baselines import EVAL_SEED
  from metatrain.evaluation.curves import learned_curves

  path = as_path(source)
  given = (path / "optimizer.json").is_file()  # the selected/ folder itself (or a folder in the shipped format)
  chosen = path if given else path / "selected"
  selection: dict[str, Any] = {}
  if (selected or given) and (chosen / "optimizer.json").is_file():
    loaded = load(chosen)
    selection = pretrained.read_info(pathlib.Path(str(chosen)))
    config = {"worker": selection["worker"]}
  else:
    loaded = load(source)
    with contextlib.closing(CheckpointReader(loaded.path.parent)) as reader:
      config = reader.config(loaded.step)
  task_name = config["worker"]["task"]
  task = tasks.get(task_name)
  lopt, theta = loaded.learned_optimizer.transfer(loaded.theta, task.space)
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
