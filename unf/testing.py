"""Test helpers: random feature pytrees and checks of equivariance and invariance.

One reusable check applied to every layer and model, as e3nn-jax's
``e3nn_jax.utils.assert_equivariant``: draw random group elements ``sigma``
(one permutation per label), act on the input, and compare
``fn(sigma . x)`` with ``sigma . fn(x)`` (:func:`assert_equivariant`) or with
``fn(x)`` (:func:`assert_invariant`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unf.permutation import permute
from unf.space import WeightSpace
from unf.symmetry import _random_element

__all__ = ["assert_equivariant", "assert_invariant", "random_features"]


def random_features(
  space: WeightSpace, sizes: Mapping[str, int], features: int, key: jax.Array, *, dtype: Any = None
) -> dict:
  """A random normal pytree of ``space`` with a trailing feature axis.

  Args:
    space: the weight space; its fixed axes need known sizes.
    sizes: the size of every label.
    features: the size of the trailing feature axis.
    key: a PRNG key.
    dtype: dtype of the leaves (default: JAX's default float, float64 under
      ``jax_enable_x64``).

  Returns:
    A nested dict shaped like ``space``: leaf ``i`` has shape ``(axis sizes..., features)``.

  Example:
    >>> import jax, unf
    >>> from unf.testing import random_features
    >>> space = unf.WeightSpace({"w": ("in", "hidden"), "b": ("hidden",)})
    >>> random_features(space, {"in": 2, "hidden": 3}, 4, jax.random.key(0))["w"].shape
    (2, 3, 4)
  """
  dtype = jnp.result_type(float) if dtype is None else dtype
  leaves = []
  for index, (axes, k) in enumerate(zip(space.axes, jax.random.split(key, len(space)))):
    fixed = iter(space.fixed_shape(index))
    shape = tuple(sizes[a] if a is not None else next(fixed) for a in axes)
    leaves.append(jax.random.normal(k, (*shape, features), dtype))
  return space.unflatten(leaves)


def _default_atol(leaves: list[Any]) -> float:
  """A tolerance for the least precise output dtype: 1e-9 (float64), 1e-4 (float32), 1e-2 (16 bits)."""
  dtypes = [jnp.result_type(leaf) for leaf in leaves]
  bits = min((jnp.finfo(d).bits for d in dtypes if jnp.issubdtype(d, jnp.inexact)), default=64)
  return 1e-9 if bits >= 64 else 1e-4 if bits >= 32 else 1e-2


def _check(
  fn: Callable[[Any], Any],
  space: WeightSpace,
  key: jax.Array,
  x: Any,
  expected: Callable[[Mapping[str, jax.Array], Any], Any],
  *,
  num_trials: int,
  atol: float | None,
  what: str,
) -> float:
  """The shared core: compares ``fn(sigma . x)`` with ``expected(sigma, fn(x))`` for random ``sigma``."""
  if num_trials < 1:
    raise ValueError(f"num_trials must be at least 1, got {num_trials}.")
  sizes = space.validate(x, trailing=1)
  y = fn(x)
  atol = _default_atol(jax.tree.leaves(y)) if atol is None else atol
  worst, worst_at = 0.0, "no output"
  for trial, k in enumerate(jax.random.split(key, num_trials)):
    # No label of size 2 or more draws the identity, so a small broken label is caught.
    sigma = {label: jnp.asarray(p) for label, p in _random_element(space, k, sizes).items()}
    want, got = expected(sigma, y), fn(permute(space, sigma, x))
    # jaxlib ships no stub for PyTreeDef, so mypy does not see its __eq__; comparing treedefs is what checks
    # every node (containers, None, custom nodes' aux data), which no rewrite over leaves or shapes matches.
    if jax.tree.structure(want) != jax.tree.structure(got):  # type: ignore[operator]
      raise AssertionError(
        f"not {what}: the output's structure changed from {jax.tree.structure(want)} to {jax.tree.structure(got)}"
      )
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got)):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      if a.shape != b.shape:
        raise AssertionError(f"not {what}: output {jax.tree_util.keystr(path)} has shape {b.shape}, not {a.shape}")
      if a.size == 0:
        continue
      scale = max(1.0, float(np.max(np.abs(a))))
      deviation = float(np.max(np.abs(a - b))) / scale
      deviation = deviation if np.isfinite(deviation) else float("inf")  # max() would skip a NaN
      if deviation > worst:
        worst, worst_at = deviation, f"output {jax.tree_util.keystr(path) or '<root>'} in trial {trial}"
  if not worst <= atol:  # raised, not asserted: python -O must not skip the check
    raise AssertionError(f"not {what}: worst relative deviation {worst:.3g} > atol {atol:.3g}, at {worst_at}")
  return worst


def assert_equivariant(
  fn: Callable[[Any], Any],
  space: WeightSpace,
  key: jax.Array,
  x: Any,
  *,
  space_out: WeightSpace | None = None,
  num_trials: int = 2,
  atol: float | None = None,
) -> float:
  """Checks that ``fn`` is equivariant, on random group elements.

  The identity checked is ``fn(sigma . x) = sigma . fn(x)``. Each ``sigma``
  draws one permutation per label of ``space`` (none the identity where the
  label has two entries or more) and acts on the output through the labels
  ``space_out`` shares with ``space``. Deviations are relative to
  ``max(1, max |sigma . fn(x)|)`` per output leaf.

  Args:
    fn: maps a pytree of ``space`` (with a trailing feature axis) to one of ``space_out``.
    space: the input weight space.
    key: a PRNG key for the group elements.
    x: an input pytree of ``space``, each leaf with one trailing feature axis.
    space_out: the output weight space (default: ``space``).
    num_trials: the number of group elements tried.
    atol: the largest relative deviation allowed (default: by output dtype,
      1e-9 for float64, 1e-4 for float32, 1e-2 for 16-bit floats).

  Returns:
    The worst relative deviation seen.

  Raises:
    AssertionError: naming the worst deviation and where it occurred, if it exceeds ``atol``.

  Example:
    >>> import jax, unf
    >>> from unf.testing import assert_equivariant, random_features
    >>> space = unf.WeightSpace({"w": ("in", "hidden")})
    >>> x = random_features(space, {"in": 3, "hidden": 4}, 1, jax.random.key(0))
    >>> assert_equivariant(lambda t: {"w": t["w"] ** 2}, space, jax.random.key(1), x)
    0.0
  """
  space_out = space if space_out is None else space_out

  def act(sigma, y):
    return permute(space_out, {a: p for a, p in sigma.items() if a in space_out.labels}, y)

  return _check(fn, space, key, x, act, num_trials=num_trials, atol=atol, what="equivariant")


def assert_invariant(
  fn: Callable[[Any], Any],
  space: WeightSpace,
  key: jax.Array,
  x: Any,
  *,
  num_trials: int = 2,
  atol: float | None = None,
) -> float:
  """Checks that ``fn`` is invariant, on random group elements.

  The identity checked is ``fn(sigma . x) = fn(x)``, deviations relative as in
  :func:`assert_equivariant`.

  Args:
    fn: maps a pytree of ``space`` (with a trailing feature axis) to any pytree of arrays.
    space: the input weight space.
    key: a PRNG key for the group elements.
    x: an input pytree of ``space``, each leaf with one trailing feature axis.
    num_trials: the number of group elements tried.
    atol: the largest relative deviation allowed (default: by output dtype, as
      in :func:`assert_equivariant`).

  Returns:
    The worst relative deviation seen.

  Raises:
    AssertionError: naming the worst deviation and where it occurred, if it exceeds ``atol``.

  Example:
    >>> import jax, jax.numpy as jnp, unf
    >>> from unf.testing import assert_invariant, random_features
    >>> space = unf.WeightSpace({"w": ("in", "hidden")})
    >>> x = random_features(space, {"in": 3, "hidden": 4}, 1, jax.random.key(0))
    >>> assert_invariant(lambda t: jnp.sum(t["w"]), space, jax.random.key(1), x) < 1e-5
    True
  """
  return _check(fn, space, key, x, lambda sigma, y: y, num_trials=num_trials, atol=atol, what="invariant")
