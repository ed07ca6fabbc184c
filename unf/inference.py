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

import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from unf._axis_classes import AxisClasses, Nodes
from unf._inference_rules import Tracer
from unf.space import Path, WeightSpace, path_str

_IO_CHOICES = ("fixed", "permutable")


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


def _unboxed(apply_fn: Callable[..., Any], params: Any) -> tuple[Callable[..., Any], Any]:
  """Params read through flax's metadata boxes, and ``apply_fn`` on such params.

  linen's ``nn.with_logical_partitioning`` and ``nn.with_partitioning`` store a param as a box
  (``nn.LogicallyPartitioned``, ``nn.Partitioned``: a ``flax.core.meta.AxisMetadata``) around its array. The
  box holds the array as its only leaf, so the unboxed tree (``flax.core.meta.unbox``) has the same leaves in
  the same order: ``apply_fn`` gets them back in their boxes, so it sees the params as the user passed them.
  """
  from flax.core import meta  # noqa: PLC0415 (only for boxed params; flax is a dependency of unf anyway)

  def is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)

  if not any(is_box(leaf) for leaf in jax.tree.leaves(params, is_leaf=is_box)):
    return apply_fn, params
  treedef = jax.tree.structure(params)
  unboxed = meta.unbox(params)

  def boxed_apply(plain: Any, *args: Any) -> Any:
    return apply_fn(jax.tree.unflatten(treedef, jax.tree.leaves(plain)), *args)

  return boxed_apply, unboxed


class _Analysis(NamedTuple):
  classes: AxisClasses
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
  tracer = Tracer()
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
  broadcast = {classes.find(node) for node in classes.broadcast}
  for leaf, axes in zip(leaves, param_nodes):
    dtype = getattr(leaf, "dtype", None)
    for node in axes:
      if dtype is not None and not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
        classes.fix(node, "an axis of a param that is not floating point")
      elif classes.size[node] == 1 and classes.find(node) in broadcast:
        # By design, as the batch axis of a positional embedding: no wider trace would label it.
        classes.fix(node, "an axis of size 1 that is broadcast against a longer axis: nothing to permute")
      elif classes.size[node] == 1:
        classes.fix(
          node,
          "an axis of size 1: nothing to permute (if it is a hidden width, trace the model at widths of 2 or more)",
        )

  return _Analysis(classes, paths, param_nodes, touches_io)


def _cut_axes_message(hints: list[str]) -> str:
  """The warning for param axes fixed only because the model cuts them into equal blocks."""
  return (
    f"infer_space: the model cuts {'a param axis' if len(hints) == 1 else 'param axes'} into equal blocks "
    f"({'; '.join(hints)}), so the units of every block would have to be permuted alike, which one label on the "
    "whole axis cannot say: it is fixed (the space stays exact, only smaller). If the blocks are the gates of a "
    "gate-fused recurrent cell (nnx.GRUCell, nnx.OptimizedLSTMCell: one kernel whose output is split into the "
    "gates), infer the space of the split view instead: params in unf.split_gates(cell_params, num_gates) form, "
    "merged back with unf.merge_gates in apply_fn. unf.split_gates does not apply to other cuts (a fused qkv "
    "projection, heads reshaped out of one axis, grouped-query attention, a RoPE half-split): there the axis stays "
    "fixed, unless each block is a param of its own or the kernel has the block axis itself (as "
    "(features, heads, head_dim) in nnx.MultiHeadAttention)."
  )


def explain_space(
  apply_fn: Callable[..., Any], params: Mapping, *example_args: Any, io: str = "fixed"
) -> dict[str, tuple[str | None, ...]]:
  """Why :func:`infer_space` fixes each axis: per leaf (``"a/b/kernel"``), per axis, the reason or None (a label).

  The reason is the first operation that fixed the axis's class, with where
  the user's code called it, e.g. ``"slice (in model.py:12) takes a part of axis 1"``.

  Args:
    apply_fn: ``apply_fn(params, *example_args)``, as for :func:`infer_space`.
    params: nested dicts of arrays, flax metadata boxes included, as for :func:`infer_space`.
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
  apply_fn, params = _unboxed(apply_fn, params)
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
  broadcasting, reductions (so softmax, LayerNorm, RMSNorm), cumulative ops
  along other axes, pooling (``reduce_window``: channels pass through, window
  axes are positions), transposes, reshapes, convolutions (grouped and
  depthwise included), gathers (an axis the slice spans whole, as in a
  vmapped ``jnp.roll``, passes through), slices, concatenation (cut back at
  its blocks, as linen's ``OptimizedLSTMCell`` does, each block keeps its
  label) and splits, and the sub-programs of ``jit``, ``scan``, ``while``,
  ``cond``, ``custom_jvp``, ``custom_vjp`` and ``jax.checkpoint``. An axis of
  size 1 has no permutation to find and is fixed: trace the model at widths
  of 2 or more.

  An axis that the model cuts into equal blocks (the gates of ``nnx.GRUCell``
  and ``nnx.OptimizedLSTMCell``: one Linear whose output is split into the
  gates; a fused qkv projection; heads reshaped out of one axis) permutes the
  units of every block alike, which a weight space cannot say of one axis:
  it is fixed, with a warning that says where it was cut and, for gate-fused
  cells, points to :func:`unf.split_gates`, whose split view has a hidden
  axis of its own.

  Args:
    apply_fn: ``apply_fn(params, *example_args)``, a JAX-traceable function returning a pytree of arrays.
    params: nested dicts of arrays (for an nnx model, ``nnx.state(model, nnx.Param).to_pure_dict()``; a linen
      ``variables`` dict as ``init`` returns it). flax metadata boxes (``nn.with_logical_partitioning``'s
      ``nn.LogicallyPartitioned``, ``nn.Partitioned``) are read through: the space is that of
      ``flax.core.meta.unbox(params)``, and ``apply_fn`` still gets the boxed params.
    *example_args: example inputs; every axis of them is data. The labels depend only on their shapes and
      dtypes; ``verify`` runs the model on them, so give real inputs there (all-zero inputs into a model
      without biases make every check vacuous, which ``verify`` refuses).
    io: ``"fixed"`` (default): axes that meet the data inputs or the outputs are fixed, so every label is
      an exact symmetry. ``"permutable"``: they are labelled too (as the builders' ``io="permutable"``),
      symmetries only when the data and outputs are permuted alike; ``verify`` then checks the others.
    verify: check the labels with :func:`unf.check_symmetry` on the example inputs before returning.

  Returns:
    The :class:`~unf.WeightSpace` of ``params`` (unboxed), with fixed sizes read from them.

  Raises:
    ValueError: on a bad ``io`` or params that are not nested dicts of arrays.
    SymmetryError: when ``verify`` finds a label that is not a symmetry (a bug in a rule: please report it).
    VacuousCheckError: when ``verify`` could not have failed: the output does not move with the params it
      tests (a constant output, bad BatchNorm statistics, zero inputs); the message says what to pass.

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
  apply_fn, params = _unboxed(apply_fn, params)
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
    warnings.warn(_cut_axes_message(hints), stacklevel=2)
  space = WeightSpace(spec).with_fixed_sizes(params)
  if verify:
    from unf.symmetry import check_symmetry  # noqa: PLC0415 (symmetry imports permutation, which is fine; kept lazy)

    checked = [name for root, name in names.items() if root not in touches_io]
    if checked:
      check_symmetry(apply_fn, params, space, *example_args, labels=checked)
  return space
