"""Learned optimizers and their meta-training with ES / PES gradient estimates.

Learned optimizers (:class:`UNFLOpt`, :class:`DeepSetsLOpt`) give
``optimizer(theta) -> optax.GradientTransformation``; estimators
(:class:`PES`, :class:`TruncatedES`, :class:`FullES`) are pure state machines
``step(problem, state, theta, key) -> (state, grad, metrics)`` over an inner
problem (:class:`LearnedOptimizerProblem`); :func:`train_local` meta-trains in
one process.
"""

from metatrain import features
from metatrain.baselines import adam, grid_search, sgdm
from metatrain.evaluate import learned_curves, mean_normalized_loss, training_curves
from metatrain.full_es import FullES
from metatrain.lopt import (
  LEARNED_OPTIMIZERS,
  DeepSetsLOpt,
  LearnedOptimizer,
  LearnedOptimizerState,
  UNFLOpt,
  describe,
)
from metatrain.pes import PES
from metatrain.problem import InnerState, LearnedOptimizerProblem, outer_optimizer
from metatrain.train import train_local
from metatrain.truncated_es import TruncatedES
from metatrain.worker import ESTIMATORS

__all__ = [
  "ESTIMATORS",
  "LEARNED_OPTIMIZERS",
  "PES",
  "DeepSetsLOpt",
  "FullES",
  "InnerState",
  "LearnedOptimizer",
  "LearnedOptimizerProblem",
  "LearnedOptimizerState",
  "TruncatedES",
  "UNFLOpt",
  "adam",
  "describe",
  "features",
  "grid_search",
  "learned_curves",
  "mean_normalized_loss",
  "outer_optimizer",
  "sgdm",
  "train_local",
  "training_curves",
]
