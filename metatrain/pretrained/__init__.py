"""Meta-trained optimizers shipped inside the package, loaded by name.

Each lives in a folder ``metatrain/pretrained/NAME/`` of two small files, never pickles:

- ``optimizer.json``: the learned optimizer's description (kind, options, weight space:
  :meth:`metatrain.LearnedOptimizer.to_json`) under ``"learned_optimizer"``, and under ``"info"`` where it
  comes from (task, outer steps, the command that meta-trained it, its wall time);
- ``theta.npz``: the meta-parameters, one array per leaf in the order of ``init_meta``'s pytree
  (``leaf_0000``, ``leaf_0001``, ...), read with ``allow_pickle=False``.

``info["check"]`` holds a reference trajectory: the training-batch loss of every step of one
:data:`CHECK_STEPS`-step run on its task (evaluation seed ``metatrain.evaluation.compare.EVAL_SEED``),
recorded when it was exported; the tests train that run again in a plain optax loop and compare.

Example:
  >>> import metatrain
  >>> "mlp_fashion8_unf" in metatrain.pretrained_names()
  True
  >>> lopt, theta = metatrain.load_learned_optimizer("mlp_fashion8_unf")
  >>> lopt.name
  'unf'
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import jax
import numpy as np

from metatrain import learned_optimizers
from metatrain.learned_optimizers import LearnedOptimizer
from metatrain.types import Theta

#: The folder of the shipped optimizers.
FOLDER = pathlib.Path(__file__).parent
#: Steps of the reference trajectory kept with a shipped optimizer.
CHECK_STEPS = 200


def pretrained_names() -> list[str]:
  """The names of the meta-trained optimizers shipped in the package (load one with ``load_learned_optimizer``).

  Example:
    >>> import metatrain
    >>> metatrain.pretrained_names() == sorted(metatrain.pretrained_names())
    True
  """
  return sorted(p.name for p in FOLDER.iterdir() if (p / "optimizer.json").is_file())


def info(name: str) -> dict[str, Any]:
  """Where a shipped optimizer comes from: its task, outer steps, command and wall time."""
  return read_info(_folder(name))


def read_info(folder: str | pathlib.Path) -> dict[str, Any]:
  """The ``info`` of a folder written by :func:`write`."""
  return _read_json(pathlib.Path(folder))["info"]


def load(name: str) -> tuple[LearnedOptimizer, Theta]:
  """The shipped optimizer ``name``: ``(learned optimizer, theta)`` (numpy leaves), for its meta-training space.

  Raises:
    KeyError: an unknown name, listing the shipped ones.
    ValueError: files that do not fit each other (a damaged package).
  """
  return read(_folder(name))


def read(folder: str | pathlib.Path) -> tuple[LearnedOptimizer, Theta]:
  """Reads a folder written by :func:`write`."""
  folder = pathlib.Path(folder)
  learned_optimizer = learned_optimizers.from_json(_read_json(folder)["learned_optimizer"])
  expected = jax.eval_shape(learned_optimizer.init_meta, jax.random.key(0))
  leaves, treedef = jax.tree.flatten(expected)
  with np.load(folder / "theta.npz", allow_pickle=False) as saved:
    arrays = [saved[f"leaf_{i:04d}"] if f"leaf_{i:04d}" in saved else None for i in range(len(leaves))]
    extra = len(saved.files) - len(leaves)
  bad = [i for i, (a, e) in enumerate(zip(arrays, leaves)) if a is None or a.shape != e.shape]
  if bad or extra:
    raise ValueError(
      f"{folder / 'theta.npz'} does not hold the meta-parameters of the optimizer in {folder / 'optimizer.json'} "
      f"(leaves {bad} missing or of other shapes, {max(extra, 0)} extra): the files are damaged."
    )
  return learned_optimizer, jax.tree.unflatten(treedef, arrays)


def write(folder: str | pathlib.Path, learned_optimizer: LearnedOptimizer, theta: Theta, info: dict[str, Any]) -> None:
  """Writes a shipped optimizer's two files into ``folder`` (each to a temporary file first, then renamed)."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  leaves = jax.tree.leaves(theta)
  expected = jax.tree.leaves(jax.eval_shape(learned_optimizer.init_meta, jax.random.key(0)))
  if [np.shape(x) for x in leaves] != [e.shape for e in expected]:
    raise ValueError(f"theta does not have the structure of a {learned_optimizer.name!r} optimizer's meta-parameters.")
  arrays: dict[str, Any] = {f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
  with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as file:
    np.savez(file, **arrays)
  os.chmod(file.name, 0o644)  # temporary files are private; these ship with the package
  os.replace(file.name, folder / "theta.npz")
  text = json.dumps({"learned_optimizer": learned_optimizer.to_json(), "info": info}, indent=1) + "\n"
  with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".json", delete=False) as text_file:
    text_file.write(text)
  os.chmod(text_file.name, 0o644)
  os.replace(text_file.name, folder / "optimizer.json")


def _folder(name: str) -> pathlib.Path:
  if name not in pretrained_names():
    raise KeyError(f"no shipped optimizer {name!r}; shipped: {', '.join(pretrained_names()) or 'none'}.")
  return FOLDER / name


def _read_json(folder: pathlib.Path) -> dict[str, Any]:
  return json.loads((folder / "optimizer.json").read_text())
