"""The basis of permutation-equivariant linear maps between two weight spaces.

This module is plain Python: it enumerates, once per pair of spaces, the
terms of the maximally expressive equivariant linear layer (Zhou et al. 2024,
"Universal Neural Functionals", Sec. 3) and compiles them into an execution
plan that :mod:`unf.linear` runs with a handful of JAX operations per leaf.
Plans are cached (``functools.lru_cache``), so tracing never re-enumerates.

The basis. For an output leaf and an input leaf, a term is a partition of
the union of their permutable axes into blocks, each block holding axes of
a single label. A block with input and output axes is *kept*: the input is
read on the diagonal of its input axes and written on the diagonal of its
output axes at the same index. An input-only block is *pooled* (mean over the
diagonal of its axes). An output-only block *broadcasts* (along the diagonal
of its axes). Fixed (None) axes are mixed like channels. Their number is
``prod_label Bell(#output axes + #input axes with that label)`` per leaf pair.
The layers first give long fixed axes labels of their own
(:func:`label_fixed_axes`, their ``fixed_axes`` option), so that their size
does not grow with those axes' lengths.

Execution plan. Terms factor into an input *reduction* (which input axes are
kept or pooled, computed once per input leaf for all output leaves), a channel
mixing, and an output *pattern* (how kept indices and broadcasts are written).
For one output leaf, all terms whose kept indices carry the same multiset of
labels (the *signature*) share one concatenated input and one matrix product
that mixes channels on the small pooled tensors for every pattern at once;
output leaves whose groups read the same input share that product too (a
*bundle*). Only then are results broadcast into the output, where XLA fuses
the additions into one loop.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import string
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from unf.space import WeightSpace, path_str

Block = tuple[int, ...]  # axis positions within a leaf's permutable axes


def bell(n: int) -> int:
  """The Bell number B(n): the number of partitions of an n-element set."""
  row = [1]
  for _ in range(n):
    nxt = [row[-1]]
    for value in row:
      nxt.append(nxt[-1] + value)
    row = nxt
  return row[0]


def set_partitions(items: Sequence) -> Iterator[list[list]]:
  """Yields every partition of ``items`` into non-empty blocks (in a fixed order)."""
  items = list(items)
  if not items:
    yield []
    return
  first, rest = items[0], items[1:]
  for partition in set_partitions(rest):
    yield [[first], *partition]
    for i in range(len(partition)):
      yield partition[:i] + [[first, *partition[i]]] + partition[i + 1 :]


def _label_partitions(labels: Sequence[str]) -> Iterator[list[tuple[str, Block]]]:
  """Partitions of the positions of ``labels`` (of permutable axes), blocks within one label."""
  by_label: dict[str, list[int]] = {}
  for pos, label in enumerate(labels):
    by_label.setdefault(label, []).append(pos)
  per_label = [[(label, p) for p in set_partitions(pos)] for label, pos in sorted(by_label.items())]
  for choice in itertools.product(*per_label):
    yield [(label, tuple(block)) for label, partition in choice for block in partition]


# --- plan data ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LeafLayout:
  """How a leaf is viewed inside a layer: permutable axes first, then channels.

  ``channels = prod(fixed sizes) * features``; ``to_layer`` transposes the leaf
  (with its trailing feature axis) so that permutable axes come first, in order.
  """

  labels: tuple[str, ...]  # labels of the permutable axes, in axis order
  fixed_shape: tuple[int, ...]
  to_layer: tuple[int, ...]  # transpose: leaf (+features) -> (permutable..., fixed..., features)
  from_layer: tuple[int, ...]  # its inverse

  @classmethod
  def of(cls, axes: Sequence[str | None], fixed_shape: tuple[int, ...]) -> LeafLayout:
    permutable = [i for i, a in enumerate(axes) if a is not None]
    fixed = [i for i, a in enumerate(axes) if a is None]
    order = (*permutable, *fixed, len(axes))
    inverse = tuple(order.index(i) for i in range(len(order)))
    return cls(tuple(a for a in axes if a is not None), fixed_shape, order, inverse)


@dataclasses.dataclass(frozen=True)
class Reduction:
  """Reads diagonals of an input leaf and mean-pools some of them.

  Result: shape ``(sizes of kept blocks..., channels)``, kept blocks ordered by
  their first axis.
  """

  leaf: int
  einsum: str
  kept_labels: tuple[str, ...]
  pooled_labels: tuple[str, ...]
  # When another reduction keeps exactly one more block, this one is its mean
  # over that block's axis: a pass over the small result, not over the leaf.
  parent: int | None = None
  parent_axis: int = -1


@dataclasses.dataclass(frozen=True)
class Pattern:
  """Writes a tensor ``(slot sizes..., channels)`` into an output leaf.

  ``carrier_order`` transposes slots into the order of the kept blocks' first
  output axes; ``expand`` gives, per output axis, whether it carries a kept
  index (True) or is size 1 before broadcasting; ``diagonals`` lists pairs of
  output axes tied by an identity mask (a block's first axis with each other).
  """

  carrier_order: tuple[int, ...]
  expand: tuple[bool, ...]
  diagonals: tuple[tuple[int, int, str], ...]  # (axis, axis, label)
  singleton: bool  # every block holds one axis: writes to off-diagonal entries


@dataclasses.dataclass(frozen=True)
class Piece:
  """One reduced input, aligned to a signature's slot order."""

  reduction: int  # index into Plan.reductions
  transpose: tuple[int, ...]  # slot -> kept position in the reduction


@dataclasses.dataclass(frozen=True)
class Group:
  """All terms of one output leaf whose kept indices carry the same labels."""

  out_leaf: int
  signature: tuple[str, ...]  # label of every slot
  pieces: tuple[Piece, ...]
  patterns: tuple[Pattern, ...]
  has_bias: bool  # signature () groups hold the leaf's full equivariant bias

  @property
  def name(self) -> str:
    return f"{self.out_leaf}:{','.join(self.signature) or '-'}"


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything :mod:`unf.linear` needs to run an equivariant layer."""

  space_in: WeightSpace
  space_out: WeightSpace
  layouts_in: tuple[LeafLayout, ...]
  layouts_out: tuple[LeafLayout, ...]
  reductions: tuple[Reduction, ...]
  reduction_order: tuple[int, ...]  # parents before children
  groups: tuple[Group, ...]
  num_terms: int
  # Indices of groups that read the same pieces (the same concatenated input), in group order: one
  # matrix product serves them all. On a 6-block transformer 407 groups read 98 distinct inputs.
  bundles: tuple[tuple[int, ...], ...] = ()


# --- enumeration -------------------------------------------------------------


def _reduction_einsum(labels: Sequence[str], kept: Sequence[Block], pooled: Sequence[Block]) -> str:
  letters = iter(string.ascii_letters)
  sub = [""] * len(labels)
  kept_letters = []
  for block in [*kept, *pooled]:
    letter = next(letters)
    for pos in block:
      sub[pos] = letter
    if block in kept:
      kept_letters.append(letter)
  return f"{''.join(sub)}Z->{''.join(kept_letters)}Z"


def _pattern(labels: Sequence[str], slots: Sequence[Block], broadcast: Sequence[Block]) -> Pattern:
  carriers = sorted(range(len(slots)), key=lambda s: slots[s][0])
  expand = [False] * len(labels)
  for block in slots:
    expand[block[0]] = True
  diagonals = tuple((block[0], other, labels[other]) for block in [*slots, *broadcast] for other in block[1:])
  singleton = all(len(b) == 1 for b in [*slots, *broadcast])
  return Pattern(tuple(carriers), tuple(expand), diagonals, singleton)


def _slot_order(labels: Sequence[str]) -> dict[str, int]:
  """Labels ranked by first appearance in an output leaf: slots follow this order."""
  rank: dict[str, int] = {}
  for label in labels:
    rank.setdefault(label, len(rank))
  return rank


@functools.lru_cache(maxsize=4096)
def _pair_terms(out_labels: tuple[str, ...], in_labels: tuple[str, ...]) -> tuple[tuple, ...]:
  """The terms between an output leaf and an input leaf of these permutable labels, in enumeration order.

  Each term: ``(kept input blocks, pooled input blocks, signature, transpose, slots, broadcast blocks)``. They
  depend on the labels only through which positions share one and on their sorted order (the partitions'
  order): :func:`_terms_of_pair` calls it with labels renamed to their rank, so that the leaf pairs of
  isomorphic blocks share one entry of the cache.
  """
  n_out = len(out_labels)
  rank = _slot_order(out_labels)
  terms = []
  # Output patterns and input reductions come from partitions of the union of axes.
  for partition in _label_partitions([*out_labels, *in_labels]):
    kept_out, kept_in, pooled, broadcast = [], [], [], []
    for label, block in partition:
      out_part = tuple(p for p in block if p < n_out)
      in_part = tuple(p - n_out for p in block if p >= n_out)
      if out_part and in_part:
        kept_out.append((label, out_part))
        kept_in.append(in_part)
      elif in_part:
        pooled.append(in_part)
      else:
        broadcast.append(out_part)
    # Slots: kept output blocks sorted by (label rank, first axis).
    slot_of = sorted(range(len(kept_out)), key=lambda k: (rank[kept_out[k][0]], kept_out[k][1][0]))
    slots = tuple(kept_out[k][1] for k in slot_of)
    signature = tuple(kept_out[k][0] for k in slot_of)
    # The reduction keeps input blocks ordered by first axis.
    in_order = sorted(range(len(kept_in)), key=lambda k: kept_in[k][0])
    kept_sorted = tuple(kept_in[k] for k in in_order)
    transpose = tuple(in_order.index(k) for k in slot_of)
    terms.append((kept_sorted, tuple(sorted(pooled)), signature, transpose, slots, tuple(sorted(broadcast))))
  return tuple(terms)


def _terms_of_pair(out_labels: tuple[str, ...], in_labels: tuple[str, ...]) -> tuple[tuple, ...]:
  """:func:`_pair_terms` of these labels, enumerated once per renamed pair: the labels are renamed to their rank
  (the same sorted order, so the same enumeration order), and the signatures renamed back."""
  names = sorted({*out_labels, *in_labels})
  rank = {label: f"{k:04d}" for k, label in enumerate(names)}
  terms = _pair_terms(tuple(rank[a] for a in out_labels), tuple(rank[a] for a in in_labels))
  return tuple((t[0], t[1], tuple(names[int(a)] for a in t[2]), *t[3:]) if t[2] else t for t in terms)


@functools.lru_cache(maxsize=65536)
def _cached_pattern(labels: tuple[str, ...], slots: tuple[Block, ...], broadcast: tuple[Block, ...]) -> Pattern:
  return _pattern(labels, slots, broadcast)


@functools.lru_cache(maxsize=256)
def plan(space_in: WeightSpace, space_out: WeightSpace) -> Plan:
  """Enumerates the basis of equivariant affine maps ``space_in -> space_out``.

  Cached per pair of spaces. Raises a ValueError if a fixed axis has no size.
  """
  layouts_in = tuple(LeafLayout.of(a, space_in.fixed_shape(i)) for i, a in enumerate(space_in.axes))
  layouts_out = tuple(LeafLayout.of(a, space_out.fixed_shape(i)) for i, a in enumerate(space_out.axes))
  reductions: dict[tuple, int] = {}
  pieces: dict[tuple, Piece] = {}
  groups: dict[tuple[int, tuple[str, ...]], dict] = {}
  num_terms = 0
  for o, out in enumerate(layouts_out):
    for j, inp in enumerate(layouts_in):
      terms = _terms_of_pair(out.labels, inp.labels)
      num_terms += len(terms)
      for kept_sorted, pooled_sorted, signature, transpose, slots, broadcast in terms:
        rkey = (j, kept_sorted, pooled_sorted)
        if rkey not in reductions:
          reductions[rkey] = len(reductions)
        pkey = (reductions[rkey], transpose)
        if pkey not in pieces:
          pieces[pkey] = Piece(*pkey)
        gkey = (o, signature)
        if gkey not in groups:
          groups[gkey] = {"pieces": {}, "patterns": {}, "terms": 0}
        group = groups[gkey]
        group["pieces"][pieces[pkey]] = None
        group["patterns"][_cached_pattern(out.labels, slots, broadcast)] = None
        group["terms"] += 1
  # Every piece pairs with every pattern of its group, each pair one term: one matrix product covers them all.
  built = []
  for (o, signature), group in sorted(groups.items()):
    group_pieces, patterns = tuple(group["pieces"]), tuple(group["patterns"])
    assert group["terms"] == len(group_pieces) * len(patterns), (o, signature)
    built.append(Group(o, signature, group_pieces, patterns, has_bias=not signature))
  # reductions numbers its keys in insertion order, so appending in that order puts each at its index.
  reduction_list: list[Reduction] = []
  for (j, kept, pooled), index in reductions.items():
    assert index == len(reduction_list), (index, len(reduction_list))
    labels = layouts_in[j].labels
    parent, parent_axis = None, -1
    for block in pooled:
      wider = tuple(sorted((*kept, block)))
      key = (j, wider, tuple(b for b in pooled if b != block))
      if key in reductions:
        parent, parent_axis = reductions[key], wider.index(block)
        break
    reduction_list.append(
      Reduction(
        leaf=j,
        einsum=_reduction_einsum(labels, kept, pooled),
        kept_labels=tuple(labels[b[0]] for b in kept),
        pooled_labels=tuple(labels[b[0]] for b in pooled),
        parent=parent,
        parent_axis=parent_axis,
      )
    )
  order = tuple(sorted(range(len(reduction_list)), key=lambda r: len(reduction_list[r].pooled_labels)))
  bundles: dict[tuple[Piece, ...], list[int]] = {}
  for k, built_group in enumerate(built):
    bundles.setdefault(built_group.pieces, []).append(k)
  return Plan(
    space_in,
    space_out,
    layouts_in,
    layouts_out,
    tuple(reduction_list),
    order,
    tuple(built),
    num_terms,
    tuple(map(tuple, bundles.values())),
  )


def count_terms(space_in: WeightSpace, space_out: WeightSpace) -> int:
  """Number of basis terms of the equivariant linear maps, summed over leaf pairs.

  Equals ``sum_{pairs} prod_label Bell(a_label + b_label)`` where ``a`` and ``b``
  count the label's axes in the output and input leaf (fixed axes not counted).
  """
  return plan(space_in, space_out).num_terms


def count_bias_terms(space: WeightSpace) -> int:
  """Number of equivariant bias terms: per leaf, the partitions of its own axes."""
  return sum(math.prod(bell(sum(a == label for a in axes)) for label in set(axes) - {None}) for axes in space.axes)


@functools.lru_cache(maxsize=256)
def invariant_reductions(space: WeightSpace) -> tuple[Reduction, ...]:
  """Per leaf, every partition of its permutable axes, read on the diagonal and pooled."""
  out = []
  for j, axes in enumerate(space.axes):
    labels = LeafLayout.of(axes, ()).labels
    for partition in _label_partitions(labels):
      pooled = tuple(sorted(block for _, block in partition))
      out.append(
        Reduction(
          leaf=j,
          einsum=_reduction_einsum(labels, (), pooled),
          kept_labels=(),
          pooled_labels=tuple(labels[b[0]] for b in pooled),
        )
      )
  return tuple(out)


# --- bounding long fixed axes ---------------------------------------------------

#: The most fixed coordinates per leaf that ``fixed_axes="auto"`` mixes like channels: a 3x3 kernel's 9
#: positions, a 10-class output. The paper's four tasks stay within it (their largest is 9).
AUTO_MIXED_COORDINATES = 10

#: The values of the ``fixed_axes`` option besides a positive int (the most fixed coordinates mixed per leaf).
FIXED_AXES_CHOICES = ("auto", "mix", "label")


def mixed_coordinates_limit(fixed_axes: str | int) -> float:
  """The most fixed coordinates per leaf that ``fixed_axes`` mixes like channels (``inf`` for ``"mix"``).

  Raises:
    ValueError: on a value that is none of ``"auto"``, ``"mix"``, ``"label"`` or a positive int.
  """
  if isinstance(fixed_axes, str) and fixed_axes in FIXED_AXES_CHOICES:
    return {"auto": AUTO_MIXED_COORDINATES, "mix": math.inf, "label": 1}[fixed_axes]
  if isinstance(fixed_axes, int) and not isinstance(fixed_axes, bool) and fixed_axes >= 1:
    return fixed_axes
  raise ValueError(
    f"fixed_axes={fixed_axes!r}; choose one of {FIXED_AXES_CHOICES} or a positive int (the most fixed coordinates "
    "per leaf that are mixed like channels)."
  )


def _axes_to_label(fixed: Sequence[tuple[int, int]], limit: float) -> list[int]:
  """Of a leaf's fixed axes ``(position, length)``, the positions that get a label: longest first (the last of
  equal ones first), until the others multiply to at most ``limit``."""
  remaining = sorted(fixed, key=lambda axis: (axis[1], axis[0]))
  chosen = []
  while remaining and math.prod(length for _, length in remaining) > limit:
    chosen.append(remaining.pop()[0])
  return sorted(chosen)


class LabelledSpaces(NamedTuple):
  """Two spaces whose long fixed axes carry labels of their own (:func:`label_fixed_axes`).

  Attributes:
    space_in: the input space, relabelled.
    space_out: the output space, relabelled.
    sizes: the new labels and their lengths, as ``(label, length)`` pairs.
  """

  space_in: WeightSpace
  space_out: WeightSpace
  sizes: tuple[tuple[str, int], ...]


@functools.lru_cache(maxsize=256)
def label_fixed_axes(space_in: WeightSpace, space_out: WeightSpace, fixed_axes: str | int = "auto") -> LabelledSpaces:
  """Gives the long fixed axes of both spaces labels of their own, so that layers do not mix them like channels.

  A layer mixes a leaf's fixed (None) axes like channels: its parameters grow with the square of their number
  of coordinates (a Dense layer after a flatten has thousands). This gives the longest fixed axes of every leaf,
  one by one (the last of equal ones first), a new label of their own until the leaf's remaining fixed axes have
  at most ``limit`` coordinates (``fixed_axes``: ``"auto"`` :data:`AUTO_MIXED_COORDINATES`, ``"mix"`` no limit,
  ``"label"`` 1, or an int). The new label is named after its leaf path and axis (``"dense0/kernel[0]"``) and is
  shared by the input and the output leaf at the same path, so that a layer still reads each position of a
  weight to write the same position. A layer equivariant to the new spaces' group is equivariant to the true
  one, which it contains (the new labels' permutations besides the identity), with a parameter count that no
  longer depends on those axes' lengths: the bias of the authors' code, which labels every fixed axis
  (Zhou et al. 2024). Where nothing is labelled, the spaces are returned as they are.

  Args:
    space_in: the input space, with fixed sizes.
    space_out: the output space, with fixed sizes.
    fixed_axes: ``"auto"``, ``"mix"``, ``"label"`` or the most fixed coordinates mixed per leaf.

  Returns:
    The relabelled spaces and the lengths of the new labels.

  Raises:
    ValueError: on a bad ``fixed_axes``, or a fixed axis of unknown size.

  Example:
    >>> import unf
    >>> space = unf.WeightSpace({"w": (None, "h")}, fixed_sizes={("w",): (784, None)})
    >>> unf.basis.label_fixed_axes(space, space).space_in
    WeightSpace(
      w: (w[0], h)
    )
  """
  limit = mixed_coordinates_limit(fixed_axes)
  taken = set(space_in.labels) | set(space_out.labels)
  sizes: dict[str, int] = {}
  spaces = []
  for space in (space_in, space_out):
    leaves, fixed_sizes, changed = [], {}, False
    for index, (path, axes) in enumerate(zip(space.paths, space.axes)):
      shape = iter(space.fixed_shape(index))
      fixed = [(axis, next(shape)) for axis, label in enumerate(axes) if label is None]
      lengths = dict(fixed)
      new_axes = list(axes)
      for axis in _axes_to_label(fixed, limit):
        length, base = lengths[axis], f"{path_str(path)}[{axis}]"
        name, attempt = base, 0
        # A user's label of that name, or the same path at another length in the other space: a new name.
        while name in taken or sizes.get(name, length) != length:
          attempt += 1
          name = f"{base}~{attempt}"
        sizes[name], new_axes[axis], changed = length, name, True
      leaves.append(tuple(new_axes))
      if None in new_axes:
        fixed_sizes[path] = tuple(lengths[axis] if a is None else None for axis, a in enumerate(new_axes))
    spaces.append(WeightSpace(space.unflatten(leaves), fixed_sizes=fixed_sizes) if changed else space)
  return LabelledSpaces(spaces[0], spaces[1], tuple(sorted(sizes.items())))


def clear_caches() -> None:
  """Empties every cache of this module (the plans and what they are built from), as in a fresh process."""
  for cached in (plan, _pair_terms, _cached_pattern, invariant_reductions, label_fixed_axes):
    cached.cache_clear()
