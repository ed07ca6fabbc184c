"""How :func:`unf.linear.apply` runs a plan: the steps that repeat across a weight space, batched into one each.

Transformers, ResNets and deep MLPs repeat one block, so a plan (:func:`unf.basis.plan`) holds the same
reduction, the same channel mixing and the same write once per block. Run one by one, every copy compiles
kernels of its own, and compilation grows with depth. Here the plan's steps that are equal but for the leaves
they read and write (same einsum on the same shape, same channel mixing, same output pattern on the same
shape) form one *batch*, run as one operation over a stack of its members. The number of batches then depends on
how many kinds of leaves a space has, not on how many leaves of each kind; only stacking the input leaves and
splitting the output into leaves remain per leaf.

Plain Python, computed once per plan and label sizes and cached, like the plan itself.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TypeVar

from unf.basis import LeafLayout, Pattern, Plan, Reduction

T = TypeVar("T", bound=Hashable)


@dataclasses.dataclass(frozen=True)
class ReductionBatch:
  """Reductions of the plan with one einsum on leaves of one shape, run as one operation.

  A root batch reads the stack of input class ``source`` (:func:`classes`) at ``positions`` (None: all of it,
  in order). A child batch averages the results of batch ``source`` (earlier in the program) over
  ``parent_axis``, taking its members at ``positions``.
  """

  reductions: tuple[int, ...]  # indices into Plan.reductions (or invariant reductions), in stack order
  einsum: str
  scale: float  # 1 / the number of entries each output averages (root batches)
  source: int
  positions: tuple[int, ...] | None
  child: bool = False
  parent_axis: int = -1


@dataclasses.dataclass(frozen=True)
class Segment:
  """The pieces of a bundle batch's input that one reduction batch gives (with one transpose), taken together.

  Member ``i`` reads the batch's entries ``positions[i]``, one per piece (``pieces``: their places in the
  bundle's piece order); they become one block of input channels, piece-major.
  """

  batch: int
  transpose: tuple[int, ...]
  pieces: tuple[int, ...]
  positions: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class Cluster:
  """Groups of a bundle that write one output class with the same patterns: written together.

  Member ``i``'s group ``groups[k]`` writes the class's entry ``positions[i * len(groups) + k]``.
  """

  groups: tuple[int, ...]  # places in the bundle's group order
  patterns: tuple[Pattern, ...]
  out_class: int
  positions: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class BundleBatch:
  """Bundles (:class:`unf.basis.Plan`) of equal structure: one stacked input, one batched matrix product."""

  members: tuple[tuple[int, ...], ...]  # per member (bundle), its groups (indices into Plan.groups)
  segments: tuple[Segment, ...]
  clusters: tuple[Cluster, ...]
  fuse: bool  # every group writes every output entry once (see unf.linear._mix_channels)


@dataclasses.dataclass(frozen=True)
class Classes:
  """A space's leaves in classes of one layer-view shape ``(permutable sizes..., channels)``: each class runs
  as one stack ``(members, permutable sizes..., channels)``, its members in leaf order."""

  members: tuple[tuple[int, ...], ...]
  position: tuple[tuple[int, int], ...]  # per leaf, (class, position in it)


@functools.lru_cache(maxsize=256)
def classes(layouts: tuple[LeafLayout, ...], sizes: tuple[tuple[str, int], ...]) -> Classes:
  """Groups leaves by their label sizes and fixed shape (``sizes``: sorted ``(label, size)`` pairs)."""
  size = dict(sizes)
  where: dict[int, tuple[int, int]] = {}
  members = _batched(
    range(len(layouts)),
    lambda leaf: (tuple(size[label] for label in layouts[leaf].labels), layouts[leaf].fixed_shape),
    where,
  )
  return Classes(tuple(map(tuple, members)), tuple(where[leaf] for leaf in range(len(layouts))))


@dataclasses.dataclass(frozen=True)
class Program:
  """A plan's steps in batches, for given label sizes."""

  reductions: tuple[ReductionBatch, ...]  # parents before children
  bundles: tuple[BundleBatch, ...]
  classes_in: Classes
  classes_out: Classes

  @property
  def batches_anything(self) -> bool:
    """Whether some batch has several members: where none has, the plan runs faster step by step (no stacks,
    no reordering of weights)."""
    return any(len(batch.reductions) > 1 for batch in self.reductions) or any(
      len(batch.members) > 1 or any(len(cluster.groups) > 1 for cluster in batch.clusters) for batch in self.bundles
    )


def _identity_or(positions: list[int], length: int) -> tuple[int, ...] | None:
  return None if positions == list(range(length)) else tuple(positions)


def _pattern_key(pattern: Pattern) -> tuple:
  # Label-free: an output class fixes the sizes that the diagonals' labels stand for.
  return pattern.carrier_order, pattern.expand, tuple((a, b) for a, b, _ in pattern.diagonals)


def _batched(
  items: Iterable[T], key: Callable[[T], Hashable], where: dict[T, tuple[int, int]] | None = None
) -> list[list[T]]:
  """``items`` in batches of equal ``key``, in order of first appearance; ``where`` gets each item's (batch,
  position) as it is placed, so that ``key`` may read the places of the items before it."""
  index: dict[Hashable, int] = {}
  batches: list[list[T]] = []
  where = {} if where is None else where
  for item in items:
    b = index.setdefault(key(item), len(index))
    if b == len(batches):
      batches.append([])
    where[item] = (b, len(batches[b]))
    batches[b].append(item)
  return batches


