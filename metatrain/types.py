"""Type aliases shared by the packages of :mod:`metatrain` (one alias per concept)."""

from __future__ import annotations

from typing import Any, TypeAlias

PyTree: TypeAlias = Any
"""A nested structure of arrays (dicts, lists, tuples, NamedTuples) that ``jax.tree`` maps over."""

Theta: TypeAlias = PyTree
"""The meta-parameters, the pytree of arrays that meta-training optimizes (a learned optimizer's ``init_meta()``)."""

Metrics: TypeAlias = dict[str, Any]
"""The named scalars of one step (arrays inside ``jit``, floats once on the host)."""
