"""Gradient estimators of the meta-loss: pure state machines over an inner problem.

Every estimator derives from :class:`Estimator` and is registered in
:data:`ESTIMATORS` under its ``name``; the contract tests run over this
registry, so a new estimator is tested as soon as it is registered here.

- :class:`PES`: persistent ES, unbiased for the full-horizon meta-loss, from truncations.
- :class:`TruncatedES`: antithetic ES per truncation (short-horizon bias).
- :class:`FullES`: antithetic ES over whole runs.
- :class:`NoiseReuseES`: one perturbation per pair kept for a whole run, unbiased from truncations.
- :class:`TruncatedGradient`: backpropagation through each truncation (short-horizon bias).
- :class:`HybridES`: truncated ES and reparameterization gradients weighted by inverse variance.
"""

from __future__ import annotations

from typing import Any

from metatrain.estimators.common import Estimator, TruncatedEstimator
from metatrain.estimators.full_es import FullES
from metatrain.estimators.hybrid_es import HybridES
from metatrain.estimators.noise_reuse_es import NoiseReuseES
from metatrain.estimators.pes import PES
from metatrain.estimators.truncated_es import TruncatedES
from metatrain.estimators.truncated_gradient import TruncatedGradient

#: Every estimator, by name (the contract tests run over it).
ESTIMATORS: dict[str, type[Estimator]] = {
  cls.name: cls for cls in (PES, TruncatedES, FullES, NoiseReuseES, TruncatedGradient, HybridES)
}


def from_json(values: dict[str, Any]) -> Estimator:
  """The estimator that :meth:`Estimator.to_json` wrote: ``{"name": "pes", "num_pairs": 8, ...}``.

  Args:
    values: the description, as read from JSON.

  Returns:
    An estimator equal to the one described.

  Raises:
    ValueError: an unknown name, or fields the estimator does not have.

  Example:
    >>> from_json(PES(num_pairs=2).to_json()) == PES(num_pairs=2)
    True
  """
  values = dict(values)
  name = values.pop("name", None)
  if name not in ESTIMATORS:
    raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}.")
  try:
    return ESTIMATORS[name](**values)
  except TypeError as error:
    raise ValueError(f"estimator {name!r} does not take these fields ({error}).") from error


__all__ = [
  "ESTIMATORS",
  "PES",
  "Estimator",
  "FullES",
  "HybridES",
  "NoiseReuseES",
  "TruncatedES",
  "TruncatedEstimator",
  "TruncatedGradient",
  "from_json",
]
