"""Builders give exact symmetries of real flax nnx models, checked with check_symmetry."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unf
from unf.builders import cnn_space, merge_gates, mlp_space, rnn_space, split_gates, transformer_space
from unf.space import WeightSpace
from unf.symmetry import SymmetryError, check_symmetry
from unf.testing import assert_equivariant, assert_invariant

F64 = jnp.float64
RNG = np.random.default_rng(0)


def _randomize(params, seed):
  """Random params of the same shapes: zero biases and unit norm scales would hide broken labels."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(0.5 * rng.standard_normal(x.shape), F64), params)


def _split(make_model, seed=1):
  # eval_shape skips flax's initializers (each would compile per shape); the params are random anyway.
  graphdef, params = nnx.split(nnx.eval_shape(make_model), nnx.Param)
  return graphdef, _randomize(nnx.to_pure_dict(params), seed)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, *inputs):
  return nnx.merge(graphdef, params)(*inputs)


def _relabel(space, params, mapping, under=()):
  """A copy of ``space`` with labels renamed by ``mapping(label, path)`` at leaves below ``under``."""
  axes = [
    tuple(mapping(a, path) if a is not None and path[: len(under)] == under else a for a in leaf_axes)
    for path, leaf_axes in zip(space.paths, space.axes)
  ]
  return WeightSpace(space.unflatten(axes)).with_fixed_sizes(params)


def _hidden_labels(space, io_labels):
  hidden = [label for label in space.labels if label not in io_labels]
  assert hidden and len(hidden) < len(space.labels)
  return hidden


# --- models (built inside tests, where x64 is on) ----------------------------------


@functools.cache
def _mlp():
  def make_model():
    dense = functools.partial(nnx.Linear, param_dtype=F64, rngs=nnx.Rngs(0))
    return nnx.Sequential(dense(6, 5), jnp.tanh, dense(5, 4), jnp.tanh, dense(4, 3))

  return (*_split(make_model), RNG.standard_normal((4, 6)))


class CNN(nnx.Module):
  def __init__(self, rngs):
    self.conv0 = nnx.Conv(3, 4, (3, 3), param_dtype=F64, rngs=rngs)
    self.conv1 = nnx.Conv(4, 5, (3, 3), param_dtype=F64, rngs=rngs)
    self.dense = nnx.Linear(5, 3, param_dtype=F64, rngs=rngs)

  def __call__(self, images):
    hidden = jnp.tanh(self.conv1(jnp.tanh(self.conv0(images))))
    return self.dense(hidden.mean(axis=(1, 2)))


@functools.cache
def _cnn():
  return (*_split(lambda: CNN(nnx.Rngs(0))), RNG.standard_normal((2, 6, 6, 3)))


class RNNLM(nnx.Module):
  def __init__(self, cell_type, rngs):
    self.embed = nnx.Embed(7, 4, param_dtype=F64, rngs=rngs)
    self.cell = cell_type(4, 5, dtype=F64, param_dtype=F64, rngs=rngs)
    self.head = nnx.Linear(5, 7, param_dtype=F64, rngs=rngs)

  def __call__(self, tokens):
    inputs = self.embed(tokens)
    carry = self.cell.initialize_carry(inputs[:, 0].shape, rngs=nnx.Rngs(0))
    outputs = []
    for t in range(tokens.shape[1]):
      carry, output = self.cell(carry, inputs[:, t])
      outputs.append(output)
    return self.head(jnp.stack(outputs, axis=1))


FUSED_GATES = {nnx.GRUCell: 3, nnx.OptimizedLSTMCell: 4}


@functools.cache
def _rnn(cell_type):
  graphdef, params = _split(lambda: RNNLM(cell_type, nnx.Rngs(0)))
  if cell_type in FUSED_GATES:
    params = {**params, "cell": split_gates(params["cell"], FUSED_GATES[cell_type])}
  return graphdef, params, RNG.integers(0, 7, (2, 4))


@functools.partial(jax.jit, static_argnums=0)
def _apply_split_rnn(graphdef, params, tokens):
  return _apply(graphdef, {**params, "cell": merge_gates(params["cell"])}, tokens)


