"""The named tasks of the paper's experiments, and task families.

Datasets are read once per process and moved to the device once; every task
on the same dataset (and resize) shares the same device arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np

import unf
from tasks import cifar10, digits, fashion_mnist, text
from tasks.base import ClassificationData, SequenceData, Task, TaskFamily, as_device_arrays, shuffled
from tasks.models import CNN, MLP, RNNLM, TransformerLM

# --- device-resident datasets (cached) -------------------------------------------------


def _image_splits(load: Callable[..., tuple[np.ndarray, np.ndarray]], size: int, num_valid: int) -> dict:
  """train / valid (the last ``num_valid`` training examples) / test, NHWC float32."""
  train_x, train_y = load("train", size=size)
  test_x, test_y = load("test", size=size)
  if train_x.ndim == 3:  # grayscale: add the channel axis
    train_x, test_x = train_x[..., None], test_x[..., None]
  train = shuffled({"x": train_x[:-num_valid], "y": train_y[:-num_valid]})  # fixed order for strided batches
  inputs = {"train": train["x"], "valid": train_x[-num_valid:], "test": test_x}
  labels = {"train": train["y"], "valid": train_y[-num_valid:], "test": test_y}
  return as_device_arrays({"inputs": inputs, "labels": labels})


@functools.cache
def fashion_mnist_data(size: int) -> ClassificationData:
  """Fashion-MNIST at ``size x size``: 50k train, 10k valid, 10k test, on the device."""
  return ClassificationData(**_image_splits(fashion_mnist.load, size, 10000), num_classes=10)


@functools.cache
def fashion_mnist_subset(size: int, num_train: int) -> ClassificationData:
  """:func:`fashion_mnist_data` with only its first ``num_train`` training examples (valid and test whole).

  A small-data task in the overfitting regime: 2,000 steps of 128 are 256 passes over 1,000 examples. The
  examples are the first of the training split's fixed shuffle, so the subset is the same on every machine.
  """
  full = fashion_mnist_data(size)
  if not 0 < num_train <= full.labels["train"].shape[0]:
    raise ValueError(f"num_train={num_train} must be in [1, {full.labels['train'].shape[0]}].")
  inputs = {**full.inputs, "train": full.inputs["train"][:num_train]}
  labels = {**full.labels, "train": full.labels["train"][:num_train]}
  return ClassificationData(inputs=inputs, labels=labels, num_classes=full.num_classes)


@functools.cache
def digits_data(num_train: int, num_valid: int) -> ClassificationData:
  """scikit-learn's 8x8 digits (:mod:`tasks.digits`) in a fixed shuffle: ``num_train`` examples to train on,
  the next ``num_valid`` to validate on, the rest to test on; on the device.

  Raises:
    ValueError: when the two leave no test examples.
  """
  images, labels = digits.load()
  if num_train < 1 or num_valid < 1 or num_train + num_valid >= len(labels):
    raise ValueError(
      f"num_train={num_train} and num_valid={num_valid} must be positive and leave test examples of the "
      f"{len(labels)} digits."
    )
  data = shuffled({"x": images[..., None], "y": labels})
  cuts = {"train": slice(0, num_train), "valid": slice(num_train, num_train + num_valid)}
  cuts["test"] = slice(num_train + num_valid, None)
  inputs = {split: data["x"][cut] for split, cut in cuts.items()}
  targets = {split: data["y"][cut] for split, cut in cuts.items()}
  return ClassificationData(**as_device_arrays({"inputs": inputs, "labels": targets}), num_classes=10)


@functools.cache
def cifar10_data(size: int) -> ClassificationData:
  """CIFAR-10 at ``size x size``: 45k train, 5k valid, 10k test, on the device."""
  return ClassificationData(**_image_splits(cifar10.load, size, 5000), num_classes=10)


@functools.cache
def _corpus_tokens() -> tuple[dict, int]:
  corpus = text.load_corpus()
  return as_device_arrays({"train": corpus.train, "valid": corpus.valid, "test": corpus.test}), len(corpus.vocab)


def shakespeare_data(seq_len: int) -> SequenceData:
  """The Shakespeare character corpus in windows of ``seq_len`` (token arrays shared)."""
  tokens, vocab_size = _corpus_tokens()
  return SequenceData(tokens=tokens, num_classes=vocab_size, seq_len=seq_len)


# --- task constructors -------------------------------------------------------------------

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jax.nn.tanh, "gelu": jax.nn.gelu}


@functools.cache
def mlp_fashion(
  size: int, hidden: tuple[int, ...], activation: str = "relu", *, num_train: int = 0, name: str | None = None
) -> Task:
  """An MLP on Fashion-MNIST resized to ``size x size`` (on its first ``num_train`` training examples, if not 0)."""
  sizes = (size * size, *hidden, 10)
  subset = f"_n{num_train}" if num_train else ""
  return Task(
    name=name or f"mlp_fashion{size}_{'-'.join(map(str, hidden))}_{activation}{subset}",
    make_model=lambda rngs: MLP(sizes, activation=ACTIVATIONS[activation], rngs=rngs),
    data=fashion_mnist_subset(size, num_train) if num_train else fashion_mnist_data(size),
    batch_size=128,
    space_builder=unf.mlp_space,
  )


@functools.cache
def mlp_digits(hidden: tuple[int, ...], *, num_train: int, num_valid: int, name: str) -> Task:
  """An MLP on scikit-learn's 8x8 digits (:func:`digits_data`): ``mlp_fashion8``'s architecture on other data."""
  return Task(
    name=name,
    make_model=lambda rngs: MLP((64, *hidden, 10), activation=jax.nn.relu, rngs=rngs),
    data=digits_data(num_train, num_valid),
    batch_size=128,
    space_builder=unf.mlp_space,
  )


@functools.cache
def cnn(dataset: str, size: int, channels: tuple[int, ...] = (16, 32), *, name: str | None = None) -> Task:
  """3x3 stride-2 convolutions, global average pool, dense head, on Fashion-MNIST or CIFAR-10."""
  data = {"fashion": fashion_mnist_data, "cifar": cifar10_data}[dataset](size)
  in_channels = 1 if dataset == "fashion" else 3
  return Task(
    name=name or f"cnn_{dataset}{size}",
    make_model=lambda rngs: CNN(in_channels, channels, 10, rngs=rngs),
    data=data,
    batch_size=128,
    space_builder=unf.cnn_space,
  )


@functools.cache
def rnn_lm(cell: str, *, embed: int = 32, hidden: int = 64, name: str | None = None) -> Task:
  """A character-level RNN LM on Shakespeare: batch 64, sequence length 16."""
  data = shakespeare_data(16)
  return Task(
    name=name or f"{cell}_lm",
    make_model=lambda rngs: RNNLM(data.num_classes, embed, hidden, cell=cell, rngs=rngs),
    data=data,
    batch_size=64,
    space_builder=unf.rnn_space,
    eval_size=1024,
  )


@functools.cache
def transformer_lm(*, name: str = "transformer_lm") -> Task:
  """A 2-block pre-LN transformer LM on Shakespeare: d 32, 4 heads, MLP 128, batch 8, sequence length 8."""
  data = shakespeare_data(8)
  return Task(
    name=name,
    make_model=lambda rngs: TransformerLM(
      data.num_classes, d_model=32, num_heads=4, mlp=128, num_blocks=2, max_len=8, rngs=rngs
    ),
    data=data,
    batch_size=8,
    space_builder=unf.transformer_space,
    eval_size=1024,
  )


#: Training examples of the small-data tasks ``mlp_fashion8_small`` and ``mlp_digits_small``.
SMALL_TRAIN = 1000
#: Validation examples of ``mlp_digits_small`` (the other 397 digits are its test split).
DIGITS_VALID = 400

_TASKS: dict[str, Callable[[], Task]] = {
  "mlp_fashion8": lambda: mlp_fashion(8, (32,), name="mlp_fashion8"),
  # Held out from meta-training: the same architecture at 16x16 inputs and 4x the width (generalisation).
  "mlp_fashion16_wide": lambda: mlp_fashion(16, (128,), name="mlp_fashion16_wide"),
  # Held out from meta-training: mlp_fashion8 on 1,000 training examples, the overfitting regime of a
  # user's small dataset (validation and test as mlp_fashion8's).
  "mlp_fashion8_small": lambda: mlp_fashion(8, (32,), num_train=SMALL_TRAIN, name="mlp_fashion8_small"),
  # Held out from meta-training: mlp_fashion8's architecture on another small dataset, 1,000 of
  # scikit-learn's 8x8 digits (the small classification set of issue 22's user).
  "mlp_digits_small": lambda: mlp_digits((32,), num_train=SMALL_TRAIN, num_valid=DIGITS_VALID, name="mlp_digits_small"),
  "cnn_fashion16": lambda: cnn("fashion", 16, name="cnn_fashion16"),
  "cnn_cifar16": lambda: cnn("cifar", 16, name="cnn_cifar16"),
  "rnn_lm": lambda: rnn_lm("irnn", name="rnn_lm"),
  "lstm_lm": lambda: rnn_lm("lstm", name="lstm_lm"),
  "transformer_lm": transformer_lm,
}


def names() -> list[str]:
  """Names of the registered tasks, sorted.

  Example:
    >>> import tasks
    >>> tasks.names()[:4]
    ['cnn_cifar16', 'cnn_fashion16', 'lstm_lm', 'mlp_digits_small']
    >>> "mlp_fashion8_small" in tasks.names()
    True
  """
  return sorted(_TASKS)


def get(name: str) -> Task:
  """The registered task ``name`` (its data is loaded on first use and shared).

  Args:
    name: one of :func:`names`.

  Returns:
    The task (the same object on every call).

  Raises:
    KeyError: an unknown name, listing the known ones.
  """
  if name not in _TASKS:
    raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(names())}.")
  return _TASKS[name]()


# --- task families ---------------------------------------------------------------------


def _mlp_variant(rng: np.random.Generator) -> Task:
  depth = int(rng.integers(1, 3))
  hidden = tuple(int(w) for w in rng.choice([16, 32, 48, 64, 96, 128], size=depth))
  activation = str(rng.choice(sorted(ACTIVATIONS)))
  size = int(rng.choice([8, 16]))
  return mlp_fashion(size, hidden, activation)


# Fashion-MNIST MLPs with 1-2 hidden layers of 16-128 units, relu / tanh / gelu, inputs 8x8 or 16x16.
MLP_FASHION_FAMILY = TaskFamily("mlp_fashion_family", _mlp_variant)


#: The hidden widths of the family ``mlp_fashion8_widths`` (mlp_fashion8's is 32).
MLP_WIDTHS = (16, 32, 64, 128)


def _mlp8_width_variant(rng: np.random.Generator) -> Task:
  return mlp_fashion(8, (int(rng.choice(MLP_WIDTHS)),), "relu")


# mlp_fashion8's architecture (8x8 inputs, one relu hidden layer) at the hidden widths MLP_WIDTHS: every
# variant has mlp_fashion8's weight space up to sizes, so one learned optimizer meta-trains on all of them.
MLP_FASHION8_WIDTHS = TaskFamily("mlp_fashion8_widths", _mlp8_width_variant)


#: The training-set sizes of the family ``mlp_fashion8_sizes`` (0: all 50,000).
MLP_TRAIN_SIZES = (0, 0, 2000, 5000)


def _mlp8_size_variant(rng: np.random.Generator) -> Task:
  return mlp_fashion(8, (32,), "relu", num_train=int(rng.choice(MLP_TRAIN_SIZES)))


# mlp_fashion8 on its whole training set (half the draws) or on 2,000 or 5,000 examples: meta-training that
# sees both the underfitting and the overfitting regime. The held-out small task (1,000 examples) is not in it.
MLP_FASHION8_SIZES = TaskFamily("mlp_fashion8_sizes", _mlp8_size_variant)


def families() -> dict[str, TaskFamily]:
  """The registered task families."""
  return {family.name: family for family in (MLP_FASHION_FAMILY, MLP_FASHION8_WIDTHS, MLP_FASHION8_SIZES)}
