"""Functional core of the equivariant layers: pure functions over explicit params.

``init`` and ``apply`` implement the maximally expressive permutation-equivariant
affine map between two weight spaces (Zhou et al. 2024, Eq. 5-7);
``invariant_pool`` the maximal invariant linear map. The flax modules in
:mod:`unf.layers` are thin wrappers around them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from unf.basis import LeafLayout, Pattern, Plan, Reduction, invariant_reductions, plan
from unf.space import WeightSpace, path_str

Params = dict[str, jax.Array]


def _weight_name(space_out: WeightSpace, group) -> str:
  return f"{path_str(space_out.paths[group.out_leaf])}|{','.join(group.signature) or '-'}"


def _bias_name(space_out: WeightSpace, group) -> str:
  return f"{path_str(space_out.paths[group.out_leaf])}|bias"


def _channels(layout: LeafLayout, features: int) -> int:
  return math.prod(layout.fixed_shape) * features


_POOLED_SCALE = 0.5


def init(
  key: jax.Array,
  space_in: WeightSpace,
  space_out: WeightSpace,
  in_features: int,
  out_features: int,
  *,
  dtype: Any = jnp.float32,
) -> Params:
  """Initialises an equivariant affine layer ``space_in -> space_out``.

  Rule: for every output leaf, let ``fan_in`` be the number of input channels
  (features times fixed coordinates) that reach a generic (off-diagonal)
  output entry through terms that pool nothing. Weights of those terms are
  ``N(0, 1/fan_in)``, so on i.i.d. unit-variance inputs every output entry has
  variance ``1 + O(1/n)`` for label sizes ``n``. Weights of pooling terms are
  ``N(0, 1/(4 fan_in))``: pooled i.i.d. inputs are ``O(1/sqrt(n))``, but after
  a non-centred nonlinearity (relu) their means are O(1), and at full scale
  the pooled paths grow activations about 1.5x per layer (measured); at half
  scale a relu UNF keeps unit scale through depth (tested). Biases start at 0.

  Returns:
    A flat dict of arrays: one weight matrix per (output leaf, signature)
    group and one bias per output leaf. Shapes depend only on the spaces'
    labels, fixed sizes and feature counts, never on label sizes (widths).
  """
  p = plan(space_in, space_out)
  fan = [0] * len(space_out)
  for g in p.groups:
    unpooled = sum(
      _channels(p.layouts_in[p.reductions[pc.reduction].leaf], in_features)
      for pc in g.pieces
      if not p.reductions[pc.reduction].pooled_labels
    )
    fan[g.out_leaf] += unpooled * sum(pattern.singleton for pattern in g.patterns)
  params: Params = {}
  keys = jax.random.split(key, max(len(p.groups), 1))
  for g, k in zip(p.groups, keys):
    c_in = sum(_channels(p.layouts_in[p.reductions[pc.reduction].leaf], in_features) for pc in g.pieces)
    c_out = _channels(p.layouts_out[g.out_leaf], out_features)
    std = 1.0 / math.sqrt(fan[g.out_leaf] or c_in)
    row_scale = jnp.concatenate(
      [
        jnp.full(
          _channels(p.layouts_in[p.reductions[pc.reduction].leaf], in_features),
          _POOLED_SCALE if p.reductions[pc.reduction].pooled_labels else 1.0,
          dtype,
        )
        for pc in g.pieces
      ]
    )
    weight = jax.random.normal(k, (c_in, len(g.patterns) * c_out), dtype)
    params[_weight_name(space_out, g)] = std * row_scale[:, None] * weight
    if g.has_bias:
      params[_bias_name(space_out, g)] = jnp.zeros((len(g.patterns) * c_out,), dtype)
  return params


def _to_layer(leaf: jax.Array, layout: LeafLayout) -> jax.Array:
  """Leaf ``(axes..., features)`` -> ``(permutable axes..., channels)``."""
  if layout.to_layer != tuple(range(leaf.ndim)):
    leaf = jnp.transpose(leaf, layout.to_layer)
  return leaf.reshape(leaf.shape[: len(layout.labels)] + (-1,))


def _reduce(views: list[jax.Array], reduction: Reduction, sizes: Mapping[str, int]) -> jax.Array:
  out = jnp.einsum(reduction.einsum, views[reduction.leaf])
  if reduction.pooled_labels:
    out = out * (1.0 / math.prod(sizes[label] for label in reduction.pooled_labels))
  return out


# XLA on CPU does not fuse a dot with the broadcast additions that follow it,
# so a large output would be written and read again. A multiply-and-reduce over
# a short channel axis does fuse with them into one loop (measured: 1.1x the
# dot alone, against 1.6x for dot + additions); long contractions keep the dot.
# On small tensors the fused loop loses to the dot (measured 2.5x slower for a
# 2,410-weight space, 13x under vmap), so it is kept for large outputs only.
_FUSED_CONTRACTION_MAX = 64
_FUSED_OUTPUT_MIN = 1 << 18


def _writes_every_entry_once(patterns: tuple[Pattern, ...]) -> bool:
  """True for a group whose only pattern keeps every output axis as its own index."""
  if len(patterns) != 1:
    return False
  (pattern,) = patterns
  return all(pattern.expand) and not pattern.diagonals and pattern.carrier_order == tuple(range(len(pattern.expand)))


def _mix_channels(inputs: jax.Array, weight: jax.Array, *, fuse: bool) -> jax.Array:
  # Only a group that writes every output entry once (the identity pattern) may
  # fuse: a smaller result broadcast into the output would be recomputed per entry.
  large = math.prod(inputs.shape[:-1]) * weight.shape[-1] >= _FUSED_OUTPUT_MIN
  if fuse and large and inputs.shape[-1] <= _FUSED_CONTRACTION_MAX:
    return _fusable_matmul(inputs, weight)
  return inputs @ weight


@jax.custom_jvp
def _fusable_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """``x @ w`` written as multiply-and-reduce, so XLA fuses it with its consumers."""
  return jnp.sum(x[..., :, None] * w, axis=-2)


@_fusable_matmul.defjvp
def _fusable_matmul_jvp(primals, tangents):
  # Tangents (and, by transposition, gradients) run as ordinary matrix
  # products: a reduction over the broadcast product is far slower than a GEMM.
  (x, w), (dx, dw) = primals, tangents
  return _fusable_matmul(x, w), dx @ w + x @ dw


def _write(z: jax.Array, pattern: Pattern, labels: tuple[str, ...], sizes: Mapping[str, int]) -> jax.Array:
  """Embeds ``z`` (slots..., channels) into the output leaf's layer view (broadcastable)."""
  if pattern.carrier_order != tuple(range(len(pattern.carrier_order))):
    z = jnp.transpose(z, (*pattern.carrier_order, z.ndim - 1))
  dims = iter(z.shape[:-1])
  z = z.reshape(tuple(next(dims) if kept else 1 for kept in pattern.expand) + z.shape[-1:])
  for a, b, label in pattern.diagonals:
    shape = [1] * (len(labels) + 1)
    shape[a] = shape[b] = sizes[label]
    z = z * jnp.eye(sizes[label], dtype=z.dtype).reshape(shape)
  return z


