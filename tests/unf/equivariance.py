"""One reusable equivariance check, applied everywhere (as e3nn-jax's tests do)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import unf


def random_features(space: unf.WeightSpace, sizes: dict[str, int], features: int, key, dtype=jnp.float64) -> dict:
  """A random pytree of ``space`` with the given label sizes and a trailing feature axis."""
  leaves = []
  for index, (axes, k) in enumerate(zip(space.axes, jax.random.split(key, len(space)))):
    fixed = iter(space.fixed_shape(index))
    shape = tuple(sizes[a] if a is not None else next(fixed) for a in axes)
    leaves.append(jax.random.normal(k, (*shape, features), dtype))
  return space.unflatten(leaves)


def assert_equivariant(fn, space, key, x, *, space_out=None, invariant=False, num_trials=2, atol=1e-9):
  """Checks ``fn(sigma . x) == sigma . fn(x)`` (or ``== fn(x)`` if invariant) for random sigma.

  Returns the worst deviation; raises AssertionError naming it otherwise.
  """
  space_out = space if space_out is None else space_out
  sizes = space.validate(x, trailing=1)
  y = fn(x)
  worst = 0.0
  for k in jax.random.split(key, num_trials):
    sigma = unf.sample_permutation(space, k, sizes)
    y_sigma = fn(unf.permute(space, sigma, x))
    if invariant:
      expected = y
    else:
      expected = unf.permute(space_out, {a: p for a, p in sigma.items() if a in space_out.labels}, y)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(y_sigma)):
      scale = max(1.0, float(np.max(np.abs(a))))
      worst = max(worst, float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) / scale)
  assert worst <= atol, f"not {'invariant' if invariant else 'equivariant'}: worst relative deviation {worst:.3g}"
  return worst
