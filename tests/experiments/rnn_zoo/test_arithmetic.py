"""The GRU seq2seq arithmetic zoo: the problems against Python's integers, determinism, shards and resume."""

import dataclasses
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unf
from experiments.rnn_zoo import arithmetic, fit, main, predictors, zoo

TINY = arithmetic.ArithmeticConfig(
  num_models=5, seed=2, hidden=4, batch_sizes=(8, 16), min_steps=2, max_steps=5, eval_size=32, shard_size=2, chunk=2
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """The tiny zoo, written by the command line's ``arithmetic`` subcommand."""
  out = tmp_path_factory.mktemp("arithmetic")
  flags = dict(models=5, seed=2, hidden=4, min_steps=2, max_steps=5, eval_size=32, shard_size=2, chunk=2)
  argv = [item for flag, value in flags.items() for item in (f"--{flag}", str(value))]
  config = dataclasses.replace(TINY, batch_sizes=arithmetic.ArithmeticConfig().batch_sizes)
  assert main.main(["arithmetic", "--out", str(out), *argv, "--no_progress"]) == 0
  assert json.loads((out / "zoo.json").read_text())["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
  return out, config


def _python_answer(text):
  for op in "+-":
    if op in text:
      a, b = text.split(op)
      return int(a) + int(b) if op == "+" else int(a) - int(b)
  raise AssertionError(text)


def test_problems_are_the_sums_and_differences_python_computes():
  inputs, targets = arithmetic.sample_problems(jax.random.key(0), 3000)
  inputs, targets = np.asarray(inputs), np.asarray(targets)
  assert inputs.shape == (3000, arithmetic.INPUT_LENGTH) and targets.shape == (3000, arithmetic.OUTPUT_LENGTH)
  operands, ops = [], []
  for x, y in zip(inputs, targets):
    question, answer = arithmetic.decode(x), arithmetic.decode(y)
    assert int(answer) == _python_answer(question), (question, answer)
    a, b = question.replace("-", "+").split("+")
    operands += [a, b]
    ops.append("-" if "-" in question else "+")
    # after the text, only end tokens
    assert np.all(y[len(answer) :] == arithmetic.END) and np.all(x[len(question) :] == arithmetic.END)
  lengths = np.array([len(a) for a in operands])
  assert lengths.min() == 1 and lengths.max() == arithmetic.MAX_DIGITS
  # the number of digits is uniform in 1..5 (6,000 operands: each count within 5 sigma of 1,200)
  assert np.all(np.abs(np.bincount(lengths)[1:] - 1200) < 5 * np.sqrt(1200 * 0.8))
  assert all(a == "0" or not a.startswith("0") for a in operands)  # no leading zeros
  assert 1300 < ops.count("-") < 1700


@pytest.mark.parametrize(
  "a, op, b", [(0, "+", 0), (0, "-", 0), (99999, "+", 99999), (0, "-", 99999), (10, "-", 10), (5, "-", 12345)]
)
def test_extreme_problems_encode_as_written(a, op, b):
  inputs, targets = arithmetic.encode(jnp.array([a]), jnp.array([op == "-"]), jnp.array([b]))
  assert arithmetic.decode(inputs[0]) == f"{a}{op}{b}"
  assert arithmetic.decode(targets[0]) == str(a + b if op == "+" else a - b)
  assert targets.shape[1] > len(str(a + b if op == "+" else a - b))  # room for at least one end token


def test_greedy_decoding_is_teacher_forcing_on_its_own_answers():
  params = arithmetic.init_params(jax.random.key(3), 8, jnp.float32(2.0))
  inputs, _ = arithmetic.sample_problems(jax.random.key(4), 16)
  greedy = arithmetic.greedy_decode(params, inputs)
  forced = jnp.argmax(arithmetic.logits_teacher_forced(params, inputs, greedy), axis=-1)
  np.testing.assert_array_equal(forced, greedy)
  assert len(np.unique(np.asarray(greedy))) > 1


def _expected_axes(path):
  if path[0] == "head":
    return ("hidden", None) if path[1] == "kernel" else (None,)
  gate, leaf = path[1], path[2]
  if leaf == "bias":
    return ("hidden",)
  return (None, "hidden") if gate.startswith("i") else ("hidden", "hidden")


def test_the_space_shares_one_hidden_permutation_and_is_a_symmetry():
  space = arithmetic.weight_space(6)
  assert space.labels == ("hidden",) and len(space) == 22
  assert {path: axes for path, axes in zip(space.paths, space.axes)} == {p: _expected_axes(p) for p in space.paths}
  params = arithmetic.init_params(jax.random.key(0), 6, jnp.float32(1.0))
  inputs, targets = arithmetic.sample_problems(jax.random.key(1), 8)
  unf.check_symmetry(arithmetic.logits_teacher_forced, params, space, inputs, targets)
  unf.check_symmetry(lambda p, x: arithmetic.greedy_decode(p, x).astype(jnp.float32), params, space, inputs)


def test_a_model_trained_alone_is_the_model_in_the_zoo(folder):
  out, config = folder
  hyper = arithmetic.sample_hyperparameters(config)
  shard = arithmetic.shard_plan(config, hyper)[0]
  together, acc_together = arithmetic.train_models(config, hyper, shard)
  alone, acc_alone = arithmetic.train_models(config, hyper, shard[:1])
  for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(together)):
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
  assert acc_alone[0] == pytest.approx(acc_together[0], abs=1 / (config.eval_size * arithmetic.OUTPUT_LENGTH))


def test_stored_accuracy_is_a_reevaluation_of_the_stored_weights(folder):
  out, config = folder
  problems = arithmetic.evaluation_problems(config)
  seen = []
  for name in zoo.SPLITS:
    part = zoo.load_split(out, name)
    seen += part.hyperparameters["index"].tolist()
    for i in range(len(part)):
      params = jax.tree.map(lambda w, i=i: jnp.asarray(w[i]), part.weights)
      assert float(arithmetic.accuracy(params, problems)) == pytest.approx(float(part.accuracy[i]), abs=1e-6)
  assert sorted(seen) == list(range(config.num_models))


def test_the_zoo_is_deterministic_from_its_seed(folder, tmp_path):
  out, config = folder
  again = tmp_path / "again"
  arithmetic.generate(config, again, progress=False)
  for name in zoo.SPLITS:
    a, b = zoo.load_split(out, name), zoo.load_split(again, name)
    for x, y in zip(jax.tree.leaves(a.weights), jax.tree.leaves(b.weights)):
      np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
  other = arithmetic.sample_hyperparameters(dataclasses.replace(config, seed=3))
  assert not np.array_equal(other["learning_rate"], arithmetic.sample_hyperparameters(config)["learning_rate"])


def test_generation_resumes_from_shards_and_retrains_a_broken_one(folder, tmp_path):
  out, config = folder
  shards = sorted((out / "shards").iterdir())
  assert len(shards) == len(arithmetic.shard_plan(config, arithmetic.sample_hyperparameters(config))) >= 3
  resumed = tmp_path / "resumed"
  (resumed / "shards").mkdir(parents=True)
  for shard in shards[:-1]:
    (resumed / "shards" / shard.name).write_bytes(shard.read_bytes())
  broken = resumed / "shards" / shards[0].name
  broken.write_bytes(shards[0].read_bytes()[:100])  # a half-written shard
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    summary = arithmetic.generate(config, resumed, progress=False)
  assert any(shards[0].name in str(w.message) and "training its models again" in str(w.message) for w in caught)
  assert summary["shards"] == {"total": len(shards), "reused": len(shards) - 2}
  assert summary["training"]["models"] > 0 and summary["training"]["inner_steps_per_second"] > 0
  for name in zoo.SPLITS:
    np.testing.assert_array_equal(zoo.load_split(resumed, name).accuracy, zoo.load_split(out, name).accuracy)


def test_a_shard_of_another_configuration_is_refused(folder, tmp_path):
  out, config = folder
  other = tmp_path / "other"
  (other / "shards").mkdir(parents=True)
  first = sorted((out / "shards").iterdir())[0]
  (other / "shards" / first.name).write_bytes(first.read_bytes())
  with pytest.raises(ValueError, match="another zoo configuration"):
    arithmetic.generate(dataclasses.replace(config, learning_rate=(1e-3, 1e-2)), other, progress=False)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="min_steps <= max_steps"):
    arithmetic.ArithmeticConfig(min_steps=5, max_steps=2)
  with pytest.raises(ValueError, match="batch_sizes"):
    arithmetic.ArithmeticConfig(batch_sizes=())
  with pytest.raises(ValueError, match="train_models trains models of one batch size"):
    hyper = arithmetic.sample_hyperparameters(TINY)
    arithmetic.train_models(TINY, hyper, np.flatnonzero(hyper["batch_size"] > 0))


