"""The rules of unf.infer_space for pooling, cumulative ops, full-span gathers and concatenate-then-split.

Each rule has a soundness test (every label it finds passes check_symmetry on its own, and the case the rule
must not tie through gives no label, with a hand-written label that check_symmetry rejects) and a completeness
test (the expected partition of the params' axes on a small model).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import unf
from tests.unf.test_inference import _assert_same_partition
from unf.symmetry import SymmetryError, check_symmetry

F64 = jnp.float64
RNG = np.random.default_rng(0)


def _random(tree, seed=0):
  """Every leaf of ``tree`` (arrays or shapes) replaced by a float64 normal draw of its shape."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda x: jnp.asarray(0.5 * rng.standard_normal(np.shape(x) if hasattr(x, "shape") else x), F64),
    tree,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def _assert_each_label_is_a_symmetry(apply, params, space, *inputs):
  assert space.labels, space
  for label in space.labels:
    check_symmetry(apply, params, space, *inputs, labels=label)


def _assert_label_is_refused(apply, params, spec, *inputs):
  """A hand-written ``spec`` that labels what the rule leaves fixed: check_symmetry must reject it."""
  with pytest.raises(SymmetryError):
    check_symmetry(apply, params, unf.WeightSpace(spec).with_fixed_sizes(params), *inputs, labels="claimed")


# --- pooling: reduce_window_sum / max / min and the generic reduce_window ---------------------------------------


def _conv(x, kernel, bias):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


POOLS = {
  "avg_2x2": lambda y: nn.avg_pool(y, (2, 2), (2, 2)),
  "avg_same_stride2_no_pad_count": lambda y: nn.avg_pool(y, (3, 3), (2, 2), "SAME", count_include_pad=False),
  "max_same_stride2": lambda y: nn.max_pool(y, (3, 3), (2, 2), "SAME"),
  "max_explicit_padding": lambda y: nn.max_pool(y, (2, 2), padding=((1, 1), (0, 1))),
  "min": lambda y: jax.lax.reduce_window(y, jnp.inf, jax.lax.min, (1, 2, 2, 1), (1, 1, 1, 1), "VALID"),
  "product": lambda y: jax.lax.reduce_window(y, 1.0, jax.lax.mul, (1, 2, 2, 1), (1, 2, 1, 1), "VALID"),
  "dilated": lambda y: jax.lax.reduce_window(
    y, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 1, 1, 1), "VALID", base_dilation=(1, 2, 1, 1)
  ),
}
CONV_PARAMS = {"c0": {"kernel": (3, 3, 2, 3), "bias": (3,)}, "c1": {"kernel": (3, 3, 3, 4), "bias": (4,)}}


def _pooled_cnn(pool, p, x):
  h = pool(jnp.tanh(_conv(x, p["c0"]["kernel"], p["c0"]["bias"])))
  h = jnp.tanh(_conv(h, p["c1"]["kernel"], p["c1"]["bias"]))
  return h.mean(axis=(1, 2)) @ p["head"]


@pytest.mark.parametrize("pool", POOLS.values(), ids=POOLS.keys())
def test_pooling_over_positions_keeps_the_channel_labels(pool):
  params = _random({**CONV_PARAMS, "head": (4, 2)})
  x = jnp.asarray(RNG.standard_normal((2, 6, 6, 2)))
  apply = jax.jit(functools.partial(_pooled_cnn, pool))
  space = unf.infer_space(apply, params, x)
  assert space.spec() == {
    "c0": {"kernel": (None, None, None, "c0/kernel:3"), "bias": ("c0/kernel:3",)},
    "c1": {"kernel": (None, None, "c0/kernel:3", "c1/kernel:3"), "bias": ("c1/kernel:3",)},
    "head": ("c1/kernel:3", None),
  }
  _assert_each_label_is_a_symmetry(apply, params, space, x)


def test_pooling_across_channels_fixes_them():
  params = _random({**CONV_PARAMS, "head": (4, 2)})
  params["c1"]["kernel"] = params["c1"]["kernel"][:, :, :2]  # the pooled map has 2 channels
  x = jnp.asarray(RNG.standard_normal((2, 6, 6, 2)))
  pool = lambda y: jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 1, 1, 2), (1, 1, 1, 1), "VALID")  # noqa: E731
  apply = jax.jit(functools.partial(_pooled_cnn, pool))
  space = unf.infer_space(apply, params, x)
  assert space.spec()["c0"]["kernel"][3] is None
  assert "pooling window slides along axis 3" in unf.explain_space(apply, params, x)["c0/kernel"][3]
  claimed = {**space.spec(), "c0": {"kernel": (None, None, None, "claimed"), "bias": ("claimed",)}}
  _assert_label_is_refused(apply, params, claimed, x)


