"""The run's selected theta: the best on validation among the thetas the evaluator has seen, its start included.

Meta-gradients are noisy, and the last theta of a run is not always its best: what ships is chosen on the
validation loss of whole inner runs (the evaluator's, on evaluation seeds never used in meta-training, never
on the test split). The first evaluation is of the initial theta, so the selected theta is never worse on
validation than the run's start; with a ``"nominal"`` learned optimizer that start is tuned Adam-cosine.

The selection lives in ``WORKDIR/selected/`` in the format of a shipped optimizer (``optimizer.json`` and
``theta.npz``, :mod:`metatrain.pretrained`): ``metatrain.load_learned_optimizer("WORKDIR/selected")`` loads it,
and ``metatrain export`` ships it. Its ``info`` holds the step, its validation loss and the start's.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import tqdm

from metatrain import pretrained
from metatrain.learned_optimizers import LearnedOptimizer
from metatrain.runtime.evaluator import Evaluation

#: The selection's folder in a workdir.
FOLDER = "selected"


class Selection:
  """Keeps the theta with the lowest validation loss of the evaluations offered, on disk.

  Args:
    folder: ``WORKDIR/selected`` (a local folder; the selection is skipped, with a warning, elsewhere).
    learned_optimizer: the run's learned optimizer (its description is written beside theta).
    worker: the run's worker config as JSON (kept in ``info``).
  """

  def __init__(self, folder: Any, learned_optimizer: LearnedOptimizer, worker: dict[str, Any]):
    self.learned_optimizer, self.worker = learned_optimizer, worker
    self.folder: pathlib.Path | None = pathlib.Path(str(folder)) if "://" not in str(folder) else None
    if self.folder is None:
      tqdm.tqdm.write(f"warning: the selected theta is kept on local disk only; {folder} is not (no selection).")
    self.info: dict[str, Any] = {}
    if self.folder is not None and (self.folder / "optimizer.json").is_file():
      self.info = json.loads((self.folder / "optimizer.json").read_text())["info"]  # a resumed run's selection

  @property
  def valid_loss(self) -> float:
    """The selected theta's validation loss (inf before any)."""
    return float(self.info.get("valid_loss", math.inf))

  def offer(self, evaluation: Evaluation) -> bool:
    """Selects ``evaluation``'s theta when its validation loss is the lowest yet; returns whether it did.

    The validation loss is :attr:`Evaluation.selection_loss`: with a task family, its mean over the family's
    evaluation sample.
    """
    loss = evaluation.selection_loss
    if evaluation.step == 0:
      self.info["start_valid_loss"] = loss
    if self.folder is None or evaluation.theta is None or not math.isfinite(loss) or loss >= self.valid_loss:
      return False
    self.info.update(selected_step=evaluation.step, outer_steps=evaluation.step, valid_loss=loss, worker=self.worker)
    pretrained.write(self.folder, self.learned_optimizer, evaluation.theta, self.info)
    return True
