"""The Deep Sets learned optimizer (the paper's main baseline): ``f``'s last layer treats each tensor as a set."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

import unf
from metatrain.learned_optimizers.base import NetworkLOpt
from unf.space import path_str


@dataclasses.dataclass(frozen=True)
class DeepSetsLOpt(NetworkLOpt):
  """The Deep Sets learned optimizer: ``f``'s last layer treats every tensor as a set.

  For each tensor with hidden features ``h`` (one row per entry):
  ``y = h @ w_entry + mean_over_tensor(h) @ w_pool + bias``, with weights of
  its own per tensor (as the UNF layer has per leaf). Satisfies
  ``update(P . grads, P . state, P . params) = P . update(grads, state, params)``
  for every permutation ``P`` of the entries of each tensor (Zaheer et al.
  2017; the baseline of Zhou et al. 2024, Sec. 5.2).

  Args:
    space: the weight space of the networks it optimizes (it fixes the tensors).
    width: hidden features per parameter.
    pointwise_layers, features, base, initial_alpha, initial_beta, update_scale, reference_fan_in: the
      options of :class:`metatrain.learned_optimizers.NetworkLOpt` and :class:`metatrain.LearnedOptimizer`.
    initial_weight_decay, horizon: the options of the ``"nominal"`` base (:class:`metatrain.LearnedOptimizer`).
  """

  name: ClassVar[str] = "deep_sets"
  head_name: ClassVar[str] = "Deep Sets"

  def _init_head(self, key: jax.Array, dtype: Any) -> dict:
    head = {}
    for path, k in zip(self.space.paths, jax.random.split(key, len(self.space))):
      k_entry, k_pool = jax.random.split(k)
      std = 1.0 / math.sqrt(self.width)
      head[path_str(path)] = {
        "w_entry": std * jax.random.normal(k_entry, (self.width, 1), dtype),
        # Half scale on the pooled path, as unf.linear.init does (means of relu features are O(1)).
        "w_pool": 0.5 * std * jax.random.normal(k_pool, (self.width, 1), dtype),
        "bias": jnp.zeros((1,), dtype),
      }
    return head

  def _head(self, head: dict, hidden: dict) -> dict:
    out = []
    for path, h in zip(self.space.paths, self.space.flatten(hidden)):
      w = head[path_str(path)]
      pooled = jnp.mean(h, axis=tuple(range(h.ndim - 1)), keepdims=True)
      out.append(h @ w["w_entry"].astype(h.dtype) + pooled @ w["w_pool"].astype(h.dtype) + w["bias"].astype(h.dtype))
    return self.space.unflatten(out)

  def _transfer_head(self, head: dict, space: unf.WeightSpace) -> dict:
    # One set of weights per tensor, keyed by its path: the tensors correspond in order.
    return {path_str(new): head[path_str(old)] for old, new in zip(self.space.paths, space.paths)}