class LinenCNN(nn.Module):
  """flax's MNIST example CNN at tiny widths: conv, avg_pool, conv, avg_pool, flatten, two Dense layers."""

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(nn.relu(nn.Conv(3, (3, 3), param_dtype=F64)(x)), (2, 2), (2, 2))
    x = nn.avg_pool(nn.relu(nn.Conv(4, (3, 3), param_dtype=F64)(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(5, param_dtype=F64)(x.reshape((x.shape[0], -1))))
    return nn.Dense(2, param_dtype=F64)(x)


class LinenResNetStem(nn.Module):
  """A ResNet's stem and first residual block at tiny widths: conv, max_pool, a residual block, global mean."""

  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3), param_dtype=F64)(x)), (3, 3), (2, 2), "SAME")
    y = nn.relu(nn.Conv(3, (3, 3), param_dtype=F64, name="inner")(x))
    y = nn.Conv(4, (3, 3), use_bias=False, param_dtype=F64, name="outer")(y)
    return nn.Dense(2, param_dtype=F64)(nn.relu(x + y).mean(axis=(1, 2)))


def test_linen_cnn_with_avg_pool_labels_its_conv_channels():
  x = jnp.asarray(RNG.standard_normal((2, 8, 8, 1)))
  variables = _random(jax.eval_shape(LinenCNN().init, jax.random.key(0), x))
  apply = jax.jit(LinenCNN().apply)
  space = unf.infer_space(apply, variables, x)
  spec = space.spec()["params"]
  conv = spec["Conv_0"]["kernel"][3]
  dense = spec["Dense_0"]["kernel"][1]
  assert spec["Conv_0"] == {"kernel": (None, None, None, conv), "bias": (conv,)}
  # The flatten merges Conv_1's channels with positions into Dense_0's input axis: one label cannot say that.
  assert spec["Conv_1"] == {"kernel": (None, None, conv, None), "bias": (None,)}
  assert spec["Dense_0"] == {"kernel": (None, dense), "bias": (dense,)}
  assert spec["Dense_1"] == {"kernel": (dense, None), "bias": (None,)}
  assert conv != dense and None not in (conv, dense)
  _assert_each_label_is_a_symmetry(apply, variables, space, x)


def test_linen_resnet_stem_with_max_pool_labels_the_residual_channels():
  x = jnp.asarray(RNG.standard_normal((2, 8, 8, 3)))
  variables = _random(jax.eval_shape(LinenResNetStem().init, jax.random.key(0), x))
  apply = jax.jit(LinenResNetStem().apply)
  space = unf.infer_space(apply, variables, x)
  spec = space.spec()["params"]
  residual, inner = spec["Conv_0"]["kernel"][3], spec["inner"]["kernel"][3]
  assert spec["Conv_0"] == {"kernel": (None, None, None, residual), "bias": (residual,)}
  assert spec["inner"] == {"kernel": (None, None, residual, inner), "bias": (inner,)}
  assert spec["outer"] == {"kernel": (None, None, inner, residual)}
  assert spec["Dense_0"] == {"kernel": (residual, None), "bias": (None,)}
  assert residual != inner and None not in (residual, inner)
  _assert_each_label_is_a_symmetry(apply, variables, space, x)


# --- cumulative ops along a non-param axis --------------------------------------------------------------------

CUMULATIVE = {
  "cumsum": jnp.cumsum,
  "cumprod": jnp.cumprod,
  "cummax": jax.lax.cummax,
  "cummin": jax.lax.cummin,
  "cumlogsumexp": jax.lax.cumlogsumexp,
}


@pytest.mark.parametrize("op", CUMULATIVE.values(), ids=CUMULATIVE.keys())
def test_cumulative_ops_along_time_keep_the_hidden_label_and_along_it_fix_it(op):
  params = _random({"w0": (3, 4), "w1": (4, 2)})
  x = jnp.asarray(RNG.standard_normal((2, 5, 3)))

  def apply(axis, p, x):
    return op(jnp.tanh(x @ p["w0"]), axis=axis) @ p["w1"]

  along_time = functools.partial(apply, 1)
  space = unf.infer_space(along_time, params, x)
  assert space.spec() == {"w0": (None, "w0:1"), "w1": ("w0:1", None)}
  _assert_each_label_is_a_symmetry(along_time, params, space, x)
  along_hidden = functools.partial(apply, 2)
  assert unf.infer_space(along_hidden, params, x).labels == ()
  _assert_label_is_refused(along_hidden, params, {"w0": (None, "claimed"), "w1": ("claimed", None)}, x)


# --- gathers and dynamic slices that span an axis ------------------------------------------------------------


def _shifted(roll_axis, p, x, shifts):
  """A bidirectional RNN's per-sequence realignment: each sequence of hidden states rolled by its own shift."""
  h = jnp.tanh(x @ p["w0"])
  h = jax.vmap(lambda seq, shift: jnp.roll(seq, shift, axis=roll_axis))(h, shifts)
  return h @ p["w1"]


