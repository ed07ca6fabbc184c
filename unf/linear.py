"""Functional core of the equivariant layers: pure functions over explicit params.

``init`` and ``apply`` implement the maximally expressive permutation-equivariant
affine map between two weight spaces (Zhou et al. 2024, Eq. 5-7);
``invariant_pool`` the maximal invariant linear map; ``transfer`` moves a
layer's params to spaces renamed (:meth:`~unf.WeightSpace.match`);
``parameter_count`` gives a layer's size before it is built, ``input_channels``
how many inputs each output entry sums. The flax
modules in :mod:`unf.layers` are thin wrappers around them.

The ``fixed_axes`` option of every function (default ``"auto"``): fixed (None)
axes are mixed like channels, which is exact but costs parameters quadratic in
their number of coordinates. ``"auto"`` mixes at most
:data:`unf.basis.AUTO_MIXED_COORDINATES` (10) fixed coordinates per leaf (3x3
kernel positions, a 10-class output) and gives longer fixed axes labels of
their own (:func:`unf.basis.label_fixed_axes`): the layer is then equivariant to
a larger group, which contains the true one, and its size does not grow with
those axes' lengths. ``"mix"`` mixes every fixed axis (maximally expressive for
the true group), ``"label"`` labels every fixed axis (the authors' code), and
an int ``n`` mixes at most ``n`` fixed coordinates per leaf.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from unf import _program
from unf.basis import (
  Group,
  LeafLayout,
  Pattern,
  Piece,
  Plan,
  Reduction,
  invariant_reductions,
  label_fixed_axes,
  plan,
)
from unf.space import WeightSpace, path_str

Params = dict[str, jax.Array]


def _weight_name(space_out: WeightSpace, group: Group) -> str:
  return f"{path_str(space_out.paths[group.out_leaf])}|{','.join(group.signature) or '-'}"


def _bias_name(space_out: WeightSpace, group: Group) -> str:
  return f"{path_str(space_out.paths[group.out_leaf])}|bias"


def _channels(layout: LeafLayout, features: int) -> int:
  return math.prod(layout.fixed_shape) * features


def _piece_rows(p: Plan, group: Group, in_features: int) -> list[int]:
  """The input channels of each piece of ``group``: the row blocks of its weight matrix, in order."""
  return [_channels(p.layouts_in[p.reductions[piece.reduction].leaf], in_features) for piece in group.pieces]


_POOLED_SCALE = 0.5


def init(
  key: jax.Array,
  space_in: WeightSpace,
  space_out: WeightSpace,
  in_features: int,
  out_features: int,
  *,
  dtype: Any = jnp.float32,
  fixed_axes: str | int = "auto",
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

  Args:
    key: a PRNG key.
    space_in: input weight space (with fixed sizes).
    space_out: output weight space (with fixed sizes).
    in_features: trailing feature axis size of the input.
    out_features: trailing feature axis size of the output.
    dtype: dtype of the params.
    fixed_axes: ``"auto"``, ``"mix"``, ``"label"`` or the most fixed coordinates mixed per leaf (see the
      module's docstring); :func:`apply` must be given the same.

  Returns:
    A flat dict of arrays: one weight matrix per (output leaf, signature)
    group and one bias per output leaf (:func:`parameter_count` scalars).
    Shapes depend only on the spaces' labels, fixed sizes and feature counts,
    never on label sizes (widths).
  """
  space_in, space_out, _ = label_fixed_axes(space_in, space_out, fixed_axes)
  p = plan(space_in, space_out)
  pooled = _pooled_pieces(p)
  fans = _fan_ins(p, in_features)
  shapes = []
  for g, fan in zip(p.groups, fans):
    rows = _piece_rows(p, g, in_features)
    std = 1.0 / math.sqrt(fan)
    row_scale = np.repeat([std * (_POOLED_SCALE if is_pooled else 1.0) for is_pooled in pooled[g.name]], rows)
    shapes.append((sum(rows), len(g.patterns) * _channels(p.layouts_out[g.out_leaf], out_features), row_scale))
  # One draw for every weight: a draw per group would compile a sampler per shape (seconds on large spaces).
  drawn = jax.random.normal(key, (sum(r * c for r, c, _ in shapes),), dtype)
  concrete = not isinstance(drawn, jax.core.Tracer)
  flat: Any = np.asarray(drawn) if concrete else drawn  # slicing in numpy compiles nothing
  params: Params = {}
  start = 0
  for g, (num_rows, columns, row_scale) in zip(p.groups, shapes):
    weight = flat[start : start + num_rows * columns].reshape(num_rows, columns) * row_scale.astype(dtype)[:, None]
    start += num_rows * columns
    params[_weight_name(space_out, g)] = jnp.asarray(weight) if concrete else weight
    if g.has_bias:
      zeros = np.zeros(columns, dtype)
      params[_bias_name(space_out, g)] = jnp.asarray(zeros) if concrete else jnp.asarray(zeros, dtype)
  return params


def _pooled_pieces(p: Plan) -> dict[str, list[bool]]:
  """Per group (by name), whether each of its pieces pools some label."""
  return {g.name: [bool(p.reductions[pc.reduction].pooled_labels) for pc in g.pieces] for g in p.groups}


def _entry_channels(p: Plan, in_features: int, *, unpooled_only: bool) -> list[int]:
  """Per output leaf, the input channels that a generic output entry sums: one per row of every group that
  writes the leaf, times the group's patterns that reach such an entry (only pieces that pool nothing, or all)."""
  pooled = _pooled_pieces(p)
  channels = [0] * len(p.layouts_out)
  for g in p.groups:
    rows = zip(_piece_rows(p, g, in_features), pooled[g.name])
    counted = sum(n for n, is_pooled in rows if not (unpooled_only and is_pooled))
    channels[g.out_leaf] += counted * sum(pattern.singleton for pattern in g.patterns)
  return channels


