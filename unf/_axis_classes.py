"""The union-find over axis nodes that :func:`unf.infer_space` runs its rules on.

Every axis of every array in a traced program is a node. A rule *ties* two
nodes (one permutation must act on both) or *fixes* one (no permutation may
act on it), and each class remembers why it is fixed. A class may also carry a
structure: the factors of an axis merged by a reshape, or the blocks of an
axis made by a concatenation; a rule that meets a structured axis in a way the
structure does not explain fixes it and everything in it, so the inference
stays sound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

Nodes = tuple[int, ...]


class AxisClasses:
  """Union-find over axis nodes; each class remembers why it is fixed (the first reason), if it is.

  A *merged* class is an axis made by a reshape of axes (a, b, ...) into one of size |a| |b| ... (as
  ``unf.merge_gates`` makes a gate axis and a hidden axis into one, or image patches their channels and
  kernel positions): it is permuted by the product of the permutations of its factors, and a split of it back
  into |a| blocks ties each block to the rest. A merged class may meet another whose factors group alike
  (their factors are tied group by group), or a *fresh* axis (an op's output, not yet tied to anything), which
  then takes its factors; meeting any other axis fixes both and the factors.

  A *concatenated* class is an axis made by concatenating axes (a, b, ...) end to end (as linen's
  ``OptimizedLSTMCell`` concatenates its gates' kernels): it is permuted by the block-diagonal permutation of
  its blocks', so a slice or split at block boundaries gives the blocks back, and it may meet another
  concatenated class with blocks of the same sizes (tied block by block) or a fresh axis; meeting any other
  axis, or being cut across a block, fixes it and its blocks.
  """

  def __init__(self) -> None:
    self.parent: list[int] = []
    self.size: list[int] = []
    self.reason: dict[int, str] = {}
    # Classes fixed only because a fused axis is cut into equal blocks (the gates of a GRU), with what cut them;
    # `hard` holds the classes fixed for any other reason.
    self.split_hint: dict[int, str] = {}
    self.hard: set[int] = set()
    self.fresh: set[int] = set()  # roots of classes that no rule has tied or fixed yet
    self.factors: dict[int, tuple[int, ...]] = {}  # merged classes: root -> the nodes of its factors, major first
    self.blocks: dict[int, tuple[int, ...]] = {}  # concatenated classes: root -> the nodes of its blocks, in order
    self.first_use: dict[int, int] = {}  # the order in which the program first uses each node
    self.broadcast: set[int] = set()  # nodes of size 1 that an op broadcast against a longer axis

  def new(self, shape: Sequence[int], reason: str | None = None, *, fresh: bool = True) -> Nodes:
    nodes = []
    for size in shape:
      self.parent.append(len(self.parent))
      self.size.append(int(size))
      nodes.append(len(self.parent) - 1)
      if reason is not None:
        self.reason[nodes[-1]] = reason
        self.hard.add(nodes[-1])
      elif fresh:
        self.fresh.add(nodes[-1])
    return tuple(nodes)

  def merged(self, nodes: Sequence[int]) -> int:
    """A new axis that is the merge of ``nodes`` (major first); a merged factor contributes its own factors."""
    return self._composite(nodes, self.factors, unit=1, length=math.prod)

  def _composite(
    self, nodes: Sequence[int], parts: dict[int, tuple[int, ...]], *, unit: int, length: Callable[[Iterable[int]], int]
  ) -> int:
    """A new axis made of ``nodes`` (flattened through ``parts``, without parts of length ``unit``), recorded
    in ``parts``; ``length`` combines the parts' lengths (a product for merges, a sum for concatenations)."""
    flat: list[int] = []
    for node in nodes:
      flat.extend(parts.get(self.find(node), (node,)))
    flat = [node for node in flat if self.size[node] != unit]
    if len(flat) == 1:
      return flat[0]
    (composite,) = self.new((length(self.size[node] for node in flat),), fresh=False)
    parts[composite] = tuple(flat)
    return composite

  def tie_factors(self, a: Sequence[int], b: Sequence[int], where: str) -> None:
    """Ties two factorisations of one axis, group by group of equal products (``_reshape_groups``)."""
    for group_a, group_b in reshape_groups(tuple(self.size[n] for n in a), tuple(self.size[n] for n in b)):
      nodes_a, nodes_b = [a[i] for i in group_a], [b[i] for i in group_b]
      if len(nodes_a) > 1 and len(nodes_b) > 1:
        for node in nodes_a + nodes_b:
          self.fix(node, f"{where} ties axes merged in two different ways")
        continue
      self.tie(self.merged(nodes_a), self.merged(nodes_b), where)

  def factors_of(self, node: int) -> tuple[int, ...] | None:
    return self.factors.get(self.find(node))

  def concatenated(self, nodes: Sequence[int]) -> int:
    """A new axis that is ``nodes`` end to end; a concatenated block contributes its own blocks."""
    return self._composite(nodes, self.blocks, unit=0, length=sum)

  def part(self, node: int, start: int, stop: int) -> int | None:
    """Entries ``[start, stop)`` of a concatenated axis, when they are whole blocks: that block, or those blocks
    concatenated; None when the range cuts a block, or the axis is not concatenated."""
    blocks = self.blocks.get(self.find(node))
    if blocks is None:
      return None
    offsets = [0]
    for block in blocks:
      offsets.append(offsets[-1] + self.size[block])
    if start >= stop or start not in offsets or stop not in offsets:
      return None
    return self.concatenated(blocks[offsets.index(start) : offsets.index(stop)])

  def tie_blocks(self, a: Sequence[int], b: Sequence[int], where: str) -> None:
    """Ties two concatenated axes block by block, or fixes both when their blocks differ in size."""
    sizes_a, sizes_b = [self.size[n] for n in a], [self.size[n] for n in b]
    if sizes_a != sizes_b:
      for node in (*a, *b):
        self.fix(node, f"{where} ties axes concatenated from blocks of sizes {sizes_a} and {sizes_b}")
      return
    for x, y in zip(a, b):
      self.tie(x, y, where)

  def find(self, node: int) -> int:
    root = node
    while self.parent[root] != root:
      root = self.parent[root]
    while self.parent[node] != root:
      self.parent[node], node = root, self.parent[node]
    return root

  def tie(self, a: int, b: int, where: str) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    if self.size[ra] != self.size[rb]:  # no rule ties axes of different sizes; stay sound if one does
      self.fix(ra, f"{where} ties axes of sizes {self.size[ra]} and {self.size[rb]}")
      self.fix(rb, f"{where} ties axes of sizes {self.size[ra]} and {self.size[rb]}")
      return
    fa, fb = self.factors.get(ra), self.factors.get(rb)
    ba, bb = self.blocks.get(ra), self.blocks.get(rb)
    kind_a, kind_b = self._kind(ra), self._kind(rb)
    if kind_a != kind_b:
      plain = ra if kind_a is None else rb if kind_b is None else None
      if plain is None or plain not in self.fresh:
        reason = f"{where} mixes an axis {kind_a or kind_b} with another axis"
        self.fix(ra, reason)
        self.fix(rb, reason)
    self.parent[rb] = ra
    if rb in self.reason:
      self.reason.setdefault(ra, self.reason.pop(rb))
    if rb in self.split_hint:
      self.split_hint.setdefault(ra, self.split_hint.pop(rb))
    if rb in self.hard:
      self.hard.discard(rb)
      self.hard.add(ra)
    if not (ra in self.fresh and rb in self.fresh):
      self.fresh.discard(ra)
    self.fresh.discard(rb)
    if fb is not None:
      del self.factors[rb]
      if fa is None:
        self.factors[ra] = fb
    if bb is not None:
      del self.blocks[rb]
      if ba is None:
        self.blocks[ra] = bb
    if fa is not None and fb is not None:
      self.tie_factors(fa, fb, where)
    if ba is not None and bb is not None:
      self.tie_blocks(ba, bb, where)
    if ra in self.reason and (ra in self.factors or ra in self.blocks):
      self.fix(ra, self.reason[ra])  # a fixed merged or concatenated axis fixes its parts

  def _kind(self, root: int) -> str | None:
    if root in self.factors:
      return "merged by a reshape"
    if root in self.blocks:
      return "concatenated from blocks"
    return None

  def fix(self, node: int, reason: str, *, split_hint: str | None = None) -> None:
    root = self.find(node)
    self.fresh.discard(root)
    self.reason.setdefault(root, reason)
    if split_hint is None:
      self.hard.add(root)
    else:
      self.split_hint.setdefault(root, split_hint)
    for part in (*self.factors.get(root, ()), *self.blocks.get(root, ())):
      if self.fixed(part) is None:
        self.fix(part, reason)

  def fixed(self, node: int) -> str | None:
    return self.reason.get(self.find(node))


def reshape_groups(before: tuple[int, ...], after: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
  """The minimal groups of axes of size > 1 whose sizes multiply to the same number on both sides."""
  ins = [axis for axis, size in enumerate(before) if size != 1]
  outs = [axis for axis, size in enumerate(after) if size != 1]
  groups: list[tuple[list[int], list[int]]] = []
  i = j = 0
  while i < len(ins) and j < len(outs):
    group_in, group_out = [ins[i]], [outs[j]]
    left, right = before[ins[i]], after[outs[j]]
    i, j = i + 1, j + 1
    while left != right:
      if left < right:
        group_in.append(ins[i])
        left *= before[ins[i]]
        i += 1
      else:
        group_out.append(outs[j])
        right *= after[outs[j]]
        j += 1
    groups.append((group_in, group_out))
  return groups
