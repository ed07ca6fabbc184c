"""unf.testing: the equivariance and invariance checks pass on true symmetries and fail on broken ones."""

import jax
import jax.numpy as jnp
import pytest

import unf
from unf.testing import assert_equivariant, assert_invariant, random_features

SPACE = unf.WeightSpace(
  {"w": ("in", "hidden"), "b": ("hidden",), "c": (None, "hidden")}, fixed_sizes={("c",): (2, None)}
)
SIZES = {"in": 3, "hidden": 4}


def _x(key, dtype=None):
  return random_features(SPACE, SIZES, 2, key, dtype=dtype)


def _equivariant(t):
  """Elementwise maps and a mean over the 'in' axis broadcast back: equivariant."""
  return {"w": jnp.tanh(t["w"]) + jnp.mean(t["w"], axis=0), "b": t["b"] ** 2, "c": 2.0 * t["c"]}


def test_random_features_shapes_and_dtypes(key):
  x = _x(key)
  assert {k: v.shape for k, v in x.items()} == {"w": (3, 4, 2), "b": (4, 2), "c": (2, 4, 2)}
  assert x["w"].dtype == jnp.float64  # JAX's default float: the unf tests run with x64 enabled
  assert _x(key, jnp.float32)["w"].dtype == jnp.float32
  assert not jnp.array_equal(x["w"][..., 0], x["w"][..., 1])


def test_true_symmetries_pass_with_tiny_deviation(key):
  assert assert_equivariant(_equivariant, SPACE, key, _x(key), num_trials=3) < 1e-12
  assert assert_invariant(lambda t: jnp.sum(t["w"]) + jnp.max(t["c"]), SPACE, key, _x(key)) < 1e-12


def test_output_space_may_drop_labels(key):
  space_out = unf.WeightSpace({"v": ("hidden",)})
  assert_equivariant(lambda t: {"v": jnp.sum(t["w"], axis=0)}, SPACE, key, _x(key), space_out=space_out)


def test_negative_control_position_dependent_map_fails(key):
  def broken(t):
    return {**t, "b": t["b"] * jnp.arange(4.0)[:, None]}

  with pytest.raises(AssertionError, match=r"not equivariant: worst relative deviation .* at output \['b'\]"):
    assert_equivariant(broken, SPACE, key, _x(key))


def test_negative_control_equivariant_is_not_invariant(key):
  with pytest.raises(AssertionError, match="not invariant"):
    assert_invariant(_equivariant, SPACE, key, _x(key))


@pytest.mark.parametrize("seed", range(4))
def test_a_size_two_label_never_draws_the_identity(seed):
  # x -> (x0, x0) is not equivariant; a uniform draw of S_2 is the identity half of the time.
  space = unf.WeightSpace({"v": ("a",)})
  x = random_features(space, {"a": 2}, 1, jax.random.key(seed))
  with pytest.raises(AssertionError, match="not equivariant"):
    assert_equivariant(
      lambda t: {"v": jnp.broadcast_to(t["v"][:1], (2, 1))}, space, jax.random.key(seed), x, num_trials=1
    )


def test_nan_never_passes(key):
  with pytest.raises(AssertionError, match="deviation inf"):
    assert_equivariant(lambda t: jax.tree.map(lambda v: v * jnp.nan, t), SPACE, key, _x(key))


def test_a_changed_structure_fails(key):
  calls = []

  def fn(t):  # a tuple on the first call (the reference), a list afterwards
    calls.append(None)
    total = jnp.sum(t["w"])
    return (total,) if len(calls) == 1 else [total]

  with pytest.raises(AssertionError, match="not invariant: the output's structure changed"):
    assert_invariant(fn, SPACE, key, _x(key))


def test_default_tolerance_follows_the_output_dtype(key):
  def slightly_broken(t):  # a deviation of about 1e-6: float32 roundoff, a real bug in float64
    return {**t, "b": t["b"] * (1.0 + 1e-6 * jnp.arange(4.0, dtype=t["b"].dtype)[:, None])}

  assert 1e-9 < assert_equivariant(slightly_broken, SPACE, key, _x(key, jnp.float32)) < 1e-4
  with pytest.raises(AssertionError, match=r"> atol 1e-09"):
    assert_equivariant(slightly_broken, SPACE, key, _x(key))
  assert assert_equivariant(slightly_broken, SPACE, key, _x(key), atol=1e-4) > 1e-9


def test_num_trials_must_be_positive(key):
  with pytest.raises(ValueError, match="num_trials must be at least 1, got 0"):
    assert_invariant(jnp.sum, SPACE, key, _x(key), num_trials=0)
