"""The zoo of tiny IRNNs: storage, determinism, per-model training, and accuracies against independent oracles."""

import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tasks.data
import unf
from experiments.rnn_zoo import zoo
from tasks.models import RNNLM
from tasks.registry import shakespeare_data


def _model(weights, i):
  return jax.tree.map(lambda w: jnp.asarray(w[i]), weights)


def test_files_are_written_and_splits_partition_the_zoo(tiny, zoo_folder, loaded):
  assert sorted(p.name for p in zoo_folder.iterdir()) == ["test.npz", "train.npz", "valid.npz", "zoo.json"]
  indices = np.concatenate([loaded[s].hyperparameters["index"] for s in zoo.SPLITS])
  assert sorted(indices.tolist()) == list(range(tiny.num_models))
  summary = json.loads((zoo_folder / "zoo.json").read_text())
  assert summary["models"] == {s: len(loaded[s]) for s in zoo.SPLITS}
  assert summary["config"]["seed"] == 3 and summary["diverged"] == 0
  assert all(len(loaded[s]) >= 1 for s in zoo.SPLITS)


def test_reload_gives_the_trained_arrays(loaded, trained):
  hyper, weights, accuracy = trained
  for part in loaded.values():
    index = part.hyperparameters["index"]
    for a, b in zip(jax.tree.leaves(part.weights), jax.tree.leaves(weights)):
      np.testing.assert_array_equal(a, b[index])
    np.testing.assert_array_equal(part.accuracy, accuracy[index])
    for name in zoo.HYPERPARAMETERS:
      np.testing.assert_array_equal(part.hyperparameters[name], hyper[name][index])


def test_same_seed_same_weights_different_seed_different_weights(tiny, trained):
  hyper, weights, _ = trained
  again = zoo.train_zoo(tiny, hyper, progress=False)[0]
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(weights)):
    np.testing.assert_array_equal(a, b)
  other = dataclasses.replace(tiny, seed=4)
  different = zoo.train_zoo(other, zoo.sample_hyperparameters(other), progress=False)[0]
  assert not np.allclose(different["head"]["kernel"], weights["head"]["kernel"])


@pytest.mark.parametrize("n", [3, 4, 7, 300])
def test_splits_are_disjoint_nonempty_and_cover_the_zoo(n):
  parts = zoo.split_indices(zoo.ZooConfig(num_models=n))
  assert all(len(parts[s]) >= 1 for s in zoo.SPLITS)
  assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(n))
  if n == 300:
    assert [len(parts[s]) for s in zoo.SPLITS] == [180, 60, 60]


def test_hyperparameters_lie_in_their_ranges_and_vary():
  config = zoo.ZooConfig(num_models=200, seed=5)
  hyper = zoo.sample_hyperparameters(config)
  for name, low, high in [
    ("learning_rate", *config.learning_rate),
    ("init_scale", *config.init_scale),
    ("num_steps", config.min_steps, config.max_steps),
    ("label_noise", *config.label_noise),
  ]:
    assert low <= hyper[name].min() < hyper[name].max() <= high, name
  # log-uniform: the median learning rate is the geometric mean of the bounds (within sampling error)
  assert abs(np.log(np.median(hyper["learning_rate"])) - np.mean(np.log(config.learning_rate))) < 0.4


def test_weights_match_the_stored_space(zoo_folder, loaded):
  for name, part in loaded.items():
    one = jax.tree.map(lambda w: w[0], part.weights)
    assert part.space == unf.rnn_space(one)
    assert part.space.validate(one) == {"embed": 4, "hidden": 8, "vocab": 84}
    with np.load(zoo_folder / f"{name}.npz") as file:
      assert unf.WeightSpace.from_json(str(file["space"])) == part.space


def test_a_split_with_the_space_json_of_older_zoos_still_loads(zoo_folder, loaded, tmp_path):
  """Zoos written before ``WeightSpace.to_json`` stored the same JSON without its ``"format"`` key."""
  with np.load(zoo_folder / "valid.npz") as file:
    arrays = {name: file[name] for name in file.files}
  old = json.loads(str(arrays["space"]))
  assert old.pop("format") == 1
  arrays["space"] = np.asarray(json.dumps(old))
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  (tmp_path / "valid.npz").write_bytes(buffer.getvalue())
  split = zoo.load_split(tmp_path, "valid")
  assert split.space == loaded["valid"].space
  np.testing.assert_array_equal(split.weights["head"]["kernel"], loaded["valid"].weights["head"]["kernel"])