def _fan_ins(p: Plan, in_features: int) -> list[int]:
  """Per group, the fan-in that :func:`init` scales its weights by: the input channels that reach a generic
  output entry of its output leaf through terms that pool nothing (all of the group's rows where none do)."""
  fan = _entry_channels(p, in_features, unpooled_only=True)
  return [fan[g.out_leaf] or sum(_piece_rows(p, g, in_features)) for g in p.groups]


def input_channels(
  space_in: WeightSpace,
  space_out: WeightSpace,
  in_features: int,
  *,
  fixed_axes: str | int = "auto",
) -> dict[str, int]:
  """How many input channels each weight matrix's output leaf sums, by the matrix's name (biases have none).

  A generic output entry (all its permutable indices distinct) of a leaf is a
  sum of products of weights and input channels (features times fixed
  coordinates, kept or pooled), one per row of every matrix that writes the
  leaf; this counts them, pooled rows included. A perturbation of std ``s`` on
  every weight then moves the entry by about ``s * sqrt(count)`` on inputs of
  unit mean square (relu features and their means alike). A Deep Sets layer
  (:class:`metatrain.DeepSetsLOpt`) sums ``2 * in_features``: an entry and a
  mean. Meta-training reads it to perturb a UNF's last layer no more than that
  (:meth:`metatrain.LearnedOptimizer.noise_scales`).

  Args:
    space_in: input weight space (with fixed sizes).
    space_out: output weight space (with fixed sizes).
    in_features: trailing feature axis size of the input.
    fixed_axes: as given to :func:`init`.

  Returns:
    ``{weight name: input channels summed by its output leaf}`` for every weight matrix of the layer.

  Example:
    >>> import unf
    >>> space = unf.WeightSpace({"w": ("a", "h"), "b": ("h",)})
    >>> unf.linear.input_channels(space, space, 8)
    {'b|-': 32, 'b|h': 32, 'w|-': 48, 'w|a': 48, 'w|a,h': 48, 'w|h': 48}
  """
  space_in, space_out, _ = label_fixed_axes(space_in, space_out, fixed_axes)
  p = plan(space_in, space_out)
  channels = _entry_channels(p, in_features, unpooled_only=False)
  return {_weight_name(space_out, g): channels[g.out_leaf] for g in p.groups}


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


def _write(
  z: jax.Array, pattern: Pattern, labels: tuple[str, ...], sizes: Mapping[str, int], *, batched: bool = False
) -> jax.Array:
  """Embeds ``z`` (slots..., channels) into the output leaf's layer view (broadcastable); ``batched``: ``z`` has a
  leading axis of members, kept in front."""
  lead = 1 if batched else 0
  if pattern.carrier_order != tuple(range(len(pattern.carrier_order))):
    z = jnp.transpose(z, (*range(lead), *(c + lead for c in pattern.carrier_order), z.ndim - 1))
  dims = iter(z.shape[lead:-1])
  z = z.reshape(z.shape[:lead] + tuple(next(dims) if kept else 1 for kept in pattern.expand) + z.shape[-1:])
  for a, b, label in pattern.diagonals:
    shape = [1] * (lead + len(labels) + 1)
    shape[lead + a] = shape[lead + b] = sizes[label]
    z = z * jnp.eye(sizes[label], dtype=z.dtype).reshape(shape)
  return z


def _label_sizes(
  space: WeightSpace, tree: Any, extra: Mapping[str, int] | None, needed: tuple[str, ...]
) -> dict[str, int]:
  sizes = dict(space.validate(tree, trailing=1))
  for label, size in (extra or {}).items():
    if label not in needed:
      raise ValueError(
        f"out_sizes names label {label!r}, which the output space does not have (its labels: {list(needed)})."
      )
    if label in sizes:
      raise ValueError(
        f"out_sizes gives label {label!r} size {size}, but the input already has it at size {sizes[label]}: "
        "out_sizes only adds the output labels that the input lacks."
      )
    sizes[label] = int(size)
  missing = sorted(set(needed) - set(sizes))
  if missing:
    raise ValueError(
      f"the sizes of output labels {missing} cannot be read from the input: pass out_sizes={{label: size}}."
    )
  return sizes


def _check_features(p: Plan, params: Params, space_in: WeightSpace, space_out: WeightSpace, x: Any) -> None:
  """Every leaf of ``x`` has the layer's ``in_features`` trailing features (read from the first weight)."""
  group = p.groups[0]
  rows = params[_weight_name(space_out, group)].shape[0]
  per_feature = sum(math.prod(p.layouts_in[p.reductions[piece.reduction].leaf].fixed_shape) for piece in group.pieces)
  expected = rows // per_feature
  for path, leaf in zip(space_in.paths, space_in.flatten(x)):
    if leaf.shape[-1] != expected:
      raise ValueError(
        f"leaf {path_str(path)!r} has {leaf.shape[-1]} features (its last axis, shape {tuple(leaf.shape)}), but "
        f"the layer was built for in_features={expected}: every leaf needs {expected}."
      )


# A plan's steps that repeat across a space (a transformer's blocks) run as one batched operation each
# (unf._program). False runs them one by one, as before batching: the reference that tests compare against.
_BATCH = True


def _reduce_batch(stacks: list[jax.Array], reduced: list[jax.Array], batch: _program.ReductionBatch) -> jax.Array:
  """A reduction batch's members, stacked: ``(members, kept sizes..., channels)``."""
  source = reduced[batch.source] if batch.child else stacks[batch.source]
  if batch.positions is not None:
    source = _rows(source, np.asarray(batch.positions))
  if batch.child:
    return jnp.mean(source, axis=batch.parent_axis + 1)
  if source.shape[0] == 1:
    out = jnp.einsum(batch.einsum, source[0])[None]
  else:
    inputs, output = batch.einsum.split("->")
    out = jnp.einsum(f"Y{inputs}->Y{output}", source)
  return out * batch.scale if batch.scale != 1.0 else out


