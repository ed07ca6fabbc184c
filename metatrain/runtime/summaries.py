"""TensorBoard event files (tensorboardX): the scalars of meta-training and of evaluation curves."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterable, Mapping

import tensorboardX


class Summaries:
  """Writes the metrics of every outer step, and the run's gin config as text, under one folder.

  Args:
    folder: the event files' folder (``workdir/tensorboard``).
  """

  def __init__(self, folder: str | pathlib.Path):
    self.writer = tensorboardX.SummaryWriter(str(folder))

  def text(self, tag: str, text: str, step: int) -> None:
    """A text summary (shown as markdown in TensorBoard's Text tab)."""
    self.writer.add_text(tag, text, step)

  def scalars(self, metrics: Mapping[str, float], step: int) -> None:
    """One scalar per metric, tagged by its name, at ``step``."""
    for name, value in metrics.items():
      self.writer.add_scalar(name, value, step)

  def close(self) -> None:
    """Flushes and closes the event file (``with contextlib.closing(Summaries(...))``)."""
    self.writer.close()


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
