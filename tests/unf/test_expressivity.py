"""Maximal expressivity of the equivariant layers, checked against an independent brute-force oracle.

The layer of Zhou, Finn and Harrison (2024), "Universal Neural Functionals", must represent every
equivariant linear map between two weight spaces and every equivariant bias: the maps and biases it
realises must (a) be equivariant and (b) span the spaces whose dimensions ``oracle`` computes by brute
force (and checks against closed forms). The oracle is validated here first, on known cases.
"""

from __future__ import annotations

import functools
import itertools
import math

import hypothesis.strategies as st
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import unf
from tests.unf.oracle import (
  MAX_KRONECKER_COLUMNS,
  bell,
  bias_residual,
  closed_form_count_terms,
  closed_form_invariant_dim,
  closed_form_map_dim,
  equivariant_map_dim,
  flat_dim,
  flat_permutation,
  generators,
  invariant_dim,
  leaf_shapes,
  map_residual,
  partitions_at_most,
  permutation_matrix,
  representation,
  span_rank,
)
from tests.unf.spaces import bound

MLP = {"w1": ("in", "h"), "b1": ("h",), "w2": ("h", "out"), "b2": ("out",)}
RNN = {"wh": ("h", "h"), "bh": ("h",), "wx": ("in", "h")}

# --- the oracle against known closed forms -------------------------------------


def test_bell_numbers():
  expected = [1, 1, 2, 5, 15, 52, 203, 877, 4140]  # OEIS A000110
  assert [bell(m) for m in range(9)] == expected
  assert [unf.basis.bell(m) for m in range(9)] == expected
  assert all(partitions_at_most(m, m) == bell(m) for m in range(8))
  assert [partitions_at_most(4, n) for n in range(5)] == [0, 1, 8, 14, 15]


@pytest.mark.parametrize("method", ["nullity", "orbits"])
def test_oracle_deep_sets(method):
  space = bound({"x": ("a",)})
  assert equivariant_map_dim(space, space, {"a": 3}, 1, 1, method=method) == 2
  assert invariant_dim(space, {"a": 3}, 1, method=method) == 1


@pytest.mark.parametrize("method", ["nullity", "orbits"])
@pytest.mark.parametrize("n", [4, 5])
def test_oracle_tied_matrix(method, n):
  space = bound({"w": ("a", "a")})
  assert equivariant_map_dim(space, space, {"a": n}, 1, 1, method=method) == bell(4) == 15
  assert invariant_dim(space, {"a": n}, 1, method=method) == bell(2)


@pytest.mark.parametrize("method", ["nullity", "orbits"])
@pytest.mark.parametrize(("n", "expected"), [(1, 1), (2, 1 + 7), (3, 1 + 7 + 6)])
def test_oracle_tied_matrix_small_n(method, n, expected):
  space = bound({"w": ("a", "a")})
  assert equivariant_map_dim(space, space, {"a": n}, 1, 1, method=method) == expected


@pytest.mark.parametrize("method", ["nullity", "orbits"])
def test_oracle_two_labels(method):
  space = bound({"w": ("a", "b")})
  assert equivariant_map_dim(space, space, {"a": 2, "b": 3}, 1, 1, method=method) == bell(2) ** 2 == 4


@pytest.mark.parametrize("method", ["nullity", "orbits"])
def test_oracle_fixed_axis_and_features(method):
  plain, fixed = bound({"w": ("a",)}), bound({"w": (None, "a")}, 2)
  sizes = {"a": 3}
  assert equivariant_map_dim(fixed, fixed, sizes, 1, 1, method=method) == 4 * 2
  assert equivariant_map_dim(plain, plain, sizes, 2, 3, method=method) == 6 * 2
  assert invariant_dim(fixed, sizes, 1, method=method) == 2 * 1
  assert invariant_dim(plain, sizes, 3, method=method) == 3


ORACLE_SPACES = [
  (MLP, {"in": 2, "h": 3, "out": 2}),
  (RNN, {"h": 3, "in": 2}),
  ({"conv": (None, "a", None), "s": ()}, {"a": 3}),
  ({"t": ("a", "b", "a")}, {"a": 2, "b": 2}),
  ({"t": ("a", "a", "a")}, {"a": 2}),
]


