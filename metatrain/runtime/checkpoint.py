"""Orbax checkpoints of meta-training: saving the learner's state, resuming from the newest that restores.

A checkpoint (``workdir/checkpoints/<step>``) holds the items and the file listing that
:mod:`metatrain.loading` describes and reads (:class:`metatrain.loading.CheckpointReader`, which
:class:`Checkpoints` extends with saving and resuming). A checkpoint that does not
restore is moved aside to ``<step>.corrupt`` (never deleted) when an older one
restores, and the run resumes from that one; when none restores, nothing is
moved and the run stops with an error naming each checkpoint's damage. A save
that fails (disk full, quota, permissions) removes its partial folder and
raises :class:`SaveFailed`: the checkpoints already written are untouched.

Paths are ``etils.epath`` paths: a workdir may be a local folder or, with
gcsfs installed, a ``gs://...`` bucket (``launch/README.md``, "Checkpoints on
cloud storage"; tested against a GCS server in ``tests/metatrain/runtime/test_bucket.py``).
Other URLs (``s3://...``) are refused at start-up (:class:`metatrain.loading.UnsupportedWorkdir`,
raised by :func:`metatrain.loading.as_path`): orbax cannot write them.

Loading a meta-trained optimizer from a run's checkpoints is the user's path, not the runtime's:
:func:`metatrain.load_learned_optimizer` (:mod:`metatrain.loading`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from metatrain.loading import FILES, CheckpointError, CheckpointReader, as_path, damage, error_line, quiet_orbax
from metatrain.types import PyTree

log = logging.getLogger(__name__)


class SaveFailed(OSError):
  """A checkpoint could not be written (disk full, quota, permissions); the ones already written are intact."""


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


class Checkpoints(CheckpointReader):
  """Saves and restores the learner state under ``workdir/checkpoints``, keeping the last ``keep``.

  Orbax writes to a temporary folder and renames it when complete, so a crash
  never leaves a checkpoint that looks whole. A checkpoint that is damaged
  all the same (a file cut short or removed afterwards) is moved aside by
  :meth:`restore_latest` when an older one restores, with a one-line warning
  naming the folder and the file. It reads as the loader does
  (:class:`metatrain.loading.CheckpointReader`: ``steps``, ``restore``, ``config``, ``close``).

  Args:
    workdir: the run's folder (checkpoints go to ``workdir/checkpoints``): a local path or an
      ``epath`` URL (``gs://bucket/run``).
    keep: the number of checkpoints kept (older ones are deleted).
  """

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 3):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    super().__init__(as_path(workdir) / "checkpoints", options=options)

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
    with quiet_orbax():
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
          f"checkpoint {step} could not be written in {self.directory}: {_system_error(error) or error_line(error)}; "
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

  def restore_particles(self, step: int) -> dict:
    """The workers' particles saved with checkpoint ``step`` (``{}`` when it has none or they do not restore)."""
    if not (self.directory / str(step) / "particles").exists():
      return {}
    try:
      return self.restore(step, particles=ocp.args.StandardRestore())["particles"]
    except Exception as error:  # noqa: BLE001 - particles are an optimisation of resuming: start fresh runs
      folder = self.directory / str(step)
      log.warning("the particles saved in %s do not restore (%s); fresh particles.", folder, damage(folder, error))
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
        config = self.config(step)
      except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
        damaged.append((step, damage(folder, error)))
        continue
      if check is not None:
        check(config)
      try:
        state = self.restore(step, state=ocp.args.StandardRestore(abstract))["state"]
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
        return self.config(step)
      except Exception as error:  # noqa: BLE001
        folder = self.directory / str(step)
        log.warning("checkpoint %s has no readable config (%s).", folder, damage(folder, error))
    return None
