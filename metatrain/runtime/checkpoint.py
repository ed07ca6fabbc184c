"""Orbax checkpoints of the learner: pytrees restored into an abstract target, config as text."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpoints:
  """Saves and restores the learner state under ``workdir/checkpoints``, keeping the last ``keep``.

  Each checkpoint holds the learner's pytree (theta, outer optimizer state,
  step), as JSON the operative gin config and the worker configuration, and
  optionally the workers' particle states (PES inner runs), so that a resumed
  synchronous run continues exactly. Orbax writes to a temporary folder and renames it when
  complete, so a crash never leaves a checkpoint that looks whole; a
  checkpoint that still fails to restore is skipped with a warning for the
  one before it.
  """

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3):
    self.directory = pathlib.Path(workdir).resolve() / "checkpoints"
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=("state", "config", "particles"),
    )

  def save(self, step: int, state: Any, config: dict[str, Any], particles: dict | None = None) -> None:
    """Saves ``state`` and ``config`` (and the workers' ``particles`` when given) as checkpoint ``step``."""
    items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    if particles:
      items["particles"] = ocp.args.StandardSave(particles)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    self.manager.wait_until_finished()

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

  def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
    """The newest checkpoint that restores into ``target``'s structure, or None when there is none."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in sorted(self.manager.all_steps(), reverse=True):
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
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
      except Exception as error:  # noqa: BLE001
        log.warning("checkpoint %d in %s has no readable config (%s).", step, self.directory, error)
    return None

  def close(self) -> None:
    self.manager.close()