@pytest.mark.parametrize(("spec", "sizes"), ORACLE_SPACES)
def test_oracle_methods_agree_with_closed_form(spec, sizes):
  space = bound(spec)
  dims = {
    method: (
      equivariant_map_dim(space, space, sizes, 1, 2, method=method),
      invariant_dim(space, sizes, 2, method=method),
    )
    for method in ("nullity", "orbits")
  }
  expected = (closed_form_map_dim(space, space, sizes, 1, 2), closed_form_invariant_dim(space, sizes, 2))
  assert dims["nullity"] == dims["orbits"] == expected


def test_oracle_negative_control():
  """A random dense matrix fails the equivariance check; its average over the whole group passes."""
  space = bound({"w": ("a", "b"), "v": ("b",)})
  sizes = {"a": 3, "b": 2}
  reps = representation(space, space, sizes, 1, 1)
  dim = flat_dim(space, sizes, 1)
  rng = np.random.default_rng(0)
  dense = rng.normal(size=(dim, dim))
  assert map_residual(dense, reps) > 0.1
  assert bias_residual(rng.normal(size=dim), reps) > 0.1
  # Averaging P^T M P over the whole (small) group projects onto the commutant.
  elements = [
    dict(zip(("a", "b"), perms))
    for perms in itertools.product(itertools.permutations(range(3)), itertools.permutations(range(2)))
  ]
  flats = [
    permutation_matrix(flat_permutation(space, sizes, 1, {k: np.array(v) for k, v in e.items()})) for e in elements
  ]
  average = sum(p.T @ dense @ p for p in flats) / len(flats)
  assert map_residual(average, reps) < 1e-12
  assert np.max(np.abs(average)) > 1e-3
  # Breaking it in one entry is caught.
  average[0, 1] += 1e-3
  assert map_residual(average, reps) > 1e-4


# --- the layer against the oracle -----------------------------------------------


def _flatten_tree(space, tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(leaf) for leaf in space.flatten(tree)])


def _unflatten_vector(space, sizes, features, vector) -> dict:
  leaves, offset = [], 0
  for shape in leaf_shapes(space, sizes, features):
    leaves.append(vector[offset : offset + math.prod(shape)].reshape(shape))
    offset += math.prod(shape)
  return space.unflatten(leaves)


def parameter_template(key, space_in, space_out, in_features, out_features):
  """Zeros shaped like ``unf.linear.init``'s params (traced, not run: the values are redrawn anyway)."""
  shapes = jax.eval_shape(
    lambda k: unf.linear.init(k, space_in, space_out, in_features, out_features, dtype=jnp.float64), key
  )
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def represented_affine_maps(apply_fn, template, space_in, space_out, sizes, in_features, out_features, count, key):
  """The affine maps ``x -> M x + b`` the layer realises at ``count`` random parameter vectors.

  Every scalar parameter is drawn N(0, 1) (not from the initialiser, which may zero some), so the
  samples span the image of the parameters. ``b`` is the output at 0 and column ``j`` of ``M`` the
  output at the unit vector ``e_j`` minus ``b``; the layer must then equal ``M x + b`` at a random
  ``x``, so the maps and biases describe it completely.

  Returns:
    ``(maps, biases)`` of shapes (count, dim_out, dim_in) and (count, dim_out).
  """
  flat, unravel = jax.flatten_util.ravel_pytree(template)
  dim_in = flat_dim(space_in, sizes, in_features)
  key_params, key_x = jax.random.split(key)
  parameter_vectors = jax.random.normal(key_params, (count, flat.size), flat.dtype)
  x = jax.random.normal(key_x, (dim_in,), flat.dtype)
  probes = jnp.concatenate([jnp.zeros((1, dim_in), flat.dtype), jnp.eye(dim_in, dtype=flat.dtype), x[None]])

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  @functools.partial(jax.vmap, in_axes=(None, 0), out_axes=-1)
  def layer(parameter_vector, x_vector):
    x_tree = _unflatten_vector(space_in, sizes, in_features, x_vector)
    return _flatten_tree(space_out, apply_fn(unravel(parameter_vector), x_tree))

  outputs = np.asarray(layer(parameter_vectors, probes))  # (count, dim_out, dim_in + 2)
  biases = outputs[..., 0]
  maps = outputs[..., 1:-1] - biases[..., None]
  np.testing.assert_allclose(outputs[..., -1], maps @ np.asarray(x) + biases, rtol=1e-9, atol=1e-9)
  return maps, biases


