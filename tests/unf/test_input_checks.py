"""Bad input to unf's layers and group actions is a clear error naming what is wrong, never a wrong answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unf
from unf import linear

SPACE = unf.WeightSpace({"w0": ("in", "hidden"), "b0": ("hidden",), "w1": ("hidden", "out")})


def _x(features=(2, 2, 2), sizes=(3, 4, 2)):
  n_in, hidden, n_out = sizes
  f_w0, f_b0, f_w1 = features
  return {"w0": jnp.ones((n_in, hidden, f_w0)), "b0": jnp.ones((hidden, f_b0)), "w1": jnp.ones((hidden, n_out, f_w1))}


def test_feature_counts_are_checked_per_leaf(key):
  params = linear.init(key, SPACE, SPACE, 2, 3)
  assert linear.apply(params, _x(), SPACE, SPACE)["w0"].shape == (3, 4, 3)
  # 1 and 3 features on two leaves: 2 on average, which used to run and mix the wrong channels.
  with pytest.raises(ValueError, match=r"leaf 'b0' has 1 features .* built for in_features=2"):
    linear.apply(params, _x((2, 1, 3)), SPACE, SPACE)
  layer = unf.EquivariantLinear(SPACE, SPACE, 2, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"leaf 'w1' has 5 features"):
    layer(_x((2, 2, 5)))


def test_out_sizes_only_adds_labels_the_input_lacks(key):
  space_out = unf.WeightSpace({"w0": ("in", "hidden"), "extra": ("new",)})
  params = linear.init(key, SPACE, space_out, 2, 1)
  assert linear.apply(params, _x(), SPACE, space_out, out_sizes={"new": 5})["extra"].shape == (5, 1)
  with pytest.raises(ValueError, match=r"out_sizes gives label 'hidden' size 7, but the input already has it"):
    linear.apply(params, _x(), SPACE, space_out, out_sizes={"new": 5, "hidden": 7})
  with pytest.raises(ValueError, match=r"out_sizes names label 'nwe', which the output space does not have"):
    linear.apply(params, _x(), SPACE, space_out, out_sizes={"new": 5, "nwe": 5})
  with pytest.raises(ValueError, match=r"pass out_sizes"):
    linear.apply(params, _x(), SPACE, space_out)


def test_unf_with_a_new_output_label_takes_out_sizes():
  space_out = unf.WeightSpace({"w0": ("in", "hidden"), "extra": ("new",)})
  net = unf.UNF(SPACE, 2, 1, hidden=(4,), space_out=space_out, rngs=nnx.Rngs(0))
  assert net(_x(), out_sizes={"new": 6})["extra"].shape == (6, 1)
  invariant = unf.UNF(SPACE, 2, 1, hidden=(4,), invariant=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="invariant UNF outputs a vector"):
    invariant(_x(), out_sizes={"new": 6})


@pytest.mark.parametrize(
  "hidden, match",
  [
    ([0, 1, 2], r"label 'hidden' has a permutation of 3 entries, but leaf 'b0' axis 0 has size 4"),
    ([0, 1, 2, 4], r"not a permutation of 0..3: 4 is out of range"),
    ([0, 1, 1, 2], r"not a permutation of 0..3: 1 appears 2 times"),
    ([0.0, 1.0, 2.0, 3.0], r"its dtype is float"),
  ],
  ids=["too_short", "out_of_range", "duplicate", "float"],
)
def test_permute_rejects_what_is_not_a_permutation(hidden, match):
  params = {"w0": jnp.ones((3, 4)), "b0": jnp.ones(4), "w1": jnp.ones((4, 2))}
  with pytest.raises(ValueError, match=match):
    unf.permute(SPACE, {"hidden": jnp.asarray(hidden)}, params)


def test_permute_rejects_unknown_labels_and_leaves_of_the_wrong_size():
  params = {"w0": jnp.ones((3, 4)), "b0": jnp.ones(5), "w1": jnp.ones((4, 2))}  # b0 of the wrong size
  with pytest.raises(ValueError, match=r"leaf 'b0' axis 0 has size 5"):
    unf.permute(SPACE, {"hidden": jnp.arange(4)}, params)
  with pytest.raises(ValueError, match=r"labels \['hiden'\] are not in the weight space"):
    unf.permute(SPACE, {"hiden": jnp.arange(4)}, params)


def test_permute_under_jit_checks_shapes():
  params = {"w0": jnp.ones((3, 4)), "b0": jnp.arange(4.0), "w1": jnp.ones((4, 2))}
  permuted = jax.jit(lambda p: unf.permute(SPACE, {"hidden": p}, params))(jnp.array([3, 2, 1, 0]))
  np.testing.assert_array_equal(permuted["b0"], [3.0, 2.0, 1.0, 0.0])


def test_sample_permutation_names_the_label_without_a_size(key):
  with pytest.raises(ValueError, match=r"no size for labels \['out'\]"):
    unf.sample_permutation(SPACE, key, {"in": 3, "hidden": 4})