def test_accuracy_matches_an_independent_flax_model(tiny, loaded):
  """The stored accuracy of a model equals that of tasks.models.RNNLM (nnx.SimpleCell) with its weights."""
  data = shakespeare_data(tiny.seq_len)
  inputs, targets = data.eval_batch("test", tiny.eval_windows)
  graphdef = nnx.split(RNNLM(84, tiny.embed, tiny.hidden, cell="irnn", rngs=nnx.Rngs(0)), nnx.Param)[0]
  part = loaded["train"]
  assert np.all((part.accuracy >= 0) & (part.accuracy <= 1))
  forward = jax.jit(lambda params: nnx.merge(graphdef, params)(inputs))
  for i in range(len(part)):
    logits = np.asarray(forward(_model(part.weights, i)))
    expected = np.mean(np.argmax(logits, axis=-1) == np.asarray(targets))
    # float32 sums in another order may flip an argmax between near-tied logits: allow one token
    assert abs(part.accuracy[i] - expected) <= 1 / targets.size + 1e-7


def test_accuracies_are_each_models_own_and_spread_by_its_hyperparameters(tiny, trained):
  """Stored accuracies equal an unbatched per-model evaluation; in a zoo with chosen hyper-parameters they order
  as training length, learning rate and label noise say, against the most-frequent-character baseline."""
  hyper, weights, accuracy = trained
  data = shakespeare_data(tiny.seq_len)
  batch = data.eval_batch("test", tiny.eval_windows)
  one_token = 1 / batch[1].size + 1e-7
  evaluate = jax.jit(zoo.accuracy)
  own = [float(evaluate(_model(weights, i), batch)) for i in range(tiny.num_models)]
  np.testing.assert_allclose(accuracy, own, rtol=0, atol=one_token)
  assert len(np.unique(accuracy)) > 1

  # The accuracy of always predicting the training split's most frequent character.
  most_frequent = np.argmax(np.bincount(np.asarray(data.tokens["train"]), minlength=data.num_classes))
  baseline = float(np.mean(np.asarray(batch[1]) == most_frequent))
  assert baseline > 0.1  # the space character: a bar that a model must learn the data to clear
  # Same config and shapes as the tiny zoo (no new compile); 200 steps is 50 calls of its chunk.
  chosen = {
    "learning_rate": np.float32([3e-2, 3e-2, 3e-2, 1e-3, 3e-2, 3e-2]),
    "init_scale": np.ones(6, np.float32),
    "num_steps": np.int32([0, 200, 200, 200, 200, 200]),
    "label_noise": np.float32([0.0, 0.0, 0.6, 0.0, 1.0, 0.3]),
  }
  untrained, clean, noisy, slow, pure_noise, less_noisy = zoo.train_zoo(tiny, chosen, progress=False)[1]
  chance = 1 / data.num_classes
  assert untrained < 2 * chance and pure_noise < 2 * chance  # random targets teach nothing
  assert clean > baseline  # more than the unigram statistics
  assert slow < clean - 0.05  # a 30 times smaller learning rate, the same steps
  assert clean >= less_noisy >= noisy > pure_noise  # accuracy falls with the label noise


def test_each_model_trains_exactly_its_own_number_of_steps(tiny):
  """In one vmapped scan of 8 steps, a model with 0 steps keeps its initial weights and one with 1 step moves once."""
  hyper = zoo.sample_hyperparameters(tiny)
  initial, _ = zoo.train_zoo(tiny, dict(hyper, num_steps=np.zeros(6, np.int32)), progress=False)  # no step at all
  mixed = dict(hyper, num_steps=np.asarray([0, 1, 1, 6, 6, 6], np.int32))
  weights, _ = zoo.train_zoo(tiny, mixed, progress=False)
  for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(initial)):
    np.testing.assert_array_equal(a[0], b[0])
  # Adam's first step is -lr * g / (|g| + eps): a head bias (softmax gradient, never 0) moves by the learning rate,
  # a little less where |g| is within a few orders of magnitude of eps (rare characters); two steps would be ~2 lr.
  moved = np.abs(weights["head"]["bias"][1:3] - initial["head"]["bias"][1:3])
  lr = hyper["learning_rate"][1:3, None]
  assert np.all(moved <= lr * (1 + 1e-5))
  np.testing.assert_allclose(np.median(moved, axis=1, keepdims=True), lr, rtol=1e-3)
  assert np.all(
    np.abs(weights["head"]["bias"][3:] - initial["head"]["bias"][3:]).max(axis=1) > 1.5 * hyper["learning_rate"][3:]
  )


def test_saving_a_split_is_atomic(loaded, tmp_path, monkeypatch):
  """A save that fails mid-write leaves the old file whole and no temporary behind."""
  path = tmp_path / "train.npz"
  zoo.save_split(path, loaded["valid"])
  before = path.read_bytes()

  def fail(_):
    raise OSError("disk full")

  monkeypatch.setattr(tasks.data.os, "fsync", fail)
  with pytest.raises(OSError, match="disk full"):
    zoo.save_split(path, loaded["train"])
  assert path.read_bytes() == before
  assert [p.name for p in tmp_path.iterdir()] == ["train.npz"]


def test_missing_split_has_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m experiments.rnn_zoo generate"):
    zoo.load_split(tmp_path, "train")
  with pytest.raises(ValueError, match="unknown split"):
    zoo.load_split(tmp_path, "holdout")
