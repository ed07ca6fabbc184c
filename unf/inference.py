"""The weight space of any JAX model, read from its computation graph.

:func:`infer_space` traces ``apply_fn(params, *example_args)`` to a jaxpr and
finds which axes of which params the computation forces to be permuted
together. Every axis of every array in the program is a node; each operation
either *ties* axes (an elementwise op ties its operands' axes to its output's,
a contraction ties the two contracted axes) or *fixes* them (an axis indexed by
data, sliced, reshaped into another, or touched by an operation that is not
permutation-equivariant on it). The classes of tied axes are computed with a
union-find; a class that holds a param axis and no fixed node is a label.

Soundness: each rule is the statement that the operation commutes with a
permutation of the tied axes of its operands and outputs, or constant along a
new axis (a broadcast). So permuting a label's axes in the params permutes
every tied intermediate axis alike, and reaches no fixed node: the outputs do
not change. An operation without a rule fixes every axis it touches: the
inference never guesses. Maximality: the rules tie only what each operation
requires in general, so the labels are the finest partition the rules allow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
from jax.extend import core as jax_core

from unf.space import Path, WeightSpace, path_str

Nodes = tuple[int, ...]

_IO_CHOICES = ("fixed", "permutable")

# Operations that act entry by entry (with size-1 broadcasting): they commute with any permutation of any axis.
_ELEMENTWISE = frozenset(
  """abs acos acosh add and asin asinh atan atan2 atanh bessel_i0e bessel_i1e cbrt ceil clamp clz complex conj
  convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt igamma
  igammac imag integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or
  polygamma population_count pow real reduce_precision rem round rsqrt select_n shift_left shift_right_arithmetic
  shift_right_logical sign sin sinh sqrt square stop_gradient sub tan tanh xor zeta optimization_barrier""".split()
)
# Reductions sum (or max, ...) over their axes: invariant under any permutation of them.
_REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor".split())
# Reductions whose result is a position along the reduced axis: a permutation changes it.
_POSITIONAL_REDUCTIONS = frozenset("argmax argmin".split())
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
# Calls of a sub-program on the same operands: (primitive, the param that holds the sub-program).
_CALLS = {
  "pjit": "jaxpr",
  "jit": "jaxpr",
  "closed_call": "call_jaxpr",
  "core_call": "call_jaxpr",
  "remat2": "jaxpr",
  "checkpoint": "jaxpr",
  "custom_jvp_call": "call_jaxpr",
  "custom_vjp_call": "call_jaxpr",
  "custom_vjp_call_jaxpr": "fun_jaxpr",
}


class _Classes:
  """Union-find over axis nodes; each class remembers why it is fixed (the first reason), if it is.

  A *merged* class is an axis made by a reshape of axes (a, b, ...) into one of size |a| |b| ... (as
  ``unf.merge_gates`` makes a gate axis and a hidden axis into one, or image patches their channels and
  kernel positions): it is permuted by the product of the permutations of its factors, and a split of it back
  into |a| blocks ties each block to the rest. A merged class may meet another whose factors group alike
  (their factors are tied group by group), or a *fresh* axis (an op's output, not yet tied to anything), which
  then takes its factors; meeting any other axis fixes both and the factors.
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
    self.first_use: dict[int, int] = {}  # the order in which the program first uses each node

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
    flat: list[int] = []
    for node in nodes:
      flat.extend(self.factors.get(self.find(node), (node,)))
    flat = [node for node in flat if self.size[node] != 1]
    if len(flat) == 1:
      return flat[0]
    (merged,) = self.new((math.prod(self.size[node] for node in flat),), fresh=False)
    self.factors[merged] = tuple(flat)
    return merged

  def tie_factors(self, a: Sequence[int], b: Sequence[int], where: str) -> None:
    """Ties two factorisations of one axis, group by group of equal products (``_reshape_groups``)."""
    for group_a, group_b in _reshape_groups(tuple(self.size[n] for n in a), tuple(self.size[n] for n in b)):
      nodes_a, nodes_b = [a[i] for i in group_a], [b[i] for i in group_b]
      if len(nodes_a) > 1 and len(nodes_b) > 1:
        for node in nodes_a + nodes_b:
          self.fix(node, f"{where} ties axes merged in two different ways")
        continue
      self.tie(self.merged(nodes_a), self.merged(nodes_b), where)

  def factors_of(self, node: int) -> tuple[int, ...] | None:
    return self.factors.get(self.find(node))

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
    if (fa is None) != (fb is None) and (rb if fa else ra) not in self.fresh:
      reason = f"{where} mixes an axis merged by a reshape with another axis"
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
    if fa is not None and fb is not None:
      self.tie_factors(fa, fb, where)
    if ra in self.reason and ra in self.factors:
      self.fix(ra, self.reason[ra])  # a fixed merged axis fixes its factors

  def fix(self, node: int, reason: str, *, split_hint: str | None = None) -> None:
    root = self.find(node)
    self.fresh.discard(root)
    self.reason.setdefault(root, reason)
    if split_hint is None:
      self.hard.add(root)
    else:
      self.split_hint.setdefault(root, split_hint)
    factors = self.factors.get(root)
    if factors is not None:
      for factor in factors:
        if self.fixed(factor) is None:
          self.fix(factor, reason)

  def fixed(self, node: int) -> str | None:
    return self.reason.get(self.find(node))


class _Tracer:
  """Walks a jaxpr (and its sub-programs), assigning axis nodes to every variable and applying each op's rule."""

  def __init__(self) -> None:
    self.classes = _Classes()

  # --- helpers ---------------------------------------------------------------

  def fresh(self, var: Any, reason: str | None = None, *, fresh: bool = True) -> Nodes:
    return self.classes.new(_shape(var), reason, fresh=fresh)

  def fix_all(self, nodes: Sequence[Sequence[int]], reason: str) -> None:
    for axes in nodes:
      for node in axes:
        self.classes.fix(node, reason)

  def tie_axes(self, a: Nodes, b: Nodes, where: str) -> None:
    for x, y in zip(a, b, strict=True):
      self.classes.tie(x, y, where)

  # --- programs --------------------------------------------------------------

  def run(self, jaxpr: Any, inputs: Sequence[Nodes]) -> list[Nodes]:
    """Runs ``jaxpr`` (a Jaxpr or ClosedJaxpr) on input nodes; returns the nodes of its outputs."""
    if isinstance(jaxpr, jax_core.ClosedJaxpr):
      jaxpr = jaxpr.jaxpr
    env: dict[Any, Nodes] = {}
    for var in jaxpr.constvars:
      env[var] = self.fresh(var, "a constant captured by the traced function")
    if len(inputs) != len(jaxpr.invars):
      raise AssertionError(f"infer_space: {len(inputs)} inputs for a program of {len(jaxpr.invars)}")
    env.update(zip(jaxpr.invars, inputs))

    def read(atom: Any) -> Nodes:
      if isinstance(atom, jax_core.Literal):
        return self.fresh(atom, "a literal")
      return env[atom]

    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      outs = self.equation(eqn, ins)
      for nodes in ins + outs:
        for node in nodes:
          self.classes.first_use.setdefault(node, len(self.classes.first_use))
      env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]

  def equation(self, eqn: Any, ins: list[Nodes]) -> list[Nodes]:
    name = eqn.primitive.name
    where = f"{name} (in {_source(eqn)})"
    rule = getattr(self, f"_{name}", None)
    if name in _ELEMENTWISE:
      return self.elementwise(eqn, ins, where)
    if name in _REDUCTIONS or name in _POSITIONAL_REDUCTIONS:
      return self.reduction(eqn, ins, where, positional=name in _POSITIONAL_REDUCTIONS)
    if name in _CUMULATIVE:
      return self.along_axis(eqn, ins, (eqn.params["axis"],), where, "a cumulative op runs in order along")
    if name in _CALLS and _CALLS[name] in eqn.params:
      return self.run(eqn.params[_CALLS[name]], ins)
    if rule is not None:
      return rule(eqn, ins, where)
    outs = [self.fresh(v) for v in eqn.outvars]
    self.fix_all(ins + outs, f"{where}: unf.infer_space has no rule for {name!r}, so it fixes every axis it touches")
    return outs

  # --- rules -------------------------------------------------------------------

  def elementwise(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    outs = [self.fresh(v) for v in eqn.outvars]
    shape = _shape(eqn.outvars[0])
    for var, axes in zip(eqn.invars, ins):
      in_shape = _shape(var)
      if not in_shape:
        continue
      if len(in_shape) != len(shape):
        self.fix_all(ins + outs, f"{where}: operands of ranks {len(in_shape)} and {len(shape)}")
        return outs
      for out in outs:
        for node, out_node, size, out_size in zip(axes, out, in_shape, shape):
          if size == out_size:
            self.classes.tie(node, out_node, where)
          # size 1 against out_size > 1: the operand is broadcast, constant along this axis
    return outs

  def reduction(self, eqn: Any, ins: list[Nodes], where: str, *, positional: bool) -> list[Nodes]:
    reduced = set(eqn.params["axes"])
    kept = tuple(node for axis, node in enumerate(ins[0]) if axis not in reduced)
    if positional:
      for axis in reduced:
        self.classes.fix(ins[0][axis], f"{where} returns a position along its axis {axis}")
    (out,) = eqn.outvars
    if len(kept) != len(_shape(out)):  # keepdims-style outputs do not occur in jaxprs; stay sound
      nodes = self.fresh(out)
      self.fix_all([ins[0], nodes], f"{where}: unexpected output rank")
      return [nodes]
    return [kept]

  def along_axis(
    self, eqn: Any, ins: list[Nodes], axes: Sequence[int], where: str, why: str, hint: str | None = None
  ) -> list[Nodes]:
    """Operands and outputs of one shape, tied on every axis but ``axes``, which are fixed.

    ``hint``: the operands' fixed axes are a fused axis cut into equal blocks (see ``_Classes.split_hint``).
    """
    outs = [self.fresh(v) for v in eqn.outvars]
    for nodes in ins + outs:
      if len(nodes) != len(outs[0]):
        continue
      for axis in range(len(nodes)):
        if axis in axes:
          soft = hint if any(nodes is x for x in ins) else None
          self.classes.fix(nodes[axis], f"{where}: {why} axis {axis}", split_hint=soft)
        else:
          self.classes.tie(nodes[axis], outs[0][axis], where)
    return outs

  def _broadcast_in_dim(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])  # new axes: constant along them
    in_shape, shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    for axis, dim in enumerate(eqn.params["broadcast_dimensions"]):
      if in_shape[axis] == shape[dim]:
        self.classes.tie(ins[0][axis], out[dim], where)
    return [out]

  def _reshape(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = list(self.fresh(eqn.outvars[0]))
    if eqn.params.get("dimensions") is not None:
      self.fix_all([ins[0], out], f"{where}: a reshape with a transposition")
      return [tuple(out)]
    in_shape, out_shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    for in_axes, out_axes in _reshape_groups(in_shape, out_shape):
      if len(in_axes) == 1 and len(out_axes) == 1:
        self.classes.tie(ins[0][in_axes[0]], out[out_axes[0]], where)
        continue
      if len(out_axes) == 1:  # (G, H) -> G*H: a merged axis
        out[out_axes[0]] = self.classes.merged([ins[0][a] for a in in_axes])
        continue
      factors = self.classes.factors_of(ins[0][in_axes[0]]) if len(in_axes) == 1 else None
      sizes = [in_shape[a] for a in in_axes], [out_shape[a] for a in out_axes]
      if factors is not None:  # a merged axis split again: tied to its factors group by group
        self.classes.tie_factors(factors, [out[a] for a in out_axes], where)
        continue
      reason = f"{where} turns axes of sizes {sizes[0]} into axes of sizes {sizes[1]}"
      hint = None
      if len(in_axes) == 1 and len(out_axes) == 2:  # (G*H,) -> (G, H): a fused axis cut into equal blocks
        hint = f"reshaped from {sizes[0][0]} into {sizes[1][0]} blocks of {sizes[1][1]}"
      for axis in in_axes:
        self.classes.fix(ins[0][axis], reason, split_hint=hint)
      for axis in out_axes:
        self.classes.fix(out[axis], reason)
    return [tuple(out)]

  def _squeeze(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    dropped = {d % len(ins[0]) for d in eqn.params["dimensions"]}
    return [tuple(node for axis, node in enumerate(ins[0]) if axis not in dropped)]

  def _expand_dims(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])
    new = {d % len(out) for d in eqn.params["dimensions"]}
    kept = [axis for axis in range(len(out)) if axis not in new]
    for node, axis in zip(ins[0], kept, strict=True):
      self.classes.tie(node, out[axis], where)
    return [out]

  def _transpose(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    return [tuple(ins[0][axis] for axis in eqn.params["permutation"])]

  def _dot_general(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    lhs, rhs = ins[0], ins[1]
    for a, b in zip(lhs_contract, rhs_contract):
      self.classes.tie(lhs[a], rhs[b], where)
    for a, b in zip(lhs_batch, rhs_batch):
      self.classes.tie(lhs[a], rhs[b], where)
    lhs_free = [lhs[a] for a in range(len(lhs)) if a not in lhs_contract and a not in lhs_batch]
    rhs_free = [rhs[b] for b in range(len(rhs)) if b not in rhs_contract and b not in rhs_batch]
    return [tuple([lhs[a] for a in lhs_batch] + lhs_free + rhs_free)]

  def _conv_general_dilated(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    lhs, rhs = ins
    out = self.fresh(eqn.outvars[0])
    numbers = eqn.params["dimension_numbers"]
    (lhs_n, lhs_c, *lhs_s), (rhs_o, rhs_i, *rhs_s), (out_n, out_c, *out_s) = (
      numbers.lhs_spec,
      numbers.rhs_spec,
      numbers.out_spec,
    )
    self.fix_all(
      [[lhs[a] for a in lhs_s], [rhs[a] for a in rhs_s], [out[a] for a in out_s]],
      f"{where}: a convolution's spatial axes are positions",
    )
    groups, batch_groups = eqn.params["feature_group_count"], eqn.params["batch_group_count"]
    if batch_groups != 1:
      self.fix_all([lhs, rhs, out], f"{where}: batch_group_count={batch_groups}")
      return [out]
    self.classes.tie(lhs[lhs_n], out[out_n], where)
    rhs_shape = _shape(eqn.invars[1])
    if groups == 1:
      self.classes.tie(lhs[lhs_c], rhs[rhs_i], where)
      self.classes.tie(rhs[rhs_o], out[out_c], where)
    elif rhs_shape[rhs_i] == 1 and rhs_shape[rhs_o] == groups:  # depthwise: channel k only meets channel k
      self.classes.tie(lhs[lhs_c], rhs[rhs_o], where)
      self.classes.tie(rhs[rhs_o], out[out_c], where)
    elif rhs_shape[rhs_i] == 1 and rhs_shape[rhs_o] % groups == 0:
      # Depthwise with a channel multiplier M (as image patches are made): output channel c*M + m reads input
      # channel c only, so the output channels are the merge of (input channel, m).
      (multiplier,) = self.classes.new((rhs_shape[rhs_o] // groups,), fresh=False)
      channels = self.classes.merged([lhs[lhs_c], multiplier])
      self.classes.tie(rhs[rhs_o], channels, where)
      self.classes.tie(out[out_c], channels, where)
    else:
      self.fix_all(
        [[lhs[lhs_c]], [rhs[rhs_i]], [rhs[rhs_o]], [out[out_c]]],
        f"{where}: a grouped convolution (feature_group_count={groups}) permutes channels only within groups",
      )
    return [out]

  def _concatenate(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    return self.along_axis(eqn, ins, (eqn.params["dimension"],), where, "concatenation stacks blocks along")

  def _stack(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])
    axis = eqn.params["axis"] % len(out)
    self.classes.fix(out[axis], f"{where}: stacked arrays sit at positions along axis {axis}")
    for nodes in ins:
      for node, out_node in zip(nodes, out[:axis] + out[axis + 1 :], strict=True):
        self.classes.tie(node, out_node, where)
    return [out]

  def _split(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    axis, sizes = eqn.params["axis"], [int(s) for s in eqn.params["sizes"]]
    equal = len(sizes) > 1 and len(set(sizes)) == 1
    factors = self.classes.factors_of(ins[0][axis])
    if equal and factors is not None and self.classes.size[factors[0]] == len(sizes):
      # Blocks of a merged (G, H) axis: block g is H, at position g of G.
      self.classes.fix(factors[0], f"{where}: the blocks of a split sit at positions")
      block = self.classes.merged(factors[1:])
      outs = [self.fresh(v) for v in eqn.outvars]
      for out in outs:
        for k, (node, out_node) in enumerate(zip(ins[0], out, strict=True)):
          self.classes.tie(block if k == axis else node, out_node, where)
      return outs
    hint = f"split from {sum(sizes)} into {len(sizes)} blocks of {sizes[0]}" if equal else None
    return self.along_axis(eqn, ins, (axis,), where, "a split cuts blocks along", hint)

  def _slice(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])
    shape = _shape(eqn.invars[0])
    strides = eqn.params["strides"] or (1,) * len(shape)
    for axis, (start, limit, stride) in enumerate(
      zip(eqn.params["start_indices"], eqn.params["limit_indices"], strides)
    ):
      factors = self.classes.factors_of(ins[0][axis])
      block = shape[axis] // self.classes.size[factors[0]] if factors is not None else 0
      if start == 0 and limit == shape[axis] and stride == 1:
        self.classes.tie(ins[0][axis], out[axis], where)
      elif factors is not None and stride == 1 and start % block == 0 and limit - start == block:
        self.classes.fix(factors[0], f"{where} takes block {start // block} of a merged axis")
        self.classes.tie(self.classes.merged(factors[1:]), out[axis], where)
      else:
        part = limit - start
        hint = f"sliced [{start}:{limit}] out of {shape[axis]}" if stride == 1 and shape[axis] % part == 0 else None
        self.classes.fix(ins[0][axis], f"{where} takes a part of axis {axis}", split_hint=hint)
        self.classes.fix(out[axis], f"{where} takes a part of axis {axis}")
    return [out]

  def _dynamic_slice(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])
    shape = _shape(eqn.invars[0])
    for axis, size in enumerate(eqn.params["slice_sizes"]):
      if size == shape[axis]:  # a full slice: its start is clamped to 0
        self.classes.tie(ins[0][axis], out[axis], where)
      else:
        self.fix_all([[ins[0][axis]], [out[axis]]], f"{where} takes a part of axis {axis}")
    return [out]

  def _dynamic_update_slice(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])
    shape, update = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    for axis in range(len(shape)):
      nodes = [[ins[0][axis]], [ins[1][axis]], [out[axis]]]
      if update[axis] == shape[axis]:
        self.classes.tie(ins[0][axis], out[axis], where)
        self.classes.tie(ins[1][axis], out[axis], where)
      else:
        self.fix_all(nodes, f"{where} writes a part of axis {axis}")
    return [out]

  def _pad(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])
    for axis, config in enumerate(eqn.params["padding_config"]):
      if tuple(config) == (0, 0, 0):
        self.classes.tie(ins[0][axis], out[axis], where)
      else:
        self.fix_all([[ins[0][axis]], [out[axis]]], f"{where} pads axis {axis}")
    return [out]

  def _iota(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])  # constant along every axis but its dimension
    self.classes.fix(out[eqn.params["dimension"]], f"{where}: positions along an axis")
    return [out]

  def _rev(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    return self.along_axis(eqn, ins, tuple(eqn.params["dimensions"]), where, "a reversal reorders")

  def _sort(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    return self.along_axis(eqn, ins, (eqn.params["dimension"],), where, "a sort reorders")

  def _top_k(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    last = len(ins[0]) - 1
    outs = [self.fresh(v) for v in eqn.outvars]
    for out in outs:
      for axis in range(last):
        self.classes.tie(ins[0][axis], out[axis], where)
      self.classes.fix(out[last], f"{where}: top_k picks positions along the last axis")
    self.classes.fix(ins[0][last], f"{where}: top_k picks positions along the last axis")
    return outs

  def _gather(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    operand, indices = ins
    out = self.fresh(eqn.outvars[0])
    numbers = eqn.params["dimension_numbers"]
    sizes, shape = eqn.params["slice_sizes"], _shape(eqn.invars[0])
    indexed = set(numbers.start_index_map) | set(numbers.collapsed_slice_dims) | set(numbers.operand_batching_dims)
    for axis in indexed:
      self.classes.fix(operand[axis], f"{where}: axis {axis} is indexed by the gather's indices")
    sliced = [axis for axis in range(len(shape)) if axis not in numbers.collapsed_slice_dims]
    sliced = [axis for axis in sliced if axis not in numbers.operand_batching_dims]
    for axis, out_axis in zip(sliced, numbers.offset_dims, strict=True):
      if axis not in indexed and sizes[axis] == shape[axis]:
        self.classes.tie(operand[axis], out[out_axis], where)
      else:
        self.fix_all([[operand[axis]], [out[out_axis]]], f"{where} takes a part of axis {axis}")
    batch = [axis for axis in range(len(out)) if axis not in numbers.offset_dims]
    index_axes = list(range(len(indices) - 1))  # jax puts the index vector last
    for axis in numbers.start_indices_batching_dims:
      self.classes.fix(indices[axis], f"{where}: a batched gather")
    for out_axis, axis in zip(batch, index_axes, strict=True):
      self.classes.tie(indices[axis], out[out_axis], where)
    if indices:
      self.classes.fix(indices[-1], f"{where}: the index vector")
    return [out]

  def _scan(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    params = eqn.params
    consts, carry, xs = _cut(ins, params["num_consts"], params["num_carry"])
    for nodes in xs:
      self.classes.fix(nodes[0], f"{where}: the scanned axis runs in order")
    body_outs = self.run(params["jaxpr"], [*consts, *carry, *[nodes[1:] for nodes in xs]])
    carry_out, ys = body_outs[: len(carry)], body_outs[len(carry) :]
    for a, b in zip(carry, carry_out, strict=True):
      self.tie_axes(a, b, where)
    stacked = []
    for var, nodes in zip(eqn.outvars[len(carry) :], ys, strict=True):
      (step,) = self.classes.new(_shape(var)[:1], f"{where}: the scanned axis runs in order")
      stacked.append((step, *nodes))
    return [*carry, *stacked]

  def _while(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    params = eqn.params
    cond_consts, body_consts, carry = _cut(ins, params["cond_nconsts"], params["body_nconsts"])
    body_outs = self.run(params["body_jaxpr"], [*body_consts, *carry])
    for a, b in zip(carry, body_outs, strict=True):
      self.tie_axes(a, b, where)
    self.run(params["cond_jaxpr"], [*cond_consts, *carry])
    return list(carry)

  def _cond(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    operands = ins[1:]
    outs: list[Nodes] | None = None
    for branch in eqn.params["branches"]:
      branch_outs = self.run(branch, operands)
      if outs is None:
        outs = branch_outs
      else:
        for a, b in zip(outs, branch_outs, strict=True):
          self.tie_axes(a, b, where)
    return outs or []


def _cut(items: list, *counts: int) -> list[list]:
  out, start = [], 0
  for count in counts:
    out.append(items[start : start + count])
    start += count
  out.append(items[start:])
  return out


def _shape(var: Any) -> tuple[int, ...]:
  return tuple(int(s) for s in getattr(var.aval, "shape", ()))


def _source(eqn: Any) -> str:
  """Where the user's code called the operation, as ``file:line``, when jax recorded it."""
  try:
    frame = jax._src.source_info_util.user_frame(eqn.source_info.traceback)
    return f"{frame.file_name.rsplit('/', 1)[-1]}:{frame.start_line}" if frame else "the traced function"
  except Exception:  # source info is best effort; the rule does not depend on it
    return "the traced function"


def _reshape_groups(before: tuple[int, ...], after: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
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


def _paths(params: Any) -> list[Path]:
  paths = []
  for keypath, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = []
    for key in keypath:
      for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
          path.append(getattr(key, attr))
          break
      else:
        raise TypeError(f"infer_space: params must be nested dicts of arrays; found the key {key!r}.")
    paths.append(tuple(path))
  return paths


def _set(spec: dict, path: Path, value: Any) -> None:
  node = spec
  for key in path[:-1]:
    node = node.setdefault(key, {})
  node[path[-1]] = value


class _Analysis(NamedTuple):
  classes: _Classes
  paths: list[Path]
  param_nodes: list[Nodes]
  touches_io: set[int]


def _analyse(apply_fn: Callable[..., Any], params: Mapping, example_args: tuple, io: str) -> _Analysis:
  """Traces ``apply_fn`` and runs every rule: the classes of the params' axes, and why each fixed one is fixed."""
  if io not in _IO_CHOICES:
    raise ValueError(f"io must be one of {_IO_CHOICES}, got {io!r}.")
  if not isinstance(params, Mapping):
    raise ValueError(
      f"infer_space: params must be nested dicts of arrays, got {type(params).__name__}; for an nnx model pass "
      "nnx.to_pure_dict(nnx.state(model)) and merge it back in apply_fn."
    )
  closed = jax.make_jaxpr(apply_fn)(params, *example_args)
  leaves = jax.tree.leaves(params)
  paths = _paths(params)
  tracer = _Tracer()
  classes = tracer.classes
  invars = closed.jaxpr.invars
  param_nodes = [tracer.fresh(var, fresh=False) for var in invars[: len(leaves)]]
  data_nodes = [tracer.fresh(var, fresh=False) for var in invars[len(leaves) :]]
  outs = tracer.run(closed, param_nodes + data_nodes)
  touches_io: set[int] = set()
  for nodes, what in ((data_nodes, "an axis of the data inputs"), (outs, "an axis of the outputs")):
    for axes in nodes:
      for node in axes:
        if io == "fixed":
          classes.fix(node, what)
        else:
          touches_io.add(classes.find(node))
  for leaf, axes in zip(leaves, param_nodes):
    dtype = getattr(leaf, "dtype", None)
    for node in axes:
      if dtype is not None and not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
        classes.fix(node, "an axis of a param that is not floating point")
      elif classes.size[node] == 1:
        classes.fix(node, "an axis of size 1 (trace the model at widths of 2 or more)")

  return _Analysis(classes, paths, param_nodes, touches_io)


def explain_space(
  apply_fn: Callable[..., Any], params: Mapping, *example_args: Any, io: str = "fixed"
) -> dict[str, tuple[str | None, ...]]:
  """Why :func:`infer_space` fixes each axis: per leaf (``"a/b/kernel"``), per axis, the reason or None (a label).

  The reason is the first operation that fixed the axis's class, with where
  the user's code called it, e.g. ``"slice (in model.py:12) takes a part of axis 1"``.

  Args:
    apply_fn: ``apply_fn(params, *example_args)``, as for :func:`infer_space`.
    params: nested dicts of arrays.
    *example_args: example inputs.
    io: ``"fixed"`` or ``"permutable"``, as for :func:`infer_space`.

  Returns:
    Per leaf path, a tuple with one entry per axis: the reason it is fixed, or None for a labelled axis.

  Example:
    >>> import jax.numpy as jnp, unf
    >>> params = {"w0": jnp.ones((3, 4)), "w1": jnp.ones((4, 2))}
    >>> unf.explain_space(lambda p, x: jnp.cumsum(x @ p["w0"], axis=-1) @ p["w1"], params, jnp.ones(3))["w0"][1]
    'cumsum (in ...): a cumulative op runs in order along axis 0'
  """
  analysis = _analyse(apply_fn, params, example_args, io)
  return {
    path_str(path): tuple(analysis.classes.fixed(node) for node in axes)
    for path, axes in zip(analysis.paths, analysis.param_nodes)
  }


def infer_space(
  apply_fn: Callable[..., Any],
  params: Mapping,
  *example_args: Any,
  io: str = "fixed",
  verify: bool = True,
) -> WeightSpace:
  """The weight space of ``apply_fn``'s params, read from the jaxpr of ``apply_fn(params, *example_args)``.

  Every label of the returned space is a hidden-neuron permutation of the
  model: permuting all axes with that label leaves ``apply_fn`` unchanged,
  ``apply_fn(sigma . params, *x) = apply_fn(params, *x)``. Labels are named
  after the first param axis that carries them (``"layers/0/kernel:1"``: leaf
  ``layers/0/kernel``, axis 1); axes that touch the data, the outputs, or an
  operation that is not equivariant on them (slicing, reshaping one axis into
  several, indexing, positions, an operation with no rule) are fixed (None).
  The rules cover ``dot_general`` and einsum, elementwise ops with
  broadcasting, reductions (so softmax, LayerNorm, RMSNorm), transposes,
  reshapes, convolutions (grouped and depthwise included), gathers, slices,
  concatenation and splits, and the sub-programs of ``jit``, ``scan``,
  ``while``, ``cond``, ``custom_jvp``, ``custom_vjp`` and ``jax.checkpoint``.
  An axis of size 1 has no permutation to find and is fixed: trace the model
  at widths of 2 or more.

  Fused gates (``nnx.GRUCell``, ``nnx.OptimizedLSTMCell``: one Linear whose
  output is split into the gates) permute the hidden units of every gate
  alike, which a weight space cannot say of one axis: those axes are fixed
  and a warning points to :func:`unf.split_gates`, whose split view has a
  hidden axis of its own.

  Args:
    apply_fn: ``apply_fn(params, *example_args)``, a JAX-traceable function returning a pytree of arrays.
    params: nested dicts of arrays (for an nnx model, ``nnx.state(model, nnx.Param).to_pure_dict()``).
    *example_args: example inputs; only their shapes and dtypes matter, and every axis of them is data.
    io: ``"fixed"`` (default): axes that meet the data inputs or the outputs are fixed, so every label is
      an exact symmetry. ``"permutable"``: they are labelled too (as the builders' ``io="permutable"``),
      symmetries only when the data and outputs are permuted alike; ``verify`` then checks the others.
    verify: check the labels with :func:`unf.check_symmetry` on the example inputs before returning.

  Returns:
    The :class:`~unf.WeightSpace` of ``params``, with fixed sizes read from them.

  Raises:
    ValueError: on a bad ``io`` or params that are not nested dicts of arrays.
    SymmetryError: when ``verify`` finds a label that is not a symmetry (a bug in a rule: please report it).

  Example:
    >>> import jax, jax.numpy as jnp, unf
    >>> params = {"w0": jnp.ones((3, 4)), "b0": jnp.ones(4), "w1": jnp.ones((4, 2))}
    >>> apply_fn = lambda p, x: jnp.tanh(x @ p["w0"] + p["b0"]) @ p["w1"]
    >>> unf.infer_space(apply_fn, params, jnp.ones((5, 3)))
    WeightSpace(
      b0: (w0:1,)
      w0: (None[3], w0:1)
      w1: (w0:1, None[2])
    )
  """
  analysis = _analyse(apply_fn, params, example_args, io)
  classes, paths, param_nodes, touches_io = analysis.classes, analysis.paths, analysis.param_nodes, analysis.touches_io

  # A label is named after the param axis that the program uses first among those that carry it.
  names: dict[int, str] = {}
  order = sorted(
    (
      (classes.first_use.get(node, len(classes.parent)), path, axis, node)
      for path, axes in zip(paths, param_nodes)
      for axis, node in enumerate(axes)
    ),
    key=lambda item: item[0],
  )
  for _, path, axis, node in order:
    if classes.fixed(node) is None:
      names.setdefault(classes.find(node), f"{path_str(path)}:{axis}")
  spec: dict = {}
  hints = []
  for path, axes in zip(paths, param_nodes):
    entry: list[str | None] = []
    for axis, node in enumerate(axes):
      root = classes.find(node)
      if classes.fixed(node) is not None:
        entry.append(None)
        if root in classes.split_hint and root not in classes.hard:
          hints.append(f"{path_str(path)} axis {axis} ({classes.split_hint[root]})")
        continue
      entry.append(names[root])
    _set(spec, path, tuple(entry))
  if hints:
    warnings.warn(
      "infer_space: " + "; ".join(hints) + ". A fused axis like this (the gates of nnx.GRUCell or "
      "nnx.OptimizedLSTMCell) carries the hidden units of every block, and a weight space cannot say that one "
      "permutation acts on each block alike, so it is fixed. Infer the space of the split view instead: "
      "params in unf.split_gates(cell_params, num_gates) form, merged back with unf.merge_gates in apply_fn.",
      stacklevel=2,
    )
  space = WeightSpace(spec).with_fixed_sizes(params)
  if verify:
    from unf.symmetry import check_symmetry  # noqa: PLC0415 (symmetry imports permutation, which is fine; kept lazy)

    checked = [name for root, name in names.items() if root not in touches_io]
    if checked:
      check_symmetry(apply_fn, params, space, *example_args, labels=checked)
  return space
