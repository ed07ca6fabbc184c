"""Shared data utilities: where datasets live, and resizing."""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np

DATA_DIR_ENV = "UNF_DATA_DIR"


def data_dir() -> pathlib.Path:
  """The project's gitignored data folder (``$UNF_DATA_DIR``, default ``<repo>/data``)."""
  return pathlib.Path(os.environ.get(DATA_DIR_ENV, pathlib.Path(__file__).resolve().parents[1] / "data"))


def area_resize(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes square images ``(..., n, n)`` to ``(..., size, size)`` by area averaging.

  Each output pixel is the mean of the input over its footprint, with input
  pixels weighted by the fraction of their area inside it (exact for any ratio).

  Example:
    >>> import numpy as np
    >>> area_resize(np.arange(16.0).reshape(4, 4), 2)  # means of the four 2x2 blocks
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
  """
  n = images.shape[-1]
  edges_out = np.arange(size + 1) * (n / size)
  lo, hi = edges_out[:-1, None], edges_out[1:, None]
  j = np.arange(n)[None, :]
  overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)  # (size, n)
  weights = overlap / (n / size)
  return np.einsum("ij,...jk,lk->...il", weights, images.astype(np.float64), weights)


#: The mode of the files :func:`write_atomically` writes (rw-r--r--).
FILE_MODE = 0o644


def write_atomically(path: pathlib.Path, content: bytes | str) -> None:
  """Writes to a temporary file in the same folder, then renames it: readers see all or nothing.

  A crash never leaves a partial file under ``path`` (a dataset cache, a zoo split). The file is
  readable by everyone and writable by its owner (mode 0644, as ``open`` gives under the usual umask;
  ``mkstemp`` alone would give 0600), so a cache on a shared machine serves every user.
  """
  data = content.encode("utf-8") if isinstance(content, str) else content
  handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    os.fchmod(handle, FILE_MODE)
    with os.fdopen(handle, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    pathlib.Path(temporary).unlink(missing_ok=True)
    raise
