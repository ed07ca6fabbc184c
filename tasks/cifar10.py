"""CIFAR-10 from the standard ``cifar-10-batches-py`` folder, resized once by area averaging.

No offline source: CIFAR-10 is in no package registry this project installs
from, so it cannot be downloaded on this machine. Extract the python version of
the dataset (``cifar-10-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html)
so that ``data/cifar-10-batches-py`` exists, or give its directory as an
argument or via the ``UNF_CIFAR10_DIR`` environment variable.

Each batch file is a pickle of a dict with ``b"data"``, a uint8 array
``(n, 3072)`` holding, per image, the 1024 red, then the 1024 green, then the
1024 blue values of a 32x32 image in row-major order, and ``b"labels"``, ``n``
ints in 0-9. Unpickling runs code named in the file: only read files you trust.
"""

from __future__ import annotations

import functools
import os
import pathlib
import pickle

import numpy as np

from tasks.data import area_resize, data_dir

ENV_VAR = "UNF_CIFAR10_DIR"
FOLDER = "cifar-10-batches-py"
FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
NUM_CLASSES = 10
IMAGE_SIZE = 32
_ROW = 3 * IMAGE_SIZE * IMAGE_SIZE


def _install_hint() -> str:
  return (
    f"CIFAR-10 cannot be downloaded on this machine: extract cifar-10-python.tar.gz so that "
    f"{data_dir() / FOLDER} holds data_batch_1..5 and test_batch, or set {ENV_VAR} to such a folder"
  )


def default_dir() -> pathlib.Path:
  """``$UNF_CIFAR10_DIR``, default ``<data_dir>/cifar-10-batches-py``."""
  return pathlib.Path(os.environ.get(ENV_VAR) or data_dir() / FOLDER)


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads one batch file as uint8 images ``(n, 3, 32, 32)`` (channels first, as stored) and int32 labels.

  Raises:
    ValueError: the file is missing or unreadable, or its arrays have the wrong
      shape, dtype or count, or a label lies outside 0-9.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"CIFAR-10 batch file {path} is missing: {_install_hint()}.")
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
  except Exception as error:  # unpickling can raise almost anything on a damaged file
    raise ValueError(f"CIFAR-10 batch file {path} is not a readable pickle ({error!r}): {_install_hint()}.") from error
  if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
    raise ValueError(f"CIFAR-10 batch file {path} must hold a dict with keys b'data' and b'labels'.")
  images, labels = batch[b"data"], np.asarray(batch[b"labels"])
  if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != _ROW:
    found = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
    raise ValueError(f"CIFAR-10 batch file {path}: b'data' must be a uint8 array (n, {_ROW}), found {found}.")
  if labels.ndim != 1 or labels.size != images.shape[0]:
    raise ValueError(f"CIFAR-10 batch file {path}: {images.shape[0]} images but labels of shape {labels.shape}.")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"CIFAR-10 batch file {path}: labels must be integers, found dtype {labels.dtype}.")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise ValueError(
      f"CIFAR-10 batch file {path}: labels must lie in [0, {NUM_CLASSES}), found [{labels.min()}, {labels.max()}]."
    )
  return images.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), labels.astype(np.int32)


def load(
  split: str, *, size: int = IMAGE_SIZE, directory: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Loads a split (``"train"`` or ``"test"``) as float32 NHWC images in [0, 1] of ``size x size`` and int32 labels.

  ``train`` is ``data_batch_1`` to ``data_batch_5`` in order (50000 images),
  ``test`` is ``test_batch`` (10000). Read once per process and cached (per
  split, size and resolved directory).

  Args:
    split: ``"train"`` or ``"test"``.
    size: the side of the returned images; other than 32, by area averaging.
    directory: the ``cifar-10-batches-py`` folder; default ``default_dir()``.

  Returns:
    ``(images, labels)``: ``(N, size, size, 3)`` float32 (red, green, blue) and ``(N,)`` int32.

  Raises:
    FileNotFoundError: the directory does not exist.
    ValueError: an unknown split or size, or a missing or malformed batch file.
  """
  if split not in FILES:
    raise ValueError(f"unknown CIFAR-10 split {split!r}; choose one of {sorted(FILES)}.")
  if not isinstance(size, int) or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}.")
  return _load(split, size, pathlib.Path(directory if directory is not None else default_dir()).resolve())


@functools.lru_cache(maxsize=8)
def _load(split: str, size: int, directory: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  if not directory.is_dir():
    raise FileNotFoundError(f"CIFAR-10 folder {directory} not found. {_install_hint()}.")
  images: list[np.ndarray] | np.ndarray
  labels: list[np.ndarray] | np.ndarray
  images, labels = [], []
  for name in FILES[split]:  # one batch at a time, to bound the memory of the float64 resize
    batch_images, batch_labels = read_batch(directory / name)
    batch_images = batch_images.astype(np.float32) / 255.0
    if size != IMAGE_SIZE:
      batch_images = area_resize(batch_images, size).astype(np.float32)  # the last two axes: before channels go last
    images.append(batch_images.transpose(0, 2, 3, 1))
    labels.append(batch_labels)
  images, labels = np.concatenate(images), np.concatenate(labels)
  images.flags.writeable = labels.flags.writeable = False  # shared through the cache
  return images, labels
