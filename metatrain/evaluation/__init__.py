"""Evaluating optimizers: training curves, hand-designed baselines and their tuning, summary statistics.

``metatrain eval`` (:mod:`metatrain.evaluation.compare`, which reads checkpoints and
writes TensorBoard files) is imported on demand: ``import metatrain.evaluation.compare``.
"""

from metatrain.evaluation.baselines import adam, grid_search, sgdm
from metatrain.evaluation.curves import (
  evaluation_curves,
  learned_curves,
  mean_normalized_loss,
  train_run,
  training_curves,
)
from metatrain.evaluation.stats import mean_se

__all__ = [
  "adam",
  "evaluation_curves",
  "grid_search",
  "learned_curves",
  "mean_normalized_loss",
  "mean_se",
  "sgdm",
  "train_run",
  "training_curves",
]
