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
