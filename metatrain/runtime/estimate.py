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
    workers: for a sum of several workers' estimates (:func:`sum_estimates`), their ids in increasing
      order (``worker_id`` is the first); empty for one worker's estimate.
  """

  grad: Theta
  meta_loss: float
  theta_step: int
  worker_id: int
  metrics: dict[str, float]
  flat: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
  workers: tuple[int, ...] = ()

  @property
  def count(self) -> int:
    """How many workers' estimates this is the sum of (1 for one worker's)."""
    return max(1, len(self.workers))

  def __reduce__(self):
    fields = (self.meta_loss, self.theta_step, self.worker_id, self.metrics)
    parts = _flat_parts(self.grad)
    if parts is None:
      return Estimate, (self.grad, *fields, None, self.workers)
    return unpack, (*parts, *fields, self.workers)


def _flat_parts(grad: Theta) -> tuple[np.ndarray, Any, list] | None:
  """``grad``'s leaves in one flat buffer, with the skeleton and shapes that unpack them (None: no leaves, or
  leaves of several dtypes, which one buffer cannot hold)."""
  import jax  # where a gradient is flattened, JAX is loaded: it computed the gradient

  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(grad)]
  if not leaves or len({leaf.dtype for leaf in leaves}) > 1:
    return None
  skeleton = jax.tree.map(lambda _: 0, grad)
  return np.concatenate([leaf.ravel() for leaf in leaves]), skeleton, [leaf.shape for leaf in leaves]


def packed_args(
  skeleton: Any, leaves: Sequence[np.ndarray], meta_loss: float, theta_step: int, worker_id: int, metrics: dict
) -> tuple:
  """What a worker's estimate pickles to: ``(unpack, (flat, skeleton, shapes, ...))``, from its leaves.

  Args:
    skeleton: the gradient's structure with a 0 for each leaf (nested dicts and lists pickle small).
    leaves: the gradient's leaves, in ``jax.tree.leaves`` order, all of one dtype.
    meta_loss, theta_step, worker_id, metrics: the estimate's other fields.
  """
  flat = np.concatenate([np.ravel(leaf) for leaf in leaves])
  shapes = [leaf.shape for leaf in leaves]
  return unpack, (flat, skeleton, shapes, meta_loss, theta_step, worker_id, metrics)


def unpack(
  flat: np.ndarray,
  skeleton: Any,
  shapes: list,
  meta_loss: float,
  theta_step: int,
  worker_id: int,
  metrics: dict,
  workers: tuple[int, ...] = (),
) -> Estimate:
  """The :class:`Estimate` of a packed one: ``flat`` as it came; ``grad``, views into it, built on first use."""
  return _Packed(flat, skeleton, shapes, meta_loss, theta_step, worker_id, metrics, workers)


class _Packed(Estimate):
  """An estimate that came packed: the learner reads :attr:`flat`; ``grad`` is built only when read.

  It pickles as it came, one buffer, without JAX (a node's aggregator passes sums on this way).
  """

  def __init__(self, flat, skeleton, shapes, meta_loss, theta_step, worker_id, metrics, workers=()):
    self.flat, self._skeleton, self._shapes = flat, skeleton, shapes
    self.meta_loss, self.theta_step, self.worker_id, self.metrics = meta_loss, theta_step, worker_id, metrics
    self.workers = tuple(workers)

  def __reduce__(self):
    fields = (self.meta_loss, self.theta_step, self.worker_id, self.metrics, self.workers)
    return unpack, (self.flat, self._skeleton, self._shapes, *fields)

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


def _leaves_of(estimate: Estimate) -> tuple[np.ndarray, Any, list]:
  """``estimate``'s gradient as one flat buffer, with the skeleton and shapes that unpack it."""
  if isinstance(estimate, _Packed):
    assert estimate.flat is not None  # set by __init__
    return estimate.flat, estimate._skeleton, estimate._shapes
  parts = _flat_parts(estimate.grad)  # an estimate built in this process (not unpickled)
  if parts is None:
    raise ValueError(f"worker {estimate.worker_id}'s gradient has no leaves or leaves of several dtypes: not summable.")
  return parts


def sum_estimates(estimates: Sequence[Estimate]) -> list[Estimate]:
  """Several workers' estimates at one theta as one: their sum, what a node's aggregator sends the learner.

  The finite estimates are summed in increasing ``worker_id`` order (a fixed order: the same estimates
  give the same bits, however they arrived), into an estimate whose ``workers`` lists them, whose
  ``meta_loss`` is their mean and whose ``metrics`` are the sums of theirs. A sum of one estimate is that
  estimate's gradient, bit for bit. Estimates with a non-finite gradient are not summed: they are returned
  as they are, after the sum, so that the learner drops and counts each of them as it does without a sum.

  The learner's mean over such sums (:meth:`metatrain.runtime.learner.Learner.apply` divides by the
  ``count`` of every sum) is the mean over the estimates, up to float rounding: the order of the
  additions differs.

  Args:
    estimates: estimates computed at the same ``theta_step``, each one worker's (``count`` 1), leaves of one dtype.

  Returns:
    ``[sum]`` followed by the non-finite estimates (``[]`` when there are none at all).
  """
  if not estimates:
    return []
  steps = {estimate.theta_step for estimate in estimates}
  if len(steps) > 1:
    raise ValueError(f"only estimates at one theta_step can be summed, got steps {sorted(steps)}.")
  if any(estimate.count > 1 for estimate in estimates):
    raise ValueError("sum_estimates takes single workers' estimates, not sums.")
  ordered = sorted(estimates, key=lambda estimate: estimate.worker_id)
  flats = [_leaves_of(estimate) for estimate in ordered]
  finite = [bool(np.isfinite(flat).all()) for flat, _, _ in flats]
  summed = [(estimate, flat) for estimate, (flat, _, _), ok in zip(ordered, flats, finite) if ok]
  rest = [estimate for estimate, ok in zip(ordered, finite) if not ok]
  if not summed:
    return rest
  total = np.array(summed[0][1])  # a copy: a sum of one is the estimate itself (not 0.0 + it)
  for _, flat in summed[1:]:
    total += flat
  metrics: dict[str, float] = {}
  for estimate, _ in summed:
    for name, value in estimate.metrics.items():
      metrics[name] = metrics.get(name, 0.0) + float(value)
  first = summed[0][0]
  _, skeleton, shapes = flats[ordered.index(first)]
  meta_loss = float(np.mean([estimate.meta_loss for estimate, _ in summed]))
  workers = tuple(estimate.worker_id for estimate, _ in summed)
  return [unpack(total, skeleton, shapes, meta_loss, first.theta_step, first.worker_id, metrics, workers), *rest]
