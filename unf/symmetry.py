"""Numerical check that a weight space describes a true symmetry of a network.

A :class:`~unf.WeightSpace` claims that reordering the axes that share a label
leaves the network's function unchanged: ``f(sigma . params, x) = f(params, x)``
for every group element ``sigma``. :func:`check_symmetry` tests that claim on
random group elements; it is how a hand-written spec (or a builder's) is shown
to be right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from unf.permutation import permute, sample_permutation
from unf.space import WeightSpace


class SymmetryError(AssertionError):
  """A claimed weight-space symmetry changed a network's outputs.

  An ``AssertionError`` so that a failed check reads as a failed assertion in
  tests; the message names the permuted labels, the output leaf, the deviation,
  and the labels that break the symmetry on their own.
  """


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

  ``apply_fn`` is called ``num_trials + 1`` times with params of the same
  shapes, so a ``jax.jit``-ed ``apply_fn`` compiles once.

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
    ValueError: when ``params`` does not lie in ``space`` or ``labels`` names
      a label the space does not have.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from unf import WeightSpace
    >>> from unf.symmetry import check_symmetry
    >>> space = WeightSpace({"w0": ("in", "hidden"), "w1": ("hidden", "out")})
    >>> params = {"w0": jnp.ones((3, 4)) * jnp.arange(4), "w1": jnp.ones((4, 2))}
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
