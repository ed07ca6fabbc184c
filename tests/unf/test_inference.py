"""unf.infer_space reads the weight space of a model from its jaxpr: equal to the builders' where they are right,
right where they are wrong, and never a label that is not a symmetry."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx
from flax.core import meta
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unf
from tests.unf.test_builders import FUSED_GATES, _apply, _apply_split_rnn, _cnn, _mlp, _rnn, _split, _transformer
from unf.builders import cnn_space, mlp_space, rnn_space, transformer_space
from unf.symmetry import SymmetryError, check_symmetry

F64 = jnp.float64


def _partition(space):
  """The space as a partition of its param axes: {frozenset of (path, axis)} for labels, and the fixed axes."""
  classes: dict = {}
  fixed = set()
  for path, axes in zip(space.paths, space.axes):
    for axis, label in enumerate(axes):
      if label is None:
        fixed.add((path, axis))
      else:
        classes.setdefault(label, set()).add((path, axis))
  return {frozenset(c) for c in classes.values()}, fixed


def _assert_same_partition(inferred, expected):
  assert _partition(inferred) == _partition(expected), f"inferred\n{inferred}\nbuilder\n{expected}"


# --- the builders' models -------------------------------------------------------------


@pytest.mark.parametrize(
  "model, builder, apply",
  [
    (_mlp, mlp_space, _apply),
    (_cnn, cnn_space, _apply),
    (lambda: _rnn(nnx.SimpleCell), rnn_space, _apply),
    (lambda: _rnn(nnx.LSTMCell), rnn_space, _apply),
    (lambda: _rnn(nnx.GRUCell), rnn_space, _apply_split_rnn),
    (lambda: _rnn(nnx.OptimizedLSTMCell), rnn_space, _apply_split_rnn),
    (_transformer, transformer_space, _apply),
  ],
  ids=["mlp", "cnn", "simple_rnn", "lstm", "gru_split", "optimized_lstm_split", "transformer"],
)
def test_equals_the_builders_space_on_their_models(model, builder, apply):
  graphdef, params, inputs = model()
  inferred = unf.infer_space(functools.partial(apply, graphdef), params, inputs)
  _assert_same_partition(inferred, builder(params, io="fixed"))
  assert inferred.fixed_sizes == builder(params, io="fixed").fixed_sizes


def test_permutable_io_labels_the_axes_that_meet_the_data_and_outputs():
  graphdef, params, inputs = _mlp()
  inferred = unf.infer_space(functools.partial(_apply, graphdef), params, inputs, io="permutable")
  _assert_same_partition(inferred, mlp_space(params, io="permutable"))
  with pytest.raises(ValueError, match="io must be one of"):
    unf.infer_space(functools.partial(_apply, graphdef), params, inputs, io="free")


def test_labels_are_named_after_the_param_axis_the_program_uses_first():
  graphdef, params, inputs = _mlp()
  space = unf.infer_space(functools.partial(_apply, graphdef), params, inputs)
  assert space.labels == ("layers/0/kernel:1", "layers/2/kernel:1")


@pytest.mark.parametrize("cell_type", sorted(FUSED_GATES, key=lambda c: c.__name__))
def test_fused_gates_are_fixed_with_a_warning_that_points_to_split_gates(cell_type):
  graphdef, split, tokens = _rnn(cell_type)
  fused = {**split, "cell": unf.merge_gates(split["cell"])}
  with pytest.warns(UserWarning, match=r"split_gates.*") as record:
    space = unf.infer_space(functools.partial(_apply, graphdef), fused, tokens)
  assert "cell/dense_i/kernel axis 1" in str(record[0].message)
  assert space.spec()["cell"]["dense_h"]["kernel"] == (None, None)  # no hidden label is left
  # The split view has the hidden label, with no warning.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    split_space = unf.infer_space(functools.partial(_apply_split_rnn, graphdef), split, tokens)
  assert len(split_space.labels) == 2  # embed and hidden


# --- where the builders are wrong ---------------------------------------------------------


def _random_params(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: jnp.asarray(0.5 * rng.standard_normal(s), F64), shapes, is_leaf=lambda x: isinstance(x, tuple)
  )


def test_residual_mlp_ties_the_skip_to_the_stream():
  params = _random_params({"fc_in": (3, 5), "w1": (5, 4), "w2": (4, 5), "fc_out": (5, 2)})

  def apply(p, x):
    h = x @ p["fc_in"]
    h = h + jnp.tanh(h @ p["w1"]) @ p["w2"]
    return h @ p["fc_out"]

  space = unf.infer_space(apply, params, jnp.ones((2, 3)))
  assert space.spec() == {
    "fc_in": (None, "fc_in:1"),
    "w1": ("fc_in:1", "w1:1"),
    "w2": ("w1:1", "fc_in:1"),
    "fc_out": ("fc_in:1", None),
  }
  # The builder chains a label per layer, which the skip breaks.
  # A label per layer, as a builder chains them, is broken by the skip.
  chained = unf.WeightSpace({"fc_in": (None, "a"), "w1": ("a", "b"), "w2": ("b", "c"), "fc_out": ("c", None)})
  with pytest.raises(SymmetryError):
    check_symmetry(apply, params, chained.with_fixed_sizes(params), jnp.ones((2, 3)))


def test_grouped_first_conv_fixes_its_channels_and_depthwise_keeps_them():
  def model(groups):
    class Net(nnx.Module):
      def __init__(self, rngs):
        self.conv0 = nnx.Conv(4, 6, (3, 3), feature_group_count=groups, param_dtype=F64, rngs=rngs)
        self.conv1 = nnx.Conv(6, 5, (3, 3), param_dtype=F64, rngs=rngs)
        self.dense = nnx.Linear(5, 3, param_dtype=F64, rngs=rngs)

      def __call__(self, x):
        return self.dense(jnp.tanh(self.conv1(jnp.tanh(self.conv0(x)))).mean(axis=(1, 2)))

    return _split(lambda: Net(nnx.Rngs(0)))

  x = np.random.default_rng(0).standard_normal((2, 6, 6, 4))
  graphdef, params = model(2)
  space = unf.infer_space(functools.partial(_apply, graphdef), params, x)
  assert space.spec()["conv0"]["kernel"] == (None, None, None, None)  # the builder gives axis 3 a label
  assert space.spec()["conv0"]["bias"] == (None,)
  assert space.spec()["conv1"]["kernel"][3] is not None  # the second hidden layer keeps its label
  with pytest.raises(SymmetryError):
    check_symmetry(functools.partial(_apply, graphdef), params, cnn_space(params, io="fixed"), x)

  # Depthwise (groups = channels, one filter each): each channel only meets itself, so a hidden depthwise
  # conv permutes its channels with the layer before.
  class Depthwise(nnx.Module):
    def __init__(self, rngs):
      self.conv0 = nnx.Conv(4, 6, (3, 3), param_dtype=F64, rngs=rngs)
      self.depthwise = nnx.Conv(6, 6, (3, 3), feature_group_count=6, param_dtype=F64, rngs=rngs)
      self.dense = nnx.Linear(6, 3, param_dtype=F64, rngs=rngs)

    def __call__(self, x):
      return self.dense(jnp.tanh(self.depthwise(jnp.tanh(self.conv0(x)))).mean(axis=(1, 2)))

  graphdef, params = _split(lambda: Depthwise(nnx.Rngs(0)))
  space = unf.infer_space(functools.partial(_apply, graphdef), params, x)
  hidden = space.spec()["conv0"]["kernel"][3]
  assert hidden is not None
  assert space.spec()["depthwise"]["kernel"] == (None, None, None, hidden)
  assert space.spec()["depthwise"]["bias"] == (hidden,) and space.spec()["dense"]["kernel"] == (hidden, None)


def test_layers_named_out_of_call_order_are_chained_as_called():
  params = _random_params({"fc_in": (4, 4), "fc_hidden": (4, 4), "fc_out": (4, 4)})

  def apply(p, x):
    return jnp.tanh(jnp.tanh(x @ p["fc_in"]) @ p["fc_hidden"]) @ p["fc_out"]

  space = unf.infer_space(apply, params, jnp.ones((2, 4)))
  assert space.spec() == {
    "fc_in": (None, "fc_in:1"),
    "fc_hidden": ("fc_in:1", "fc_hidden:1"),
    "fc_out": ("fc_hidden:1", None),
  }


def test_llama_style_mlp_names_up_and_down_by_use():
  params = _random_params({"down": (6, 4), "gate": (4, 6), "up": (4, 6)})

  def apply(p, x):
    return (jax.nn.silu(x @ p["gate"]) * (x @ p["up"])) @ p["down"]

  space = unf.infer_space(apply, params, jnp.ones((2, 4)))
  hidden = space.spec()["gate"][1]
  assert space.spec() == {"down": (hidden, None), "gate": (None, hidden), "up": (None, hidden)}


# --- flax layers -------------------------------------------------------------------------------


class Zoo(nnx.Module):
  """Embed, LayerNorm, MultiHeadAttention, a residual MLP, a Conv with and one without bias, BatchNorm (inference)."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(9, 8, param_dtype=F64, rngs=rngs)
    self.norm = nnx.LayerNorm(8, param_dtype=F64, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(2, 8, qkv_features=6, decode=False, param_dtype=F64, rngs=rngs)
    self.up = nnx.Linear(8, 12, param_dtype=F64, rngs=rngs)
    self.down = nnx.Linear(12, 8, param_dtype=F64, rngs=rngs)
    self.conv = nnx.Conv(8, 5, (3,), param_dtype=F64, rngs=rngs)
    self.conv_nobias = nnx.Conv(5, 7, (3,), use_bias=False, param_dtype=F64, rngs=rngs)
    self.batch_norm = nnx.BatchNorm(7, use_running_average=True, param_dtype=F64, rngs=rngs)
    self.head = nnx.Linear(7, 9, param_dtype=F64, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    x = x + self.attention(self.norm(x))
    x = x + self.down(nnx.relu(self.up(x)))
    x = self.batch_norm(self.conv_nobias(jnp.tanh(self.conv(x))))
    return self.head(x.mean(axis=1))


def test_flax_layers_give_spaces_that_pass_check_symmetry_with_every_label_expected():
  # BatchNorm's running statistics permute with its channels: they are part of the weights (a captured
  # constant would be fixed, and so would the channels).
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Zoo(nnx.Rngs(0))))
  params = _random_params(jax.tree.map(jnp.shape, nnx.to_pure_dict(state)))
  params["batch_norm"]["var"] = jnp.abs(params["batch_norm"]["var"]) + 0.1
  tokens = np.random.default_rng(1).integers(0, 9, (2, 5))
  space = unf.infer_space(functools.partial(_apply, graphdef), params, tokens)
  spec = space.spec()
  residual = spec["embed"]["embedding"][1]
  assert spec["embed"]["embedding"] == (None, residual)
  assert spec["norm"] == {"scale": (residual,), "bias": (residual,)}
  heads, qk = spec["attention"]["query"]["kernel"][1:]
  v = spec["attention"]["value"]["kernel"][2]
  assert spec["attention"]["key"]["kernel"] == (residual, heads, qk)
  assert spec["attention"]["value"]["kernel"] == (residual, heads, v)
  assert spec["attention"]["out"]["kernel"] == (heads, v, residual)
  assert spec["up"]["kernel"][0] == residual and spec["down"]["kernel"] == (spec["up"]["kernel"][1], residual)
  conv = spec["conv"]["kernel"][2]
  assert spec["conv"] == {"kernel": (None, residual, conv), "bias": (conv,)}
  channels = spec["conv_nobias"]["kernel"][2]
  assert spec["conv_nobias"] == {"kernel": (None, conv, channels)}
  assert spec["batch_norm"] == {"scale": (channels,), "bias": (channels,), "mean": (channels,), "var": (channels,)}
  assert spec["head"] == {"kernel": (channels, None), "bias": (None,)}
  assert len({residual, heads, qk, v, spec["up"]["kernel"][1], conv, channels}) == 7


