"""Fixtures shared by the RNN zoo tests: one tiny zoo, generated once per session by the command line."""

import pytest
from flax import nnx

from experiments.rnn_zoo import fit, main, predictors, zoo


@pytest.fixture(scope="session")
def tiny():
  """The one tiny zoo configuration of every test: its training program compiles once per session."""
  return zoo.ZooConfig(
    num_models=6, seed=3, embed=4, hidden=8, batch_size=4, min_steps=2, max_steps=6, eval_windows=16, chunk=4
  )


@pytest.fixture(scope="session")
def tiny_flags():
  """The flags of ``generate`` that describe :func:`tiny` (checked against it in test_main)."""
  values = dict(models=6, seed=3, embed=4, hidden=8, batch_size=4, min_steps=2, max_steps=6, eval_windows=16, chunk=4)
  return [item for flag, value in values.items() for item in (f"--{flag}", str(value))] + ["--no_progress"]


@pytest.fixture(scope="session")
def budget():
  """One training budget for the predictor tests: every run of the same predictor shares one compile."""
  return fit.FitConfig(steps=40, batch_size=4, learning_rate=3e-3, eval_every=40)


@pytest.fixture(scope="session")
def zoo_folder(tmp_path_factory, tiny_flags):
  """The tiny zoo, written by ``python -m experiments.rnn_zoo generate``'s entry point."""
  out = tmp_path_factory.mktemp("zoo")
  assert main.main(["generate", "--out", str(out), *tiny_flags]) == 0
  return out


@pytest.fixture(scope="session")
def trained(tiny):
  """The same zoo trained in memory: (hyper-parameters, weights, accuracies) in zoo order."""
  hyper = zoo.sample_hyperparameters(tiny)
  weights, accuracy = zoo.train_zoo(tiny, hyper, progress=False)
  return hyper, weights, accuracy


@pytest.fixture(scope="session")
def loaded(zoo_folder):
  """The tiny zoo's three splits, read back from its files."""
  return zoo.load_zoo(zoo_folder)


@pytest.fixture(scope="session")
def inputs(loaded):
  """Per split, the predictors' (inputs, targets)."""
  return predictors.prepare(loaded)


@pytest.fixture(scope="module", params=predictors.PREDICTORS)
def predictor(request, loaded, inputs):
  """(name, model) of each predictor, fresh per test module: a test may train it in place."""
  model = predictors.make_predictor(
    request.param, loaded["train"].space, train_inputs=inputs["train"][0], rngs=nnx.Rngs(0)
  )
  return request.param, model
