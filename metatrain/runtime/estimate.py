"""A gradient estimate, and its wire format: the gradient's leaves in one buffer.

Ray pickles an :class:`Estimate` returned by a worker actor. Pickled as a
pytree, a gradient of the Transformer's 195 leaves is 195 out-of-band
buffers, each deserialised on the learner's side (measured: 1.7 ms of the
learner's time per estimate, most of what it spends at 64 workers). So an
estimate whose leaves share a dtype travels as one flat buffer, the
structure as a small skeleton, and comes back as an :class:`Estimate` whose
leaves are views into that buffer (:attr:`Estimate.flat`), which the learner
stacks with one copy (:class:`metatrain.runtime.learner.Learner`).

No JAX at import: simulated workers (``benchmarks/simulated_workers.py``)
send estimates in this format from processes that import numpy and Ray only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from metatrain.types import Theta


@dataclasses.dataclass
class Estimate:
  """One gradient estimate, as numpy, and where it came from.

  Attributes:
    grad: the gradient, theta's structure.
    meta_loss: the meta-loss of the truncation it was computed on.
    theta_step: the outer step of the theta it was computed at.
    worker_id: the worker that computed it.
    metrics: the worker's metrics of that call.
    flat: the leaves of ``grad`` in one 1-D buffer (their views), when it came packed; None otherwise.
  """

  grad: Theta
  meta_loss: float
  theta_step: int
  worker_id: int
  metrics: dict[str, float]
  flat: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

  def __reduce__(self):
    import jax  # where an estimate is pickled, JAX is loaded: it computed the gradient

    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(self.grad)]
    if not leaves or len({leaf.dtype for leaf in leaves}) > 1:
      return Estimate, (self.grad, self.meta_loss, self.theta_step, self.worker_id, self.metrics)
    skeleton = jax.tree.map(lambda _: 0, self.grad)
    return packed_args(skeleton, leaves, self.meta_loss, self.theta_step, self.worker_id, self.metrics)


def packed_args(
  skeleton: Any, leaves: Sequence[np.ndarray], meta_loss: float, theta_step: int, worker_id: int, metrics: dict
) -> tuple:
  """What an estimate pickles to: ``(unpack, (flat, skeleton, shapes, ...))``, for ``__reduce__``.

  Args:
    skeleton: the gradient's structure with a 0 for each leaf (nested dicts and lists pickle small).
    leaves: the gradient's leaves, in ``jax.tree.leaves`` order, all of one dtype.
    meta_loss, theta_step, worker_id, metrics: the estimate's other fields.
  """
  flat = np.concatenate([np.ravel(leaf) for leaf in leaves])
  shapes = [leaf.shape for leaf in leaves]
  return unpack, (flat, skeleton, shapes, meta_loss, theta_step, worker_id, metrics)


def unpack(
  flat: np.ndarray, skeleton: Any, shapes: list, meta_loss: float, theta_step: int, worker_id: int, metrics: dict
) -> Estimate:
  """The :class:`Estimate` of a packed one: ``flat`` as it came; ``grad``, views into it, built on first use."""
  return _Packed(flat, skeleton, shapes, meta_loss, theta_step, worker_id, metrics)


class _Packed(Estimate):
  """An estimate that came packed: the learner reads :attr:`flat`; ``grad`` is built only when read."""

  def __init__(self, flat, skeleton, shapes, meta_loss, theta_step, worker_id, metrics):
    self.flat, self._skeleton, self._shapes = flat, skeleton, shapes
    self.meta_loss, self.theta_step, self.worker_id, self.metrics = meta_loss, theta_step, worker_id, metrics

  @functools.cached_property
  def grad(self) -> Theta:
    import jax

    flat, leaves, start = self.flat, [], 0
    assert flat is not None  # set by __init__
    for shape in self._shapes:
      size = math.prod(shape)
      leaves.append(flat[start : start + size].reshape(shape))
      start += size
    return jax.tree.unflatten(jax.tree.structure(self._skeleton), leaves)


class _View:
  """A leaf of a packed tree: pickles to ``numpy.ndarray(shape, dtype, buffer, offset)`` over a shared buffer.

  Pickle writes the buffer once (its memo), out of band with protocol 5 (Ray's object store), and each
  leaf as a call to numpy's own constructor: the other side needs numpy only, not this module.
  """

  __slots__ = ("buffer", "offset", "shape", "dtype")

  def __init__(self, buffer: np.ndarray, offset: int, shape: tuple, dtype: np.dtype):
    self.buffer, self.offset, self.shape, self.dtype = buffer, offset, shape, dtype

  def __reduce__(self):
    return np.ndarray, (self.shape, self.dtype, self.buffer, self.offset)


def packed_tree(tree: Any) -> Any:
  """``tree`` (a pytree of numpy arrays of one dtype) for pickling as one buffer; unpickles to the same tree
  of arrays (read-only views into that buffer). Trees of several dtypes are returned as they are.

  What the pool publishes: theta reaches every worker as one buffer, not one per leaf.
  """
  import jax

  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
  if not leaves or len({leaf.dtype for leaf in leaves}) > 1:
    return tree
  flat = np.concatenate([leaf.ravel() for leaf in leaves])
  views, offset = [], 0
  for leaf in leaves:
    views.append(_View(flat, offset, leaf.shape, leaf.dtype))
    offset += leaf.nbytes
  return jax.tree.unflatten(jax.tree.structure(tree), views)
