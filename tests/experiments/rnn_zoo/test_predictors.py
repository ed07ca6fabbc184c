"""The three accuracy predictors and their inputs: normalization, statistics, batching, invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unf
from experiments.rnn_zoo import fit, predictors


def _model(weights, i):
  return jax.tree.map(lambda w: jnp.asarray(w[i]), weights)


def _max_deviation(fn, space, weights, key, labels=None):
  sizes = space.validate(weights)
  sigma = unf.sample_permutation(space, key, sizes, labels=labels)
  return float(abs(fn(unf.permute(space, sigma, weights)) - fn(weights)))


def test_the_registries_share_one_key_per_predictor():
  assert predictors.PREDICTORS == ("unf", "deep_sets", "statnn")
  assert set(predictors.PAPER_TAU) == set(predictors.DISPLAY_NAMES) == set(predictors.PREDICTORS)


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
  features = np.asarray(predictors.tensor_statistics(one, space))
  expected = []
  for leaf in space.flatten(one):
    expected += [leaf.mean(), leaf.var(), *np.quantile(leaf, predictors.QUANTILES)]
  np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_batched_predictions_are_each_models_own_and_differ_between_models(predictor, inputs):
  """``fit.predict`` (a jitted vmap over models) equals one unbatched call of the module per model."""
  _, model = predictor
  every = jax.tree.map(lambda *parts: np.concatenate(parts), *(inputs[s][0] for s in ("train", "valid", "test")))
  batched = fit.predict(model, every)
  single = jax.jit(lambda w: model(w))
  count = len(jax.tree.leaves(every)[0])
  one_by_one = np.array([float(single(_model(every, i))) for i in range(count)])
  assert batched.shape == (count,)
  np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)
  # every model gets a prediction of its own: no two coincide (a broadcast or a dropped batch axis would)
  gaps = np.diff(np.sort(batched))
  assert np.all(gaps > 1e-6 * max(1.0, float(np.abs(batched).max()))), batched


def test_predictor_is_invariant_to_relabelling(predictor, loaded, inputs, key):
  _, model = predictor
  space = loaded["train"].space
  one = _model(inputs["train"][0], 0)
  fn = jax.jit(lambda w: model(w))
  scale = max(1.0, abs(float(fn(one))))
  k_hidden, k_all = jax.random.split(key)
  assert _max_deviation(fn, space, one, k_hidden, labels=["hidden"]) <= 1e-5 * scale
  assert _max_deviation(fn, space, one, k_all) <= 1e-5 * scale


def test_invariance_check_catches_a_non_invariant_map(loaded, inputs, key):
  """Negative control: a linear map of the flattened weights depends on the hidden units' order."""
  space = loaded["train"].space
  one = _model(inputs["train"][0], 0)
  flat = jnp.concatenate([jnp.ravel(w) for w in space.flatten(one)])
  direction = jax.random.normal(jax.random.key(1), flat.shape)

  def dense(w):
    return jnp.dot(direction, jnp.concatenate([jnp.ravel(v) for v in space.flatten(w)]))

  assert _max_deviation(dense, space, one, key, labels=["hidden"]) > 1e-2


def test_one_label_for_every_fixed_axis_refuses_what_it_cannot_label():
  space = unf.WeightSpace({"a": (None, "h"), "b": ("h", None)}, fixed_sizes={("a",): (3, None), ("b",): (None, 4)})
  with pytest.raises(ValueError, match=r"lengths \[3, 4\].*one length"):
    predictors.share_one_fixed_label(space, "characters")
  with pytest.raises(ValueError, match="already has a label 'h'"):
    predictors.share_one_fixed_label(space, "h")


def test_make_predictor_errors_are_precise(loaded):
  space = loaded["train"].space
  with pytest.raises(ValueError, match="unknown predictor 'deepsets'"):
    predictors.make_predictor("deepsets", space, train_inputs=None, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs train_inputs"):
    predictors.make_predictor("statnn", space, train_inputs=None, rngs=nnx.Rngs(0))