class Block(nnx.Module):
  def __init__(self, rngs):
    self.norm1 = nnx.LayerNorm(8, param_dtype=F64, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
      num_heads=2, in_features=8, qkv_features=8, decode=False, param_dtype=F64, rngs=rngs
    )
    self.norm2 = nnx.LayerNorm(8, param_dtype=F64, rngs=rngs)
    linear = functools.partial(nnx.Linear, param_dtype=F64, rngs=rngs)
    self.mlp = nnx.Sequential(linear(8, 16), nnx.gelu, linear(16, 8))

  def __call__(self, x, mask):
    x = x + self.attention(self.norm1(x), mask=mask)
    return x + self.mlp(self.norm2(x))


class TransformerLM(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(11, 8, param_dtype=F64, rngs=rngs)
    self.pos_embed = nnx.Embed(5, 8, param_dtype=F64, rngs=rngs)
    self.blocks = nnx.List([Block(rngs) for _ in range(2)])
    self.final_norm = nnx.LayerNorm(8, param_dtype=F64, rngs=rngs)
    self.head = nnx.Linear(8, 11, param_dtype=F64, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens) + self.pos_embed.embedding[: tokens.shape[-1]]
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.final_norm(x))


@functools.cache
def _transformer():
  return (*_split(lambda: TransformerLM(nnx.Rngs(0))), RNG.integers(0, 11, (2, 5)))


# --- MLP -----------------------------------------------------------------------------


def test_mlp_fixed_io_is_an_exact_symmetry():
  graphdef, params, x = _mlp()
  space = mlp_space(params, io="fixed")
  assert space.labels == ("hidden0", "hidden1")
  assert check_symmetry(functools.partial(_apply, graphdef), params, space, x) < 1e-10


def test_mlp_permutable_io_labels_are_not_symmetries():
  graphdef, params, x = _mlp()
  space = mlp_space(params)
  assert space.spec()["layers"] == {
    0: {"kernel": ("input", "hidden0"), "bias": ("hidden0",)},
    2: {"kernel": ("hidden0", "hidden1"), "bias": ("hidden1",)},
    4: {"kernel": ("hidden1", "output"), "bias": ("output",)},
  }
  apply_fn = functools.partial(_apply, graphdef)
  assert check_symmetry(apply_fn, params, space, x, labels=_hidden_labels(space, ("input", "output"))) < 1e-10
  for label in ("input", "output"):
    with pytest.raises(SymmetryError, match=label):
      check_symmetry(apply_fn, params, space, x, labels=[label])


def test_mlp_layers_are_chained_in_natural_order():
  params = {
    f"Dense_{i}": {"kernel": np.zeros((n_in, n_out)), "bias": np.zeros(n_out)}
    for i, (n_in, n_out) in zip([10, 2, 1], [(4, 3), (5, 4), (6, 5)])
  }
  spec = mlp_space(params).spec()
  assert spec["Dense_1"]["kernel"] == ("input", "hidden0")
  assert spec["Dense_2"]["kernel"] == ("hidden0", "hidden1")
  assert spec["Dense_10"]["kernel"] == ("hidden1", "output")
  int_keys = {10: params["Dense_10"], 2: params["Dense_2"], 1: params["Dense_1"]}
  assert mlp_space(int_keys).spec()[10]["kernel"] == ("hidden1", "output")


def test_mlp_mismatched_layers_raise():
  params = {"l0": {"kernel": np.zeros((6, 5))}, "l1": {"kernel": np.zeros((4, 3))}}
  with pytest.raises(ValueError, match=r"mlp_space: label 'hidden0' has size 5 .* but size 4"):
    mlp_space(params)


@pytest.mark.parametrize(
  "params, match",
  [
    ({"l0": {"kernel": np.zeros((6, 5)), "scale": np.zeros(5)}}, r"'l0' has entries \['kernel', 'scale'\]"),
    ({"l0": {"kernel": np.zeros((3, 6, 5))}}, r"expected \(in, out\)"),
    ({"l0": {"kernel": np.zeros((6, 5))}, "stray": np.zeros(3)}, "'stray' is not in a Linear or Conv.*unf.infer_space"),
    ({"l0": {"bias": np.zeros(5)}}, "is not in a Linear or Conv"),
  ],
)
def test_mlp_unrecognised_structure_raises(params, match):
  with pytest.raises(ValueError, match=match):
    mlp_space(params)