# --- sub-programs: scan, while, cond, checkpoint, custom_vjp ------------------------------------------


def test_sub_programs_are_followed():
  params = _random_params({"w_in": (3, 4), "w_h": (4, 4), "w_out": (4, 2)})

  @jax.custom_vjp
  def squash(x):
    return jnp.tanh(x)

  squash.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))

  def apply(p, xs):
    def step(h, x):
      h = jax.checkpoint(lambda h: squash(x @ p["w_in"] + h @ p["w_h"]))(h)
      return h, h

    h, _ = jax.lax.scan(step, jnp.zeros((xs.shape[1], 4)), xs)
    h = jax.lax.cond(h.sum() > 0, lambda h: h, lambda h: -h, h)
    h = jax.lax.fori_loop(0, 2, lambda i, h: jnp.tanh(h @ p["w_h"]), h)
    return h @ p["w_out"]

  space = unf.infer_space(apply, params, jnp.ones((5, 2, 3)))
  assert space.spec() == {"w_in": (None, "w_in:1"), "w_h": ("w_in:1", "w_in:1"), "w_out": ("w_in:1", None)}


class Recurrent(nnx.Module):
  def __init__(self, rngs):
    self.rnn = nnx.RNN(nnx.SimpleCell(3, 4, dtype=F64, param_dtype=F64, rngs=rngs))
    self.head = nnx.Linear(4, 2, param_dtype=F64, rngs=rngs)

  def __call__(self, x):
    return self.head(self.rnn(x))