SPANNING = {
  "vmapped_roll": functools.partial(_shifted, 0),
  "take_along_time": lambda p, x, shifts: jnp.take(jnp.tanh(x @ p["w0"]), shifts, axis=1) @ p["w1"],
  "dynamic_slice_of_time": lambda p, x, shifts: (
    jax.lax.dynamic_slice_in_dim(jnp.tanh(x @ p["w0"]), shifts[0], 3, axis=1) @ p["w1"]
  ),
}


@pytest.mark.parametrize("apply", SPANNING.values(), ids=SPANNING.keys())
def test_a_gather_whose_slice_spans_the_hidden_axis_keeps_its_label(apply):
  params = _random({"w0": (3, 4), "w1": (4, 2)})
  x, shifts = jnp.asarray(RNG.standard_normal((2, 5, 3))), jnp.array([1, 3])
  space = unf.infer_space(apply, params, x, shifts)
  assert space.spec() == {"w0": (None, "w0:1"), "w1": ("w0:1", None)}
  _assert_each_label_is_a_symmetry(apply, params, space, x, shifts)


def test_a_roll_along_the_hidden_axis_fixes_it():
  params = _random({"w0": (3, 4), "w1": (4, 2)})
  x, shifts = jnp.asarray(RNG.standard_normal((2, 5, 3))), jnp.array([1, 3])
  apply = functools.partial(_shifted, 1)
  assert unf.infer_space(apply, params, x, shifts).labels == ()
  _assert_label_is_refused(apply, params, {"w0": (None, "claimed"), "w1": ("claimed", None)}, x, shifts)


# --- concatenate, then split or slice at the blocks -----------------------------------------------------------


def test_concatenate_then_split_at_the_blocks_keeps_each_blocks_label():
  params = _random({"a": (3, 2), "b": (3, 4), "a_out": (2, 2), "b_out": (4, 2)})
  x = jnp.asarray(RNG.standard_normal((5, 3)))

  def apply(p, x):
    h = jnp.tanh(x @ jnp.concatenate([p["a"], p["b"]], axis=1))
    first, second = jnp.split(h, [2], axis=1)
    return first @ p["a_out"] + second @ p["b_out"]

  space = unf.infer_space(apply, params, x)
  assert space.spec() == {"a": (None, "a:1"), "b": (None, "b:1"), "a_out": ("a:1", None), "b_out": ("b:1", None)}
  _assert_each_label_is_a_symmetry(apply, params, space, x)


@pytest.mark.parametrize(
  "cut",
  [lambda h: h[:, :3] @ jnp.ones((3, 2)), lambda h: jnp.split(h, 2, axis=1)[0] @ jnp.ones((3, 2))],
  ids=["slice", "split"],
)
def test_a_cut_across_a_block_fixes_the_concatenated_labels(cut):
  params = _random({"a": (3, 2), "b": (3, 4)})
  x = jnp.asarray(RNG.standard_normal((5, 3)))
  apply = lambda p, x: cut(jnp.tanh(x @ jnp.concatenate([p["a"], p["b"]], axis=1)))  # noqa: E731
  assert unf.infer_space(apply, params, x).labels == ()
  _assert_label_is_refused(apply, params, {"a": (None, None), "b": (None, "claimed")}, x)


class LinenLSTM(nn.Module):
  cell_type: type

  @nn.compact
  def __call__(self, x):
    cell = self.cell_type(4, param_dtype=F64, parent=None)  # unnamed until RNN adopts it: "cell" in both trees
    return nn.Dense(2, param_dtype=F64)(nn.RNN(cell, name="rnn")(x)[:, -1])


def test_linen_optimized_lstm_cell_gets_the_hidden_label_of_lstm_cell():
  x = jnp.asarray(RNG.standard_normal((2, 5, 3)))
  variables = _random(jax.eval_shape(LinenLSTM(nn.OptimizedLSTMCell).init, jax.random.key(0), x))
  plain = jax.jit(LinenLSTM(nn.LSTMCell).apply)
  optimized = jax.jit(LinenLSTM(nn.OptimizedLSTMCell).apply)
  same_tree = jax.eval_shape(LinenLSTM(nn.LSTMCell).init, jax.random.key(0), x)
  assert jax.tree.structure(variables) == jax.tree.structure(same_tree)
  expected = unf.infer_space(plain, variables, x)
  hidden = expected.spec()["params"]["rnn"]["cell"]["hf"]["kernel"][0]
  assert hidden is not None and expected.spec()["params"]["Dense_0"]["kernel"] == (hidden, None)
  space = unf.infer_space(optimized, variables, x)  # concatenates the gates' kernels, then splits them
  _assert_same_partition(space, expected)
  _assert_each_label_is_a_symmetry(optimized, variables, space, x)
  _assert_each_label_is_a_symmetry(optimized, variables, expected, x)