@pytest.mark.parametrize("builder", [mlp_space, cnn_space, rnn_space, transformer_space])
def test_bad_io_raises(builder):
  with pytest.raises(ValueError, match=r"io must be one of \('permutable', 'fixed'\), got 'frozen'"):
    builder({"l0": {"kernel": np.zeros((2, 2))}}, io="frozen")


def test_builders_bind_fixed_sizes():
  _, params, _ = _cnn()
  space = cnn_space(params, io="fixed")
  assert space.fixed_sizes[space.paths.index(("conv0", "kernel"))] == (3, 3, 3, None)
  with pytest.raises(ValueError, match="axis 0 is fixed with size 3"):
    space.validate({**params, "conv0": {**params["conv0"], "kernel": jnp.zeros((5, 3, 3, 4))}})


# --- CNN -----------------------------------------------------------------------------


def test_cnn_fixed_io_is_an_exact_symmetry():
  graphdef, params, images = _cnn()
  space = cnn_space(params, io="fixed")
  assert space.spec()["conv1"]["kernel"] == (None, None, "hidden0", "hidden1")
  assert check_symmetry(functools.partial(_apply, graphdef), params, space, images) < 1e-10


def test_cnn_permutable_io():
  graphdef, params, images = _cnn()
  space = cnn_space(params)
  assert space.spec()["conv0"]["kernel"] == (None, None, "input", "hidden0")
  assert space.spec()["dense"]["kernel"] == ("hidden1", "output")
  apply_fn = functools.partial(_apply, graphdef)
  assert check_symmetry(apply_fn, params, space, images, labels=["hidden0", "hidden1"]) < 1e-10
  with pytest.raises(SymmetryError, match="input"):
    check_symmetry(apply_fn, params, space, images, labels=["input"])


def test_cnn_convs_come_before_dense_layers_whatever_their_names():
  params = {
    "classifier": {"kernel": np.zeros((5, 3))},
    "features": {0: {"kernel": np.zeros((3, 3, 2, 4))}, 1: {"kernel": np.zeros((3, 3, 4, 5))}},
  }
  spec = cnn_space(params).spec()
  assert spec["classifier"]["kernel"] == ("hidden1", "output")


def test_cnn_flatten_then_dense_raises():
  params = {"conv": {"kernel": np.zeros((3, 3, 3, 4))}, "dense": {"kernel": np.zeros((4 * 36, 3))}}
  with pytest.raises(ValueError, match="flatten-then-dense is not supported"):
    cnn_space(params)


# --- RNN -----------------------------------------------------------------------------

CELLS = [nnx.SimpleCell, nnx.LSTMCell, nnx.GRUCell, nnx.OptimizedLSTMCell]


def _rnn_apply(cell_type):
  graphdef, params, tokens = _rnn(cell_type)
  apply = _apply_split_rnn if cell_type in FUSED_GATES else _apply
  return functools.partial(apply, graphdef), params, tokens


@pytest.mark.parametrize("cell_type", CELLS, ids=lambda c: c.__name__)
def test_rnn_fixed_io_is_an_exact_symmetry(cell_type):
  apply_fn, params, tokens = _rnn_apply(cell_type)
  space = rnn_space(params, io="fixed")
  assert space.labels == ("embed", "hidden")
  assert check_symmetry(apply_fn, params, space, tokens) < 1e-10


@pytest.mark.parametrize("cell_type", [nnx.SimpleCell, nnx.GRUCell], ids=lambda c: c.__name__)
def test_rnn_permutable_vocab_is_not_a_symmetry(cell_type):
  apply_fn, params, tokens = _rnn_apply(cell_type)
  space = rnn_space(params)
  assert space.spec()["embed"]["embedding"] == ("vocab", "embed")
  assert space.spec()["head"]["kernel"] == ("hidden", "vocab")
  assert check_symmetry(apply_fn, params, space, tokens, labels=["embed", "hidden"]) < 1e-10
  with pytest.raises(SymmetryError, match="vocab"):
    check_symmetry(apply_fn, params, space, tokens, labels=["vocab"])


