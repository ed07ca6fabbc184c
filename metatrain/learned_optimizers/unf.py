"""The UNF learned optimizer: ``f``'s last layer is equivariant to the network's weight-space symmetry."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

import unf
from metatrain.learned_optimizers.base import NetworkLOpt


@dataclasses.dataclass(frozen=True)
class UNFLOpt(NetworkLOpt):
  """The UNF learned optimizer: ``f``'s last layer is a ``unf`` ``EquivariantLinear(width -> 1)``.

  Satisfies ``update(sigma . grads, sigma . state, sigma . params) = sigma . update(grads, state, params)``
  for every element ``sigma`` of ``space``'s group (Zhou et al. 2024, Sec. 5.2).
  Its meta-parameter count depends on the space's labels only, not on widths.

  Args:
    space: the weight space of the networks it optimizes (with fixed sizes, as
      the ``unf`` builders and ``task.space`` give it).
    width: hidden features per parameter.
    fixed_axes: how the last layer treats fixed (None) axes (:class:`unf.EquivariantLinear`): ``"auto"`` (the
      default) mixes at most 10 fixed coordinates per leaf like channels and gives longer fixed axes labels of
      their own, so that a Dense layer after a flatten costs a few hundred meta-parameters, not millions;
      ``"mix"``, ``"label"`` or an int as there. The paper's four tasks have no fixed axis that ``"auto"``
      labels. :func:`unf.parameter_count` gives the last layer's size.
    pointwise_layers, features, base, initial_alpha, initial_beta, update_scale, reference_fan_in: the
      options of :class:`metatrain.learned_optimizers.NetworkLOpt` and :class:`metatrain.LearnedOptimizer`.
    initial_weight_decay, horizon: the options of the ``"nominal"`` base (:class:`metatrain.LearnedOptimizer`).
  """

  fixed_axes: str | int = dataclasses.field(default="auto", kw_only=True)
  name: ClassVar[str] = "unf"
  head_name: ClassVar[str] = "EquivariantLinear"

  def __post_init__(self):
    super().__post_init__()
    unf.basis.mixed_coordinates_limit(self.fixed_axes)  # raises on a bad value

  def _init_head(self, key: jax.Array, dtype: Any) -> dict:
    return unf.linear.init(key, self.space, self.space, self.width, 1, dtype=dtype, fixed_axes=self.fixed_axes)

  def _head(self, head: dict, hidden: dict) -> dict:
    return unf.linear.apply(head, hidden, self.space, self.space, fixed_axes=self.fixed_axes)

  def _transfer_head(self, head: dict, space: unf.WeightSpace) -> dict:
    return unf.linear.transfer(head, self.space, self.space, space, space, fixed_axes=self.fixed_axes)

  def _head_noise_scales(self, head: dict) -> dict:
    # sqrt(2 width / channels): a Deep Sets layer sums 2 * width inputs per entry (its entry and its mean).
    channels = unf.linear.input_channels(self.space, self.space, self.width, fixed_axes=self.fixed_axes)
    return {
      name: jnp.asarray(math.sqrt(2 * self.width / channels[name]) if name in channels else 1.0, value.dtype)
      for name, value in head.items()
    }