@pytest.mark.parametrize(
  "name, sizes", [*((name, "paper") for name in predictors.PREDICTORS), ("unf", "paper3"), ("unf", "bounded")]
)
def test_paper_sized_predictors_are_invariant_on_the_gru_space(folder, name, sizes):
  out, _ = folder
  loaded = zoo.load_zoo(out)
  inputs = predictors.prepare(loaded)
  space = loaded["train"].space
  model = predictors.make_predictor(name, space, train_inputs=inputs["train"][0], rngs=nnx.Rngs(0), sizes=sizes)
  one = jax.tree.map(lambda w: jnp.asarray(w[0]), inputs["train"][0])
  fn = jax.jit(lambda w: model(w))
  sigma = unf.sample_permutation(space, jax.random.key(5), space.validate(one))
  moved = unf.permute(space, sigma, one)
  assert abs(float(fn(moved)) - float(fn(one))) <= 1e-5 * max(1.0, abs(float(fn(one))))
  # negative control: the same permutation on the encoder only is not a symmetry, and UNF sees it
  if name == "unf":
    broken = {**one, "encoder": moved["encoder"]}
    assert abs(float(fn(broken)) - float(fn(one))) > 1e-6


def test_the_paper_preset_shares_one_character_label_as_the_authors_code(folder):
  """``sizes="paper"``: the UNF is also invariant to one permutation of the characters in every tensor
  (the authors' larger group), but not to one that reorders the characters of the encoder alone."""
  out, _ = folder
  loaded = zoo.load_zoo(out)
  inputs = predictors.prepare(loaded)
  space = loaded["train"].space
  labelled = predictors.share_one_fixed_label(space, predictors.CHARACTERS)
  characters = {path: axes for path, axes in zip(labelled.paths, labelled.axes) if predictors.CHARACTERS in axes}
  # the input kernels of both cells' three gates, the head's kernel and bias: one label, 14 characters each
  assert len(characters) == 8 and all(None not in axes for axes in labelled.axes)
  model = predictors.make_predictor("unf", space, train_inputs=None, rngs=nnx.Rngs(0), sizes="paper")
  one = jax.tree.map(lambda w: jnp.asarray(w[0]), inputs["train"][0])
  fn = jax.jit(lambda w: model(w))
  sizes = labelled.validate(one)
  assert sizes[predictors.CHARACTERS] == 14
  sigma = unf.sample_permutation(labelled, jax.random.key(6), sizes, labels=[predictors.CHARACTERS])
  moved = unf.permute(labelled, sigma, one)
  scale = max(1.0, abs(float(fn(one))))
  assert abs(float(fn(moved)) - float(fn(one))) <= 1e-5 * scale
  assert abs(float(fn({**one, "encoder": moved["encoder"]})) - float(fn(one))) > 1e-6


def test_the_paper_budget():
  config = fit.FitConfig.paper(2400)
  assert (config.steps, config.batch_size, config.eval_every, config.objective) == (2400, 10, 240, "bce")
  assert fit.FitConfig.paper(2401).eval_every == 241
  with pytest.raises(ValueError, match="objective must be one of"):
    fit.FitConfig(objective="l1")
