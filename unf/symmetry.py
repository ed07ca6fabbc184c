"""Numerical check that a weight space describes a true symmetry of a network.

A :class:`~unf.WeightSpace` claims that reordering the axes that share a label
leaves the network's function unchanged: ``f(sigma . params, x) = f(params, x)``
for every group element ``sigma``. :func:`check_symmetry` tests that claim on
random group elements; it is how a hand-written spec (or a builder's) is shown
to be right. A check whose output could not have moved (a constant output, say
from bad BatchNorm statistics) proves nothing, and is refused with
:class:`VacuousCheckError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unf.permutation import permute, sample_permutation
from unf.space import WeightSpace, path_str


class SymmetryError(AssertionError):
  """A claimed weight-space symmetry changed a network's outputs.

  An ``AssertionError`` so that a failed check reads as a failed assertion in
  tests; the message names the permuted labels, the output leaf, the deviation,
  and the labels that break the symmetry on their own.
  """


class VacuousCheckError(AssertionError):
  """:func:`check_symmetry` passed, but a wrong weight space would have passed too: the check proves nothing.

  Raised when the output of ``apply_fn`` moves neither when the tested axes are permuted each on its own (as a
  wrongly tied label would permute them) nor when the leaves that carry them are perturbed by 1% of their scale:
  the output is constant near these params and inputs. Not a :class:`SymmetryError`: no claim was refuted, none
  could be tested. The message names the tested leaves and axes and what to pass instead.
  """


def _generator(key: jax.Array) -> np.random.Generator:
  """A NumPy generator seeded by ``key``: the probes draw hundreds of small arrays, which eager jax ops make slow."""
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  return np.random.default_rng(np.asarray(data, np.uint32).ravel().tolist())


def _non_identity(rng: np.random.Generator, size: int) -> np.ndarray:
  """A uniformly drawn permutation of ``size`` entries, rolled by one when the draw is the identity."""
  p = rng.permutation(size)
  return np.roll(p, 1) if size > 1 and np.array_equal(p, np.arange(size)) else p


def _random_element(space: WeightSpace, key: jax.Array, sizes: dict[str, int]) -> dict[str, np.ndarray]:
  """A random permutation for every label of ``space``, none of them the identity (for labels of size 2 or more)."""
  # Drawn for all labels whichever are checked, so that a label gets the same
  # permutation alone as in the failing trial. Eager on purpose: jax compiles
  # a permutation per size once and reuses it for every space, where a jit of
  # the whole draw would recompile for each space.
  drawn = sample_permutation(space, key, sizes)
  out: dict[str, np.ndarray] = {}
  for label, drawn_p in drawn.items():
    p = np.asarray(drawn_p)
    # With small labels a uniform draw is often the identity (probability 1/2
    # for two entries) and a broken label would pass unnoticed.
    out[label] = np.roll(p, 1) if p.size > 1 and np.array_equal(p, np.arange(p.size)) else p
  return out


def _occurrences(space: WeightSpace, chosen: tuple[str, ...]) -> dict[str, list[tuple[int, int]]]:
  """Per chosen label, the (leaf index, axis) pairs that carry it, in :attr:`~unf.WeightSpace.paths` order."""
  found: dict[str, list[tuple[int, int]]] = {label: [] for label in chosen}
  for index, axes in enumerate(space.axes):
    for axis, label in enumerate(axes):
      if label in found:
        found[label].append((index, axis))
  return found


def _untied(space: WeightSpace, params: Any, occurrences: dict[str, list[tuple[int, int]]], key: jax.Array) -> Any:
  """``params`` with every axis of a chosen label permuted on its own, the first axis of each label left in place.

  This is how a true symmetry looks to a space that splits one of its labels in two (each part permuted on its
  own): an output that this does not move is one that such a mistake cannot move either. Returns None when no
  label has two axes to untie.
  """
  leaves = list(space.flatten(params))
  rng = _generator(key)
  untied = False
  for where in occurrences.values():
    for index, axis in where[1:]:
      size = jnp.shape(leaves[index])[axis]
      if size < 2:
        continue
      leaves[index] = jnp.take(leaves[index], _non_identity(rng, size), axis=axis)
      untied = True
  return space.unflatten(leaves) if untied else None


def _perturbed(space: WeightSpace, params: Any, indices: set[int], key: jax.Array) -> Any:
  """``params`` with the floating leaves at ``indices`` moved by Gaussian noise of 1% of their RMS (or 0.01)."""
  leaves = list(space.flatten(params))
  rng = _generator(key)
  for index in sorted(indices):
    leaf = leaves[index]
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating) or jnp.size(leaf) == 0:
      continue
    values = np.asarray(leaf, np.float64)
    rms = float(np.sqrt(np.mean(np.square(values))))
    scale = rms if np.isfinite(rms) and rms > 0 else 1.0
    noise = rng.standard_normal(values.shape)
    leaves[index] = jnp.asarray(values + 0.01 * scale * noise, dtype=jnp.result_type(leaf))
  return space.unflatten(leaves)


def _refuse_if_vacuous(
  apply_fn: Callable[..., Any],
  params: Any,
  space: WeightSpace,
  inputs: tuple,
  chosen: tuple[str, ...],
  reference: Any,
  key: jax.Array,
  rtol: float | None,
  atol: float | None,
) -> None:
  """Raises :class:`VacuousCheckError` when the output moves under neither probe (see that class)."""
  occurrences = _occurrences(space, chosen)
  untied = _untied(space, params, occurrences, jax.random.fold_in(key, 1))
  # Moving by more than the check's tolerance under the untied permutation means a mistake would have shown.
  if untied is not None and _worst(reference, apply_fn(untied, *inputs), rtol, atol)[1] is not None:
    return
  # Labels on a single axis have nothing to untie, and outputs that are piecewise constant (argmax, tokens) do
  # not move under a small perturbation: the check is informative when either probe moves the output.
  indices = {index for where in occurrences.values() for index, _ in where}
  moved = _perturbed(space, params, indices, jax.random.fold_in(key, 2))
  if _worst(reference, apply_fn(moved, *inputs), None, None)[1] is not None:
    return
  tested = [
    f"{label!r} at {', '.join(f'{path_str(space.paths[i])}:{a}' for i, a in where)}"
    for label, where in occurrences.items()
    if where
  ]
  shown = "; ".join(tested[:6]) + (f"; and {len(tested) - 6} more labels" if len(tested) > 6 else "")
  finite = all(np.all(np.isfinite(np.asarray(leaf, np.float64))) for leaf in jax.tree.leaves(reference))
  raise VacuousCheckError(
    f"check_symmetry proves nothing here: the output of apply_fn does not move when the axes of labels "
    f"{list(chosen)} are permuted each on its own, as a wrong label would permute them, nor when the leaves that "
    f"carry them are perturbed by 1% of their scale, so a wrong weight space would pass too. The tested axes "
    f"(leaf:axis): {shown}."
    + ("" if finite else " The output holds NaN or inf.")
    + " The output is constant near these params and inputs: pass real inputs (zeros into a model without "
    "biases give zeros), the real BatchNorm statistics with the params ({'params': ..., 'batch_stats': ...}), "
    "and params that do not saturate the model (a fresh init, or the trained ones); or skip the proof "
    "(unf.infer_space(..., verify=False))."
  )


def default_tolerance(dtype: Any) -> float:
  """The default ``rtol`` (and ``atol``, relative to the output's scale) for outputs of ``dtype``: 10 eps^(3/4).

  About 6e-5 in float32 and 2e-11 in float64: rounding in a permuted sum stays well below it, and a broken
  symmetry moves outputs by far more.
  """
  eps = float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.inexact) else 0.0
  return 10.0 * eps**0.75


def _worst(reference: Any, output: Any, rtol: float | None, atol: float | None) -> tuple[float, str | None]:
  """Largest |output - reference| and, when some entry is out of tolerance, a description of the worst one."""
  ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(reference)
  out_leaves, out_def = jax.tree_util.tree_flatten_with_path(output)
  # jaxlib ships no stub for PyTreeDef, so mypy does not see its __eq__; comparing treedefs is what checks
  # every node (containers, None, custom nodes' aux data), which no rewrite over leaves or shapes matches.
  if ref_def != out_def:  # type: ignore[operator]
    return float("inf"), f"the output's structure changed from {ref_def} to {out_def}"
  deviation, failure, worst_excess = 0.0, None, 0.0
  for (path, ref), (_, out) in zip(ref_leaves, out_leaves):
    tolerance = default_tolerance(np.asarray(ref).dtype)
    ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
    leaf_rtol = tolerance if rtol is None else rtol
    leaf_atol = tolerance * max(1.0, float(np.max(np.abs(ref), initial=0.0))) if atol is None else atol
    name = jax.tree_util.keystr(path) or "<output>"
    if ref.shape != out.shape:
      return float("inf"), f"output leaf {name} changed shape from {ref.shape} to {out.shape}"
    if ref.size == 0:
      continue
    diff = np.where(np.isnan(ref) & np.isnan(out), 0.0, np.abs(out - ref))
    diff = np.where(np.isnan(diff), np.inf, diff)
    excess = diff - (leaf_atol + leaf_rtol * np.abs(np.where(np.isfinite(ref), ref, 0.0)))
    deviation = max(deviation, float(diff.max()))
    index = np.unravel_index(int(np.argmax(excess)), excess.shape)
    if excess[index] > worst_excess:
      worst_excess = float(excess[index])
      failure = (
        f"output leaf {name} changed by {float(diff[index]):.3g} at index {tuple(int(i) for i in index)} "
        f"(reference {float(ref[index]):.6g}, now {float(out[index]):.6g}; allowed atol + rtol * |reference| "
        f"= {leaf_atol:.3g} + {leaf_rtol:.3g} * {abs(float(ref[index])):.3g})"
      )
  return deviation, failure


def check_symmetry(
  apply_fn: Callable[..., Any],
  params: Any,
  space: WeightSpace,
  *inputs: Any,
  labels: Iterable[str] | str | None = None,
  key: jax.Array | None = None,
  num_trials: int = 3,
  rtol: float | None = None,
  atol: float | None = None,
) -> float:
  """Checks numerically that permuting the labelled axes of ``params`` leaves ``apply_fn`` unchanged.

  Tests the identity ``apply_fn(sigma . params, *inputs) = apply_fn(params, *inputs)``
  for ``num_trials`` random group elements ``sigma`` of ``space`` (one random
  permutation per label, each drawn different from the identity), where
  ``sigma . params`` is :func:`unf.permute`. This is how a user shows that a
  hand-written :class:`~unf.WeightSpace` is right: a wrong label shows up as a
  changed output. Labels for the network's input and output axes are usually
  not exact symmetries; pass ``labels`` to check only the hidden ones.

  A pass is only worth something if a wrong space would have failed. So once
  every trial passes, the check probes the output: it must move beyond the
  tolerance when the tested axes are permuted each on its own (what a wrongly
  tied label does), or beyond rounding when the leaves that carry them are
  perturbed by 1% of their scale (for labels on a single axis, and for
  piecewise-constant outputs such as tokens). If it moves under neither, the
  check raises :class:`VacuousCheckError` instead of returning. The probes
  are joint over ``labels`` (check one label alone to probe it alone), and
  they show that the output depends on the tested leaves, not that every
  mistake would move it: a last layer of zeros, say, still passes them.

  ``apply_fn`` is called ``num_trials + 2`` times (one more when the first
  probe does not move the output) with params of the same shapes, so a
  ``jax.jit``-ed ``apply_fn`` compiles once.

  Args:
    apply_fn: ``apply_fn(params, *inputs)`` returning a pytree of arrays.
    params: a params pytree (nested dict) of ``space``.
    space: the weight space whose symmetry is claimed.
    *inputs: the inputs passed to ``apply_fn`` after the params.
    labels: the labels to permute (a string for a single one); default all
      labels of ``space``.
    key: PRNG key for the group elements; default ``jax.random.key(0)``.
    num_trials: number of random group elements to try.
    rtol: relative tolerance, per output entry; default from the output's dtype
      (:func:`default_tolerance`: about 6e-5 in float32, 2e-11 in float64).
    atol: absolute tolerance, per output entry; default the same, times the
      largest absolute entry of the output leaf (when above 1).

  Returns:
    The largest absolute deviation of any output entry over all trials, as a
    float (about 1e-15 in float64 for a true symmetry).

  Raises:
    SymmetryError: (an ``AssertionError``) when an output entry moves by more
      than ``atol + rtol * |reference|``; the message names the permuted
      labels, the output leaf and index, the deviation, and which labels break
      the symmetry when permuted alone.
    VacuousCheckError: (an ``AssertionError``, not a ``SymmetryError``) when
      every trial passed but the check could not have failed: the output moves
      neither when the tested axes are permuted each on its own (untied) nor
      when their leaves are perturbed by 1% (a constant output, e.g. from bad
      BatchNorm statistics or zero inputs into a model without biases). The
      message names the tested leaves and axes and what to pass instead.
      ``unf.infer_space(..., verify=True)`` raises it too: a proof that proves
      nothing is not returned as one.
    ValueError: when ``params`` does not lie in ``space`` or ``labels`` names
      a label the space does not have.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from unf import WeightSpace
    >>> from unf.symmetry import check_symmetry
    >>> space = WeightSpace({"w0": ("in", "hidden"), "w1": ("hidden", "out")})
    >>> params = {"w0": jnp.ones((3, 4)) * jnp.arange(4), "w1": jnp.ones((4, 2)) * jnp.arange(4)[:, None]}
    >>> apply_fn = lambda p, x: jnp.tanh(x @ p["w0"]) @ p["w1"]
    >>> check_symmetry(apply_fn, params, space, jnp.ones(3), labels="hidden") < 1e-6
    True
  """
  sizes = space.validate(params)
  if isinstance(labels, str):
    labels = (labels,)
  chosen = space.labels if labels is None else tuple(labels)
  unknown = sorted(set(chosen) - set(space.labels))
  if unknown:
    raise ValueError(f"labels {unknown} are not in the weight space; it has {list(space.labels)}.")
  key = jax.random.key(0) if key is None else key
  reference = apply_fn(params, *inputs)

  def run(element: dict[str, np.ndarray], trial_labels: tuple[str, ...]) -> tuple[float, str | None]:
    permuted = permute(space, {label: element[label] for label in trial_labels}, params)
    return _worst(reference, apply_fn(permuted, *inputs), rtol, atol)

  worst = 0.0
  for trial, trial_key in enumerate(jax.random.split(key, num_trials)):
    element = _random_element(space, trial_key, sizes)
    deviation, failure = run(element, chosen)
    worst = max(worst, deviation)
    if failure is None:
      continue
    message = f"permuting labels {list(chosen)} (trial {trial + 1} of {num_trials}): {failure}."
    if len(chosen) > 1:
      alone = [label for label in chosen if run(element, (label,))[1] is not None]
      message += (
        f" Labels that break the symmetry when permuted alone: {alone}."
        if alone
        else " No label breaks it alone: the failure needs several labels permuted together."
      )
    raise SymmetryError(
      message
      + _rounding_or_not(apply_fn, params, space, inputs, element, chosen, reference)
      + " Either these axes are not a symmetry of apply_fn, or the weight space labels them wrongly."
    )
  if chosen:
    _refuse_if_vacuous(
      apply_fn, params, space, inputs, chosen, reference, jax.random.fold_in(key, num_trials), rtol, atol
    )
  return worst


def _as_float64(tree: Any) -> Any:
  return jax.tree.map(
    lambda x: np.asarray(x, np.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else x, tree
  )


def _rounding_or_not(
  apply_fn: Callable[..., Any],
  params: Any,
  space: WeightSpace,
  inputs: tuple,
  element: dict[str, np.ndarray],
  chosen: tuple[str, ...],
  reference: Any,
) -> str:
  """For outputs below float64: the same trial rerun in float64, which tells rounding from a real asymmetry."""
  dtypes = {np.asarray(leaf).dtype for leaf in jax.tree.leaves(reference)}
  if all(dtype == np.float64 or not np.issubdtype(dtype, np.floating) for dtype in dtypes):
    return ""
  if not jax.config.read("jax_enable_x64"):
    return (
      f" The outputs are {', '.join(sorted(map(str, dtypes)))}: enable jax_enable_x64 to rerun in float64 and "
      "tell rounding from a real asymmetry."
    )
  params64, inputs64 = _as_float64(params), _as_float64(inputs)
  reference64 = apply_fn(params64, *inputs64)
  permuted = permute(space, {label: element[label] for label in chosen}, params64)
  deviation, failure = _worst(reference64, apply_fn(permuted, *inputs64), None, None)
  if failure is None:
    return (
      f" Rerun in float64 it changes by {deviation:.3g} only: this is rounding, not an asymmetry; pass a larger "
      "atol / rtol (or check in float64)."
    )
  return f" Rerun in float64 it still changes by {deviation:.3g}: a real asymmetry, not rounding."