def test_rnn_split_gru_has_a_fixed_gate_axis():
  _, params, _ = _rnn(nnx.GRUCell)
  cell = rnn_space(params).spec()["cell"]
  assert cell == {
    "dense_i": {"kernel": ("embed", None, "hidden"), "bias": (None, "hidden")},
    "dense_h": {"kernel": ("hidden", None, "hidden")},
  }
  assert params["cell"]["dense_h"]["kernel"].shape == (5, 3, 5)


def test_rnn_wrong_gate_layout_breaks_the_symmetry():
  # Reshaping (in, 3H) as (in, H, 3) instead of (in, 3, H) mislabels the hidden axis: the check must catch it.
  graphdef, params, tokens = _rnn(nnx.GRUCell)

  def to_wrong(tree):
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[:-1] + (5, 3)), -1, -2), merge_gates(tree))

  wrong = {**params, "cell": to_wrong(params["cell"])}

  @jax.jit
  def apply_wrong(p, tokens):
    cell = jax.tree.map(lambda x: jnp.swapaxes(x, -1, -2).reshape(x.shape[:-2] + (-1,)), p["cell"])
    return _apply(graphdef, {**p, "cell": cell}, tokens)

  np.testing.assert_allclose(apply_wrong(wrong, tokens), _apply_split_rnn(graphdef, params, tokens))
  with pytest.raises(SymmetryError, match="hidden"):
    check_symmetry(apply_wrong, wrong, rnn_space(wrong, io="fixed"), tokens, labels=["hidden"])


@pytest.mark.parametrize("cell_type, gates", list(FUSED_GATES.items()), ids=lambda c: getattr(c, "__name__", c))
def test_rnn_fused_gates_raise_naming_split_gates(cell_type, gates):
  _, params, _ = _rnn(cell_type)
  fused = {**params, "cell": merge_gates(params["cell"])}
  with pytest.raises(ValueError, match=rf"fused.*split_gates\(cell_params, {gates}\)"):
    rnn_space(fused)


def test_split_and_merge_gates_are_inverse():
  _, params, _ = _rnn(nnx.GRUCell)
  fused = merge_gates(params["cell"])
  assert fused["dense_h"]["kernel"].shape == (5, 15)
  assert fused["dense_i"]["bias"].shape == (15,)
  back = split_gates(fused, 3)
  jax.tree.map(np.testing.assert_array_equal, back, params["cell"])
  # Gate g is the g-th contiguous block of H columns, as flax's jnp.split(y, 3, axis=-1) cuts it.
  np.testing.assert_array_equal(back["dense_h"]["kernel"][:, 1], fused["dense_h"]["kernel"][:, 5:10])
  with pytest.raises(ValueError, match="not divisible into 4 gates"):
    split_gates(fused, 4)


def test_rnn_unrecognised_cell_raises():
  _, params, _ = _rnn(nnx.SimpleCell)
  with pytest.raises(ValueError, match="not those of nnx.SimpleCell"):
    rnn_space({**params, "cell": {**params["cell"], "dense_x": params["cell"]["dense_i"]}})
  with pytest.raises(ValueError, match=r"expected params\['decoder'\]"):
    rnn_space(params, head="decoder")


# --- transformer -----------------------------------------------------------------------


def test_transformer_fixed_io_is_an_exact_symmetry():
  graphdef, params, tokens = _transformer()
  space = transformer_space(params, io="fixed")
  assert space.labels == ("heads0", "heads1", "mlp0", "mlp1", "qk0", "qk1", "residual", "v0", "v1")
  assert check_symmetry(functools.partial(_apply, graphdef), params, space, tokens) < 1e-10


