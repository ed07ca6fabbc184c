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


def _worst(reference: Any, output: Any, rtol: float, atol: float) -> tuple[float, str | None]:
  """Largest |output - reference| and, when some entry is out of tolerance, a description of the worst one."""
  ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(reference)
  out_leaves, out_def = jax.tree_util.tree_flatten_with_path(output)
  # jaxlib ships no stub for PyTreeDef, so mypy does not see its __eq__; comparing treedefs is what checks
  # every node (containers, None, custom nodes' aux data), which no rewrite over leaves or shapes matches.
  if ref_def != out_def:  # type: ignore[operator]
    return float("inf"), f"the output's structure changed from {ref_def} to {out_def}"
  deviation, failure, worst_excess = 0.0, None, 0.0
  for (path, ref), (_, out) in zip(ref_leaves, out_leaves):
    ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
    name = jax.tree_util.keystr(path) or "<output>"
    if ref.shape != out.shape:
      return float("inf"), f"output leaf {name} changed shape from {ref.shape} to {out.shape}"
    if ref.size == 0:
      continue
    diff = np.where(np.isnan(ref) & np.isnan(out), 0.0, np.abs(out - ref))
    diff = np.where(np.isnan(diff), np.inf, diff)
    excess = diff - (atol + rtol * np.abs(ref))
    deviation = max(deviation, float(diff.max()))
    index = np.unravel_index(int(np.argmax(excess)), excess.shape)
    if excess[index] > worst_excess:
      worst_excess = float(excess[index])
      failure = (
        f"output leaf {name} changed by {float(diff[index]):.3g} at index {tuple(int(i) for i in index)} "
        f"(reference {float(ref[index]):.6g}, now {float(out[index]):.6g}; allowed atol + rtol * |reference| "
        f"= {atol:g} + {rtol:g} * {abs(float(ref[index])):.3g})"
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
  rtol: float = 1e-5,
  atol: float = 1e-6,
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
    rtol: relative tolerance, per output entry.
    atol: absolute tolerance, per output entry.

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
      message + " Either these axes are not a symmetry of apply_fn, or the weight space labels them wrongly."
    )
  return worst
