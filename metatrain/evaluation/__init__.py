"""Evaluating optimizers: training curves, hand-designed baselines and their tuning, summary statistics.

``metatrain eval`` (:mod:`metatrain.evaluation.compare`, which reads checkpoints and
writes TensorBoard files) is imported on demand: ``import metatrain.evaluation.compare``.
"""

from metatrain.evaluation.baselines import (
  GridEdgeWarning,
  adam,
  adam_cosine,
  adamw_cosine,
  grid_search,
  sgdm,
)
from metatrain.evaluation.curves import (
  evaluation_curves,
  learned_curves,
  mean_normalized_loss,
  train_run,
  training_curves,
)
from metatrain.evaluation.stats import PairedDifference, mean_se, paired_difference, t_quantile
from metatrain.schedules import warmup_cosine

__all__ = [
  "GridEdgeWarning",
  "PairedDifference",
  "adam",
  "adam_cosine",
  "adamw_cosine",
  "evaluation_curves",
  "grid_search",
  "learned_curves",
  "mean_normalized_loss",
  "mean_se",
  "paired_difference",
  "sgdm",
  "t_quantile",
  "train_run",
  "training_curves",
  "warmup_cosine",
]