def test_transformer_labels():
  _, params, _ = _transformer()
  spec = transformer_space(params).spec()
  assert spec["embed"] == {"embedding": ("vocab", "residual")}
  assert spec["pos_embed"] == {"embedding": ("position", "residual")}
  assert spec["head"] == {"kernel": ("residual", "vocab"), "bias": ("vocab",)}
  block = spec["blocks"][1]
  assert block["attention"]["query"]["kernel"] == ("residual", "heads1", "qk1")
  assert block["attention"]["key"]["bias"] == ("heads1", "qk1")
  assert block["attention"]["value"]["kernel"] == ("residual", "heads1", "v1")
  assert block["attention"]["out"] == {"kernel": ("heads1", "v1", "residual"), "bias": ("residual",)}
  assert block["mlp"]["layers"] == {
    0: {"kernel": ("residual", "mlp1"), "bias": ("mlp1",)},
    2: {"kernel": ("mlp1", "residual"), "bias": ("residual",)},
  }
  assert block["norm1"] == {"scale": ("residual",), "bias": ("residual",)}


def test_transformer_permutable_io_labels_are_not_symmetries():
  graphdef, params, tokens = _transformer()
  space = transformer_space(params)
  apply_fn = functools.partial(_apply, graphdef)
  hidden = _hidden_labels(space, ("vocab", "position"))
  assert check_symmetry(apply_fn, params, space, tokens, labels=hidden) < 1e-10
  for label in ("vocab", "position"):
    with pytest.raises(SymmetryError, match=label):
      check_symmetry(apply_fn, params, space, tokens, labels=[label])


@pytest.mark.parametrize("label", ["heads0", "qk0", "v1", "mlp1", "residual"])
def test_transformer_single_labels_pass(label):
  graphdef, params, tokens = _transformer()
  space = transformer_space(params)
  assert check_symmetry(functools.partial(_apply, graphdef), params, space, tokens, labels=[label]) < 1e-10


def test_transformer_per_block_residual_labels_are_not_a_symmetry():
  graphdef, params, tokens = _transformer()
  space = transformer_space(params, io="fixed")
  wrong = _relabel(space, params, lambda a, path: f"residual{path[1]}" if a == "residual" else a, under=("blocks",))
  assert {"residual0", "residual1", "residual"} <= set(wrong.labels)
  with pytest.raises(SymmetryError, match="residual0"):
    check_symmetry(functools.partial(_apply, graphdef), params, wrong, tokens)


def test_transformer_query_and_key_must_share_the_head_dim_label():
  graphdef, params, tokens = _transformer()
  space = transformer_space(params, io="fixed")
  wrong = _relabel(
    space, params, lambda a, path: "qk0_key" if a == "qk0" else a, under=("blocks", 0, "attention", "key")
  )
  assert "qk0_key" in wrong.labels
  with pytest.raises(SymmetryError, match="qk0"):
    check_symmetry(functools.partial(_apply, graphdef), params, wrong, tokens, labels=["qk0", "qk0_key"])


def test_transformer_without_positional_embedding_and_with_qk_norm():
  attention = nnx.MultiHeadAttention(
    num_heads=2, in_features=8, qkv_features=8, decode=False, normalize_qk=True, rngs=nnx.Rngs(0)
  )
  linear = {"kernel": np.zeros((8, 8)), "bias": np.zeros(8)}
  params = {
    "embed": {"embedding": np.zeros((11, 8))},
    "blocks": {"b0": {"attn": nnx.to_pure_dict(nnx.state(attention, nnx.Param)), "fc1": linear, "fc2": linear}},
    "final_norm": {"scale": np.zeros(8)},
    "head": {"kernel": np.zeros((8, 11))},
  }
  spec = transformer_space(params).spec()
  assert spec["blocks"]["b0"]["attn"]["query_ln"] == {"scale": ("qk0",)}
  assert spec["blocks"]["b0"]["fc1"]["kernel"] == ("residual", "mlp0")
  assert "pos_embed" not in spec


def test_transformer_bad_structure_raises():
  _, params, _ = _transformer()
  with pytest.raises(ValueError, match="found 1 attentions and 1 Linears"):
    block = {k: v for k, v in params["blocks"][0].items() if k != "mlp"}
    transformer_space({**params, "blocks": {0: {**block, "fc": params["blocks"][0]["mlp"]["layers"][0]}}})
  with pytest.raises(ValueError, match=r"unexpected top-level entries \['extra'\]"):
    transformer_space({**params, "extra": {}})
  with pytest.raises(ValueError, match="label 'residual' has size"):
    transformer_space({**params, "head": {"kernel": jnp.zeros((9, 11))}})


