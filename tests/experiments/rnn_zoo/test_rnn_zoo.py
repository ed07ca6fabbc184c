"""The zoo of tiny IRNNs and the accuracy predictors: storage, determinism, independent oracles, invariance."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

import unf
from metatrain import predict, zoo
from tasks.models import RNNLM
from tasks.registry import shakespeare_data

# One tiny configuration for every test: its training program compiles once per session.
TINY = zoo.ZooConfig(
  num_models=6, seed=3, embed=4, hidden=8, batch_size=4, min_steps=2, max_steps=6, eval_windows=16, chunk=4
)
CLI = [
  "--models",
  "6",
  "--seed",
  "3",
  "--embed",
  "4",
  "--hidden",
  "8",
  "--batch_size",
  "4",
  "--min_steps",
  "2",
  "--max_steps",
  "6",
  "--eval_windows",
  "16",
  "--chunk",
  "4",
  "--no_progress",
]


def test_cli_flags_give_the_tiny_config():
  args = zoo.build_parser().parse_args(["--out", "x", *CLI])
  assert (args.models, args.seed, args.embed, args.hidden, args.batch_size) == (6, 3, 4, 8, 4)
  assert (args.min_steps, args.max_steps, args.eval_windows, args.chunk) == (2, 6, 16, 4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A tiny zoo written by the command line."""
  out = tmp_path_factory.mktemp("zoo")
  assert zoo.main(["--out", str(out), *CLI]) == 0
  return out


@pytest.fixture(scope="module")
def trained():
  """The same zoo trained in memory: (hyper-parameters, weights, accuracies) in zoo order."""
  hyper = zoo.sample_hyperparameters(TINY)
  weights, accuracy = zoo.train_zoo(TINY, hyper, progress=False)
  return hyper, weights, accuracy


@pytest.fixture(scope="module")
def loaded(folder):
  return zoo.load_zoo(folder)


def test_files_are_written_and_splits_partition_the_zoo(folder, loaded):
  assert sorted(p.name for p in folder.iterdir()) == ["test.npz", "train.npz", "valid.npz", "zoo.json"]
  assert not list(folder.glob("*.tmp"))
  indices = np.concatenate([loaded[s].hyperparameters["index"] for s in zoo.SPLITS])
  assert sorted(indices.tolist()) == list(range(TINY.num_models))
  summary = json.loads((folder / "zoo.json").read_text())
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


def test_same_seed_same_weights_different_seed_different_weights(trained):
  hyper, weights, _ = trained
  again = zoo.train_zoo(TINY, hyper, progress=False)[0]
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(weights)):
    np.testing.assert_array_equal(a, b)
  other = dataclasses.replace(TINY, seed=4)
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


def test_weights_match_the_stored_space(loaded):
  for part in loaded.values():
    one = jax.tree.map(lambda w: w[0], part.weights)
    assert part.space == unf.rnn_space(one)
    assert part.space.validate(one) == {"embed": 4, "hidden": 8, "vocab": 84}
    assert zoo.space_from_json(zoo.space_to_json(part.space)) == part.space


def test_accuracy_matches_an_independent_flax_model(loaded):
  """The stored accuracy of a model equals that of tasks.models.RNNLM (nnx.SimpleCell) with its weights."""
  data = shakespeare_data(TINY.seq_len)
  inputs, targets = data.eval_batch("test", TINY.eval_windows)
  graphdef = nnx.split(RNNLM(84, TINY.embed, TINY.hidden, cell="irnn", rngs=nnx.Rngs(0)), nnx.Param)[0]
  part = loaded["train"]
  assert np.all((part.accuracy >= 0) & (part.accuracy <= 1))
  forward = jax.jit(lambda params: nnx.merge(graphdef, params)(inputs))
  for i in range(len(part)):
    logits = np.asarray(forward(jax.tree.map(jnp.asarray, zoo._select(part.weights, i))))
    expected = np.mean(np.argmax(logits, axis=-1) == np.asarray(targets))
    # float32 sums in another order may flip an argmax between near-tied logits: allow one token
    assert abs(part.accuracy[i] - expected) <= 1 / targets.size + 1e-7


def test_accuracies_are_spread(trained):
  _, _, accuracy = trained
  assert np.all((accuracy >= 0) & (accuracy <= 1)) and len(np.unique(accuracy)) > 1