@functools.lru_cache(maxsize=256)
def program(p: Plan, sizes: tuple[tuple[str, int], ...]) -> Program:
  """Batches the steps of plan ``p`` for the label sizes ``sizes`` (sorted ``(label, size)`` pairs)."""
  size = dict(sizes)
  classes_in, classes_out = classes(p.layouts_in, sizes), classes(p.layouts_out, sizes)
  out_class = [c for c, _ in classes_out.position]

  # Reductions, in the plan's order (parents first): a root by (einsum, input class), a child by (parent's
  # batch, axis).
  where: dict[int, tuple[int, int]] = {}  # reduction -> (batch, position); filled before its children ask

  def reduction_key(index: int) -> Hashable:
    r = p.reductions[index]
    if r.parent is None:
      return "root", r.einsum, classes_in.position[r.leaf][0]
    return "child", where[r.parent][0], r.parent_axis

  reduction_members = _batched(p.reduction_order, reduction_key, where)
  reduction_batches = []
  for indices in reduction_members:
    first = p.reductions[indices[0]]
    parent = first.parent
    if parent is None:
      source = classes_in.position[first.leaf][0]
      positions = [classes_in.position[p.reductions[r].leaf][1] for r in indices]
      scale = 1.0 / math.prod(size[label] for label in first.pooled_labels)
      count = len(classes_in.members[source])
      reduction_batches.append(
        ReductionBatch(tuple(indices), first.einsum, scale, source, _identity_or(positions, count))
      )
    else:
      source = where[parent][0]
      parents = [p.reductions[r].parent for r in indices]  # all set: a child batch's members are children
      positions = [where[q][1] for q in parents if q is not None]
      count = len(reduction_members[source])
      reduction_batches.append(
        ReductionBatch(
          tuple(indices), first.einsum, 1.0, source, _identity_or(positions, count), True, first.parent_axis
        )
      )

  # Bundles, by the batches their pieces read and the structure of what their groups write.
  def bundle_key(bundle: tuple[int, ...]) -> Hashable:
    groups = [p.groups[k] for k in bundle]
    reads = tuple((where[piece.reduction][0], piece.transpose) for piece in groups[0].pieces)
    writes = tuple((tuple(map(_pattern_key, g.patterns)), out_class[g.out_leaf], g.has_bias) for g in groups)
    return reads, writes

  bundle_batches = []
  for members in _batched(p.bundles, bundle_key):
    groups_of_first = [p.groups[k] for k in members[0]]
    segment_of: dict[tuple, list[int]] = {}
    for k, piece in enumerate(groups_of_first[0].pieces):
      segment_of.setdefault((where[piece.reduction][0], piece.transpose), []).append(k)
    segments = tuple(
      Segment(
        batch,
        transpose,
        tuple(pieces),
        tuple(tuple(where[p.groups[bundle[0]].pieces[k].reduction][1] for k in pieces) for bundle in members),
      )
      for (batch, transpose), pieces in segment_of.items()
    )
    cluster_of: dict[tuple, list[int]] = {}
    for q, g in enumerate(groups_of_first):
      cluster_of.setdefault((out_class[g.out_leaf], tuple(map(_pattern_key, g.patterns))), []).append(q)
    clusters = tuple(
      Cluster(
        tuple(groups),
        groups_of_first[groups[0]].patterns,
        c,
        tuple(classes_out.position[p.groups[bundle[q]].out_leaf][1] for bundle in members for q in groups),
      )
      for (c, _), groups in cluster_of.items()
    )
    fuse = all(writes_every_entry_once(g.patterns) for g in groups_of_first)
    bundle_batches.append(BundleBatch(tuple(members), segments, clusters, fuse))
  return Program(tuple(reduction_batches), tuple(bundle_batches), classes_in, classes_out)


def writes_every_entry_once(patterns: tuple[Pattern, ...]) -> bool:
  """True for a group whose only pattern keeps every output axis as its own index."""
  if len(patterns) != 1:
    return False
  (pattern,) = patterns
  return all(pattern.expand) and not pattern.diagonals and pattern.carrier_order == tuple(range(len(pattern.expand)))


@dataclasses.dataclass(frozen=True)
class PoolProgram:
  """:func:`unf.linear.invariant_pool` in batches: reductions of one einsum on leaves of one shape, stacked."""

  batches: tuple[ReductionBatch, ...]
  order: tuple[int, ...] | None  # the batches' outputs, concatenated, taken in this order (None: as they are)


@functools.lru_cache(maxsize=256)
def pool_program(reductions: tuple[Reduction, ...], layouts: tuple[LeafLayout, ...], sizes: tuple) -> PoolProgram:
  """Batches invariant reductions (:func:`unf.basis.invariant_reductions`, all roots) for the label sizes."""
  size = dict(sizes)
  leaf_classes = classes(layouts, sizes)
  members = _batched(
    range(len(reductions)), lambda r: (reductions[r].einsum, leaf_classes.position[reductions[r].leaf][0])
  )
  batches = []
  for batch in members:
    first = reductions[batch[0]]
    source = leaf_classes.position[first.leaf][0]
    positions = [leaf_classes.position[reductions[r].leaf][1] for r in batch]
    scale = 1.0 / math.prod(size[label] for label in first.pooled_labels)
    batches.append(
      ReductionBatch(
        tuple(batch), first.einsum, scale, source, _identity_or(positions, len(leaf_classes.members[source]))
      )
    )
  # Each batch yields its members' outputs one after another: the output order is the reductions'.
  stacked = [r for batch in members for r in batch]
  order = [0] * len(stacked)
  for position, r in enumerate(stacked):
    order[r] = position
  return PoolProgram(tuple(batches), _identity_or(order, len(order)))


def label_sizes_key(sizes: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
  """The hashable form of label sizes that :func:`program` takes."""
  return tuple(sorted((label, int(n)) for label, n in sizes.items()))
