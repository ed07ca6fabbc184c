"""scikit-learn's 8x8 digits and the held-out small-data task on them, ``mlp_digits_small``."""

import sys

import jax
import numpy as np
import optax
import pytest

import tasks
from tasks import digits


def test_digits_load_from_the_installed_package():
  images, labels = digits.load()
  assert images.shape == (digits.NUM_EXAMPLES, 8, 8) and images.dtype == np.float32
  assert images.min() == 0.0 and images.max() == 1.0
  assert set(np.unique(labels)) == set(range(10))
  # Pixel counts 0-16 divided by 16: every value is a multiple of 1/16.
  np.testing.assert_array_equal(images * 16, np.round(images * 16))


def test_the_splits_are_a_fixed_partition_of_the_digits():
  task = tasks.get("mlp_digits_small")
  sizes = {split: task.data.labels[split].shape[0] for split in ("train", "valid", "test")}
  assert sizes == {"train": tasks.registry.SMALL_TRAIN, "valid": tasks.registry.DIGITS_VALID, "test": 397}
  # A partition: the splits' rows, with multiplicity, are the dataset's rows.
  images, labels = digits.load()

  def rows(x, y):
    return sorted(a.tobytes() + bytes([b]) for a, b in zip(np.asarray(x).reshape(len(y), -1), np.asarray(y)))

  split_rows = sum((rows(task.data.inputs[s], task.data.labels[s]) for s in sizes), [])
  assert sorted(split_rows) == rows(images, labels)
  # Fixed: built again from the loader, the same order.
  tasks.registry.digits_data.cache_clear()
  again = tasks.registry.digits_data(tasks.registry.SMALL_TRAIN, tasks.registry.DIGITS_VALID)
  np.testing.assert_array_equal(again.labels["test"], task.data.labels["test"])
  with pytest.raises(ValueError, match="leave test examples"):
    tasks.registry.digits_data(1500, 297)


def test_it_is_mlp_fashion8_architecture_and_trains():
  """The same weight space as mlp_fashion8 (so its meta-trained optimizers apply) and real data to learn."""
  task = tasks.get("mlp_digits_small")
  assert task.space == tasks.get("mlp_fashion8").space
  optimizer = optax.adam(0.01)
  params = task.init(jax.random.key(0))

  @jax.jit
  def step(carry, key):
    params, state = carry
    grads = jax.grad(task.loss)(params, task.sample_batch(key, "train"))
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  before = float(task.eval_loss(params, "test"))
  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(jax.random.key(1), 300))
  after = float(task.eval_loss(params, "test"))
  assert before > 2.0 and after < 0.5, (before, after)


def test_without_scikit_learn_the_error_says_how_to_install_it(monkeypatch):
  digits.load.cache_clear()
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if absent
  try:
    with pytest.raises(ImportError, match="pip install scikit-learn"):
      digits.load()
  finally:
    digits.load.cache_clear()