def oracle_dims(space_in, space_out, sizes, in_features, out_features) -> tuple[int, int]:
  """(equivariant map dim, equivariant bias dim) by brute force, cross-checked with the closed forms."""
  unknowns = flat_dim(space_in, sizes, in_features) * flat_dim(space_out, sizes, out_features)
  method = "nullity" if unknowns <= MAX_KRONECKER_COLUMNS else "orbits"
  maps = equivariant_map_dim(space_in, space_out, sizes, in_features, out_features, method=method)
  biases = invariant_dim(space_out, sizes, out_features)
  assert maps == closed_form_map_dim(space_in, space_out, sizes, in_features, out_features)
  assert biases == closed_form_invariant_dim(space_out, sizes, out_features)
  return maps, biases


def assert_maximally_expressive(apply_fn, template, space_in, space_out, sizes, in_features, out_features, key):
  """(a) every realised map and bias is equivariant; (b) they span all equivariant maps and biases."""
  expected_maps, expected_biases = oracle_dims(space_in, space_out, sizes, in_features, out_features)
  count = max(expected_maps, expected_biases) + 4
  maps, biases = represented_affine_maps(
    apply_fn, template, space_in, space_out, sizes, in_features, out_features, count, key
  )
  reps = representation(space_in, space_out, sizes, in_features, out_features)
  scale = max(1.0, float(np.max(np.abs(maps), initial=0.0)), float(np.max(np.abs(biases), initial=0.0)))
  worst_map = max(map_residual(m, reps) for m in maps)
  worst_bias = max(bias_residual(b, reps) for b in biases)
  assert worst_map <= 1e-10 * scale, f"a realised linear map is not equivariant: |R_out M - M R_in| = {worst_map:.3g}"
  assert worst_bias <= 1e-10 * scale, f"a realised bias is not invariant: |R_out b - b| = {worst_bias:.3g}"
  map_rank, map_singular = span_rank(maps)
  bias_rank, bias_singular = span_rank(biases)
  assert map_rank == expected_maps, (
    f"the layer's linear maps span {map_rank} dimensions, the equivariant maps {expected_maps} "
    f"(singular values around the gap: {map_singular[max(0, min(map_rank, expected_maps) - 2) :][:4]})"
  )
  assert bias_rank == expected_biases, (
    f"the layer's biases span {bias_rank} dimensions, the equivariant biases {expected_biases}"
  )


# (id, spec_in, spec_out, label sizes, in_features, out_features, fixed sizes in and out). Unless
# named "small-n", every label size is at least the number of axes of that label in any (output leaf,
# input leaf) pair, so the basis terms are linearly independent; the small-n cases have dependent
# terms whose span must still be every equivariant map.
EXPRESSIVITY_CASES = [
  ("deep-sets", {"x": ("a",)}, {"x": ("a",)}, {"a": 3}, 1, 1, (2, 2)),
  ("mlp", MLP, MLP, {"in": 2, "h": 3, "out": 2}, 2, 1, (2, 2)),
  ("rnn", RNN, RNN, {"h": 4, "in": 2}, 1, 1, (2, 2)),
  ("fixed-axes", {"conv": (None, "a"), "b": ("a",)}, {"conv": ("a", None)}, {"a": 2}, 2, 1, (2, 3)),
  ("rank-0", {"s": (), "v": ("a",)}, {"s": (), "v": ("a",)}, {"a": 2}, 2, 3, (2, 2)),
  ("tied-3-in", {"t": ("a", "a", "a"), "v": ("a",)}, {"v": ("a",), "s": ()}, {"a": 4}, 1, 1, (2, 2)),
  ("tied-3-out", {"v": ("a",)}, {"t": ("a", "a", "a")}, {"a": 4}, 1, 1, (2, 2)),
  ("two-labels-tied", {"w": ("a", "b", "a")}, {"u": ("b", "a")}, {"a": 3, "b": 2}, 1, 1, (2, 2)),
  (
    "nested-and-fixed",
    {"l": {"k": ("a", None, "b")}, "s": ()},
    {"l": {"k": ("b", "a")}},
    {"a": 2, "b": 2},
    1,
    1,
    (3, 3),
  ),
  ("small-n-rnn", RNN, RNN, {"h": 2, "in": 2}, 1, 1, (2, 2)),
  ("small-n-tied-3", {"t": ("a", "a", "a")}, {"t": ("a", "a", "a")}, {"a": 2}, 1, 1, (2, 2)),
  ("small-n-tied-3-n3", {"t": ("a", "a", "a")}, {"t": ("a", "a", "a")}, {"a": 3}, 1, 1, (2, 2)),
]


