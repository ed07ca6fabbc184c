"""The ``fixed_axes`` option: long fixed axes get labels of their own, sound for the true group and counted exactly.

A layer built on a space whose long fixed axes carry new labels is equivariant to a larger group, which
contains the true one: checked here with :func:`unf.testing.assert_equivariant` on the *true* space, with a
negative control (a fixed axis tied to a true label) that the same check must reject. The rule that picks the
axes is checked on hand-written leaves, and :func:`unf.parameter_count` against the built layers.
"""

import functools

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unf
from tests.unf.spaces import SPACES, bound, fixed_sizes, sizes_for, specs
from unf import linear
from unf.basis import label_fixed_axes
from unf.testing import assert_equivariant, assert_invariant, random_features


def _space(spec, sizes):
  """``spec`` with the fixed sizes ``{path: sizes of its fixed axes, in order}``."""
  space = unf.WeightSpace(spec)
  fixed = {}
  for path, axes in zip(space.paths, space.axes):
    if path in sizes:
      lengths = iter(sizes[path])
      fixed[path] = tuple(next(lengths) if a is None else None for a in axes)
  return unf.WeightSpace(spec, fixed_sizes=fixed)


def _labelled_axes(space, fixed_axes):
  """Per leaf path, the positions of the fixed axes that ``fixed_axes`` labels."""
  relabelled = label_fixed_axes(space, space, fixed_axes).space_in
  return {
    path: tuple(i for i, (a, b) in enumerate(zip(old, new)) if a is None and b is not None)
    for path, old, new in zip(space.paths, space.axes, relabelled.axes)
  }


# (id, leaf axes, fixed sizes, fixed_axes, the positions labelled)
RULE_CASES = [
  ("kernel-3x3-mixed", (None, None, "c", "h"), (3, 3), "auto", ()),
  ("kernel-3x3-1-8", (None, None, None, None), (3, 3, 1, 8), "auto", (3,)),  # the output channels go first
  ("flatten-dense", (None, "h"), (784,), "auto", (0,)),
  ("10-class-head", ("h", None), (10,), "auto", ()),
  ("11-class-head", ("h", None), (11,), "auto", (1,)),
  ("rgb-kernel", (None, None, None, "h"), (3, 3, 3), "auto", (2,)),  # the last of equal lengths first
  ("stem-7x7x3", (None, None, None, "h"), (7, 7, 3), "auto", (0, 1)),
  ("mix", (None, "h"), (784,), "mix", ()),
  ("label-keeps-length-1", (None, None, None, "h"), (3, 3, 1), "label", (0, 1)),
  ("int-at-the-limit", (None, "h"), (784,), 784, ()),
  ("int-below", (None, "h"), (784,), 783, (0,)),
]


@pytest.mark.parametrize(
  ("axes", "lengths", "fixed_axes", "expected"), [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES]
)
def test_the_longest_fixed_axes_get_labels_until_the_rest_is_small(axes, lengths, fixed_axes, expected):
  space = _space({"w": axes}, {("w",): lengths})
  assert _labelled_axes(space, fixed_axes) == {("w",): expected}


def _init(key, space, fixed_axes):
  return linear.init(key, space, space, 4, 1, fixed_axes=fixed_axes)


def test_nothing_labelled_keeps_the_spaces_and_the_params():
  """Where no leaf has more than 10 fixed coordinates, "auto" is "mix": the same spaces, params and names."""
  cnn = _space(SPACES["cnn"], {("conv0", "kernel"): (3, 3), ("conv1", "kernel"): (3, 3)})
  for space in [cnn, *(bound(spec) for spec in SPACES.values())]:
    labelled = label_fixed_axes(space, space, "auto")
    # Equal spaces (label_fixed_axes is cached: an equal space from an earlier call may come back).
    assert labelled.space_in == space and labelled.space_out == space and labelled.sizes == ()
    shapes = {
      f: {
        name: shape.shape
        for name, shape in jax.eval_shape(
          functools.partial(_init, space=space, fixed_axes=f), jax.random.key(0)
        ).items()
      }
      for f in ("auto", "mix")
    }
    assert shapes["auto"] == shapes["mix"]


