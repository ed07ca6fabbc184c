"""A brute-force oracle for equivariant linear maps between permutation representations (plain numpy).

Independent of ``unf.basis``: it only reads a weight space's ``axes``, ``labels`` and ``fixed_shape``.
The group is the product over labels of symmetric groups S_n, acting on the flattened feature space
of a weight space (every leaf with one trailing feature axis, concatenated in ``space.paths`` order)
by permuting every axis that carries a label. The oracle computes

* the dimension of the equivariant linear maps ``M`` with ``R_out(g) M = M R_in(g)``, as the nullity
  of the stacked, vectorised constraints over a generating set of the group (per label: the
  transposition (0 1) and the n-cycle), or as the number of orbits of the group on pairs of
  coordinates (the orbit indicator matrices are a basis of the commutant);
* the dimension of the invariant vectors (equivariant biases), ``R(g) b = b``;

and the closed forms they must agree with: ``dim Hom_G = sum over leaf pairs of prod over labels of
sum_{k <= n} S(m, k)``, the set partitions of the ``m`` axes of a label into at most ``n`` blocks
(``Bell(m)`` once ``n >= m``), times channels and fixed coordinates.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

if TYPE_CHECKING:
  from unf import WeightSpace

# --- independent closed forms -------------------------------------------------


@functools.cache
def stirling2(m: int, k: int) -> int:
  """Stirling number of the second kind: partitions of m elements into exactly k blocks."""
  if m == 0 and k == 0:
    return 1
  if m == 0 or k == 0:
    return 0
  return k * stirling2(m - 1, k) + stirling2(m - 1, k - 1)


def bell(m: int) -> int:
  """Bell number as a sum of Stirling numbers: partitions of m elements into any number of blocks.

  Independent of ``unf.basis.bell``, which uses the Bell triangle.
  """
  return sum(stirling2(m, k) for k in range(m + 1))


def partitions_at_most(m: int, n: int) -> int:
  """Set partitions of m elements into at most n blocks: the orbits of S_n on [n]^m."""
  return sum(stirling2(m, k) for k in range(min(m, n) + 1))


def label_counts(axes) -> dict[str, int]:
  counts: dict[str, int] = {}
  for label in axes:
    if label is not None:
      counts[label] = counts.get(label, 0) + 1
  return counts


def closed_form_count_terms(space_in: WeightSpace, space_out: WeightSpace) -> int:
  """Basis terms per channel pair: sum over leaf pairs, product over labels, of Bell(#out axes + #in axes)."""
  total = 0
  for axes_out in space_out.axes:
    for axes_in in space_in.axes:
      counts_out, counts_in = label_counts(axes_out), label_counts(axes_in)
      labels = set(counts_out) | set(counts_in)
      total += math.prod(bell(counts_out.get(label, 0) + counts_in.get(label, 0)) for label in labels)
  return total


def _fixed_volume(space: WeightSpace, index: int) -> int:
  return math.prod(space.fixed_shape(index))


def closed_form_map_dim(space_in, space_out, sizes, in_features, out_features) -> int:
  """dim of equivariant linear maps for any label sizes (orbits of S_n on tuples are set partitions)."""
  total = 0
  for index_out, axes_out in enumerate(space_out.axes):
    for index_in, axes_in in enumerate(space_in.axes):
      counts_out, counts_in = label_counts(axes_out), label_counts(axes_in)
      labels = set(counts_out) | set(counts_in)
      terms = math.prod(
        partitions_at_most(counts_out.get(label, 0) + counts_in.get(label, 0), sizes[label]) for label in labels
      )
      total += terms * _fixed_volume(space_out, index_out) * _fixed_volume(space_in, index_in)
  return total * in_features * out_features


def closed_form_invariant_dim(space, sizes, features) -> int:
  """dim of invariant vectors of a space (fixed points of its permutation representation)."""
  total = 0
  for index, axes in enumerate(space.axes):
    terms = math.prod(partitions_at_most(count, sizes[label]) for label, count in label_counts(axes).items())
    total += terms * _fixed_volume(space, index)
  return total * features


# --- brute-force oracle -------------------------------------------------------


def leaf_shapes(space: WeightSpace, sizes, features: int) -> list[tuple[int, ...]]:
  """Per leaf in ``space.paths`` order, its shape with one trailing feature axis."""
  shapes = []
  for index, axes in enumerate(space.axes):
    fixed = iter(space.fixed_shape(index))
    shapes.append(tuple(sizes[label] if label is not None else next(fixed) for label in axes) + (features,))
  return shapes


def flat_dim(space, sizes, features) -> int:
  return sum(math.prod(shape) for shape in leaf_shapes(space, sizes, features))


def generators(labels, sizes) -> list[dict[str, np.ndarray]]:
  """A generating set of prod_l S_{n_l}: per label, the transposition (0 1) and the n-cycle."""
  gens = []
  for label in labels:
    n = sizes[label]
    if n < 2:
      continue
    swap = np.arange(n)
    swap[[0, 1]] = [1, 0]
    gens.append({label: swap})
    if n > 2:
      gens.append({label: np.roll(np.arange(n), -1)})
  return gens


def flat_permutation(space, sizes, features, element) -> np.ndarray:
  """Index vector ``p`` of the group element on the flattened space: ``(g . x)[i] = x[p[i]]``.

  Labels missing from ``element`` are left in place; the trailing feature axis is never permuted.
  """
  pieces, offset = [], 0
  for axes, shape in zip(space.axes, leaf_shapes(space, sizes, features)):
    index = np.arange(math.prod(shape)).reshape(shape)
    for axis, label in enumerate(axes):
      if label is not None and label in element:
        index = np.take(index, element[label], axis=axis)
    pieces.append(index.ravel() + offset)
    offset += math.prod(shape)
  return np.concatenate(pieces) if pieces else np.zeros(0, dtype=int)


def permutation_matrix(p: np.ndarray) -> np.ndarray:
  """The matrix ``P`` with ``P @ x == x[p]``."""
  return np.eye(len(p))[p]


def group_labels(space_in, space_out) -> tuple[str, ...]:
  return tuple(sorted(set(space_in.labels) | set(space_out.labels)))


def representation(space_in, space_out, sizes, in_features, out_features):
  """Pairs (p_in, p_out) of flat index permutations, one per generator of the group."""
  return [
    (
      flat_permutation(space_in, sizes, in_features, element),
      flat_permutation(space_out, sizes, out_features, element),
    )
    for element in generators(group_labels(space_in, space_out), sizes)
  ]


def nullity(constraints: list[np.ndarray], n_columns: int, *, rtol: float = 1e-9) -> int:
  """Nullity of the stacked constraint matrices ``C_g``, by a rank with a relative tolerance.

  The squared singular values of the stack are the eigenvalues of ``sum_g C_g^T C_g``, which is much
  cheaper to diagonalise than the tall stack is to decompose; the tolerance applies to those.
  """
  if not constraints:
    return n_columns
  eigenvalues = np.linalg.eigvalsh(sum(c.T @ c for c in constraints))
  return n_columns - int(np.sum(eigenvalues > rtol * max(eigenvalues.max(initial=0.0), 1.0)))


MAX_KRONECKER_COLUMNS = 3000


def equivariant_map_dim(space_in, space_out, sizes, in_features, out_features, *, method: str = "nullity") -> int:
  """dim{M : R_out(g) M = M R_in(g) for all g}, by brute force.

  Args:
    method: "nullity": nullity of the stacked Kronecker constraints
      ``(R_out(g) (x) I - I (x) R_in(g)^T) vec(M) = 0`` (row-major vec), a numerical rank with a
      relative tolerance (dense: at most ``MAX_KRONECKER_COLUMNS`` unknowns); "orbits": the number of
      orbits of the group on pairs (output coordinate, input coordinate), which is the dimension of the
      commutant of two permutation representations (a basis: the orbit indicator matrices).
  """
  dim_in = flat_dim(space_in, sizes, in_features)
  dim_out = flat_dim(space_out, sizes, out_features)
  reps = representation(space_in, space_out, sizes, in_features, out_features)
  if method == "orbits":
    images = [(p_out[:, None] * dim_in + p_in[None, :]).ravel() for p_in, p_out in reps]
    return orbit_count(dim_out * dim_in, images)
  if method != "nullity":
    raise ValueError(f"unknown method {method!r}")
  n_columns = dim_out * dim_in
  if n_columns > MAX_KRONECKER_COLUMNS:
    raise ValueError(f"{n_columns} unknowns is too many for the dense Kronecker oracle: use method='orbits'.")
  eye_in, eye_out = np.eye(dim_in), np.eye(dim_out)
  constraints = [
    np.kron(permutation_matrix(p_out), eye_in) - np.kron(eye_out, permutation_matrix(p_in).T) for p_in, p_out in reps
  ]
  return nullity(constraints, n_columns)


def invariant_dim(space, sizes, features, *, method: str = "nullity") -> int:
  """dim{b : R(g) b = b for all g}: the equivariant biases of ``space``."""
  dim = flat_dim(space, sizes, features)
  perms = [flat_permutation(space, sizes, features, element) for element in generators(space.labels, sizes)]
  if method == "orbits":
    return orbit_count(dim, perms)
  if method != "nullity":
    raise ValueError(f"unknown method {method!r}")
  return nullity([permutation_matrix(p) - np.eye(dim) for p in perms], dim)


def orbit_count(size: int, images: list[np.ndarray]) -> int:
  """Orbits of the group generated by the index maps ``k -> image[k]``: components of their graph."""
  if size == 0:
    return 0
  rows = np.concatenate([np.arange(size)] * len(images)) if images else np.zeros(0, dtype=int)
  cols = np.concatenate(images) if images else np.zeros(0, dtype=int)
  graph = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
  return scipy.sparse.csgraph.connected_components(graph, directed=False)[0]


def map_residual(matrix: np.ndarray, reps) -> float:
  """max over generators of |R_out M - M R_in|; with R = I[p], ``M R_in = M[:, argsort(p_in)]``."""
  residual = 0.0
  for p_in, p_out in reps:
    residual = max(residual, float(np.max(np.abs(matrix[p_out] - matrix[:, np.argsort(p_in)]), initial=0.0)))
  return residual


def bias_residual(vector: np.ndarray, reps) -> float:
  """max over generators of |R_out b - b|."""
  return max((float(np.max(np.abs(vector[p_out] - vector), initial=0.0)) for _, p_out in reps), default=0.0)


def span_rank(vectors: np.ndarray, *, rtol: float = 1e-8) -> tuple[int, np.ndarray]:
  """Numerical rank of the rows of ``vectors`` and its singular values."""
  singular = np.linalg.svd(vectors.reshape(vectors.shape[0], -1), compute_uv=False)
  if singular.size == 0 or singular[0] == 0:
    return 0, singular
  return int(np.sum(singular > rtol * singular[0])), singular