def test_nnx_rnn_runs_its_cell_in_a_scan():
  graphdef, state = nnx.split(Recurrent(nnx.Rngs(0)))  # its state holds an RNG key and count too
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda x: jnp.asarray(rng.standard_normal(x.shape)) if jnp.issubdtype(x.dtype, jnp.floating) else x,
    nnx.to_pure_dict(state),
  )
  space = unf.infer_space(functools.partial(_apply, graphdef), params, np.ones((2, 6, 3)))
  hidden = space.spec()["rnn"]["cell"]["dense_h"]["kernel"][0]
  assert hidden is not None  # nested as rnn/cell, where rnn_space cannot reach
  assert space.spec()["rnn"]["cell"] == {
    "dense_h": {"kernel": (hidden, hidden)},
    "dense_i": {"kernel": (None, hidden), "bias": (hidden,)},
  }


# --- soundness: an unknown op fixes, never guesses ------------------------------------------


def test_an_operation_without_a_rule_fixes_what_it_touches():
  params = _random_params({"w0": (3, 4), "w1": (4, 2)})

  def apply(p, x):
    h = jnp.tanh(x @ p["w0"])
    h = jax.pure_callback(lambda a: np.asarray(a), jax.ShapeDtypeStruct(h.shape, h.dtype), h)
    return h @ p["w1"]

  space = unf.infer_space(apply, params, jnp.ones((2, 3)))
  assert space.spec() == {"w0": (None, None), "w1": (None, None)}


