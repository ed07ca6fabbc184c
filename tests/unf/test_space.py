"""WeightSpace: validation errors name the leaf and axis; spaces are values, written as JSON and matched."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import unf
from tests.unf.spaces import fixed_sizes, specs

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


# --- JSON ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_json_round_trip_is_lossless(data):
  space = unf.WeightSpace(data.draw(specs()))
  space = unf.WeightSpace(space.spec(), fixed_sizes=data.draw(fixed_sizes(space)))
  values = space.to_json()
  back = unf.WeightSpace.from_json(values)
  assert unf.WeightSpace.from_json(json.dumps(values)) == space  # as text too (files written before values)
  assert back == space and hash(back) == hash(space)
  assert [tuple(map(type, p)) for p in back.paths] == [tuple(map(type, p)) for p in space.paths]  # 0 is not "0"
  assert unf.WeightSpace.from_json(back.to_json()) == space


def test_json_format_is_the_project_format():
  space = unf.WeightSpace(
    {"layers": {0: {"kernel": (None, "h")}}, "v": ()}, fixed_sizes={("layers", 0, "kernel"): (3, None)}
  )
  assert space.to_json() == {
    "format": 1,
    "leaves": [
      {"path": ["layers", 0, "kernel"], "axes": [None, "h"], "fixed_sizes": [3, None]},
      {"path": ["v"], "axes": [], "fixed_sizes": None},
    ],
  }
  # Text written without the "format" key (as the RNN zoo's files are) reads the same.
  legacy = json.dumps({"leaves": space.to_json()["leaves"]})
  assert unf.WeightSpace.from_json(legacy) == space


def _leaf(**overrides):
  return {"path": ["w"], "axes": ["a"], "fixed_sizes": None, **overrides}


@pytest.mark.parametrize(
  "text, match",
  [
    ("{leaves: []", r"the text is not JSON"),
    ("[]", r'expected an object with a "leaves" list, got list'),
    ('{"layers": []}', r'expected an object with a "leaves" list'),
    ('{"leaves": {}}', r'"leaves" must be a list, got dict'),
    (json.dumps({"format": 2, "leaves": []}), r"unknown format 2"),
    (json.dumps({"leaves": [], "extra": 1}), r"unknown top-level keys \['extra'\]"),
    (json.dumps({"leaves": []}), r"not a valid weight space: .*no leaves"),
    (json.dumps({"leaves": ["w"]}), r"leaf 0 must be an object, got str"),
    (json.dumps({"leaves": [{"path": ["w"], "axes": ["a"]}]}), r"leaf 0 lacks the keys \['fixed_sizes'\]"),
    (json.dumps({"leaves": [_leaf(size=3)]}), r"leaf 0 has unknown keys \['size'\]"),
    (json.dumps({"leaves": [_leaf(), _leaf(path=[])]}), r'leaf 1: "path" must be a non-empty list'),
    (json.dumps({"leaves": [_leaf(path=["w", 1.5])]}), r'leaf 0: "path" must be .* got list'),
    (json.dumps({"leaves": [_leaf(path=["w", True])]}), r'leaf 0: "path" must be'),
    (json.dumps({"leaves": [_leaf(axes="a")]}), r'leaf 0: "axes" must be a list of labels'),
    (json.dumps({"leaves": [_leaf(axes=["a", 0])]}), r'leaf 0: "axes" must be a list of labels'),
    (json.dumps({"leaves": [_leaf(fixed_sizes=[2.0])]}), r'leaf 0: "fixed_sizes" must be null or a list of ints'),
    (json.dumps({"leaves": [_leaf(fixed_sizes=[2])]}), r"not a valid weight space: fixed_sizes for leaf 'w'"),
    (json.dumps({"leaves": [_leaf(), _leaf()]}), r"leaf 1 path 'w' clashes with an earlier leaf at 'w'"),
    (json.dumps({"leaves": [_leaf(), _leaf(path=["w", "k"])]}), r"leaf 1 path 'w/k' clashes .* at 'w'"),
    (json.dumps({"leaves": [_leaf(path=["w", "k"]), _leaf()]}), r"leaf 1 path 'w' clashes .* at 'w'"),
  ],
)
def test_from_json_names_what_is_wrong(text, match):
  with pytest.raises(ValueError, match=match):
    unf.WeightSpace.from_json(text)


# --- match -----------------------------------------------------------------------------


def _mlp_params(indices):
  sizes = [3, 4, 5, 2]
  return {
    "layers": {
      index: {"kernel": jnp.ones((sizes[k], sizes[k + 1])), "bias": jnp.ones(sizes[k + 1])}
      for k, index in enumerate(indices)
    }
  }


def test_match_ignores_paths():
  # nnx.Sequential puts activations between layers: (0, 2, 4) against (0, 1, 2).
  a, b = unf.mlp_space(_mlp_params((0, 1, 2))), unf.mlp_space(_mlp_params((0, 2, 4)))
  assert a != b
  assert a.match(b) == {label: label for label in a.labels}


def test_match_finds_the_renaming():
  a = unf.WeightSpace({"w": ("in", "h", None), "v": ("h", "h"), "s": ()}, fixed_sizes={("w",): (None, None, 3)})
  b = unf.WeightSpace({"x": ("p", "q", None), "y": ("q", "q"), "t": ()})  # fixed size unknown: matches 3
  assert set(a.paths) & set(b.paths) == set()
  # Leaves in path order: s, v, w against t, x, y.
  with pytest.raises(ValueError, match=r"leaf 1: 'v' has axes \('h', 'h'\) but 'x' has axes \('p', 'q', None\)"):
    a.match(b)
  b = unf.WeightSpace({"t": (), "x": ("q", "q"), "y": ("p", "q", None)})
  assert a.match(b) == {"h": "q", "in": "p"}
  assert b.match(a) == {"q": "h", "p": "in"}
  assert a.match(a) == {"h": "h", "in": "in"}


@pytest.mark.parametrize(
  "spec_other, fixed_other, match",
  [
    ({"a": ("x",)}, None, r"3 leaves against 1"),
    ({"a": ("x", "y"), "b": ("y", "z"), "c": ("z",), "d": ()}, None, r"3 leaves against 4"),
    (
      {"a": ("x", "y"), "b": ("y", "z", "z"), "c": (None,)},
      None,
      r"leaf 1: 'b' has axes \('h', 'out'\) but 'b' has axes \('y', 'z', 'z'\)",
    ),
    (
      {"a": ("x", "y"), "b": ("y", "z"), "c": ("z",)},
      None,
      r"leaf 2: 'c' has axes \(None,\) but 'c' has axes \('z',\)",
    ),
    (
      {"a": ("x", "y"), "b": ("y", "z"), "c": (None,)},
      {("c",): (5,)},
      r"leaf 2: 'c' has fixed sizes \(2,\) but 'c' has \(5,\)",
    ),
    (
      {"a": ("x", "y"), "b": ("z", "z"), "c": (None,)},
      None,
      r"label 'h' would be both 'y' and 'z' \(leaf 1: 'b' axis 0",
    ),
    (
      {"a": ("x", "x"), "b": ("x", "z"), "c": (None,)},
      None,
      r"labels 'in' and 'h' would both be 'x' \(leaf 0: 'a' axis 1",
    ),
  ],
)
def test_match_names_the_first_difference(spec_other, fixed_other, match):
  space = unf.WeightSpace({"a": ("in", "h"), "b": ("h", "out"), "c": (None,)}, fixed_sizes={("c",): (2,)})
  with pytest.raises(ValueError, match=match):
    space.match(unf.WeightSpace(spec_other, fixed_sizes=fixed_other))


def test_match_needs_a_weight_space():
  with pytest.raises(TypeError, match="expects a WeightSpace, got dict"):
    unf.WeightSpace(SPEC).match(SPEC)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_match_recovers_a_random_renaming(data):
  space = unf.WeightSpace(data.draw(specs()))
  names = data.draw(st.permutations(["z", "y", "x", "q", "b", "a"]))
  renaming = dict(zip(space.labels, names))
  renamed = unf.WeightSpace(
    {f"p{i:02d}": tuple(None if a is None else renaming[a] for a in axes) for i, axes in enumerate(space.axes)}
  )
  assert space.match(renamed) == {a: renaming[a] for a in space.labels}


def test_relaxed_to_reads_fixed_axes_as_the_references_labels():
  fixed = unf.WeightSpace({"a": (None, "h"), "b": ("h", None), "c": (None,)}).with_fixed_sizes(
    {"a": np.zeros((3, 4)), "b": np.zeros((4, 5)), "c": np.zeros(7)}
  )
  reference = unf.WeightSpace({"a": ("x", "h"), "b": ("h", "out"), "c": (None,)})
  relaxed = fixed.relaxed_to(reference)
  # "h" is taken here by the hidden label, so the reference's input label keeps its own name "x"; "out" too;
  # the axis the reference fixes stays fixed, with its size.
  assert relaxed.axes == (("x", "h"), ("h", "out"), (None,))
  assert relaxed.fixed_sizes == (None, None, (7,))
  assert relaxed.match(reference) == {"x": "x", "h": "h", "out": "out"}
  # A reference label whose name this space already uses for another label is primed.
  clash = unf.WeightSpace({"a": (None, "x")}).relaxed_to(unf.WeightSpace({"a": ("x", "y")}))
  assert clash.axes == (("x'", "x"),)
  assert reference.relaxed_to(reference) is reference
  with pytest.raises(ValueError, match="same leaves"):
    fixed.relaxed_to(unf.WeightSpace({"a": ("x", "h")}))


# --- subspace --------------------------------------------------------------------------


class _BatchNormNet(linen.Module):
  """Dense -> BatchNorm (inference mode) -> relu -> Dense: its variables hold "params" and "batch_stats"."""

  @linen.compact
  def __call__(self, x):
    x = linen.BatchNorm(use_running_average=True)(linen.Dense(4)(x))
    return linen.Dense(2)(linen.relu(x))


def test_subspace_of_an_inferred_space_with_batch_stats_fits_the_params_alone(key):
  model = _BatchNormNet()
  x = jax.random.normal(key, (5, 3))
  variables = model.init(jax.random.key(0), x)
  space = unf.infer_space(model.apply, variables, x)
  params_space = space.subspace("params")
  assert params_space == unf.WeightSpace(space.spec()["params"]).with_fixed_sizes(variables["params"])
  assert params_space.labels == space.labels == ("params/Dense_0/kernel:1",)  # the hidden label, shared with BN
  assert params_space.fixed_sizes[params_space.paths.index(("Dense_0", "kernel"))] == (3, None)
  assert params_space.validate(variables["params"]) == {"params/Dense_0/kernel:1": 4}
  features = jax.tree.map(lambda w: w[..., None], variables["params"])  # e.g. gradients, one feature each
  with pytest.raises(ValueError, match=r"missing leaves \['batch_stats/BatchNorm_0/mean'"):
    unf.EquivariantLinear(space, space, 1, 2, rngs=nnx.Rngs(0))(features)  # why subspace is needed
  out = unf.EquivariantLinear(params_space, params_space, 1, 2, rngs=nnx.Rngs(0))(features)
  assert jax.tree.map(jnp.shape, out) == jax.tree.map(lambda w: (*w.shape, 2), variables["params"])


def test_subspace_keeps_labels_and_fixed_sizes_of_a_nested_path():
  space = unf.WeightSpace(SPEC).with_fixed_sizes(_params())
  assert space.subspace() is space
  conv = space.subspace("conv")
  assert conv == unf.WeightSpace({"kernel": (None, None, "h", "out")}, fixed_sizes={("kernel",): (3, 3, None, None)})
  layers = unf.WeightSpace({"layers": {0: {"kernel": ("in", "h")}, 1: {"kernel": ("h", "out")}}})
  assert layers.subspace("layers", 1) == unf.WeightSpace({"kernel": ("h", "out")})


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_subspace_is_the_space_of_the_sub_tree(data):
  spec = data.draw(specs())
  space = unf.WeightSpace(spec, fixed_sizes=data.draw(fixed_sizes(unf.WeightSpace(spec))))
  for key, node in spec.items():
    if isinstance(node, tuple):
      continue
    fixed = {p[1:]: sizes for p, sizes in zip(space.paths, space.fixed_sizes) if p[0] == key and sizes is not None}
    assert space.subspace(key) == unf.WeightSpace(node, fixed_sizes=fixed)


@pytest.mark.parametrize(
  "path, error, match",
  [
    (("parms",), ValueError, r"no key 'parms' at '<root>'; the keys there are \['conv', 'dense0'\]"),
    (("dense0", "kernal"), ValueError, r"no key 'kernal' at 'dense0'; the keys there are \['bias', 'kernel'\]"),
    (("dense0", "kernel"), ValueError, r"'dense0/kernel' is a leaf with axes \('in', 'h'\), not a sub-tree"),
    (("dense0", "kernel", 0), ValueError, r"'dense0/kernel' is a leaf, so it has no key 0"),
    ((("dense0",),), TypeError, r"separate str or int arguments"),
  ],
)
def test_subspace_names_the_keys_that_are_there(path, error, match):
  with pytest.raises(error, match=match):
    unf.WeightSpace(SPEC).subspace(*path)
