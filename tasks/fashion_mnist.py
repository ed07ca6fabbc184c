"""Fashion-MNIST from standard (gzipped) IDX files, resized once by area averaging.

Offline source: Debian's package ``dataset-fashion-mnist`` installs the four
files under ``/usr/share/datasets/fashion-mnist`` (``make`` installs it when it
runs as root with apt). Another directory can be given as an argument or via
the ``UNF_FASHION_MNIST_DIR`` environment variable.
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib

import numpy as np

from tasks.data import area_resize

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "UNF_FASHION_MNIST_DIR"
INSTALL_HINT = (
  "install the real data with `apt-get install dataset-fashion-mnist` (as root; `make` does it for you), "
  f"or point {ENV_VAR} at a directory with the four IDX files"
)
FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, rank 3 (images) or 1 (labels)


def read_idx(path: str | os.PathLike, *, rank: int) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (gzipped or not), checking magic number and size.

  Raises:
    FileNotFoundError: the file (with or without ``.gz``) does not exist.
    ValueError: wrong magic number, rank, or a size that disagrees with the header.
  """
  path = pathlib.Path(path)
  candidates = [path, path.with_name(path.name + ".gz")]
  found = next((p for p in candidates if p.exists()), None)
  if found is None:
    raise FileNotFoundError(f"IDX file {path}(.gz) not found: {INSTALL_HINT}.")
  opener = gzip.open if found.suffix == ".gz" else open
  try:
    with opener(found, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as error:
    raise ValueError(f"{found} is corrupt ({error}): {INSTALL_HINT}.") from error
  if len(data) < 4 + 4 * rank:
    raise ValueError(f"{found} is too short for an IDX header: {INSTALL_HINT}.")
  magic = int.from_bytes(data[:4], "big")
  if magic != _IDX_MAGIC[rank]:
    raise ValueError(f"{found} has magic number {magic:#010x}, expected {_IDX_MAGIC[rank]:#010x}: {INSTALL_HINT}.")
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
  body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
  if body.size != int(np.prod(shape)):
    raise ValueError(f"{found} holds {body.size} bytes after its header, but the header says {shape}: {INSTALL_HINT}.")
  return body.reshape(shape)


@functools.lru_cache(maxsize=8)
def load(
  split: str, *, size: int = 28, directory: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Loads a split (``"train"`` or ``"test"``) as float32 images in [0, 1] of ``size x size`` and int32 labels.

  Read once per process and cached.
  """
  if split not in FILES:
    raise ValueError(f"unknown Fashion-MNIST split {split!r}; choose one of {sorted(FILES)}.")
  directory = pathlib.Path(directory or os.environ.get(ENV_VAR, DEFAULT_DIR))
  image_file, label_file, count = FILES[split]
  images = read_idx(directory / image_file, rank=3)
  labels = read_idx(directory / label_file, rank=1)
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels: {INSTALL_HINT}.")
  images = images.astype(np.float32) / 255.0
  if size != images.shape[-1]:
    images = area_resize(images, size).astype(np.float32)
  return images, labels.astype(np.int32)