@pytest.mark.parametrize(
  ("spec_in", "spec_out", "sizes", "in_features", "out_features", "fixed"),
  [case[1:] for case in EXPRESSIVITY_CASES],
  ids=[case[0] for case in EXPRESSIVITY_CASES],
)
def test_linear_is_maximally_expressive(key, spec_in, spec_out, sizes, in_features, out_features, fixed):
  space_in, space_out = bound(spec_in, fixed[0]), bound(spec_out, fixed[1])
  template = parameter_template(key, space_in, space_out, in_features, out_features)
  apply_fn = lambda params, x: unf.linear.apply(params, x, space_in, space_out)
  assert_maximally_expressive(apply_fn, template, space_in, space_out, sizes, in_features, out_features, key)


def test_linear_is_maximally_expressive_new_output_label(key):
  """Output labels the input lacks: their sizes come from ``out_sizes``; the output is constant along them."""
  space_in, space_out = bound({"x": ("a",)}), bound({"y": ("a", "b"), "z": ("b",)})
  sizes = {"a": 2, "b": 3}
  template = parameter_template(key, space_in, space_out, 2, 1)
  apply_fn = lambda params, x: unf.linear.apply(params, x, space_in, space_out, out_sizes={"b": 3})
  assert_maximally_expressive(apply_fn, template, space_in, space_out, sizes, 2, 1, key)


@pytest.mark.slow
def test_linear_is_maximally_expressive_tied_3_large_n(key):
  """('a','a','a') to itself with n = 6: all Bell(6) = 203 terms independent (orbit-count oracle)."""
  space = bound({"t": ("a", "a", "a")})
  template = parameter_template(key, space, space, 1, 1)
  apply_fn = lambda params, x: unf.linear.apply(params, x, space, space)
  assert closed_form_map_dim(space, space, {"a": 6}, 1, 1) == bell(6)
  assert_maximally_expressive(apply_fn, template, space, space, {"a": 6}, 1, 1, key)


def test_bounded_layer_is_maximally_expressive_for_its_larger_group(key):
  """With a fixed axis labelled, the layer spans every map equivariant to the larger group (the oracle on the
  relabelled space) and no more; those are fewer than the true group's, the price of a size that does not grow
  with the axis."""
  space = bound({"w": (None, "a"), "b": ("a",)}, 3)
  labelled = unf.basis.label_fixed_axes(space, space, 2)
  assert labelled.space_in.axes == (("a",), ("w[0]", "a")) and labelled.sizes == (("w[0]", 3),)
  sizes = {"a": 2, "w[0]": 3}
  shapes = jax.eval_shape(lambda k: unf.linear.init(k, space, space, 2, 1, dtype=jnp.float64, fixed_axes=2), key)
  template = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  apply_fn = lambda params, x: unf.linear.apply(params, x, space, space, fixed_axes=2)
  assert_maximally_expressive(apply_fn, template, labelled.space_in, labelled.space_out, sizes, 2, 1, key)
  larger, true = oracle_dims(labelled.space_in, labelled.space_out, sizes, 2, 1), oracle_dims(space, space, sizes, 2, 1)
  assert larger[0] < true[0] and larger[1] < true[1]


def test_expressivity_check_rejects_a_deficient_layer(key):
  """Negative control: an equivariant layer missing the pooled Deep Sets term spans too little."""
  space = bound({"x": ("a",)})
  template = {"w": jnp.zeros((1, 1), jnp.float64), "b": jnp.zeros((1,), jnp.float64)}
  apply_fn = lambda params, x: {"x": x["x"] @ params["w"] + params["b"]}
  with pytest.raises(AssertionError, match="span 1 dimensions, the equivariant maps 2"):
    assert_maximally_expressive(apply_fn, template, space, space, {"a": 3}, 1, 1, key)


