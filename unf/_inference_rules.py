"""The rules of :func:`unf.infer_space`: how each JAX primitive ties or fixes the axes of its operands and outputs.

:class:`Tracer` walks a jaxpr and its sub-programs, gives every axis of every
variable a node of :class:`~unf._axis_classes.AxisClasses`, and applies the
rule of each equation. Each rule states that the primitive commutes with a
permutation of the axes it ties; a primitive without a rule fixes every axis it
touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.extend import core as jax_core

from unf._axis_classes import AxisClasses, Nodes, reshape_groups

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
# Reductions over sliding windows (pooling): the reducer runs on each window, so an axis the window does not slide
# along (size 1, stride 1, no padding or dilation) is mapped entry by entry.
_WINDOWED = frozenset("reduce_window_sum reduce_window_max reduce_window_min reduce_window".split())
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


class Tracer:
  """Walks a jaxpr (and its sub-programs), assigning axis nodes to every variable and applying each op's rule."""

  def __init__(self) -> None:
    self.classes = AxisClasses()

  # --- helpers ---------------------------------------------------------------

  def fresh(self, var: Any, reason: str | None = None, *, fresh: bool = True) -> Nodes:
    return self.classes.new(shape_of(var), reason, fresh=fresh)

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
    where = f"{name} (in {source_of(eqn)})"
    rule = getattr(self, f"_{name}", None)
    if name in _ELEMENTWISE:
      return self.elementwise(eqn, ins, where)
    if name in _REDUCTIONS or name in _POSITIONAL_REDUCTIONS:
      return self.reduction(eqn, ins, where, positional=name in _POSITIONAL_REDUCTIONS)
    if name in _CUMULATIVE:
      return self.along_axis(eqn, ins, (eqn.params["axis"],), where, "a cumulative op runs in order along")
    if name in _WINDOWED:
      return self.windowed(eqn, ins, where)
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
    shape = shape_of(eqn.outvars[0])
    for var, axes in zip(eqn.invars, ins):
      in_shape = shape_of(var)
      if not in_shape:
        continue
      if len(in_shape) != len(shape):
        self.fix_all(ins + outs, f"{where}: operands of ranks {len(in_shape)} and {len(shape)}")
        return outs
      for out in outs:
        for node, out_node, size, out_size in zip(axes, out, in_shape, shape):
          if size == out_size:
            self.classes.tie(node, out_node, where)
          else:  # size 1 against out_size > 1: the operand is broadcast, constant along this axis
            self.classes.broadcast.add(node)
    return outs

  def reduction(self, eqn: Any, ins: list[Nodes], where: str, *, positional: bool) -> list[Nodes]:
    reduced = set(eqn.params["axes"])
    kept = tuple(node for axis, node in enumerate(ins[0]) if axis not in reduced)
    if positional:
      for axis in reduced:
        self.classes.fix(ins[0][axis], f"{where} returns a position along its axis {axis}")
    (out,) = eqn.outvars
    if len(kept) != len(shape_of(out)):  # keepdims-style outputs do not occur in jaxprs; stay sound
      nodes = self.fresh(out)
      self.fix_all([ins[0], nodes], f"{where}: unexpected output rank")
      return [nodes]
    return [kept]

  def along_axis(
    self, eqn: Any, ins: list[Nodes], axes: Sequence[int], where: str, why: str, hint: str | None = None
  ) -> list[Nodes]:
    """Operands and outputs of one shape, tied on every axis but ``axes``, which are fixed.

    ``hint``: the operands' fixed axes are a fused axis cut into equal blocks (see ``AxisClasses.split_hint``).
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

  def windowed(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    """``reduce_window_*`` (pooling): each output entry reduces one window of its operands.

    Along an axis with window size 1, stride 1, no padding and no base dilation, output entry i reads operand
    entry i only, so the axis is tied through; an axis the window slides along is positions (fixed). The
    generic ``reduce_window`` has one output per operand, followed by scalar init values (no axes).
    """
    params = eqn.params
    outs = [self.fresh(v) for v in eqn.outvars]
    operands = ins[: len(outs)]
    for axis in range(len(outs[0])):
      config = (
        params["window_dimensions"][axis],
        params["window_strides"][axis],
        tuple(params["padding"][axis]),
        params["base_dilation"][axis],
      )
      nodes = [nodes[axis] for nodes in operands + outs]
      if config == (1, 1, (0, 0), 1):
        for node in nodes[1:]:
          self.classes.tie(nodes[0], node, where)
      else:
        self.fix_all([nodes], f"{where}: a pooling window slides along axis {axis}, whose entries are positions")
    return outs

  def _broadcast_in_dim(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])  # new axes: constant along them
    in_shape, shape = shape_of(eqn.invars[0]), shape_of(eqn.outvars[0])
    for axis, dim in enumerate(eqn.params["broadcast_dimensions"]):
      if in_shape[axis] == shape[dim]:
        self.classes.tie(ins[0][axis], out[dim], where)
      else:
        self.classes.broadcast.add(ins[0][axis])
    return [out]

  def _reshape(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = list(self.fresh(eqn.outvars[0]))
    if eqn.params.get("dimensions") is not None:
      self.fix_all([ins[0], out], f"{where}: a reshape with a transposition")
      return [tuple(out)]
    in_shape, out_shape = shape_of(eqn.invars[0]), shape_of(eqn.outvars[0])
    for in_axes, out_axes in reshape_groups(in_shape, out_shape):
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
        hint = f"reshaped from {sizes[0][0]} into {sizes[1][0]} blocks of {sizes[1][1]} by {where}"
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
    rhs_shape = shape_of(eqn.invars[1])
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
    # The concatenated axis is its operands' axes end to end (AxisClasses.concatenated): permuting each block
    # within itself permutes it, and a later slice or split at the block boundaries gives the blocks back.
    dim = eqn.params["dimension"]
    out = list(self.fresh(eqn.outvars[0]))
    for nodes in ins:
      for axis, node in enumerate(nodes):
        if axis != dim:
          self.classes.tie(node, out[axis], where)
    out[dim] = self.classes.concatenated([nodes[dim] for nodes in ins])
    return [tuple(out)]

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
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    parts = [self.classes.part(ins[0][axis], start, start + size) for start, size in zip(starts, sizes)]
    blocks = [part for part in parts if part is not None]
    if len(blocks) == len(parts):  # a concatenated axis cut back at its blocks' boundaries
      outs = [self.fresh(v) for v in eqn.outvars]
      for out, block in zip(outs, blocks):
        for k, (node, out_node) in enumerate(zip(ins[0], out, strict=True)):
          self.classes.tie(block if k == axis else node, out_node, where)
      return outs
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
    hint = f"split from {sum(sizes)} into {len(sizes)} blocks of {sizes[0]} by {where}" if equal else None
    return self.along_axis(eqn, ins, (axis,), where, "a split cuts blocks along", hint)

  def _slice(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])
    shape = shape_of(eqn.invars[0])
    strides = eqn.params["strides"] or (1,) * len(shape)
    for axis, (start, limit, stride) in enumerate(
      zip(eqn.params["start_indices"], eqn.params["limit_indices"], strides)
    ):
      factors = self.classes.factors_of(ins[0][axis])
      block = shape[axis] // self.classes.size[factors[0]] if factors is not None else 0
      part = self.classes.part(ins[0][axis], start, limit) if stride == 1 else None
      if start == 0 and limit == shape[axis] and stride == 1:
        self.classes.tie(ins[0][axis], out[axis], where)
      elif part is not None:  # whole blocks of a concatenated axis
        self.classes.tie(part, out[axis], where)
      elif factors is not None and stride == 1 and start % block == 0 and limit - start == block:
        self.classes.fix(factors[0], f"{where} takes block {start // block} of a merged axis")
        self.classes.tie(self.classes.merged(factors[1:]), out[axis], where)
      else:
        length = limit - start
        cut = stride == 1 and shape[axis] % length == 0
        hint = f"sliced [{start}:{limit}] out of {shape[axis]} by {where}" if cut else None
        self.classes.fix(ins[0][axis], f"{where} takes a part of axis {axis}", split_hint=hint)
        self.classes.fix(out[axis], f"{where} takes a part of axis {axis}")
    return [out]

  def _dynamic_slice(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])
    shape = shape_of(eqn.invars[0])
    for axis, size in enumerate(eqn.params["slice_sizes"]):
      if size == shape[axis]:  # a full slice: its start is clamped to 0
        self.classes.tie(ins[0][axis], out[axis], where)
      else:
        self.fix_all([[ins[0][axis]], [out[axis]]], f"{where} takes a part of axis {axis}")
    return [out]

  def _dynamic_update_slice(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    out = self.fresh(eqn.outvars[0])
    shape, update = shape_of(eqn.invars[0]), shape_of(eqn.invars[1])
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
    """A gather: the axes its indices pick along are fixed, those its slice spans whole are tied through.

    A slice that spans its axis can only start at 0 (jax clamps the start; in ``fill`` mode an out-of-range
    start fills the whole slice, a constant along the axis), so that axis is mapped entry by entry whatever the
    indices say: a vmapped ``jnp.roll`` is such a gather. A batching axis of the operand (a vmapped gather) is
    tied to its batching axis of the indices, which is tied to its output axis.
    """
    operand, indices = ins
    out = self.fresh(eqn.outvars[0])
    numbers = eqn.params["dimension_numbers"]
    sizes, shape = eqn.params["slice_sizes"], shape_of(eqn.invars[0])
    for axis in numbers.collapsed_slice_dims:
      self.classes.fix(operand[axis], f"{where}: axis {axis} is indexed by the gather's indices")
    sliced = [axis for axis in range(len(shape)) if axis not in numbers.collapsed_slice_dims]
    sliced = [axis for axis in sliced if axis not in numbers.operand_batching_dims]
    for axis, out_axis in zip(sliced, numbers.offset_dims, strict=True):
      if sizes[axis] == shape[axis]:
        self.classes.tie(operand[axis], out[out_axis], where)
      else:
        self.fix_all([[operand[axis]], [out[out_axis]]], f"{where} takes a part of axis {axis}")
    for axis, index_axis in zip(numbers.operand_batching_dims, numbers.start_indices_batching_dims, strict=True):
      self.classes.tie(operand[axis], indices[index_axis], where)
    batch = [axis for axis in range(len(out)) if axis not in numbers.offset_dims]
    index_axes = list(range(len(indices) - 1))  # jax puts the index vector last
    for out_axis, axis in zip(batch, index_axes, strict=True):
      self.classes.tie(indices[axis], out[out_axis], where)
    if indices:
      self.classes.fix(indices[-1], f"{where}: the index vector")
    return [out]

  def _scan(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    params = eqn.params
    consts, carry, xs = cut(ins, params["num_consts"], params["num_carry"])
    for nodes in xs:
      self.classes.fix(nodes[0], f"{where}: the scanned axis runs in order")
    body_outs = self.run(params["jaxpr"], [*consts, *carry, *[nodes[1:] for nodes in xs]])
    carry_out, ys = body_outs[: len(carry)], body_outs[len(carry) :]
    for a, b in zip(carry, carry_out, strict=True):
      self.tie_axes(a, b, where)
    stacked = []
    for var, nodes in zip(eqn.outvars[len(carry) :], ys, strict=True):
      (step,) = self.classes.new(shape_of(var)[:1], f"{where}: the scanned axis runs in order")
      stacked.append((step, *nodes))
    return [*carry, *stacked]

  def _while(self, eqn: Any, ins: list[Nodes], where: str) -> list[Nodes]:
    params = eqn.params
    cond_consts, body_consts, carry = cut(ins, params["cond_nconsts"], params["body_nconsts"])
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


def cut(items: list, *counts: int) -> list[list]:
  out, start = [], 0
  for count in counts:
    out.append(items[start : start + count])
    start += count
  out.append(items[start:])
  return out


def shape_of(var: Any) -> tuple[int, ...]:
  return tuple(int(s) for s in getattr(var.aval, "shape", ()))


def source_of(eqn: Any) -> str:
  """Where the user's code called the operation, as ``file:line``, when jax recorded it."""
  try:
    frame = jax._src.source_info_util.user_frame(eqn.source_info.traceback)
    return f"{frame.file_name.rsplit('/', 1)[-1]}:{frame.start_line}" if frame else "the traced function"
  except Exception:  # source info is best effort; the rule does not depend on it
    return "the traced function"