def test_new_labels_are_shared_by_path_and_never_taken():
  space_in = _space({"w": (None, "h"), "v": (None,)}, {("w",): (50,), ("v",): (20,)})
  space_out = _space({"w": (None, "h"), "v": (None,), "u": (None,)}, {("w",): (50,), ("v",): (30,), ("u",): (50,)})
  new_in, new_out, sizes = label_fixed_axes(space_in, space_out, "auto")
  assert new_in.axes == (("v[0]",), ("w[0]", "h"))
  # w keeps its label across the layer (same path, same length); v has another length at the output.
  assert new_out.axes == (("u[0]",), ("v[0]~1",), ("w[0]", "h"))
  assert dict(sizes) == {"w[0]": 50, "v[0]": 20, "v[0]~1": 30, "u[0]": 50}
  # A user's label of the same name is left alone.
  taken = _space({"w": (None, "w[0]")}, {("w",): (50,)})
  assert label_fixed_axes(taken, taken).space_in.axes == (("w[0]~1", "w[0]"),)


@pytest.mark.parametrize("fixed_axes", ["bounded", 0, -3, True, 2.5, None])
def test_bad_fixed_axes_are_refused(fixed_axes):
  space = _space({"w": (None, "h")}, {("w",): (50,)})
  with pytest.raises(ValueError, match=r"fixed_axes=.*choose one of \('auto', 'mix', 'label'\) or a positive int"):
    unf.parameter_count(space, space, 2, 1, fixed_axes=fixed_axes)


# The end of a small CNN, as infer_space reads one whose last conv's channels meet a flatten: fixed axes of 2x2
# kernel positions (mixed), 12 conv outputs and 24 flattened positions (labelled), and 11 classes (labelled).
FLATTENED = _space(
  {
    "conv": {"kernel": (None, None, "c", None), "bias": (None,)},
    "dense": {"kernel": (None, "h"), "bias": ("h",)},
    "head": {"kernel": ("h", None), "bias": (None,)},
  },
  {
    ("conv", "kernel"): (2, 2, 12),
    ("conv", "bias"): (12,),
    ("dense", "kernel"): (24,),
    ("head", "kernel"): (11,),
    ("head", "bias"): (11,),
  },
)
SIZES = {"c": 3, "h": 4}


@pytest.mark.parametrize("fixed_axes", ["auto", "label", 20])
def test_bounded_layer_is_equivariant_to_the_true_group(fixed_axes, key):
  x = random_features(FLATTENED, SIZES, 2, key)
  params = linear.init(key, FLATTENED, FLATTENED, 2, 3, dtype=jnp.float64, fixed_axes=fixed_axes)
  params = {
    k: v + 0.3 * jax.random.normal(jax.random.key(i), v.shape, v.dtype) for i, (k, v) in enumerate(params.items())
  }
  assert any(path for path in _labelled_axes(FLATTENED, fixed_axes).values())  # not vacuous: something is labelled
  fn = jax.jit(lambda t: linear.apply(params, t, FLATTENED, FLATTENED, fixed_axes=fixed_axes))
  assert fn(x)["dense"]["kernel"].shape == (24, 4, 3)
  assert_equivariant(fn, FLATTENED, key, x)


def test_negative_control_a_fixed_axis_tied_to_a_true_label_is_caught(key):
  """A relabelling that is not a larger group (a fixed axis given the true label "h") breaks equivariance."""
  true = _space({"w": (None, "h"), "b": ("h",)}, {("w",): (4,)})
  wrong = unf.WeightSpace({"w": ("h", "h"), "b": ("h",)})
  x = random_features(true, {"h": 4}, 2, key)
  params = linear.init(key, wrong, wrong, 2, 2, dtype=jnp.float64)
  with pytest.raises(AssertionError, match="not equivariant"):
    assert_equivariant(jax.jit(lambda t: linear.apply(params, t, wrong, wrong)), true, key, x)
  # The same check passes the layer that gives the axis a label of its own.
  params = linear.init(key, true, true, 2, 2, dtype=jnp.float64, fixed_axes="label")
  assert_equivariant(jax.jit(lambda t: linear.apply(params, t, true, true, fixed_axes="label")), true, key, x)


