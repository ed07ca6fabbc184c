"""Learned optimizers: per-parameter networks that output an update, as optax transformations.

Every kind derives from :class:`LearnedOptimizer` and is registered in
:data:`LEARNED_OPTIMIZERS` under its ``name``; the contract tests run over
this registry, so a new kind is tested as soon as it is registered here.

- :class:`UNFLOpt`: ``f``'s last layer is a UNF ``EquivariantLinear`` on the network's weight space.
- :class:`DeepSetsLOpt`: ``f``'s last layer is a Deep Sets layer per tensor.
- :class:`LearnedSGDM`: no ``f``; momentum SGD with its rate and decay meta-trained (the paper's SGDM baseline).

Each one's ``optimizer(theta)`` is an optax chain of the links of :mod:`metatrain.learned_optimizers.transforms`;
:class:`NetworkLOpt` is the base of the kinds with a network ``f``.

:data:`PRESETS` names sets of options (``"paper"``: the configuration of the paper's code).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metatrain.learned_optimizers import features, transforms
from metatrain.learned_optimizers.base import LearnedOptimizer, NetworkLOpt, describe, fan_ins
from metatrain.learned_optimizers.deep_sets import DeepSetsLOpt
from metatrain.learned_optimizers.sgdm import LearnedSGDM
from metatrain.learned_optimizers.unf import UNFLOpt
from unf.space import WeightSpace

#: Every kind of learned optimizer, by name (the contract tests run over it).
LEARNED_OPTIMIZERS: dict[str, type[LearnedOptimizer]] = {cls.name: cls for cls in (UNFLOpt, DeepSetsLOpt, LearnedSGDM)}

#: Named sets of options of :class:`LearnedOptimizer` (``WorkerConfig.preset`` in configs):
#:
#: - ``"v1"``: this project's first version (every default).
#: - ``"paper"``: the paper's code (Zhou, Finn, Harrison 2024): three pointwise layers before the last layer.
#: - ``"sgd_scale"``: ``"paper"`` started at ``alpha = 1``, heavy-ball SGD at 0.1 (tuned SGDM's rate).
#: - ``"adam"``: ``"paper"`` with the second-moment features and the Adam base term, ``alpha`` at 0.01 and
#:   ``beta`` at 0.05 (``f`` then starts at a few percent of the update per tensor, as against the momentum base:
#:   ``python -m benchmarks.update_share``).
#: - ``"adam_mup"``: ``"adam"`` with the muP-style ``update_scale="fan_in"`` for transfer across widths.
#: - ``"nominal"``: ``"adam"``'s features over the ``"nominal"`` base: Adam with warm-up and cosine decay over
#:   the run, ``f``'s last layer at zero, so that it starts as Adam-cosine. Its ``initial_alpha`` is left to
#:   :meth:`metatrain.WorkerConfig.resolved`, which tunes it as the evaluator tunes its Adam reference.
#: - ``"nominal_adamw"``: ``"nominal"`` with a learned decoupled weight decay, starting at 1e-4 (AdamW-cosine).
PRESETS: dict[str, dict[str, Any]] = {
  "v1": {},
  "paper": {"pointwise_layers": 3},
  "sgd_scale": {"pointwise_layers": 3, "initial_alpha": 1.0},
  "adam": {"pointwise_layers": 3, "features": "adam", "base": "adam", "initial_alpha": 0.01, "initial_beta": 0.05},
  "adam_mup": {
    "pointwise_layers": 3,
    "features": "adam",
    "base": "adam",
    "initial_alpha": 0.01,
    "initial_beta": 0.05,
    "update_scale": "fan_in",
  },
  "nominal": {"pointwise_layers": 3, "features": "adam", "base": "nominal", "initial_beta": 0.1},
  "nominal_adamw": {
    "pointwise_layers": 3,
    "features": "adam",
    "base": "nominal",
    "initial_beta": 0.1,
    "initial_weight_decay": 1e-4,
  },
}

_OPTIONS = (
  "width",
  "pointwise_layers",
  "features",
  "base",
  "initial_alpha",
  "initial_beta",
  "update_scale",
  "reference_fan_in",
  "initial_weight_decay",
  "horizon",
  "fixed_axes",
)

#: What an option missing from a description meant when it was written (where that is not today's default).
_WRITTEN_BEFORE = {"unf": {"fixed_axes": "mix"}}


def option_names(cls: type[LearnedOptimizer]) -> tuple[str, ...]:
  """The keyword options that a kind of learned optimizer takes (every field but ``space``)."""
  return tuple(field.name for field in dataclasses.fields(cls) if field.name != "space")


def from_json(values: dict[str, Any]) -> LearnedOptimizer:
  """The learned optimizer that :meth:`LearnedOptimizer.to_json` wrote: ``{"kind", <options>, "space"}``.

  Options missing from ``values`` (descriptions written before they existed) take their defaults, except
  where the behaviour of that time was another value: a UNF described without ``fixed_axes`` mixed every
  fixed axis (``"mix"``; the same layer as ``"auto"`` on spaces without long fixed axes, such as the four
  tasks'). Options the kind does not take are dropped: an SGDM described before it lost ``f``'s options
  (``width``, ``pointwise_layers``, ``features``, ``initial_beta``) carried them with no effect.

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
    space = WeightSpace.from_json(values["space"])
    cls = LEARNED_OPTIMIZERS[kind]
    taken = set(option_names(cls))
    options = {**_WRITTEN_BEFORE.get(kind, {}), **{name: values[name] for name in _OPTIONS if name in values}}
    return cls(space, **{name: value for name, value in options.items() if name in taken})
  except (KeyError, TypeError) as error:
    raise ValueError(f"malformed description of a {kind!r} learned optimizer ({error!r}).") from error


__all__ = [
  "LEARNED_OPTIMIZERS",
  "PRESETS",
  "DeepSetsLOpt",
  "LearnedOptimizer",
  "LearnedSGDM",
  "NetworkLOpt",
  "UNFLOpt",
  "describe",
  "fan_ins",
  "features",
  "from_json",
  "option_names",
  "transforms",
]
