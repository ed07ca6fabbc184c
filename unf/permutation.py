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
  leaves = space.flatten(tree)
  out = []
  for path, axes, leaf in zip(space.paths, space.axes, leaves):
    if jnp.ndim(leaf) < len(axes):
      raise ValueError(f"leaf {path_str(path)!r} has rank {jnp.ndim(leaf)} < {len(axes)} axes of the space.")
    for axis, label in enumerate(axes):
      if label is not None and label in permutation:
        leaf = jnp.take(leaf, permutation[label], axis=axis)
    out.append(leaf)
  return space.unflatten(out)


def inverse(permutation: Mapping[str, jax.Array]) -> Permutation:
  """The inverse group element, which undoes :func:`permute`.

  ``permute(space, inverse(sigma), permute(space, sigma, W)) = W``.

  Args:
    permutation: one permutation (an index vector) per label.

  Returns:
    Per label, the inverse permutation (its ``argsort``).
  """
  return {label: jnp.argsort(p) for label, p in permutation.items()}