# --- layers on the builders' spaces ---------------------------------------------------


@pytest.mark.parametrize(
  "model, builder",
  [
    (_mlp, mlp_space),
    (_cnn, cnn_space),
    (lambda: _rnn(nnx.LSTMCell), rnn_space),
    (_transformer, transformer_space),
  ],
  ids=["mlp", "cnn", "lstm", "transformer"],
)
def test_equivariant_layers_on_builder_spaces(model, builder, key):
  _, params, _ = model()
  space = builder(params)
  x = jax.tree.map(lambda w: jnp.stack([w, jnp.square(w)], axis=-1), params)
  layer = unf.EquivariantLinear(space, space, 2, 3, rngs=nnx.Rngs(0), param_dtype=F64)
  assert_equivariant(nnx.jit(lambda t: layer(t)), space, key, x)
  pool = unf.InvariantPool(space)
  assert_invariant(jax.jit(lambda t: pool(t)), space, key, x)


# --- orders the builders cannot know, and nested cells ----------------------------------------


def test_layers_without_numbers_in_their_names_raise_instead_of_guessing_the_order():
  square = {name: {"kernel": np.zeros((4, 4)), "bias": np.zeros(4)} for name in ("fc_in", "fc_hidden", "fc_out")}
  with pytest.raises(ValueError, match=r"\['fc_hidden', 'fc_in', 'fc_out'\] carry none.*unf.infer_space"):
    mlp_space(square)
  convs = {"conv_a": {"kernel": np.zeros((3, 3, 4, 4))}, "conv_b": {"kernel": np.zeros((3, 3, 4, 4))}}
  with pytest.raises(ValueError, match=r"the convs .* carry none"):
    cnn_space({**convs, "dense": {"kernel": np.zeros((4, 2))}})
  assert mlp_space({"only": {"kernel": np.zeros((4, 2))}}).labels == ("input", "output")  # one layer: no order


def _llama_block(mlp_width):
  linear = lambda a, b: {"kernel": np.zeros((a, b))}  # noqa: E731
  attention = {name: {"kernel": np.zeros((8, 2, 4))} for name in ("query", "key", "value")}
  attention["out"] = {"kernel": np.zeros((2, 4, 8))}
  return {"attention": attention, "up": linear(8, mlp_width), "down": linear(mlp_width, 8)}


def test_transformer_mlp_linears_are_told_apart_by_shape_or_raise():
  params = {
    "embed": {"embedding": np.zeros((11, 8))},
    "blocks": {0: _llama_block(16)},
    "final_norm": {"scale": np.zeros(8)},
    "head": {"kernel": np.zeros((8, 11))},
  }
  space = transformer_space(params)  # "down" sorts first, but its shape says it is the second
  assert space.spec()["blocks"][0]["up"]["kernel"] == ("residual", "mlp0")
  assert space.spec()["blocks"][0]["down"]["kernel"] == ("mlp0", "residual")
  with pytest.raises(ValueError, match=r"MLP Linears of block 'blocks/0' \(square"):
    transformer_space({**params, "blocks": {0: _llama_block(8)}})


def test_rnn_space_reaches_a_cell_nested_by_nnx_rnn():
  cell = {"dense_i": {"kernel": np.zeros((4, 5)), "bias": np.zeros(5)}, "dense_h": {"kernel": np.zeros((5, 5))}}
  params = {"embed": {"embedding": np.zeros((7, 4))}, "rnn": {"cell": cell}, "head": {"kernel": np.zeros((5, 7))}}
  with pytest.raises(ValueError, match=r"It is nested under 'rnn/cell' \(as nnx.RNN nests its cell\)"):
    rnn_space(params)
  space = rnn_space(params, cell="rnn/cell")
  assert space.spec()["rnn"]["cell"]["dense_h"]["kernel"] == ("hidden", "hidden")