def test_bounded_unf_and_pool(key):
  x = random_features(FLATTENED, SIZES, 2, key)
  inv = unf.UNF(FLATTENED, 2, 3, hidden=(4,), invariant=True, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
  assert_invariant(nnx.jit(lambda t: inv(t)), FLATTENED, key, x)
  net = unf.UNF(FLATTENED, 2, 1, hidden=(4,), rngs=nnx.Rngs(0), param_dtype=jnp.float64)
  assert_equivariant(nnx.jit(lambda t: net(t)), FLATTENED, key, x)
  # The pooled vector no longer grows with the long axes: 24 flattened positions are one mean, not 24 channels.
  assert unf.InvariantPool(FLATTENED).output_size(1) < unf.InvariantPool(FLATTENED, fixed_axes="mix").output_size(1)
  assert unf.num_parameters(net) < unf.num_parameters(
    unf.UNF(FLATTENED, 2, 1, hidden=(4,), rngs=nnx.Rngs(0), fixed_axes="mix")
  )


@pytest.mark.parametrize("fixed_axes", ["auto", "mix", "label", 20])
def test_parameter_count_is_the_built_layers(fixed_axes):
  space_out = _space({"dense": {"kernel": (None, "h")}, "s": ()}, {("dense", "kernel"): (24,)})
  for space_in, out in [(FLATTENED, FLATTENED), (FLATTENED, space_out)]:
    layer = unf.EquivariantLinear(space_in, out, 3, 2, rngs=nnx.Rngs(0), fixed_axes=fixed_axes)
    assert unf.parameter_count(space_in, out, 3, 2, fixed_axes=fixed_axes) == unf.num_parameters(layer)
  # Labelling removes the quadratic cost: at 24 flattened positions it is already a third of mixing's.
  assert 3 * unf.parameter_count(FLATTENED, FLATTENED, 32, 1) < unf.parameter_count(
    FLATTENED, FLATTENED, 32, 1, fixed_axes="mix"
  )


def test_parameter_count_does_not_grow_with_a_labelled_axis():
  counts = {}
  for length in (24, 784, 100_000):
    space = _space({"w": (None, "h"), "b": ("h",)}, {("w",): (length,)})
    counts[length] = (
      unf.parameter_count(space, space, 32, 1),
      unf.parameter_count(space, space, 32, 1, fixed_axes="mix"),
    )
  assert len({auto for auto, _ in counts.values()}) == 1
  assert counts[784][1] > 1000 * counts[784][0]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_spaces_bounded_equivariant_and_counted(data, key):
  spec = data.draw(specs(keys=st.sampled_from(["kernel", "bias", "w"]), max_entries=2))
  space = unf.WeightSpace(spec)
  space = unf.WeightSpace(spec, fixed_sizes=data.draw(fixed_sizes(space, known=True)))
  fixed_axes = data.draw(st.sampled_from(["auto", "label", 1, 2, 5]))
  x = random_features(space, sizes_for(space, base=2), 2, key)
  params = linear.init(key, space, space, 2, 2, dtype=jnp.float64, fixed_axes=fixed_axes)
  assert sum(v.size for v in params.values()) == unf.parameter_count(space, space, 2, 2, fixed_axes=fixed_axes)
  assert_equivariant(jax.jit(lambda t: linear.apply(params, t, space, space, fixed_axes=fixed_axes)), space, key, x)
  pool = unf.InvariantPool(space, fixed_axes=fixed_axes)
  assert pool(x).shape == (pool.output_size(2),)
  assert_invariant(pool, space, key, x)