def _rows(array: jax.Array, index: np.ndarray) -> jax.Array:
  """``array[index]`` for a static index: a slice where it is a run."""
  if np.array_equal(index, index[0] + np.arange(len(index))):
    return array if len(index) == array.shape[0] else lax.slice_in_dim(array, int(index[0]), int(index[0]) + len(index))
  return array.at[index].get(mode="promise_in_bounds")


def _take(array: jax.Array, rows: np.ndarray | None, columns: np.ndarray | None, *, offset: int = 0) -> jax.Array:
  """``array`` with its rows (axis ``offset``; None: all) and columns (last axis; None: all) taken in a static
  order."""
  if rows is not None:
    array = array.at[(slice(None),) * offset + (rows,)].get(mode="promise_in_bounds", unique_indices=True)
  if columns is not None:
    array = array.at[..., columns].get(mode="promise_in_bounds", unique_indices=True)
  return array


def _bundle_inputs(reduced: list[jax.Array], batch: _program.BundleBatch) -> tuple[jax.Array, np.ndarray | None]:
  """A bundle batch's stacked input, segment by segment, and the order of weight rows that it needs (None: the
  pieces' own order): ``(members, slots..., rows)``."""
  parts, piece_rows = [], {}
  members = len(batch.members)
  for segment in batch.segments:
    source = reduced[segment.batch]
    channels, count = source.shape[-1], len(segment.pieces)
    source = _rows(source, np.asarray(segment.positions).reshape(-1))
    part = source.reshape((members, count, *source.shape[1:]))
    kept = part.ndim - 3
    # (members, pieces, kept..., channels) -> (members, slots..., pieces * channels)
    part = jnp.transpose(part, (0, *(t + 2 for t in segment.transpose), 1, part.ndim - 1))
    parts.append(part.reshape(part.shape[: 1 + kept] + (count * channels,)))
    for piece in segment.pieces:
      piece_rows[piece] = channels
  starts = list(itertools.accumulate((piece_rows[k] for k in range(len(piece_rows))), initial=0))
  order = np.concatenate([np.arange(starts[k], starts[k + 1]) for s in batch.segments for k in s.pieces])
  inputs = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
  return inputs, None if np.array_equal(order, np.arange(len(order))) else order


# A bundle whose every piece is this large (entries times channels, per member of a batch) runs piece by piece
# (:func:`_mix_by_piece`). Put together first, as bundles of pooled pieces are, its input would be copied whole,
# and transposed whole where its pieces come in another axis order: as much memory traffic as the product itself
# (a UNF learned optimizer's last layer, 32 -> 1 channels, reads entry-sized hidden features of two leaves per
# bundle). Bundles of small pieces (a deep transformer's pools) stay one product: a product per piece there would
# compile for minutes.
_PIECEWISE_PIECE_MIN = 1 << 14


def _mix_by_piece(pieces: list[tuple[jax.Array, tuple[int, ...]]], w: jax.Array, *, fuse: bool) -> jax.Array:
  """``concatenate([transpose(x, t) for x, t in pieces], -1)`` times each member's weight ``w`` (members, rows,
  columns), without the concatenation: each piece ``x`` (members, kept..., channels) times its rows of ``w``,
  the narrower of the piece and its product transposed (``t``: the order of the kept axes in the bundle's slots),
  the products added."""
  z: jax.Array | None = None
  start = 0
  for x, transpose in pieces:
    rows = lax.slice_in_dim(w, start, start + x.shape[-1], axis=1)
    start += x.shape[-1]
    order = (0, *(t + 1 for t in transpose), x.ndim - 1)
    if w.shape[-1] < x.shape[-1]:  # mix, then transpose the narrower product
      term = jnp.transpose(_mix_channels_batched(x, rows, fuse=False), order)
    else:
      term = _mix_channels_batched(jnp.transpose(x, order), rows, fuse=fuse)
    z = term if z is None else z + term
  assert z is not None  # a bundle has pieces
  return z


def _batch_pieces(reduced: list[jax.Array], batch: _program.BundleBatch) -> list[tuple[jax.Array, tuple[int, ...]]]:
  """A bundle batch's pieces for :func:`_mix_by_piece`, in the pieces' own order (the order of their weight rows);
  none where a piece is below ``_PIECEWISE_PIECE_MIN``."""
  pieces: dict[int, tuple[jax.Array, tuple[int, ...]]] = {}
  for segment in batch.segments:
    source = reduced[segment.batch]
    if math.prod(source.shape[1:]) < _PIECEWISE_PIECE_MIN:
      return []
    positions = np.asarray(segment.positions)  # (members, pieces)
    for k, piece in enumerate(segment.pieces):
      pieces[piece] = (_rows(source, positions[:, k]), segment.transpose)
  return [pieces[k] for k in range(len(pieces))]


def _cluster_columns(batch: _program.BundleBatch, groups: list[Group], widths: list[int]) -> np.ndarray | None:
  """The order of a bundle's weight columns that puts every cluster's groups side by side, pattern by pattern
  (None: their own order, groups then patterns)."""
  starts = list(itertools.accumulate((len(g.patterns) * w for g, w in zip(groups, widths)), initial=0))
  order = np.concatenate(
    [
      starts[q] + k * widths[q] + np.arange(widths[q])
      for cluster in batch.clusters
      for k in range(len(cluster.patterns))
      for q in cluster.groups
    ]
  )
  return None if np.array_equal(order, np.arange(len(order))) else order


