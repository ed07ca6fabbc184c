"""The meta-trained SGDM baseline: the update rule's base term alone, with ``alpha`` and ``gamma0`` meta-learned."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from metatrain.learned_optimizers.base import LearnedOptimizer


@dataclasses.dataclass(frozen=True)
class LearnedSGDM(LearnedOptimizer):
  """SGD with momentum whose learning rate ``alpha`` and decay ``gamma0`` are meta-trained (no ``f``).

  ``W <- W - alpha * m_gamma0``: the paper's SGDM baseline (the authors' ``LearnableSGDM``), meta-trained
  by the same estimator and budget as the learned optimizers (Zhou, Finn, Harrison 2024, Sec. 5.2). With
  ``base="adam"`` it is Adam with a meta-trained learning rate and first-moment decay; with ``base="nominal"``
  Adam-cosine (AdamW-cosine) with its peak rate, schedule correction, first-moment decay (and weight decay)
  meta-trained. Trivially equivariant to every permutation of the weights; its meta-parameters do not depend
  on the space.

  Its optax chain is :class:`LearnedOptimizer`'s with no term beside the base term (and the weight decay).

  Args:
    space: the weight space of the networks it optimizes (checked on every update).
    base, initial_alpha, initial_weight_decay, horizon, update_scale, reference_fan_in: as
      :class:`LearnedOptimizer`.
  """

  name: ClassVar[str] = "sgdm"
