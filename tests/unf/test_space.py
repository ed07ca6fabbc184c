"""WeightSpace: validation errors name the leaf and axis; spaces are values."""

import jax
import jax.numpy as jnp
import pytest

import unf

SPEC = {"dense0": {"kernel": ("in", "h"), "bias": ("h",)}, "conv": {"kernel": (None, None, "h", "out")}}


def _params(h=4, h2=4, out=5):
  return {"dense0": {"kernel": jnp.ones((3, h)), "bias": jnp.ones(h2)}, "conv": {"kernel": jnp.ones((3, 3, h2, out))}}


def test_validate_returns_label_sizes():
  assert unf.WeightSpace(SPEC).validate(_params()) == {"in": 3, "h": 4, "out": 5}


@pytest.mark.parametrize(
  "params, match",
  [
    (_params(h2=6), r"label 'h' has size .* axis"),
    (
      {"dense0": {"kernel": jnp.ones((3, 4))}, "conv": {"kernel": jnp.ones((3, 3, 4, 5))}},
      r"missing leaves \['dense0/bias'\]",
    ),
    ({**_params(), "extra": jnp.ones(2)}, r"extra leaves \['extra'\]"),
    ({**_params(), "conv": {"kernel": jnp.ones((3, 4, 5))}}, r"leaf 'conv/kernel' has rank 3"),
    ({**_params(), "conv": {"kernel": [1.0, 2.0]}}, r"leaf 'conv/kernel' is a list, not an array"),
  ],
)
def test_validate_errors_name_leaf_and_axis(params, match):
  with pytest.raises(ValueError, match=match):
    unf.WeightSpace(SPEC).validate(params)


def test_fixed_sizes_are_checked_once_bound():
  space = unf.WeightSpace(SPEC).with_fixed_sizes(_params())
  bad = {**_params(), "conv": {"kernel": jnp.ones((5, 5, 4, 5))}}
  with pytest.raises(ValueError, match=r"'conv/kernel' axis 0 is fixed with size 3"):
    space.validate(bad)


def test_layers_need_fixed_sizes():
  with pytest.raises(ValueError, match="with_fixed_sizes"):
    unf.basis.plan(unf.WeightSpace(SPEC), unf.WeightSpace(SPEC))


@pytest.mark.parametrize(
  "spec, error, match",
  [
    ({"w": ["a", "b"]}, TypeError, "tuple of labels"),
    ({"w": ("a", 3)}, TypeError, "axis 1"),
    ({"w": "a"}, TypeError, "expected a dict or a tuple"),
    ({}, ValueError, "no leaves"),
  ],
)
def test_bad_specs_raise(spec, error, match):
  with pytest.raises(error, match=match):
    unf.WeightSpace(spec)


def test_spaces_are_hashable_values_and_static_under_jit():
  a, b = unf.WeightSpace(SPEC), unf.WeightSpace(dict(reversed(list(SPEC.items()))))
  assert a == b and hash(a) == hash(b) and a != a.with_fixed_sizes(_params())
  assert "conv/kernel: (None, None, h, out)" in repr(a)
  with pytest.raises(AttributeError):
    a._leaves = ()
  traces = []

  @jax.jit
  def f(space, x):
    traces.append(space)
    return x * len(space.labels)

  assert f(a, 1.0) == 3.0 and f(b, 2.0) == 6.0
  assert len(traces) == 1  # equal spaces share one compilation


def test_permutation_acts_on_features_and_inverts(key):
  space = unf.WeightSpace(SPEC)
  x = jax.tree.map(lambda w: jax.random.normal(key, (*w.shape, 2)), _params())
  sigma = unf.sample_permutation(space, key, space.validate(x, trailing=1))
  moved = unf.permute(space, sigma, x)
  back = unf.permute(space, unf.inverse(sigma), moved)
  assert all(jnp.array_equal(p, q) for p, q in zip(jax.tree.leaves(back), jax.tree.leaves(x)))
  # Axis 'h' of the kernel moved with the bias: the pair stays consistent.
  i = int(sigma["h"][0])
  assert jnp.array_equal(moved["dense0"]["bias"][0], x["dense0"]["bias"][i])
  o = sigma["out"]
  assert jnp.array_equal(moved["conv"]["kernel"][:, :, 0, :], x["conv"]["kernel"][:, :, i, :][:, :, o])
