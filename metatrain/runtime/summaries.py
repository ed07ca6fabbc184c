"""TensorBoard event files (tensorboardX): the scalars of meta-training and of evaluation curves.

A meta-training run's folder (``workdir/tensorboard``) holds two TensorBoard
runs: :data:`MAIN_RUN` (``learned``), the training loop's metrics (sections
``meta/``, ``throughput/``, ``faults/``) and its evaluations (``eval/``,
:meth:`Summaries.evaluation`), and :data:`REFERENCE_RUN` (``adam_reference``),
the tuned Adam's values under the same ``eval/`` tags, so that TensorBoard
draws them as two named lines in the same charts. (Runs written before
``learned`` existed have their events in ``workdir/tensorboard`` itself: run
``.`` in TensorBoard; a resumed one goes on in ``learned``.)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorboardX

if TYPE_CHECKING:
  from metatrain.runtime.evaluator import Evaluation

#: TensorBoard tags of the training loop's metrics, by section (a metric not listed keeps its name).
TAGS = {
  "meta_loss": "meta/loss",
  "grad_norm": "meta/grad_norm",
  "learning_rate": "meta/learning_rate",
  "staleness": "meta/staleness",
  "used_estimates": "meta/used_estimates",
  "skipped_step": "meta/skipped_step",
  "inner_steps_per_second": "throughput/inner_steps_per_second",
  "outer_steps_per_second": "throughput/outer_steps_per_second",
  "eval_seconds": "throughput/eval_seconds",
  "stale_estimates": "faults/stale_estimates",
  "nan_estimates": "faults/nan_estimates",
  "nan_pairs": "faults/nan_pairs",
  "lost_estimates": "faults/lost_estimates",
  "live_workers": "faults/live_workers",
  "skipped_evals": "faults/skipped_evals",
  "lost_evals": "faults/lost_evals",
  "final_train_loss": "eval/final_train_loss",
  "mean_train_loss": "eval/mean_train_loss",
  "valid_loss": "eval/valid_loss",
}

#: The subfolder of the tuned Adam's evaluation values (a run of its own in TensorBoard).
REFERENCE_RUN = "adam_reference"

#: The subfolder of a meta-training run's own metrics, and so its name in TensorBoard beside :data:`REFERENCE_RUN`.
MAIN_RUN = "learned"


class Summaries:
  """Writes the metrics of every outer step, and the run's gin config as text, under one folder.

  Args:
    folder: the TensorBoard folder (``workdir/tensorboard``).
    run: the subfolder of this writer's events, its run name in TensorBoard (``""``: ``folder`` itself;
      a meta-training run's is :data:`MAIN_RUN`); the Adam reference's go to ``folder/``:data:`REFERENCE_RUN`.
  """

  def __init__(self, folder: str | os.PathLike, *, run: str = ""):
    self.folder = str(folder)  # not a pathlib.Path: that would turn gs://bucket/run into gs:/bucket/run
    self.writer = tensorboardX.SummaryWriter(os.path.join(self.folder, run) if run else self.folder)
    self.reference_writer: Any = None  # REFERENCE_RUN's, opened at the first evaluation with a reference

  def text(self, tag: str, text: str, step: int) -> None:
    """A text summary (shown as markdown in TensorBoard's Text tab)."""
    self.writer.add_text(tag, text, step)

  def scalars(self, metrics: Mapping[str, float], step: int) -> None:
    """One scalar per metric at ``step``, tagged by section (:data:`TAGS`: ``meta/loss``, ``faults/...``)."""
    for name, value in metrics.items():
      self.writer.add_scalar(TAGS.get(name, name), value, step)

  def evaluation(self, evaluation: Evaluation) -> None:
    """An evaluation of theta, at the outer step of the theta evaluated.

    Writes ``eval/final_train_loss``, ``eval/mean_train_loss`` and ``eval/valid_loss`` (with a task family,
    also ``eval/<member>/...`` for each member of its evaluation sample); the same tags
    for the Adam reference in the :data:`REFERENCE_RUN` run (at every evaluation's step: a flat line);
    and the image ``eval/curve``, the mean training loss of every inner step, learned against Adam; and
    the evaluation's wall time as ``throughput/eval_seconds``.
    """
    step = evaluation.step
    self.scalars({**evaluation.losses.scalars(), "eval_seconds": evaluation.seconds}, step)
    for name, losses in evaluation.members.items():  # a task family's sample, one section per member
      for metric, value in losses.scalars().items():
        self.writer.add_scalar(f"eval/{name}/{metric}", value, step)
    if evaluation.reference is not None:
      if self.reference_writer is None:
        self.reference_writer = tensorboardX.SummaryWriter(os.path.join(self.folder, REFERENCE_RUN))
      for name, value in evaluation.reference.losses.scalars().items():
        self.reference_writer.add_scalar(TAGS[name], value, step)
      self.reference_writer.flush()
    self.writer.add_figure("eval/curve", curve_figure(evaluation), step, close=True)
    self.writer.flush()

  def close(self) -> None:
    """Flushes and closes the event files (``with contextlib.closing(Summaries(...))``)."""
    self.writer.close()
    if self.reference_writer is not None:
      self.reference_writer.close()


def curve_figure(evaluation: Evaluation) -> Any:
  """A matplotlib figure of the evaluation's mean training curve (log-scale loss), with Adam's when known."""
  import matplotlib

  matplotlib.use("Agg")  # no display: the figure is rendered to pixels for TensorBoard
  from matplotlib.figure import Figure

  figure = Figure(figsize=(6, 4), dpi=100)
  axes = figure.subplots()
  steps = np.arange(1, len(evaluation.losses.curve) + 1)
  axes.plot(steps, evaluation.losses.curve, label="learned optimizer", color="C0")
  reference = evaluation.reference
  if reference is not None:
    label = f"Adam, warm-up + cosine, peak {reference.learning_rate:.3g}"
    axes.plot(steps, reference.losses.curve, label=label, color="C1")
  axes.set_yscale("log")
  axes.set_xlabel("inner step")
  axes.set_ylabel("training batch loss (mean over seeds)")
  axes.set_title(f"outer step {evaluation.step}")
  axes.grid(True, which="both", alpha=0.3)
  axes.legend()
  figure.tight_layout()
  return figure


def write_series(folder: str | pathlib.Path, series: Mapping[str, Iterable[tuple[int, float]]]) -> None:
  """Writes whole curves: for each tag, its ``(step, value)`` points.

  Args:
    folder: the event files' folder.
    series: ``{tag: [(step, value), ...]}``.
  """
  with contextlib.closing(Summaries(folder)) as summaries:
    for tag, points in series.items():
      for step, value in points:
        summaries.writer.add_scalar(tag, float(value), int(step))
