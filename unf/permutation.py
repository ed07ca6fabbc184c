"""Group elements of a weight space's symmetry group, and their action on pytrees.

A group element assigns one permutation to every label of a
:class:`~unf.WeightSpace`. It acts on a params pytree (or a feature pytree with
extra trailing channel axes) by permuting every axis carrying that label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unf.space import WeightSpace, path_str

Permutation = dict[str, jax.Array]


def sample_permutation(
  space: WeightSpace,
  key: jax.Array,
  sizes: Mapping[str, int],
  *,
  labels: Iterable[str] | None = None,
) -> Permutation:
  """Samples a uniformly random group element: one permutation per label.

  Args:
    space: the weight space.
    key: a PRNG key.
    sizes: the size of every label, e.g. ``space.validate(params)``.
    labels: the labels to permute (default: all). Others are left in place.

  Returns:
    A dict from label to an int permutation vector.
  """
  chosen = space.labels if labels is None else tuple(labels)
  unknown = sorted(set(chosen) - set(space.labels))
  if unknown:
    raise ValueError(f"labels {unknown} are not in the weight space; it has {list(space.labels)}.")
  missing = sorted(label for label in chosen if label not in sizes)
  if missing:
    raise ValueError(
      f"sample_permutation: no size for labels {missing}; pass sizes for every label, e.g. space.validate(params)."
    )
  keys = jax.random.split(key, max(len(chosen), 1))
  return {label: jax.random.permutation(k, sizes[label]) for label, k in zip(chosen, keys)}


def permute(space: WeightSpace, permutation: Mapping[str, jax.typing.ArrayLike], tree: Any) -> dict:
  """Applies a group element ``sigma`` to a pytree of the space.

  The result is ``sigma . tree``: every axis labelled ``l`` of every leaf is
  reindexed by ``permutation[l]``: ``(sigma . W)[i, j] = W[sigma_a^{-1}(i),
  sigma_b^{-1}(j)]`` is realised as ``W[perm_a][:, perm_b]``. Labels missing from ``permutation`` are left as
  they are; extra trailing axes (features) are untouched.

  Args:
    space: the weight space of ``tree``.
    permutation: per label, a permutation of its size (from :func:`sample_permutation`).
    tree: a pytree of the space, each leaf possibly with extra trailing axes.

  Returns:
    ``sigma . tree``, a nested dict shaped like the space.
  """
  unknown = sorted(set(permutation) - set(space.labels))
  if unknown:
    raise ValueError(f"permute: labels {unknown} are not in the weight space; it has {list(space.labels)}.")
  for name, vector in permutation.items():
    _check_permutation(name, vector)
  leaves = space.flatten(tree)
  out = []
  for path, axes, leaf in zip(space.paths, space.axes, leaves):
    if jnp.ndim(leaf) < len(axes):
      raise ValueError(f"leaf {path_str(path)!r} has rank {jnp.ndim(leaf)} < {len(axes)} axes of the space.")
    for axis, label in enumerate(axes):
      if label is not None and label in permutation:
        size, length = jnp.shape(leaf)[axis], jnp.shape(permutation[label])[0]
        if size != length:
          raise ValueError(
            f"permute: label {label!r} has a permutation of {length} entries, but leaf {path_str(path)!r} "
            f"axis {axis} has size {size}."
          )
        leaf = jnp.take(leaf, permutation[label], axis=axis)
    out.append(leaf)
  return space.unflatten(out)


def _check_permutation(label: str, p: jax.typing.ArrayLike) -> None:
  """A permutation is a vector of 0..n-1, each once (checked when concrete; under jit only its shape)."""
  if jnp.ndim(p) != 1:
    raise ValueError(f"permute: the permutation of label {label!r} must be a vector, got shape {jnp.shape(p)}.")
  if isinstance(p, jax.core.Tracer):
    return
  values = np.asarray(p)
  if not np.issubdtype(values.dtype, np.integer) or not np.array_equal(np.sort(values), np.arange(values.size)):
    raise ValueError(
      f"permute: the permutation of label {label!r} is not a permutation of 0..{values.size - 1}: {_describe(values)}."
    )


def _describe(values: np.ndarray) -> str:
  if not np.issubdtype(values.dtype, np.integer):
    return f"its dtype is {values.dtype}, not an integer"
  out_of_range = values[(values < 0) | (values >= values.size)]
  if out_of_range.size:
    return f"{int(out_of_range[0])} is out of range"
  unique, counts = np.unique(values, return_counts=True)
  return f"{int(unique[counts > 1][0])} appears {int(counts.max())} times"


def inverse(permutation: Mapping[str, jax.Array]) -> Permutation:
  """The inverse group element, which undoes :func:`permute`.

  ``permute(space, inverse(sigma), permute(space, sigma, W)) = W``.

  Args:
    permutation: one permutation (an index vector) per label.

  Returns:
    Per label, the inverse permutation (its ``argsort``).
  """
  return {label: jnp.argsort(p) for label, p in permutation.items()}
