"""check_symmetry on hand-written weight spaces, with negative controls; vacuous passes are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

import unf
from unf import symmetry
from unf.space import WeightSpace
from unf.symmetry import SymmetryError, VacuousCheckError, check_symmetry

SPACE = WeightSpace({"w0": ("in", "hidden"), "b0": ("hidden",), "w1": ("hidden", "out")})
# Wrong: the second layer's input axis is not tied to the first layer's output.
WRONG = WeightSpace({"w0": ("in", "hidden"), "b0": ("hidden",), "w1": ("other", "out")})


def apply_fn(params, x):
  hidden = jnp.tanh(x @ params["w0"] + params["b0"])
  return {"logits": hidden @ params["w1"], "hidden_norm": jnp.sum(hidden**2, axis=-1)}


@pytest.fixture
def params(key):
  k0, k1, k2 = jax.random.split(key, 3)
  return {"w0": jax.random.normal(k0, (3, 4)), "b0": jax.random.normal(k1, (4,)), "w1": jax.random.normal(k2, (4, 2))}


@pytest.fixture
def x(key):
  return jax.random.normal(jax.random.fold_in(key, 1), (5, 3))


def test_true_symmetry_passes_with_tiny_deviation(params, x):
  deviation = check_symmetry(apply_fn, params, SPACE, x, labels=["hidden"])
  assert isinstance(deviation, float)
  assert deviation < 1e-10


def test_a_single_label_may_be_given_as_a_string(params, x):
  assert check_symmetry(apply_fn, params, SPACE, x, labels="hidden") < 1e-10


def test_io_label_is_not_a_symmetry(params, x):
  with pytest.raises(SymmetryError, match=r"permuting labels \['in'\]"):
    check_symmetry(apply_fn, params, SPACE, x, labels=["in"])


def test_wrong_spec_raises_naming_the_culprits_and_the_output_leaf(params, x):
  with pytest.raises(SymmetryError) as info:
    check_symmetry(apply_fn, params, WRONG, x, labels=["hidden", "other"])
  message = str(info.value)
  assert "['logits']" in message
  assert "permuted alone: ['hidden', 'other']" in message
  assert isinstance(info.value, AssertionError)


def test_default_checks_every_label(params, x):
  with pytest.raises(SymmetryError, match=r"permuted alone: \['in', 'out'\]"):
    check_symmetry(apply_fn, params, SPACE, x)


@pytest.mark.parametrize("seed", range(8))
def test_size_two_label_never_draws_the_identity(seed):
  # A uniform draw of a 2-permutation is the identity half of the time; the check must still fail.
  space = WeightSpace({"w": ("a",)})
  with pytest.raises(SymmetryError):
    check_symmetry(lambda p: p["w"][0], {"w": jnp.array([0.0, 1.0])}, space, key=jax.random.key(seed), num_trials=1)


def test_returns_the_worst_deviation_within_tolerance():
  space = WeightSpace({"w": ("a",)})
  deviation = check_symmetry(lambda p: p["w"][0], {"w": jnp.array([0.0, 1.0])}, space, atol=2.0)
  assert deviation == 1.0


def test_relative_tolerance_scales_with_the_reference():
  space = WeightSpace({"w": ("a",)})
  params = {"w": jnp.array([1000.0, 1000.001])}
  assert check_symmetry(lambda p: p["w"][0], params, space, rtol=1e-5, atol=0.0) == pytest.approx(1e-3)
  with pytest.raises(SymmetryError):
    check_symmetry(lambda p: p["w"][0], params, space, rtol=1e-7, atol=0.0)


def test_nan_in_the_output_fails():
  space = WeightSpace({"w": ("a",)})
  apply = lambda p: jnp.where(p["w"][0] > 0, jnp.nan, 0.0)
  with pytest.raises(SymmetryError):
    check_symmetry(apply, {"w": jnp.array([0.0, 1.0])}, space)


def test_unknown_label_and_mismatched_params_raise_value_error(params, x):
  with pytest.raises(ValueError, match="not in the weight space"):
    check_symmetry(apply_fn, params, SPACE, x, labels=["nope"])
  with pytest.raises(ValueError, match="missing leaves"):
    check_symmetry(apply_fn, {"w0": params["w0"], "w1": params["w1"]}, SPACE, x)


def test_default_tolerance_follows_the_dtype():
  assert 1e-5 < symmetry.default_tolerance(np.float32) < 1e-4
  assert 1e-12 < symmetry.default_tolerance(np.float64) < 1e-10
  # A float32 output off by float32 rounding passes by default; the same change in float64 does not.
  space = WeightSpace({"w": ("a",)})
  # The sum makes the output depend on w, so the pass is not refused as vacuous.
  shift = lambda p: jnp.sum(p["w"]) + 1e-6 * (p["w"][0] > 0.5)  # noqa: E731
  params32 = {"w": jnp.array([0.0, 1.0], jnp.float32)}
  assert check_symmetry(shift, params32, space) == pytest.approx(1e-6, rel=0.1)
  with pytest.raises(SymmetryError):
    check_symmetry(shift, {"w": jnp.array([0.0, 1.0], jnp.float64)}, space)


def test_a_float32_failure_is_rerun_in_float64_to_tell_rounding_from_asymmetry():
  space = WeightSpace({"w": ("a",)})
  values = np.random.default_rng(0).standard_normal(4096) * np.logspace(0, 6, 4096)
  params = {"w": jnp.asarray(values, jnp.float32)}
  with pytest.raises(SymmetryError, match="Rerun in float64 it changes by .* only: this is rounding"):
    check_symmetry(lambda p: jnp.sum(p["w"]), params, space, rtol=0.0, atol=0.0)
  with pytest.raises(SymmetryError, match="Rerun in float64 it still changes by .*: a real asymmetry"):
    check_symmetry(lambda p: p["w"][0], params, space)


# --- vacuous passes ----------------------------------------------------------------------


class _BatchNormNet(linen.Module):
  """Dense -> BatchNorm (inference mode) -> relu -> Dense, as linen writes it."""

  @linen.compact
  def __call__(self, x):
    x = linen.BatchNorm(use_running_average=True)(linen.Dense(4)(x))
    return linen.Dense(2)(linen.relu(x))


def _bn_space(second_layer_label):
  return WeightSpace(
    {
      "params": {
        "Dense_0": {"kernel": (None, "h"), "bias": ("h",)},
        "BatchNorm_0": {"scale": ("h",), "bias": ("h",)},
        "Dense_1": {"kernel": (second_layer_label, None), "bias": (None,)},
      },
      "batch_stats": {"BatchNorm_0": {"mean": ("h",), "var": ("h",)}},
    }
  )


@pytest.fixture
def bn_model(key):
  model, x = _BatchNormNet(), jax.random.normal(key, (6, 3))
  variables = model.init(jax.random.key(0), x)
  # Statistics far from the data's, as from a wrong dataset: every unit is below zero and relu kills it.
  bad = {**variables, "batch_stats": {"BatchNorm_0": {"mean": jnp.full(4, 1e6), "var": jnp.ones(4)}}}
  return model.apply, variables, bad, x


def test_a_constant_output_from_bad_batch_stats_is_refused_not_proved(bn_model):
  apply, good, bad, x = bn_model
  right, wrong = _bn_space("h"), _bn_space("other")  # wrong: the second layer's input axis is not tied to "h"
  assert check_symmetry(apply, good, right, x) < 1e-10
  with pytest.raises(SymmetryError, match=r"permuted alone: \['h', 'other'\]"):  # the negative control
    check_symmetry(apply, good, wrong, x)
  # With the bad statistics the output is zero (the last layer's bias) whatever the rest: every trial passes
  # with deviation 0, for the wrong space too, and the pass is refused.
  for space in (right, wrong):
    with pytest.raises(VacuousCheckError) as info:
      check_symmetry(apply, bad, space, x)
    message = str(info.value)
    assert not isinstance(info.value, SymmetryError) and isinstance(info.value, AssertionError)
    assert message.startswith("check_symmetry proves nothing here")
    assert "'h' at batch_stats/BatchNorm_0/mean:0, batch_stats/BatchNorm_0/var:0, params/BatchNorm_0/bias:0" in message
    assert "the real BatchNorm statistics with the params ({'params': ..., 'batch_stats': ...})" in message
    assert "verify=False" in message


def test_infer_space_with_verify_refuses_a_constant_output(bn_model):
  apply, good, bad, x = bn_model
  with pytest.raises(VacuousCheckError, match="proves nothing"):
    unf.infer_space(apply, bad, x)
  assert unf.infer_space(apply, bad, x, verify=False) == unf.infer_space(apply, good, x)


def test_zero_inputs_into_a_model_without_biases_are_refused(params):
  apply = lambda p, x: jnp.tanh(x @ p["w0"]) @ p["w1"]  # noqa: E731
  space = WeightSpace({"w0": ("in", "hidden"), "w1": ("hidden", "out")})
  params = {"w0": params["w0"], "w1": params["w1"]}
  with pytest.raises(VacuousCheckError, match=r"'hidden' at w0:1, w1:0\. .*pass real inputs"):
    check_symmetry(apply, params, space, jnp.zeros((5, 3)), labels="hidden")
  assert check_symmetry(apply, params, space, jnp.ones((5, 3)), labels="hidden") < 1e-10


def test_token_outputs_and_labels_on_one_axis_are_not_refused(params):
  # An argmax does not move under a small perturbation, but it does when the hidden axes are untied.
  x = jax.random.normal(jax.random.key(3), (32, 3))
  tokens = lambda p, x: jnp.argmax(apply_fn(p, x)["logits"], axis=-1)  # noqa: E731
  assert check_symmetry(tokens, params, SPACE, x, labels="hidden") == 0.0
  # A label on a single axis has nothing to untie, but a sum moves under the perturbation.
  assert check_symmetry(lambda p: jnp.sum(p["w"] ** 2), {"w": jnp.arange(4.0)}, WeightSpace({"w": ("a",)})) < 1e-10


def test_an_output_that_is_nan_whatever_the_params_is_refused():
  with pytest.raises(VacuousCheckError, match="The output holds NaN or inf"):
    check_symmetry(lambda p: jnp.sum(p["w"]) * jnp.nan, {"w": jnp.arange(4.0)}, WeightSpace({"w": ("a",)}))