def test_each_model_trains_exactly_its_own_number_of_steps():
  """In one vmapped scan of 8 steps, a model with 0 steps keeps its initial weights and one with 1 step moves once."""
  hyper = zoo.sample_hyperparameters(TINY)
  initial, _ = zoo.train_zoo(TINY, dict(hyper, num_steps=np.zeros(6, np.int32)), progress=False)  # no step at all
  mixed = dict(hyper, num_steps=np.asarray([0, 1, 1, 6, 6, 6], np.int32))
  weights, _ = zoo.train_zoo(TINY, mixed, progress=False)
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


def test_writes_are_atomic(tmp_path):
  path = tmp_path / "file.npz"
  zoo.write_atomically(path, b"old")
  with pytest.raises(TypeError):
    zoo.write_atomically(path, None)  # fails inside the write: the old file stays, no temporary is left
  assert path.read_bytes() == b"old"
  assert [p.name for p in tmp_path.iterdir()] == ["file.npz"]


def test_missing_split_has_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="metatrain.zoo"):
    zoo.load_split(tmp_path, "train")
  with pytest.raises(ValueError, match="unknown split"):
    zoo.load_split(tmp_path, "holdout")


# --- Kendall's tau ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n, levels", [(2, 2), (7, 3), (30, 4), (60, 1000), (100, 5)])
def test_kendall_tau_matches_scipy_with_ties(n, levels):
  rng = np.random.default_rng(n)
  for _ in range(5):
    x, y = rng.integers(0, levels, n), rng.integers(0, levels, n) + 0.5 * rng.integers(0, 2, n)
    expected = scipy.stats.kendalltau(x, y).statistic
    got = predict.kendall_tau(x, y)
    assert (math.isnan(got) and math.isnan(expected)) or abs(got - expected) < 1e-12


def test_kendall_tau_extremes():
  x = np.arange(10.0)
  assert predict.kendall_tau(x, 2 * x + 1) == pytest.approx(1.0)
  assert predict.kendall_tau(x, -x) == pytest.approx(-1.0)
  assert math.isnan(predict.kendall_tau(x, np.ones(10)))
  with pytest.raises(ValueError):
    predict.kendall_tau([1, 2], [1, 2, 3])


# --- predictors -------------------------------------------------------------------------------------


# One training budget for the predictor tests: every run of the same predictor shares one compile.
FIT = predict.FitConfig(steps=40, batch_size=4, learning_rate=3e-3, eval_every=40)


@pytest.fixture(scope="module")
def inputs(loaded):
  return predict.prepare(loaded)


@pytest.fixture(scope="module", params=predict.PREDICTORS)
def predictor(request, loaded, inputs):
  return request.param, predict.make_predictor(
    request.param, loaded["train"].space, train_inputs=inputs["train"][0], rngs=nnx.Rngs(0)
  )


def _max_deviation(fn, space, weights, key, labels=None):
  sizes = space.validate(weights)
  sigma = unf.sample_permutation(space, key, sizes, labels=labels)
  return float(abs(fn(unf.permute(space, sigma, weights)) - fn(weights)))


def test_normalization_uses_one_scalar_pair_per_tensor(loaded, inputs):
  x, y = inputs["train"]
  np.testing.assert_allclose(y.mean(), 0, atol=1e-5)
  np.testing.assert_allclose(y.std(), 1, rtol=1e-4)
  for leaf in jax.tree.leaves(x):
    np.testing.assert_allclose([leaf.mean(), leaf.std()], [0, 1], atol=1e-4)
  w = loaded["valid"].weights["head"]["kernel"]
  expected = (w - loaded["train"].weights["head"]["kernel"].mean()) / loaded["train"].weights["head"]["kernel"].std()
  np.testing.assert_allclose(inputs["valid"][0]["head"]["kernel"], expected, rtol=1e-4, atol=1e-5)


def test_statistics_match_numpy(loaded):
  space = loaded["train"].space
  one = jax.tree.map(lambda w: w[0], loaded["train"].weights)
  features = np.asarray(predict.tensor_statistics(one, space))
  expected = []
  for leaf in space.flatten(one):
    expected += [leaf.mean(), leaf.var(), *np.quantile(leaf, predict.QUANTILES)]
  np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_predictor_outputs_one_finite_number_per_model(predictor, inputs):
  _, model = predictor
  out = predict.predict(model, inputs["valid"][0])
  assert out.shape == (len(inputs["valid"][1]),) and np.all(np.isfinite(out))


