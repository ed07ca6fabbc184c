"""Learned optimizers and their meta-training with ES / PES gradient estimates.

The main path, in three calls::

  metatrain.train(TrainConfig(...), WorkerConfig(...), "runs/NAME")   # or `metatrain train --config ...`
  lopt, theta = metatrain.load_learned_optimizer("runs/NAME", space=unf.mlp_space(params))
  optimizer = lopt.optimizer(theta)                                    # an optax.GradientTransformation

Learned optimizers (:class:`UNFLOpt`, :class:`DeepSetsLOpt`, :class:`LearnedSGDM`; the registry
:data:`LEARNED_OPTIMIZERS`, named options :data:`PRESETS`) give ``optimizer(theta) -> optax.GradientTransformation``;
estimators (:class:`PES`, :class:`TruncatedES`, :class:`FullES`, :class:`NoiseReuseES`,
:class:`TruncatedGradient`, :class:`HybridES`; the registry
:data:`ESTIMATORS`) are pure state machines ``step(problem, state, theta, key)
-> (state, grad, metrics)`` over an inner problem (:class:`LearnedOptimizerProblem`);
:func:`outer_loop` meta-trains in this process with no files; :func:`train`
is the main job (workers, learner, checkpoints, TensorBoard).

Subpackages: :mod:`metatrain.learned_optimizers`, :mod:`metatrain.estimators`,
:mod:`metatrain.runtime` (the only one that imports ray or tensorboardX, on
demand), :mod:`metatrain.evaluation`; :mod:`metatrain.loading` loads and exports
meta-trained optimizers (it and :mod:`metatrain.runtime.checkpoint` import orbax).
``import metatrain`` loads none of ray, gin, orbax or tensorboardX: :func:`train` and
:func:`load_learned_optimizer` import them when first called. :func:`pretrained_names` lists the
meta-trained optimizers shipped in the package (:mod:`metatrain.pretrained`), which
:func:`load_learned_optimizer` loads by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metatrain import estimators as _estimators
from metatrain import learned_optimizers as _learned_optimizers
from metatrain.estimators import PES, Estimator, FullES, HybridES, NoiseReuseES, TruncatedES, TruncatedGradient
from metatrain.evaluation import (
  adam,
  adam_cosine,
  adamw_cosine,
  grid_search,
  learned_curves,
  mean_normalized_loss,
  sgdm,
  training_curves,
)
from metatrain.learned_optimizers import (
  DeepSetsLOpt,
  LearnedOptimizer,
  LearnedSGDM,
  UNFLOpt,
  describe,
  features,
)
from metatrain.outer import outer_loop, outer_optimizer
from metatrain.pretrained import pretrained_names
from metatrain.problem import InnerState, LearnedOptimizerProblem
from metatrain.runtime.config import TrainConfig, WorkerConfig

#: Every kind of learned optimizer, by name (:data:`metatrain.learned_optimizers.LEARNED_OPTIMIZERS`).
LEARNED_OPTIMIZERS = _learned_optimizers.LEARNED_OPTIMIZERS
#: Named sets of a learned optimizer's options (:data:`metatrain.learned_optimizers.PRESETS`).
PRESETS = _learned_optimizers.PRESETS
#: Every gradient estimator, by name (:data:`metatrain.estimators.ESTIMATORS`).
ESTIMATORS = _estimators.ESTIMATORS

if TYPE_CHECKING:
  from metatrain.loading import load_learned_optimizer
  from metatrain.runtime.train import train

# Imported on first use: they bring orbax, tensorboardX and tqdm.
_LAZY = {"load_learned_optimizer": "metatrain.loading", "train": "metatrain.runtime.train"}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'metatrain' has no attribute {name!r}")


__all__ = [
  "ESTIMATORS",
  "LEARNED_OPTIMIZERS",
  "PES",
  "PRESETS",
  "DeepSetsLOpt",
  "Estimator",
  "FullES",
  "HybridES",
  "InnerState",
  "LearnedOptimizer",
  "LearnedOptimizerProblem",
  "LearnedSGDM",
  "NoiseReuseES",
  "TrainConfig",
  "TruncatedES",
  "TruncatedGradient",
  "UNFLOpt",
  "WorkerConfig",
  "adam",
  "adam_cosine",
  "adamw_cosine",
  "describe",
  "features",
  "grid_search",
  "learned_curves",
  "load_learned_optimizer",
  "mean_normalized_loss",
  "outer_loop",
  "outer_optimizer",
  "pretrained_names",
  "sgdm",
  "train",
  "training_curves",
]