def _members_side_by_side(params: Params, names: list[list[str]]) -> jax.Array:
  """Per member, its params ``names`` concatenated along their last axis, stacked: ``(members, ..., columns)``.

  One concatenation for all members (a transformer's every block), not one per member.
  """
  if len(names) == 1 and len(names[0]) == 1:
    return params[names[0][0]][None]
  flat = jnp.concatenate([params[name] for member in names for name in member], axis=-1)
  members = flat.reshape(flat.shape[:-1] + (len(names), -1))
  return jnp.moveaxis(members, -2, 0)


def _stacked(arrays: list[jax.Array]) -> jax.Array:
  return arrays[0][None] if len(arrays) == 1 else jnp.stack(arrays)


def _mix_channels_batched(inputs: jax.Array, w: jax.Array, *, fuse: bool) -> jax.Array:
  """``inputs`` (members, ..., rows) times each member's weight ``w`` (members, rows, columns)."""
  if w.shape[0] == 1:
    return _mix_channels(inputs[0], w[0], fuse=fuse)[None]
  flat = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])
  large = flat.shape[1] * w.shape[-1] >= _FUSED_OUTPUT_MIN
  if fuse and large and inputs.shape[-1] <= _FUSED_CONTRACTION_MAX:
    z = _fusable_batched_matmul(flat, w)
  else:
    z = flat @ w
  return z.reshape(inputs.shape[:-1] + w.shape[-1:])


@jax.custom_jvp
def _fusable_batched_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """``x @ w`` for ``x`` (n, m, k) and ``w`` (n, k, c), as multiply-and-reduce (see :func:`_fusable_matmul`)."""
  return jnp.sum(x[..., :, None] * w[:, None], axis=-2)


@_fusable_batched_matmul.defjvp
def _fusable_batched_matmul_jvp(primals, tangents):
  (x, w), (dx, dw) = primals, tangents
  return _fusable_batched_matmul(x, w), dx @ w + x @ dw


def _assemble(
  acc: dict[tuple[int, tuple[int, ...]], jax.Array], classes: _program.Classes, p: Plan, sizes: Mapping[str, int]
) -> list[jax.Array]:
  """Per output class, its members' sums of terms, stacked at full shape: terms written to every member in order
  are added (broadcasting), terms written to some members are added at their positions."""
  stacks = []
  for c, leaves in enumerate(classes.members):
    everyone = tuple(range(len(leaves)))
    terms = [(positions, term) for (out_class, positions), term in acc.items() if out_class == c]
    labels = p.layouts_out[leaves[0]].labels
    shape = (len(leaves), *(sizes[label] for label in labels), terms[0][1].shape[-1])
    total = None
    for positions, term in terms:
      if positions == everyone:
        total = term if total is None else total + term
    for positions, term in terms:
      if positions != everyone:
        base = jnp.zeros(shape, term.dtype) if total is None else jnp.broadcast_to(total, shape)
        total = base.at[np.asarray(positions)].add(jnp.broadcast_to(term, (len(positions), *shape[1:])))
    assert total is not None  # every output leaf has terms: at least those that pool every input leaf
    stacks.append(jnp.broadcast_to(total, shape))
  return stacks


def _from_layer(y: jax.Array, layout: LeafLayout, sizes: Mapping[str, int]) -> jax.Array:
  """An output leaf's layer view ``(permutable axes..., channels)``, maybe broadcastable, as the leaf."""
  features = y.shape[-1] // math.prod(layout.fixed_shape)
  shape = tuple(sizes[label] for label in layout.labels) + layout.fixed_shape + (features,)
  y = jnp.broadcast_to(y, shape[: len(layout.labels)] + y.shape[-1:]).reshape(shape)
  if layout.from_layer != tuple(range(y.ndim)):
    y = jnp.transpose(y, layout.from_layer)
  return y


def _apply_step_by_step(
  params: Params, views: list[jax.Array], p: Plan, space_out: WeightSpace, sizes: Mapping[str, int]
) -> list[jax.Array]:
  """The plan run step by step: one operation per reduction and per bundle (the reference for batching)."""
  # Keyed by reduction index, filled in reduction_order: a parent before the reductions that average it.
  reduced: dict[int, jax.Array] = {}
  for index in p.reduction_order:
    r = p.reductions[index]
    if r.parent is None:
      reduced[index] = _reduce(views, r, sizes)
    else:
      reduced[index] = jnp.mean(reduced[r.parent], axis=r.parent_axis)
  acc: dict[int, jax.Array] = {}  # per output leaf, the sum of its terms
  for bundle in p.bundles:
    groups = [p.groups[k] for k in bundle]
    weights = [params[_weight_name(space_out, g)] for g in groups]
    fuse = all(_program.writes_every_entry_once(g.patterns) for g in groups)
    w = weights[0] if len(weights) == 1 else jnp.concatenate(weights, axis=1)
    sources = [reduced[piece.reduction] for piece in groups[0].pieces]
    if min(source.size for source in sources) >= _PIECEWISE_PIECE_MIN:
      pieces = [(source[None], piece.transpose) for source, piece in zip(sources, groups[0].pieces)]
      z = _mix_by_piece(pieces, w[None], fuse=fuse)[0]
    else:
      parts = []
      for piece, part in zip(groups[0].pieces, sources):
        if piece.transpose != tuple(range(len(piece.transpose))):
          part = jnp.transpose(part, (*piece.transpose, part.ndim - 1))
        parts.append(part)
      z = _mix_channels(parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1), w, fuse=fuse)
    if groups[0].has_bias:  # signature () groups, and only they, have biases: a bundle has all or none
      biases = [params[_bias_name(space_out, g)] for g in groups]
      z = z + (biases[0] if len(biases) == 1 else jnp.concatenate(biases))
    start = 0  # columns: the groups in bundle order, each its patterns in order
    for g, weight in zip(groups, weights):
      columns = weight.shape[1] // len(g.patterns)
      labels = p.layouts_out[g.out_leaf].labels
      for pattern in g.patterns:
        term = z if columns == z.shape[-1] else lax.slice_in_dim(z, start, start + columns, axis=z.ndim - 1)
        start += columns
        term = _write(term, pattern, labels, sizes)
        acc[g.out_leaf] = acc[g.out_leaf] + term if g.out_leaf in acc else term
  # Every output leaf has terms, as a WeightSpace has at least one leaf: acc has every key.
  return [_from_layer(acc[o], layout, sizes) for o, layout in enumerate(p.layouts_out)]