def test_expressivity_check_rejects_a_non_equivariant_layer(key):
  """Negative control: a dense map across the set axis is not equivariant."""
  space = bound({"x": ("a",)})
  template = {"w": jnp.zeros((3, 3), jnp.float64)}
  apply_fn = lambda params, x: {"x": params["w"] @ x["x"]}
  with pytest.raises(AssertionError, match="not equivariant"):
    assert_maximally_expressive(apply_fn, template, space, space, {"a": 3}, 1, 1, key)


INVARIANT_CASES = [
  ("mlp", MLP, 2, {"in": 2, "h": 3, "out": 2}, 2),
  ("rnn", RNN, 2, {"h": 3, "in": 2}, 1),
  ("fixed-and-rank-0", {"conv": (None, "a", "a"), "s": ()}, 2, {"a": 3}, 2),
  ("tied-3", {"t": ("a", "a", "a")}, 2, {"a": 3}, 1),
  ("small-n-tied-3", {"t": ("a", "a", "a")}, 2, {"a": 2}, 1),
]


@pytest.mark.parametrize(
  ("spec", "fixed", "sizes", "features"),
  [case[1:] for case in INVARIANT_CASES],
  ids=[case[0] for case in INVARIANT_CASES],
)
def test_invariant_pool_spans_every_invariant_functional(spec, fixed, sizes, features):
  """The rows of d(invariant_pool)/dx are invariant functionals and span all of them."""
  space = bound(spec, fixed)
  dim = flat_dim(space, sizes, features)
  pool = lambda v: unf.linear.invariant_pool(_unflatten_vector(space, sizes, features, v), space)
  x = jax.random.normal(jax.random.key(1), (dim,), jnp.float64)
  jacobian = np.asarray(jax.jacfwd(pool)(x))
  np.testing.assert_allclose(np.asarray(pool(x)), jacobian @ np.asarray(x), rtol=1e-10, atol=1e-10)
  perms = [flat_permutation(space, sizes, features, element) for element in generators(space.labels, sizes)]
  identity = np.arange(jacobian.shape[0])
  assert map_residual(jacobian, [(p, identity) for p in perms]) <= 1e-10 * max(1.0, np.max(np.abs(jacobian)))
  expected = invariant_dim(space, sizes, features)
  assert expected == closed_form_invariant_dim(space, sizes, features)
  assert span_rank(jacobian)[0] == expected


# --- closed-form term counts ------------------------------------------------------

COUNT_CASES = [
  ("deep-sets", {"x": ("a",)}, {"x": ("a",)}, 2),
  ("tied-2", {"w": ("a", "a")}, {"w": ("a", "a")}, 15),
  ("tied-3", {"t": ("a", "a", "a")}, {"t": ("a", "a", "a")}, 203),
  ("two-labels", {"w": ("a", "b")}, {"w": ("a", "b")}, 4),
  ("fixed-axes-ignored", {"w": (None, "a")}, {"w": ("a", None, None)}, 2),
  ("rank-0", {"s": ()}, {"s": ()}, 1),
  ("disjoint-labels", {"x": ("a",)}, {"y": ("b", "b")}, 2),
  ("mlp", MLP, MLP, 9 + 7 + 10 + 6),
]


@pytest.mark.parametrize(
  ("spec_in", "spec_out", "expected"), [case[1:] for case in COUNT_CASES], ids=[case[0] for case in COUNT_CASES]
)
def test_count_terms_hand_written(spec_in, spec_out, expected):
  space_in, space_out = bound(spec_in), bound(spec_out)
  assert closed_form_count_terms(space_in, space_out) == expected
  assert unf.basis.count_terms(space_in, space_out) == expected


@st.composite
def weight_spaces(draw):
  """Random small spaces: up to 4 labels, 1-3 leaves of rank 0-3, tied (even 3-way) and None axes."""
  labels = draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=4, unique=True))
  entries = st.one_of(st.sampled_from(labels), st.none())
  leaves = draw(st.lists(st.lists(entries, max_size=3).map(tuple), min_size=1, max_size=3))
  spec = {f"leaf{i}": axes for i, axes in enumerate(leaves)}
  if draw(st.booleans()):
    spec = {"outer": spec, "extra": draw(st.lists(entries, max_size=2).map(tuple))}
  return bound(spec)


@settings(max_examples=60, deadline=None)
@given(weight_spaces(), weight_spaces())
def test_count_terms_matches_bell_closed_form(space_in, space_out):
  assert unf.basis.count_terms(space_in, space_out) == closed_form_count_terms(space_in, space_out)