def _label_sizes(space: WeightSpace, tree: Any, extra: Mapping[str, int] | None, needed: tuple[str, ...]):
  sizes = dict(space.validate(tree, trailing=1))
  sizes.update(extra or {})
  missing = sorted(set(needed) - set(sizes))
  if missing:
    raise ValueError(
      f"the sizes of output labels {missing} cannot be read from the input: pass out_sizes={{label: size}}."
    )
  return sizes


def apply(
  params: Params,
  x: Any,
  space_in: WeightSpace,
  space_out: WeightSpace,
  *,
  out_sizes: Mapping[str, int] | None = None,
) -> dict:
  """Applies the equivariant affine layer.

  Satisfies ``apply(params, sigma . x) = sigma . apply(params, x)`` for every
  group element ``sigma`` (one permutation per label).

  Args:
    params: from :func:`init`.
    x: pytree shaped like ``space_in``, each leaf with one trailing feature axis.
    space_in: input weight space.
    space_out: output weight space.
    out_sizes: sizes of labels of ``space_out`` that ``space_in`` lacks.

  Returns:
    A pytree shaped like ``space_out`` with a trailing ``out_features`` axis.
  """
  p: Plan = plan(space_in, space_out)
  sizes = _label_sizes(space_in, x, out_sizes, space_out.labels)
  views = [_to_layer(leaf, layout) for leaf, layout in zip(space_in.flatten(x), p.layouts_in)]
  reduced: list[jax.Array | None] = [None] * len(p.reductions)
  for index in p.reduction_order:
    r = p.reductions[index]
    if r.parent is None:
      reduced[index] = _reduce(views, r, sizes)
    else:
      reduced[index] = jnp.mean(reduced[r.parent], axis=r.parent_axis)
  acc: list[jax.Array | None] = [None] * len(space_out)
  for g in p.groups:
    labels = p.layouts_out[g.out_leaf].labels
    parts = []
    for piece in g.pieces:
      part = reduced[piece.reduction]
      if piece.transpose != tuple(range(len(piece.transpose))):
        part = jnp.transpose(part, (*piece.transpose, part.ndim - 1))
      parts.append(part)
    inputs = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
    z = _mix_channels(inputs, params[_weight_name(space_out, g)], fuse=_writes_every_entry_once(g.patterns))
    if g.has_bias:
      z = z + params[_bias_name(space_out, g)]
    z = z.reshape(z.shape[:-1] + (len(g.patterns), -1))
    for k, pattern in enumerate(g.patterns):
      term = _write(z[..., k, :], pattern, labels, sizes)
      acc[g.out_leaf] = term if acc[g.out_leaf] is None else acc[g.out_leaf] + term
  outputs = []
  for layout, y in zip(p.layouts_out, acc):
    features = y.shape[-1] // math.prod(layout.fixed_shape)
    shape = tuple(sizes[label] for label in layout.labels) + layout.fixed_shape + (features,)
    y = jnp.broadcast_to(y, shape[: len(layout.labels)] + y.shape[-1:]).reshape(shape)
    if layout.from_layer != tuple(range(y.ndim)):
      y = jnp.transpose(y, layout.from_layer)
    outputs.append(y)
  return space_out.unflatten(outputs)


def invariant_pool(x: Any, space: WeightSpace) -> jax.Array:
  """Every invariant linear functional of every leaf, concatenated.

  For each leaf and each partition of its permutable axes (blocks within one
  label), the mean over that partition's diagonal, for every channel (fixed
  coordinate x feature). Satisfies ``invariant_pool(sigma . x) =
  invariant_pool(x)``; together the functionals span every invariant linear
  map of the space.

  Returns:
    A vector of length ``sum_leaf #partitions(leaf) * prod(fixed) * features``.
  """
  sizes = space.validate(x, trailing=1)
  layouts = [LeafLayout.of(a, space.fixed_shape(i)) for i, a in enumerate(space.axes)]
  views = [_to_layer(leaf, layout) for leaf, layout in zip(space.flatten(x), layouts)]
  return jnp.concatenate([_reduce(views, r, sizes) for r in invariant_reductions(space)], axis=-1)


def invariant_pool_size(space: WeightSpace, features: int) -> int:
  """Length of :func:`invariant_pool`'s output."""
  return sum(math.prod(space.fixed_shape(r.leaf)) * features for r in invariant_reductions(space))