@pytest.mark.parametrize(
  "op",
  [
    lambda h: jnp.cumsum(h, axis=-1),
    lambda h: jnp.sort(h, axis=-1),
    lambda h: h[:, ::-1],
    lambda h: h[:, :3].sum(-1, keepdims=True) * h,
    lambda h: h * jnp.arange(h.shape[-1]),
    lambda h: jnp.take_along_axis(h, jnp.argmax(h, axis=-1, keepdims=True), axis=-1) * h,
    lambda h: jnp.concatenate([h, h], axis=-1)[:, 2:6],  # across the blocks ([:, :4] gives h back, a symmetry)
    lambda h: jnp.reshape(h, (h.shape[0], 2, 2)).sum(1).repeat(2, axis=-1),
  ],
  ids=["cumsum", "sort", "reverse", "slice", "positions", "argmax", "concatenate", "reshape"],
)
@pytest.mark.filterwarnings("ignore:infer_space:UserWarning")
def test_order_dependent_operations_fix_the_hidden_axis(op):
  params = _random_params({"w0": (3, 4), "w1": (4, 2)})
  apply = lambda p, x: op(jnp.tanh(x @ p["w0"])) @ p["w1"]  # noqa: E731
  space = unf.infer_space(apply, params, jnp.ones((2, 3)))
  assert space.labels == ()


@pytest.mark.parametrize(
  "op",
  [jax.nn.softmax, lambda h: h / jnp.linalg.norm(h, axis=-1, keepdims=True), lambda h: h.max(-1, keepdims=True) + h],
)
def test_symmetric_reductions_keep_the_hidden_axis(op):
  params = _random_params({"w0": (3, 4), "w1": (4, 2)})
  apply = lambda p, x: op(jnp.tanh(x @ p["w0"])) @ p["w1"]  # noqa: E731
  space = unf.infer_space(apply, params, jnp.ones((2, 3)))
  assert space.spec() == {"w0": (None, "w0:1"), "w1": ("w0:1", None)}


def test_size_one_axes_say_whether_a_wider_trace_would_help():
  # A hidden width of 1: a wider trace finds the label.
  params = _random_params({"w0": (3, 1), "w1": (1, 2)})
  why = unf.explain_space(lambda p, x: jnp.tanh(x @ p["w0"]) @ p["w1"], params, jnp.ones((2, 3)))
  assert why["w0"][1] == why["w1"][0]
  assert why["w0"][1].startswith("an axis of size 1: nothing to permute")
  assert "trace the model at widths of 2 or more" in why["w0"][1]
  # A positional embedding of shape (1, length, d): size 1 by design, broadcast over the batch.
  params = _random_params({"pos": (1, 3, 4), "w": (4, 2)})
  why = unf.explain_space(lambda p, x: jnp.tanh(x + p["pos"]) @ p["w"], params, jnp.ones((2, 3, 4)))
  assert why["pos"][0] == "an axis of size 1 that is broadcast against a longer axis: nothing to permute"


