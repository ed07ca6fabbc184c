"""Training a predictor: the loss falls, and the checkpoint with the best validation tau is kept."""

import dataclasses
import math

import jax
import pytest
from flax import nnx

from experiments.rnn_zoo import fit, predictors
from experiments.rnn_zoo.stats import kendall_tau


def test_training_steps_decrease_the_loss_on_a_tiny_batch(predictor, inputs, budget, key):
  _, model = predictor
  x, y = inputs["train"]
  before = fit.loss(model, x, y)
  mean_loss = fit.train_steps(model, x, y, key, config=budget, steps=40)
  after = fit.loss(model, x, y)
  assert math.isfinite(mean_loss) and after < 0.5 * before, (before, after)


def test_fit_keeps_the_checkpoint_with_the_best_validation_tau(loaded, inputs, budget):
  # The tiny zoo's validation split has one model (tau undefined): select on the 4 training models instead.
  train = inputs["train"]
  model = predictors.make_predictor("statnn", loaded["train"].space, train_inputs=train[0], rngs=nnx.Rngs(1))
  config = dataclasses.replace(budget, steps=120)
  result = fit.fit(model, train, train, key=jax.random.key(0), config=config, progress=False)
  taus = [h["val_tau"] for h in result.history]
  assert [h["step"] for h in result.history] == [40, 80, 120]
  assert result.val_tau == max(taus) and result.step == result.history[taus.index(max(taus))]["step"]
  # the model was left at the selected checkpoint
  assert kendall_tau(fit.predict(model, train[0]), train[1]) == pytest.approx(result.val_tau)


@pytest.mark.parametrize("field", ["steps", "batch_size", "eval_every"])
def test_fit_config_rejects_an_empty_budget(field):
  with pytest.raises(ValueError, match=f"FitConfig.{field} must be at least 1, got 0"):
    fit.FitConfig(**{field: 0})
