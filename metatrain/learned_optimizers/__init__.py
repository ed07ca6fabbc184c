"""Learned optimizers: per-parameter networks that output an update, as optax transformations.

Every kind derives from :class:`LearnedOptimizer` and is registered in
:data:`LEARNED_OPTIMIZERS` under its ``name``; the contract tests run over
this registry, so a new kind is tested as soon as it is registered here.

- :class:`UNFLOpt`: ``f``'s last layer is a UNF ``EquivariantLinear`` on the network's weight space.
- :class:`DeepSetsLOpt`: ``f``'s last layer is a Deep Sets layer per tensor.
"""

from __future__ import annotations

import json
from typing import Any

from metatrain.learned_optimizers import features
from metatrain.learned_optimizers.base import LearnedOptimizer, LearnedOptimizerState, describe
from metatrain.learned_optimizers.deep_sets import DeepSetsLOpt
from metatrain.learned_optimizers.unf import UNFLOpt
from unf.space import WeightSpace

#: Every kind of learned optimizer, by name (the contract tests run over it).
LEARNED_OPTIMIZERS: dict[str, type[LearnedOptimizer]] = {cls.name: cls for cls in (UNFLOpt, DeepSetsLOpt)}


def from_json(values: dict[str, Any]) -> LearnedOptimizer:
  """The learned optimizer that :meth:`LearnedOptimizer.to_json` wrote: ``{"kind", "width", "space"}``.

  Args:
    values: the description, as read from JSON.

  Returns:
    A learned optimizer equal to the one described.

  Raises:
    ValueError: an unknown kind, or a malformed description.

  Example:
    >>> import unf
    >>> space = unf.WeightSpace({"w": ("in", "out")})
    >>> from_json(UNFLOpt(space, width=4).to_json()) == UNFLOpt(space, width=4)
    True
  """
  kind = values.get("kind")
  if kind not in LEARNED_OPTIMIZERS:
    raise ValueError(f"unknown learned optimizer {kind!r}; choose one of {sorted(LEARNED_OPTIMIZERS)}.")
  try:
    space = WeightSpace.from_json(json.dumps(values["space"]))
    return LEARNED_OPTIMIZERS[kind](space, width=int(values["width"]))
  except (KeyError, TypeError) as error:
    raise ValueError(f"malformed description of a {kind!r} learned optimizer ({error!r}).") from error


__all__ = [
  "LEARNED_OPTIMIZERS",
  "DeepSetsLOpt",
  "LearnedOptimizer",
  "LearnedOptimizerState",
  "UNFLOpt",
  "describe",
  "features",
  "from_json",
]