def _fused_qkv(p, x):
  q, k, v = jnp.split(x @ p["qkv"], 3, axis=-1)
  return jax.nn.softmax(q @ k.T) @ v @ p["out"]


def _heads_reshaped(p, x):
  q = (x @ p["query"]).reshape(x.shape[0], 2, 3)
  return jnp.einsum("thd,shd->ths", q, q).sum(1) @ p["out"]


@pytest.mark.parametrize(
  "apply, shapes, seen",
  [
    (_fused_qkv, {"qkv": (4, 6), "out": (2, 3)}, "qkv axis 1 (split from 6 into 3 blocks of 2 by split (in "),
    (_heads_reshaped, {"query": (4, 6), "out": (5, 2)}, "query axis 1 (reshaped from 6 into 2 blocks of 3 by "),
  ],
  ids=["fused_qkv", "heads_reshaped"],
)
def test_the_cut_axis_warning_says_what_was_cut_and_that_split_gates_is_only_for_gated_cells(apply, shapes, seen):
  params = _random_params(shapes)
  with pytest.warns(UserWarning) as record:
    unf.infer_space(apply, params, jnp.asarray(np.random.default_rng(0).standard_normal((5, 4))))
  (message,) = [str(w.message) for w in record]
  assert message.startswith("infer_space: the model cuts a param axis into equal blocks (")
  assert seen in message and "test_inference.py:" in message
  assert "If the blocks are the gates of a gate-fused recurrent cell (nnx.GRUCell, nnx.OptimizedLSTMCell" in message
  assert "unf.split_gates does not apply to other cuts (a fused qkv projection, heads reshaped" in message


class LogicallyPartitioned(linen.Module):
  """linen's Transformer idiom at tiny widths: every param boxed by with_logical_partitioning or with_partitioning."""

  @linen.compact
  def __call__(self, tokens):
    def init(names):
      return linen.with_logical_partitioning(linen.initializers.normal(1.0), names)

    embed = linen.Embed(7, 4, embedding_init=init(("vocab", "embed")), param_dtype=F64)
    pos = self.param("pos", init((None, "length", "embed")), (1, tokens.shape[1], 4), F64)
    x = embed(tokens) + pos
    up = linen.Dense(6, kernel_init=init(("embed", "mlp")), param_dtype=F64)
    down = linen.Dense(4, kernel_init=linen.with_partitioning(linen.initializers.normal(1.0), (None, None)))
    x = x + down(jnp.tanh(up(x))).astype(F64)
    return embed.attend(x)


def test_linen_params_boxed_with_logical_partitioning_are_read_through_their_boxes():
  tokens = jnp.array([[1, 2, 3], [4, 5, 6]])
  boxed = jax.tree.map(
    lambda x: jnp.asarray(np.random.default_rng(0).standard_normal(x.shape), F64),
    jax.eval_shape(LogicallyPartitioned().init, jax.random.key(0), tokens),
  )
  kinds = {type(leaf) for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))}
  assert {linen.LogicallyPartitioned, linen.Partitioned} <= kinds
  seen = []

  def apply(variables, tokens):  # an apply_fn that needs the boxes, as code written for boxed params may
    seen.append(type(variables["params"]["pos"]))
    return LogicallyPartitioned().apply(variables, tokens)

  space = unf.infer_space(apply, boxed, tokens)
  assert set(seen) == {linen.LogicallyPartitioned}
  unboxed = meta.unbox(boxed)
  assert space == unf.infer_space(LogicallyPartitioned().apply, unboxed, tokens)
  spec = space.spec()["params"]
  residual, hidden = spec["Embed_0"]["embedding"][1], spec["Dense_0"]["kernel"][1]
  assert None not in (residual, hidden) and residual != hidden
  assert spec == {
    "Embed_0": {"embedding": (None, residual)},
    "pos": (None, None, residual),
    "Dense_0": {"kernel": (residual, hidden), "bias": (hidden,)},
    "Dense_1": {"kernel": (hidden, residual), "bias": (residual,)},
  }
  why = unf.explain_space(apply, boxed, tokens)
  assert set(why) == {unf.space.path_str(path) for path in space.paths}


