"""Noise scaled per part of theta (``per_part_noise``): estimators stay unbiased, and a UNF's last layer is
perturbed about as much as a Deep Sets layer (issue 22, part 5)."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
import unf
from metatrain import DeepSetsLOpt, UNFLOpt, estimators
from metatrain.estimators import PES, FullES, HybridES, NoiseReuseES, TruncatedES
from metatrain.problem import LearnedOptimizerProblem
from tests.metatrain.estimators.test_estimators import (
  STD,
  THETA,
  K,
  Quadratic,
  _exact_gradient,
  _horizon_estimates,
  _z_scores,
)

#: Unequal scales: the learning rate's noise a fifth of the momentum's.
SCALES = {"log_lr": jnp.array(0.2), "logit_momentum": jnp.array(1.0)}


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["horizon", "noise"])
@dataclasses.dataclass(frozen=True)
class ScaledQuadratic(Quadratic):
  def noise_scales(self, theta):
    del theta
    return SCALES


@pytest.mark.parametrize(
  "estimator, shared",
  [
    (PES(num_pairs=32, truncation=K, std=STD, random_offsets=False, per_part_noise=True), False),
    (NoiseReuseES(num_pairs=32, truncation=K, std=STD, random_offsets=False, per_part_noise=True), True),
    (FullES(num_pairs=32, std=STD, per_part_noise=True), True),
  ],
  ids=["PES", "NoiseReuseES", "FullES"],
)
def test_scaled_noise_estimates_stay_unbiased(estimator, shared, key):
  """The mean estimate is the gradient of the loss smoothed with the scaled noise; without the 1/scale^2 of
  ``common.whiten`` the learning rate's would be 25x too small (the negative control below)."""
  problem = ScaledQuadratic()
  exact = _exact_gradient(problem, K, STD, shared=shared, scales=SCALES)
  samples = _horizon_estimates(estimator, problem, key, repeats=200)
  z = _z_scores(samples, exact)
  assert all(abs(v) < 4.0 for v in z.values()), (z, exact, {k: v.mean() for k, v in samples.items()})
  # Negative control: the same estimates times scale^2 (no whitening) are far off in the scaled part.
  unwhitened = {k: samples[k] * float(SCALES[k]) ** 2 for k in samples}
  assert abs(_z_scores(unwhitened, exact)["log_lr"]) > 10.0


def test_the_noise_has_the_scaled_std(key):
  """Each part's perturbations have std ``std * scale`` (and the draws are the unscaled ones, multiplied)."""
  estimator = NoiseReuseES(num_pairs=4000, truncation=K, std=STD, per_part_noise=True)
  noise = estimator.init(ScaledQuadratic(), THETA, key).noise
  for name, scale in SCALES.items():
    np.testing.assert_allclose(np.std(noise[name]), STD * float(scale), rtol=0.05)
  plain = NoiseReuseES(num_pairs=4000, truncation=K, std=STD).init(Quadratic(), THETA, key).noise
  np.testing.assert_allclose(noise["log_lr"], 0.2 * plain["log_lr"], rtol=1e-6)


@pytest.mark.parametrize("cls", [PES, TruncatedES, NoiseReuseES, FullES, HybridES])
def test_per_part_noise_needs_a_problem_that_says_its_scales(cls, key):
  fields = {field.name for field in dataclasses.fields(cls)}
  small = {"num_pairs": 2, "truncation": K, "std": STD, "per_part_noise": True}
  estimator = cls(**{name: value for name, value in small.items() if name in fields})
  with pytest.raises(ValueError, match="per_part_noise=True .* Quadratic has none"):
    state = estimator.init(Quadratic(), THETA, key)
    estimator.step(Quadratic(), state, THETA, key)


def test_per_part_noise_is_written_to_json_and_read_back():
  estimator = NoiseReuseES(per_part_noise=True)
  assert estimator.to_json()["per_part_noise"] is True
  assert estimators.from_json(estimator.to_json()) == estimator != NoiseReuseES()
  # A checkpoint written before the option existed reads back without it (uniform noise).
  old = {key: value for key, value in NoiseReuseES().to_json().items() if key != "per_part_noise"}
  assert estimators.from_json(old) == NoiseReuseES()


@pytest.mark.parametrize("task_name", ["mlp_fashion8", "rnn_lm"])
def test_input_channels_count_what_an_output_entry_sums(task_name):
  """Oracle: on all-ones inputs every kept or pooled input channel is 1, so an output entry is the plain sum
  of the weights it reads, and the squared norm of its gradient in the weights counts them."""
  task = tasks.get(task_name)
  space, features = task.space, 3
  params = task.init(jax.random.key(0))
  ones = jax.tree.map(lambda p: jnp.ones(p.shape + (features,)), params)
  weights = unf.linear.init(jax.random.key(1), space, space, features, 1)
  channels = unf.linear.input_channels(space, space, features)
  assert set(channels) == {name for name in weights if not name.endswith("|bias")}
  for index, path in enumerate(space.paths):
    leaf = space.flatten(params)[index]
    # A generic entry: every index distinct from the others of its label (sizes here are at least 3).
    entry = tuple(min(axis, size - 1) for axis, size in enumerate(leaf.shape))

    def output(w, index=index, entry=entry):
      return space.flatten(unf.linear.apply(w, ones, space, space))[index][entry + (0,)]

    grads = jax.grad(output)(weights)
    counted = sum(float(jnp.sum(jnp.square(g))) for name, g in grads.items() if not name.endswith("|bias"))
    names = [name for name in channels if name.split("|")[0] == unf.space.path_str(path)]
    assert names and all(channels[name] == round(counted) for name in names), (path, counted, channels)


def test_unf_scales_its_last_layer_and_deep_sets_scales_nothing():
  task = tasks.get("rnn_lm")
  options = {"width": 8, "base": "nominal", "horizon": 100}
  for cls in (UNFLOpt, DeepSetsLOpt):
    lopt = cls(task.space, **options)
    theta = lopt.init_meta(jax.random.key(0))
    scales = LearnedOptimizerProblem(task, lopt, 100).noise_scales(theta)
    assert jax.tree.structure(scales) == jax.tree.structure(theta)
    outside = {k: v for k, v in scales.items() if k != "f"} | {k: v for k, v in scales["f"].items() if k != "head"}
    assert all(float(s) == 1.0 for s in jax.tree.leaves(outside))
    head = scales["f"]["head"]
    if cls is DeepSetsLOpt:
      assert all(float(s) == 1.0 for s in jax.tree.leaves(head))
      continue
    channels = unf.linear.input_channels(task.space, task.space, 8)
    for name, scale in head.items():
      expected = 1.0 if name.endswith("|bias") else math.sqrt(16 / channels[name])
      np.testing.assert_allclose(float(scale), expected, rtol=1e-6)
    assert max(float(s) for n, s in head.items() if not n.endswith("|bias")) < 1.0