def apply(
  params: Params,
  x: Any,
  space_in: WeightSpace,
  space_out: WeightSpace,
  *,
  out_sizes: Mapping[str, int] | None = None,
  fixed_axes: str | int = "auto",
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
    fixed_axes: as given to :func:`init`.

  Returns:
    A pytree shaped like ``space_out`` with a trailing ``out_features`` axis.
  """
  sizes = _label_sizes(space_in, x, out_sizes, space_out.labels)
  space_in, space_out, new_labels = label_fixed_axes(space_in, space_out, fixed_axes)
  sizes.update(new_labels)
  p: Plan = plan(space_in, space_out)
  _check_features(p, params, space_in, space_out, x)
  key = _program.label_sizes_key(sizes)
  if not _BATCH or not _program.program(p, key).batches_anything:
    views = [_to_layer(leaf, layout) for leaf, layout in zip(space_in.flatten(x), p.layouts_in)]
    return space_out.unflatten(_apply_step_by_step(params, views, p, space_out, sizes))
  stacks = _apply_stacks(params, _stacks(x, space_in, p.layouts_in, key), p, space_out, key)
  return _leaves(stacks, space_out, p.layouts_out, key)


def _stacks(x: Any, space: WeightSpace, layouts: tuple[LeafLayout, ...], sizes: tuple) -> list[jax.Array]:
  """A pytree of ``space`` as the stacks of its leaf classes (:func:`unf._program.classes`): per class
  ``(members, permutable sizes..., channels)``, its members' layer views."""
  views = [_to_layer(leaf, layout) for leaf, layout in zip(space.flatten(x), layouts)]
  return [_stacked([views[leaf] for leaf in members]) for members in _program.classes(layouts, sizes).members]


def _leaves(stacks: list[jax.Array], space: WeightSpace, layouts: tuple[LeafLayout, ...], sizes: tuple) -> Any:
  """The pytree of ``space`` that :func:`_stacks` stacked."""
  size = dict(sizes)
  leaves: list[Any] = [None] * len(layouts)
  for stack, members in zip(stacks, _program.classes(layouts, sizes).members):
    # Members of one layout leave the stack with one transpose, then a slice each.
    by_layout: dict[LeafLayout, list[int]] = {}
    for position, leaf in enumerate(members):
      by_layout.setdefault(layouts[leaf], []).append(position)
    for layout, positions in by_layout.items():
      part = stack if len(positions) == len(members) else _rows(stack, np.asarray(positions))
      part = jax.vmap(lambda y, layout=layout: _from_layer(y, layout, size))(part)
      for k, position in enumerate(positions):
        leaves[members[position]] = part[k]
  return space.unflatten(leaves)


def _apply_stacks(params: Params, stacks: list[jax.Array], p: Plan, space_out: WeightSpace, key: tuple) -> list:
  """The layer of plan ``p`` on input class stacks: the output class stacks (full shape)."""
  sizes = dict(key)
  prog = _program.program(p, key)
  reduced: list[jax.Array] = []  # per reduction batch, its members stacked on a leading axis
  for reduction in prog.reductions:
    reduced.append(_reduce_batch(stacks, reduced, reduction))
  # Per output class and the positions written (one per member of a batch), the sum of the terms.
  acc: dict[tuple[int, tuple[int, ...]], jax.Array] = {}
  for batch in prog.bundles:
    groups = [[p.groups[k] for k in bundle] for bundle in batch.members]
    weights = _members_side_by_side(params, [[_weight_name(space_out, g) for g in member] for member in groups])
    widths = [params[_weight_name(space_out, g)].shape[1] // len(g.patterns) for g in groups[0]]
    columns = _cluster_columns(batch, groups[0], widths)
    pieces = _batch_pieces(reduced, batch)
    if pieces:
      z = _mix_by_piece(pieces, _take(weights, None, columns, offset=1), fuse=batch.fuse)
    else:
      inputs, rows = _bundle_inputs(reduced, batch)
      z = _mix_channels_batched(inputs, _take(weights, rows, columns, offset=1), fuse=batch.fuse)
    if groups[0][0].has_bias:  # signature () groups, and only they, have biases: a bundle has all or none
      biases = _members_side_by_side(params, [[_bias_name(space_out, g) for g in member] for member in groups])
      z = z + _take(biases, None, columns)[:, *([None] * (z.ndim - 2)), :]
    start = 0
    for cluster in batch.clusters:
      width, count = widths[cluster.groups[0]], len(cluster.groups)
      labels = p.layouts_out[groups[0][cluster.groups[0]].out_leaf].labels
      for pattern in cluster.patterns:
        term = lax.slice_in_dim(z, start, start + count * width, axis=z.ndim - 1)
        start += count * width
        if count > 1:  # (members, slots..., groups * width) -> (members * groups, slots..., width)
          term = term.reshape(term.shape[:-1] + (count, width))
          term = jnp.moveaxis(term, -2, 1).reshape((-1, *term.shape[1:-2], width))
        term = _write(term, pattern, labels, sizes, batched=True)
        key_ = (cluster.out_class, cluster.positions)
        acc[key_] = acc[key_] + term if key_ in acc else term
  return _assemble(acc, prog.classes_out, p, sizes)


def _layers_batch(spaces: Sequence[WeightSpace], x: Any, out_sizes: Any, fixed_axes: str | int) -> bool:
  """Whether the first of :func:`apply_layers`' layers batches anything (``Program.batches_anything``)."""
  sizes = _label_sizes(spaces[0], x, out_sizes, spaces[-1].labels)
  space_in, space_out, new_labels = label_fixed_axes(spaces[0], spaces[1], fixed_axes)
  key = _program.label_sizes_key({**sizes, **dict(new_labels)})
  return _program.program(plan(space_in, space_out), key).batches_anything


def apply_layers(
  params: Sequence[Params],
  x: Any,
  spaces: Sequence[WeightSpace],
  *,
  activation: Callable[[jax.Array], jax.Array],
  out_sizes: Mapping[str, int] | None = None,
  fixed_axes: str | int = "auto",
  pool: bool = False,
) -> Any:
  """Equivariant layers ``spaces[0] -> spaces[1] -> ...`` with ``activation`` between them: a UNF's body.

  Equals applying :func:`apply` layer by layer, with ``activation`` after every layer but the last (and after the
  last too, followed by :func:`invariant_pool`, where ``pool``). Run this way, the layers pass each other their
  outputs as stacks of isomorphic leaves (a transformer's blocks), so the leaves are stacked once and split once,
  not once per layer (each split leaf is a kernel that XLA compiles: about 2.5 per leaf, docs' benchmarks page).

  Args:
    params: per layer, the params of :func:`init` for ``spaces[k] -> spaces[k + 1]``.
    x: pytree shaped like ``spaces[0]``, each leaf with one trailing feature axis.
    spaces: one more than ``params``.
    activation: pointwise nonlinearity.
    out_sizes: sizes of labels of ``spaces[-1]`` that ``spaces[0]`` lacks.
    fixed_axes: as given to :func:`init`, for every layer.
    pool: end with the activation and :func:`invariant_pool` (a vector) instead of the last layer's output.

  Returns:
    A pytree shaped like ``spaces[-1]`` (trailing features of the last layer), or the pooled vector.
  """
  if len(spaces) != len(params) + 1:
    raise ValueError(
      f"{len(params)} layers need {len(params) + 1} spaces (the input's, then each output's); got {len(spaces)}."
    )
  if not _BATCH or not params or not _layers_batch(spaces, x, out_sizes, fixed_axes):
    for k, layer in enumerate(params):
      last = k == len(params) - 1
      x = apply(layer, x, spaces[k], spaces[k + 1], out_sizes=out_sizes if last else None, fixed_axes=fixed_axes)
      x = x if last and not pool else jax.tree.map(activation, x)
    return invariant_pool(x, spaces[-1], fixed_axes=fixed_axes) if pool else x
  sizes = _label_sizes(spaces[0], x, out_sizes, spaces[-1].labels)
  stacks: list[jax.Array] | None = None
  held: tuple[WeightSpace, tuple[LeafLayout, ...], tuple] | None = None  # what the stacks hold: space, layouts, sizes
  for k, layer in enumerate(params):
    space_in, space_out, new_labels = label_fixed_axes(spaces[k], spaces[k + 1], fixed_axes)
    key = _program.label_sizes_key({**sizes, **dict(new_labels)})
    p = plan(space_in, space_out)
    if stacks is None or held != (space_in, p.layouts_in, key):
      if stacks is not None and held is not None:
        x = _leaves(stacks, *held)
      _check_features(p, layer, space_in, space_out, x)
      stacks = _stacks(x, space_in, p.layouts_in, key)
    stacks = _apply_stacks(layer, stacks, p, space_out, key)
    held = (space_out, p.layouts_out, key)
    if k < len(params) - 1 or pool:
      stacks = [activation(stack) for stack in stacks]
  assert stacks is not None and held is not None  # at least one layer
  if not pool:
    return _leaves(stacks, *held)
  space, _, new_labels = label_fixed_axes(spaces[-1], spaces[-1], fixed_axes)
  key = _program.label_sizes_key({**sizes, **dict(new_labels)})
  layouts = tuple(LeafLayout.of(a, space.fixed_shape(i)) for i, a in enumerate(space.axes))
  if held != (space, layouts, key):
    return invariant_pool(_leaves(stacks, *held), spaces[-1], fixed_axes=fixed_axes)
  return _pool_stacks(stacks, space, layouts, key)


def invariant_pool(x: Any, space: WeightSpace, *, fixed_axes: str | int = "auto") -> jax.Array:
  """Every invariant linear functional of every leaf, concatenated.

  For each leaf and each partition of its permutable axes (blocks within one
  label), the mean over that partition's diagonal, for every channel (fixed
  coordinate x feature). Satisfies ``invariant_pool(sigma . x) =
  invariant_pool(x)``. With ``fixed_axes="mix"``, or where no fixed axis is
  long, the functionals span every invariant linear map of the space; long
  fixed axes are otherwise labelled first (see the module's docstring), and
  averaged over like the others.

  Returns:
    A vector of length :func:`invariant_pool_size`,
    ``sum_leaf #partitions(leaf) * prod(fixed) * features``.
  """
  sizes = dict(space.validate(x, trailing=1))
  space, _, new_labels = label_fixed_axes(space, space, fixed_axes)
  sizes.update(new_labels)
  layouts = tuple(LeafLayout.of(a, space.fixed_shape(i)) for i, a in enumerate(space.axes))
  if not _BATCH:
    views = [_to_layer(leaf, layout) for leaf, layout in zip(space.flatten(x), layouts)]
    return jnp.concatenate([_reduce(views, r, sizes) for r in invariant_reductions(space)], axis=-1)
  key = _program.label_sizes_key(sizes)
  return _pool_stacks(_stacks(x, space, layouts, key), space, layouts, key)


def _pool_stacks(stacks: list[jax.Array], space: WeightSpace, layouts: tuple[LeafLayout, ...], key: tuple) -> jax.Array:
  """:func:`invariant_pool` on the class stacks of ``space`` (labelled)."""
  prog = _program.pool_program(invariant_reductions(space), layouts, key)
  batches = [_reduce_batch(stacks, [], batch) for batch in prog.batches]
  out = jnp.concatenate([batch.reshape(-1) for batch in batches])
  if prog.order is None:
    return out
  # Each member's outputs are a run of its channels: reorder the runs into the reductions' order.
  runs = [(start + k * b.shape[-1], b.shape[-1]) for b, start in zip(batches, _starts(batches)) for k in range(len(b))]
  stacked = [runs[position] for position in prog.order]
  return out[np.concatenate([np.arange(start, start + length) for start, length in stacked])]


def _starts(batches: list[jax.Array]) -> list[int]:
  return list(itertools.accumulate((b.size for b in batches[:-1]), initial=0))


def invariant_pool_size(space: WeightSpace, features: int, *, fixed_axes: str | int = "auto") -> int:
  """Length of :func:`invariant_pool`'s output."""
  space = label_fixed_axes(space, space, fixed_axes).space_in
  return sum(math.prod(space.fixed_shape(r.leaf)) * features for r in invariant_reductions(space))


# --- moving a layer to a renamed space --------------------------------------------


def _joint_renaming(
  space_in: WeightSpace, space_out: WeightSpace, new_space_in: WeightSpace, new_space_out: WeightSpace
) -> dict[str, str]:
  """One bijection of labels carrying both spaces onto the new ones (shared labels stay shared)."""
  renaming = space_in.match(new_space_in)
  for label, new in space_out.match(new_space_out).items():
    if renaming.setdefault(label, new) != new:
      raise ValueError(
        f"label {label!r} of both space_in and space_out becomes {renaming[label]!r} in new_space_in "
        f"but {new!r} in new_space_out: a label shared by the input and the output must stay shared."
      )
  sources: dict[str, str] = {}
  for label, new in renaming.items():
    if sources.setdefault(new, label) != label:
      raise ValueError(
        f"labels {sources[new]!r} and {label!r} are distinct in space_in and space_out but both become "
        f"{new!r} in the new spaces: labels of the input and the output must not become tied."
      )
  return renaming


def parameter_count(
  space_in: WeightSpace,
  space_out: WeightSpace,
  in_features: int,
  out_features: int,
  *,
  fixed_axes: str | int = "auto",
) -> int:
  """The number of scalars in :func:`unf.linear.init`'s params, counted without building them.

  Per (output leaf, input leaf) pair, every basis term has a weight per pair of channels (fixed coordinates x
  features), and every equivariant bias term a bias per output channel; with ``fixed_axes="mix"`` this is
  ``sum_pairs terms * (prod fixed_in * in_features) * (prod fixed_out * out_features)`` plus the biases,
  quadratic in the number of fixed coordinates. Label sizes (widths) do not enter.

  Args:
    space_in: input weight space (with fixed sizes).
    space_out: output weight space (with fixed sizes).
    in_features: trailing feature axis size of the input.
    out_features: trailing feature axis size of the output.
    fixed_axes: as for :func:`init`.

  Returns:
    The parameter count of ``EquivariantLinear(space_in, space_out, in_features, out_features,
    fixed_axes=fixed_axes)``.

  Example:
    >>> import unf
    >>> space = unf.WeightSpace({"w": (None, "h"), "b": ("h",)}, fixed_sizes={("w",): (784, None)})
    >>> unf.parameter_count(space, space, 32, 1, fixed_axes="mix")
    39439185
    >>> unf.parameter_count(space, space, 32, 1)
    322
  """
  space_in, space_out, _ = label_fixed_axes(space_in, space_out, fixed_axes)
  p = plan(space_in, space_out)
  total = 0
  for g in p.groups:
    columns = len(g.patterns) * _channels(p.layouts_out[g.out_leaf], out_features)
    total += sum(_piece_rows(p, g, in_features)) * columns + (columns if g.has_bias else 0)
  return total


def _piece_key(p: Plan, piece: Piece) -> tuple:
  # The einsum is built from axis positions alone (kept blocks, then pooled
  # blocks, in axis order), so with the leaf it names the reduction without labels.
  reduction = p.reductions[piece.reduction]
  return reduction.leaf, reduction.einsum, piece.transpose


def _pattern_key(pattern: Pattern) -> tuple:
  return pattern.carrier_order, pattern.expand, tuple((a, b) for a, b, _ in pattern.diagonals), pattern.singleton


def _gather(array: jax.Array, rows: np.ndarray, columns: np.ndarray | None = None) -> jax.Array:
  """``array[rows][:, columns]``; concrete params go through numpy, which compiles nothing per shape."""
  index = (rows,) if columns is None else np.ix_(rows, columns)
  if isinstance(array, jax.core.Tracer):
    return array[index]
  return jnp.asarray(np.asarray(array)[index])


def _features(params: Params, p: Plan, space_out: WeightSpace) -> tuple[int, int]:
  """``(in_features, out_features)`` of params from :func:`init`, whose names and shapes are checked."""
  expected_names = {_weight_name(space_out, g) for g in p.groups} | {
    _bias_name(space_out, g) for g in p.groups if g.has_bias
  }
  missing, extra = sorted(expected_names - set(params)), sorted(set(params) - expected_names)
  if missing or extra:
    raise ValueError(
      "params are not those of unf.linear.init(key, space_in, space_out, ...): "
      + "; ".join(part for part in (f"missing {missing}" if missing else "", f"extra {extra}" if extra else "") if part)
      + "."
    )
  group = p.groups[0]
  shape = jnp.shape(params[_weight_name(space_out, group)])
  in_unit = sum(_piece_rows(p, group, 1))
  out_unit = len(group.patterns) * _channels(p.layouts_out[group.out_leaf], 1)
  in_features, out_features = (shape[0] // in_unit, shape[1] // out_unit) if len(shape) == 2 else (0, 0)
  for g in p.groups:
    columns = len(g.patterns) * _channels(p.layouts_out[g.out_leaf], out_features)
    shapes: dict[str, tuple[int, ...]] = {_weight_name(space_out, g): (sum(_piece_rows(p, g, in_features)), columns)}
    if g.has_bias:
      shapes[_bias_name(space_out, g)] = (columns,)
    for name, want in shapes.items():
      if tuple(jnp.shape(params[name])) != want or not in_features or not out_features:
        raise ValueError(
          f"param {name!r} has shape {tuple(jnp.shape(params[name]))}, but a layer of these spaces with "
          f"{in_features} in and {out_features} out features (read from {_weight_name(space_out, group)!r}) "
          f"gives it {want}."
        )
  return in_features, out_features


def transfer(
  params: Params,
  space_in: WeightSpace,
  space_out: WeightSpace,
  new_space_in: WeightSpace,
  new_space_out: WeightSpace,
  *,
  fixed_axes: str | int = "auto",
) -> Params:
  """Re-expresses a layer's params for spaces that equal its own up to renaming.

  The new spaces must match the old ones (:meth:`WeightSpace.match`: the same
  leaves in the same order, labels renamed, paths arbitrary), under one
  bijection of labels for input and output together. Then, for ``x_new``
  holding the leaves of ``x`` in the same order under the new paths, leaf by leaf

    ``apply(transfer(params, ...), x_new, new_space_in, new_space_out) = apply(params, x, space_in, space_out)``.

  Renaming changes more than the param names (``"{out path}|{signature}"``):
  the basis enumerates labels in sorted order, so the pieces (row blocks) and
  patterns (column blocks) inside a weight can come in another order; they
  are matched by their label-free structure and permuted.

  Args:
    params: from :func:`init` on ``space_in`` and ``space_out`` (feature counts
      are read from the shapes).
    space_in: input space of ``params``.
    space_out: output space of ``params``.
    new_space_in: the input space renamed.
    new_space_out: the output space renamed.
    fixed_axes: as given to :func:`init` (for the old and the new spaces alike).

  Returns:
    The params of the same map for ``new_space_in -> new_space_out``.

  Raises:
    ValueError: if a new space does not match its old one, the two renamings
      disagree on a shared label or tie distinct labels, the new paths pair
      the input and output leaves of labelled fixed axes otherwise, or
      ``params`` are not those of a layer ``space_in -> space_out``.

  Example:
    >>> import jax, unf
    >>> old = unf.WeightSpace({"w": ("in", "hidden")})
    >>> new = unf.WeightSpace({"v": ("x", "a")})
    >>> params = unf.linear.init(jax.random.key(0), old, old, 1, 2)
    >>> sorted(unf.linear.transfer(params, old, old, new, new))
    ['v|-', 'v|a', 'v|bias', 'v|x', 'v|x,a']
  """
  _joint_renaming(space_in, space_out, new_space_in, new_space_out)
  space_in, space_out, _ = label_fixed_axes(space_in, space_out, fixed_axes)
  new_space_in, new_space_out, _ = label_fixed_axes(new_space_in, new_space_out, fixed_axes)
  try:
    renaming = _joint_renaming(space_in, space_out, new_space_in, new_space_out)
  except ValueError as error:
    raise ValueError(
      f"with fixed_axes={fixed_axes!r}, long fixed axes get labels of their own, shared by the input and the "
      "output leaf at the same path; the new spaces pair their leaves by path otherwise, so the layer would have "
      f"other terms ({error}). Keep the paths that space_in and space_out share shared, or use fixed_axes='mix'."
    ) from error
  old, new = plan(space_in, space_out), plan(new_space_in, new_space_out)
  in_features, out_features = _features(params, old, space_out)
  old_groups = {(g.out_leaf, tuple(renaming[label] for label in g.signature)): g for g in old.groups}
  moved: Params = {}
  for g in new.groups:
    source = old_groups[(g.out_leaf, g.signature)]
    row_starts = itertools.accumulate(_piece_rows(old, source, in_features), initial=0)
    rows_of = {_piece_key(old, piece): start for piece, start in zip(source.pieces, row_starts)}
    columns = _channels(new.layouts_out[g.out_leaf], out_features)
    columns_of = {_pattern_key(pattern): k * columns for k, pattern in enumerate(source.patterns)}
    if set(rows_of) != {_piece_key(new, piece) for piece in g.pieces} or set(columns_of) != set(
      map(_pattern_key, g.patterns)
    ):
      raise AssertionError(f"unf.basis: renaming changed the terms of group {g.name}; this is a bug.")
    rows = np.concatenate(
      [rows_of[_piece_key(new, piece)] + np.arange(n) for piece, n in zip(g.pieces, _piece_rows(new, g, in_features))]
    )
    cols = np.concatenate([columns_of[_pattern_key(pattern)] + np.arange(columns) for pattern in g.patterns])
    moved[_weight_name(new_space_out, g)] = _gather(params[_weight_name(space_out, source)], rows, cols)
    if g.has_bias:
      moved[_bias_name(new_space_out, g)] = _gather(params[_bias_name(space_out, source)], cols)
  return moved