def test_predictor_is_invariant_to_relabelling(predictor, loaded, inputs, key):
  _, model = predictor
  space = loaded["train"].space
  one = jax.tree.map(lambda w: jnp.asarray(w[0]), inputs["train"][0])
  fn = jax.jit(lambda w: model(w))
  scale = max(1.0, abs(float(fn(one))))
  k_hidden, k_all = jax.random.split(key)
  assert _max_deviation(fn, space, one, k_hidden, labels=["hidden"]) <= 1e-5 * scale
  assert _max_deviation(fn, space, one, k_all) <= 1e-5 * scale


def test_invariance_check_catches_a_non_invariant_map(loaded, inputs, key):
  """Negative control: a linear map of the flattened weights depends on the hidden units' order."""
  space = loaded["train"].space
  one = jax.tree.map(lambda w: jnp.asarray(w[0]), inputs["train"][0])
  flat = jnp.concatenate([jnp.ravel(w) for w in space.flatten(one)])
  direction = jax.random.normal(jax.random.key(1), flat.shape)

  def dense(w):
    return jnp.dot(direction, jnp.concatenate([jnp.ravel(v) for v in space.flatten(w)]))

  assert _max_deviation(dense, space, one, key, labels=["hidden"]) > 1e-2


def test_training_steps_decrease_the_loss_on_a_tiny_batch(predictor, inputs, key):
  _, model = predictor
  x, y = inputs["train"]
  before = predict.loss(model, x, y)
  mean_loss = predict.train_steps(model, x, y, key, config=FIT, steps=40)
  after = predict.loss(model, x, y)
  assert math.isfinite(mean_loss) and after < 0.5 * before, (before, after)


def test_fit_keeps_the_checkpoint_with_the_best_validation_tau(loaded, inputs):
  # The tiny zoo's validation split has one model (tau undefined): select on the 4 training models instead.
  train = inputs["train"]
  model = predict.make_predictor("statnn", loaded["train"].space, train_inputs=train[0], rngs=nnx.Rngs(1))
  config = dataclasses.replace(FIT, steps=120)
  result = predict.fit(model, train, train, key=jax.random.key(0), config=config, progress=False)
  taus = [h["val_tau"] for h in result.history]
  assert [h["step"] for h in result.history] == [40, 80, 120]
  assert result.val_tau == max(taus) and result.step == result.history[taus.index(max(taus))]["step"]
  # the model was left at the selected checkpoint
  assert predict.kendall_tau(predict.predict(model, train[0]), train[1]) == pytest.approx(result.val_tau)


def test_experiment_driver_writes_results(folder, tmp_path, capsys):
  out = tmp_path / "results"
  argv = ["--zoo", str(folder), "--out", str(out), "--seeds", "2", "--steps", "40", "--eval_every", "40"]
  argv += ["--batch_size", "4", "--learning_rate", "0.003", "--predictors", "statnn", "deepsets", "--no_progress"]
  assert predict.main(argv) == 0
  table = (out / "results.md").read_text()
  assert "| StatNN |" in table and "| Deep Sets |" in table and "0.8839" in table
  rows = (out / "runs.csv").read_text().strip().splitlines()
  assert len(rows) == 1 + 2 * 2 and rows[0].startswith("predictor,seed,test_tau")
  assert "| StatNN |" in capsys.readouterr().out


def test_summary_mean_and_standard_error():
  rows = [
    {"predictor": "unf", "test_tau": t, "val_tau": v, "parameters": 10, "seconds": 1.0}
    for t, v in [(0.5, 0.1), (0.7, 0.2), (0.9, 0.3)]
  ]
  (summary,) = predict.summarize(rows)
  assert summary["test_tau"] == pytest.approx(0.7)
  assert summary["test_tau_se"] == pytest.approx(0.2 / math.sqrt(3))  # sample std 0.2, three seeds
  assert summary["val_tau_se"] == pytest.approx(0.1 / math.sqrt(3))
