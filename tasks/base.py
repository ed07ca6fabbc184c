"""The Task API: an inner training problem whose data already lives on the device.

A :class:`Task` is a small frozen object. Its methods are pure functions of
explicit arguments (params, batch, key), jittable and vmappable, so a pool of
inner runs is one ``jax.vmap`` and a truncation one ``jax.lax.scan``.

A task is a pytree whose leaves are its data arrays (everything else is static
metadata). Pass it as an argument of the functions you ``jax.jit``
(``jax.jit(lambda task, key: task.sample_batch(key))(task, key)``): a task
closed over by a jitted function would have its dataset baked into the
compiled program as a constant (slow to compile, a copy per program).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import unf

SPLITS = ("train", "valid", "test")
Batch = tuple[jax.Array, jax.Array]


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}.")


# Strides for ClassificationData.sample: primes, so that one coprime with n is easy to find.
_STRIDE_PRIMES = tuple(p for p in range(101, 2000) if all(p % q for q in range(2, int(p**0.5) + 1)))


def shuffled(arrays: dict, seed: int = 0) -> dict:
  """The same permutation (fixed by ``seed``) applied to the first axis of every array.

  Example:
    >>> import numpy as np
    >>> shuffled({"x": np.arange(5), "y": 10 * np.arange(5)})  # rows stay aligned
    {'x': array([2, 4, 3, 0, 1]), 'y': array([20, 40, 30,  0, 10])}
  """
  order = np.random.default_rng(seed).permutation(len(next(iter(arrays.values()))))
  return {name: value[order] for name, value in arrays.items()}


def _uniform_indices(key: jax.Array, size: int, high: int) -> jax.Array:
  """Indices in [0, high): 32 random bits modulo ``high``.

  Half the cost of ``jax.random.randint`` (which draws twice to remove the
  modulo bias); the bias here is below ``high / 2**32`` (1e-5 for 50k examples).
  """
  return (jax.random.bits(key, (size,), jnp.uint32) % high).astype(jnp.int32)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["inputs", "labels"], meta_fields=["num_classes"])
@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationData:
  """Inputs and integer labels per split, as device arrays.

  Args:
    inputs: per split (``"train"``, ``"valid"``, ``"test"``), the examples, with a leading example axis.
    labels: per split, the integer class of every example.
    num_classes: the number of classes.
  """

  inputs: dict[str, jax.Array]
  labels: dict[str, jax.Array]
  num_classes: int

  def sample(self, key: jax.Array, split: str, batch_size: int) -> Batch:
    """A batch of distinct examples: an arithmetic progression modulo n.

    Start uniform in [0, n) and a stride drawn from primes that do not divide
    n, over examples shuffled once at load (see ``shuffled``): every slot of
    every batch holds each example with probability exactly 1/n, and only two
    random numbers are drawn per batch. Drawing ``batch_size`` independent
    indices instead spends most of a small task's step in the random number
    generator (measured: 30% of an ``mlp_fashion8`` step).
    """
    _check_split(split)
    n = self.labels[split].shape[0]
    strides = jnp.asarray([p for p in _STRIDE_PRIMES if n % p][:64], jnp.int32)
    start_bits, stride_bits = jax.random.bits(key, (2,), jnp.uint32)
    start = (start_bits % n).astype(jnp.int32)
    stride = strides[stride_bits % strides.shape[0]]
    index = (start + stride * jnp.arange(batch_size, dtype=jnp.int32)) % n
    return self.inputs[split][index], self.labels[split][index]

  def eval_batch(self, split: str, size: int) -> Batch:
    """The first ``size`` examples of ``split``: a fixed batch, the same on every call."""
    _check_split(split)
    return self.inputs[split][:size], self.labels[split][:size]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["tokens"], meta_fields=["num_classes", "seq_len"])
@dataclasses.dataclass(frozen=True, eq=False)
class SequenceData:
  """A token stream per split; batches are random windows, targets shifted by one.

  Args:
    tokens: per split, a 1-D array of token ids.
    num_classes: the vocabulary size.
    seq_len: characters per window (inputs and targets).
  """

  tokens: dict[str, jax.Array]
  num_classes: int  # vocabulary size
  seq_len: int

  def _windows(self, split: str, starts: jax.Array) -> Batch:
    windows = self.tokens[split][starts[:, None] + jnp.arange(self.seq_len + 1)]
    return windows[:, :-1], windows[:, 1:]

  def sample(self, key: jax.Array, split: str, batch_size: int) -> Batch:
    """``batch_size`` windows of ``split`` at uniform random starts: ``(inputs, targets shifted by one)``."""
    _check_split(split)
    high = self.tokens[split].shape[0] - self.seq_len
    return self._windows(split, _uniform_indices(key, batch_size, high))

  def eval_batch(self, split: str, size: int) -> Batch:
    """``size`` evenly spaced windows of ``split``: a fixed batch, the same on every call."""
    _check_split(split)
    high = self.tokens[split].shape[0] - self.seq_len
    return self._windows(split, jnp.asarray(np.linspace(0, high - 1, size).astype(np.int32)))


def _params_of(module: nnx.Module) -> dict:
  return nnx.to_pure_dict(nnx.state(module, nnx.Param))


@functools.cache
def _graphdef_of(make_model: Callable) -> nnx.GraphDef:
  return nnx.split(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))), nnx.Param)[0]


@functools.cache
def _space_of(make_model: Callable, space_builder: Callable, io: str) -> unf.WeightSpace:
  shapes = _params_of(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))))
  return space_builder(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), io=io)


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["data"],
  meta_fields=["name", "make_model", "batch_size", "space_builder", "eval_size", "io"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """An inner training problem: a network, its data, its loss and its weight space.

  Attributes:
    name: registry name.
    make_model: ``make_model(rngs) -> nnx.Module`` builds the network.
    data: device-resident data (:class:`ClassificationData` or :class:`SequenceData`).
    batch_size: examples per training batch.
    space_builder: the ``unf`` builder of the network's weight space.
    eval_size: examples (or windows) in the fixed evaluation batch.
    io: ``"permutable"`` or ``"fixed"`` for the space's input and output axes.
  """

  name: str
  make_model: Callable[[nnx.Rngs], nnx.Module]
  data: ClassificationData | SequenceData
  batch_size: int
  space_builder: Callable[..., unf.WeightSpace]
  eval_size: int = 10000
  io: str = "permutable"

  @property
  def space(self) -> unf.WeightSpace:
    """The ``unf.WeightSpace`` of the params, from the ``unf`` builders (computed once)."""
    return _space_of(self.make_model, self.space_builder, self.io)

  @property
  def loss_ceiling(self) -> float:
    """1.5 x the loss of a uniform prediction, the value at which :meth:`normalized` clips."""
    return 1.5 * math.log(self.data.num_classes)

  def init(self, key: jax.Array) -> dict:
    """Fresh params (a nested dict) from a PRNG key; jittable and vmappable."""
    return _params_of(self.make_model(nnx.Rngs(params=key)))

  def apply(self, params: dict, inputs: jax.Array) -> jax.Array:
    """The network's logits."""
    return nnx.merge(_graphdef_of(self.make_model), params)(inputs)

  def loss(self, params: dict, batch: Batch) -> jax.Array:
    """Mean negative log-likelihood of the targets (per token for language models)."""
    inputs, targets = batch
    logits = self.apply(params, inputs)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

  def sample_batch(self, key: jax.Array, split: str = "train") -> Batch:
    """A random batch drawn on the device (``split`` is static: train, valid or test)."""
    return self.data.sample(key, split, self.batch_size)

  def eval_loss(self, params: dict, split: str = "valid") -> jax.Array:
    """Loss over a fixed batch of ``eval_size`` examples of ``split``."""
    return self.loss(params, self.data.eval_batch(split, self.eval_size))

  def normalized(self, loss: jax.Array) -> jax.Array:
    """The loss clipped at :attr:`loss_ceiling`, with NaN and inf mapped to the ceiling.

    So that one diverging inner run cannot dominate an ES estimate.
    """
    ceiling = jnp.asarray(self.loss_ceiling, jnp.result_type(loss, jnp.float32))
    return jnp.where(jnp.isfinite(loss), jnp.minimum(loss, ceiling), ceiling)

  def __repr__(self) -> str:
    return f"Task({self.name!r}, batch_size={self.batch_size})"


@dataclasses.dataclass(frozen=True)
class TaskFamily:
  """A distribution over task variants (widths, depth, activation, resize), sampled from a key.

  ``sample_variant(rng) -> Task`` draws with a numpy Generator; the same key
  always gives the same variant, and variants are cached so that a variant
  drawn twice is the same object (and compiles once).

  Args:
    name: the family's name.
    sample_variant: draws one variant from a numpy Generator.
  """

  name: str
  sample_variant: Callable[[np.random.Generator], Task]

  def sample(self, key: jax.Array) -> Task:
    """The variant that ``key`` draws (the same task object for the same key)."""
    seed = int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))
    return self.sample_variant(np.random.default_rng(seed))


def as_device_arrays(tree: Any) -> Any:
  """Moves a pytree of numpy arrays to the default device once."""
  return jax.tree.map(jnp.asarray, tree)
