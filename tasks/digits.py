"""The 8x8 handwritten digits that scikit-learn ships in its wheel (UCI's optical digits test set, 1,797 images).

A small classification set of the kind a user brings: the inputs of ``mlp_fashion8`` (64 pixels), ten
classes, and a few hundred examples per split. Read from the installed package, never downloaded.
"""

from __future__ import annotations

import functools

import numpy as np

#: The number of images.
NUM_EXAMPLES = 1797
INSTALL_HINT = (
  "install scikit-learn (`pip install scikit-learn`; the project's test extra has it), whose wheel holds them"
)


@functools.cache
def load() -> tuple[np.ndarray, np.ndarray]:
  """All digits as float32 images in [0, 1] of 8 x 8 (pixel counts 0-16, divided by 16) and int32 labels.

  Raises:
    ImportError: scikit-learn is not installed (the message says how to install it).
  """
  try:
    from sklearn.datasets import load_digits
  except ImportError as error:
    raise ImportError(f"the digits dataset needs scikit-learn: {INSTALL_HINT}.") from error
  digits = load_digits()
  images = np.asarray(digits.images, np.float32) / 16.0
  labels = np.asarray(digits.target, np.int32)
  if images.shape != (NUM_EXAMPLES, 8, 8) or labels.shape != (NUM_EXAMPLES,):
    raise ValueError(f"scikit-learn's digits have shape {images.shape}, expected ({NUM_EXAMPLES}, 8, 8).")
  return images, labels