def test_size_one_axes_and_bad_params():
  params = _random_params({"w0": (3, 1), "w1": (1, 2)})
  space = unf.infer_space(lambda p, x: jnp.tanh(x @ p["w0"]) @ p["w1"], params, jnp.ones((2, 3)))
  assert space.labels == ()
  with pytest.raises(ValueError, match="nested dicts of arrays"):
    unf.infer_space(lambda p, x: x, [jnp.ones(3)], jnp.ones(3))


# --- property-based: random compositions --------------------------------------------------


@st.composite
def models(draw):
  """A random stack of dense layers, residual skips, norms, attention and 1-d convolutions; params named at random."""
  width = draw(st.integers(2, 4))
  kinds = draw(st.lists(st.sampled_from(["dense", "residual", "norm", "attention", "conv"]), min_size=1, max_size=4))
  names = draw(st.permutations([f"p{i}" for i in range(5 * len(kinds) + 2)]))  # a norm may take a dense first
  shapes, layers, d = {}, [], width

  def new(shape):
    name = names[len(shapes)]
    shapes[name] = shape
    return name

  first = new((3, d))
  for kind in kinds:
    if kind == "dense":
      out = draw(st.integers(2, 4))
      layers.append(("dense", new((d, out)), new((out,))))
      d = out
    elif kind == "residual":
      hidden = draw(st.integers(2, 4))
      layers.append(("residual", new((d, hidden)), new((hidden, d))))
    elif kind == "norm":
      if d < 3:  # a norm over 2 entries is a sign function: untying an axis after it changes nothing
        out = draw(st.integers(3, 4))
        layers.append(("dense", new((d, out)), new((out,))))
        d = out
      layers.append(("norm", new((d,)), new((d,))))
    elif kind == "attention":
      layers.append(("attention", new((d, 2, 2)), new((d, 2, 2)), new((2, 2, d))))
    else:
      out = draw(st.integers(2, 4))
      layers.append(("conv", new((3, d, out))))
      d = out
  last = new((d, 2))
  return shapes, first, layers, last


def _run_model(first, layers, last, p, x):
  h = x @ p[first]  # x: (batch, length, 3)
  for layer in layers:
    kind, *names = layer
    if kind == "dense":
      h = jnp.tanh(h @ p[names[0]] + p[names[1]])
    elif kind == "residual":
      h = h + jnp.tanh(h @ p[names[0]]) @ p[names[1]]
    elif kind == "norm":
      mean = h.mean(-1, keepdims=True)
      h = (h - mean) / jnp.sqrt(((h - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * p[names[0]] + p[names[1]]
    elif kind == "attention":
      q, k = jnp.einsum("btd,dhk->bthk", h, p[names[0]]), jnp.einsum("btd,dhk->bthk", h, p[names[1]])
      weights = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", q, k), axis=-1)
      h = h + jnp.einsum("bhqs,bshk,hkd->bqd", weights, k, p[names[2]])
    else:
      h = jax.lax.conv_general_dilated(h, p[names[0]], (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
  return h @ p[last]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=models(), seed=st.integers(0, 2**16))
def test_random_compositions_give_true_and_separate_labels(model, seed):
  shapes, first, layers, last = model
  params = _random_params(shapes, seed)
  x = jnp.asarray(np.random.default_rng(seed).standard_normal((2, 3, 3)))
  apply = jax.jit(functools.partial(_run_model, first, layers, last))
  space = unf.infer_space(apply, params, x)  # verify=True: check_symmetry of all labels at once
  assert space.labels, space
  for label in space.labels:  # each label alone is a symmetry
    check_symmetry(apply, params, space, x, labels=label, key=jax.random.key(seed))
  # Negative controls: untying one axis from its label, or labelling a fixed axis, breaks the symmetry.
  occurrences = [(i, axis) for i, axes in enumerate(space.axes) for axis, label in enumerate(axes) if label]
  i, axis = occurrences[seed % len(occurrences)]
  label = space.axes[i][axis]
  if sum(space.axes[j][k] == label for j, k in occurrences) > 1:
    axes = [list(a) for a in space.axes]
    axes[i][axis] = "untied"
    untied = unf.WeightSpace(space.unflatten([tuple(a) for a in axes])).with_fixed_sizes(params)
    with pytest.raises(SymmetryError):
      check_symmetry(apply, params, untied, x, labels="untied", key=jax.random.key(seed))
  freed = unf.WeightSpace({**space.spec(), first: ("freed", space.spec()[first][1])}).with_fixed_sizes(params)
  with pytest.raises(SymmetryError):
    check_symmetry(apply, params, freed, x, labels="freed", key=jax.random.key(seed))
