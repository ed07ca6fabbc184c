"""check_symmetry on hand-written weight spaces, with negative controls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unf import symmetry
from unf.space import WeightSpace
from unf.symmetry import SymmetryError, check_symmetry

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
  shift = lambda p: p["w"][0] * 0.0 + 1.0 + 1e-6 * (p["w"][0] > 0.5)  # noqa: E731
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
