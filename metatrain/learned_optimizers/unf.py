"""The UNF learned optimizer: ``f``'s last layer is equivariant to the network's weight-space symmetry."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax

import unf
from metatrain.learned_optimizers.base import LearnedOptimizer


@dataclasses.dataclass(frozen=True)
class UNFLOpt(LearnedOptimizer):
  """The UNF learned optimizer: ``f``'s last layer is a ``unf`` ``EquivariantLinear(width -> 1)``.

  Satisfies ``update(sigma . grads, sigma . state, sigma . params) = sigma . update(grads, state, params)``
  for every element ``sigma`` of ``space``'s group (Zhou et al. 2024, Sec. 5.2).
  Its meta-parameter count depends on the space's labels only, not on widths.

  Args:
    space: the weight space of the networks it optimizes (with fixed sizes, as
      the ``unf`` builders and ``task.space`` give it).
    width: hidden features per parameter.
    pointwise_layers, features, base, initial_alpha, initial_beta, update_scale, reference_fan_in: the
      options of :class:`metatrain.LearnedOptimizer`.
    initial_weight_decay, horizon: the options of the ``"nominal"`` base (:class:`metatrain.LearnedOptimizer`).
  """

  name: ClassVar[str] = "unf"
  head_name: ClassVar[str] = "EquivariantLinear"

  def _init_head(self, key: jax.Array, dtype: Any) -> dict:
    return unf.linear.init(key, self.space, self.space, self.width, 1, dtype=dtype)

  def _head(self, head: dict, hidden: dict) -> dict:
    return unf.linear.apply(head, hidden, self.space, self.space)

  def _transfer_head(self, head: dict, space: unf.WeightSpace) -> dict:
    return unf.linear.transfer(head, self.space, self.space, space, space)
