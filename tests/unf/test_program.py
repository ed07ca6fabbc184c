"""Plans run in batches (unf._program): the numbers of running every step by itself, in fewer operations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unf
from tests.unf.spaces import SPACES, bound
from unf import _program, linear
from unf.basis import label_fixed_axes, plan
from unf.testing import random_features


def transformer(blocks: int) -> unf.WeightSpace:
  """A pre-norm transformer's space: every block has labels of its own, the residual stream is shared."""
  spec = {"embed": (None, "d"), "head": ("d", None)}
  for b in range(blocks):
    h, k, v, m = (f"{name}{b}" for name in "hkvm")
    spec[f"block{b}"] = {
      "norm": ("d",),
      "query": ("d", h, k),
      "key": ("d", h, k),
      "value": ("d", h, v),
      "out": (h, v, "d"),
      "up": {"kernel": ("d", m), "bias": (m,)},
      "down": {"kernel": (m, "d"), "bias": ("d",)},
    }
  return bound(spec, fixed=5)


def _uniform(space: unf.WeightSpace, size: int = 3) -> dict[str, int]:
  # One size for every label: isomorphic blocks get one shape, so that their steps batch.
  return {label: size for label in space.labels}


def _params(space_in, space_out, fin, fout, seed=0):
  params = linear.init(jax.random.key(seed), space_in, space_out, fin, fout, dtype=jnp.float64)
  return {
    k: v + 0.3 * jax.random.normal(jax.random.key(i), v.shape, v.dtype) for i, (k, v) in enumerate(params.items())
  }


def _jit(fn):
  # A new function each time: jax caches traces by function, and _BATCH is read when tracing.
  return jax.jit(lambda *args: fn(*args))


def _step_by_step(monkeypatch, fn, *args, by_piece: bool = False):
  """The reference: every step by itself, and every bundle's pieces concatenated (unless ``by_piece``)."""
  with monkeypatch.context() as patch:
    patch.setattr(linear, "_BATCH", False)
    _by_piece(patch, by_piece)
    return _jit(fn)(*args)


def _assert_trees_close(got, expected):
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _program_of(space, sizes):
  space_in, space_out, new = label_fixed_axes(space, space, "auto")
  p = plan(space_in, space_out)
  return p, _program.program(p, _program.label_sizes_key({**sizes, **dict(new)}))


def _by_piece(monkeypatch, by_piece: bool) -> None:
  """Every batched bundle runs piece by piece (as large ones do), or none does (the tests' spaces are small)."""
  monkeypatch.setattr(linear, "_PIECEWISE_PIECE_MIN", 0 if by_piece else 1 << 62)


@pytest.mark.parametrize(
  "name, features, by_piece",
  [
    ("transformer", (2, 3), False),
    ("mlp", (2, 3), False),
    ("rnn", (2, 3), False),
    # By piece: more output columns than input channels (transposed, then mixed), and fewer (mixed first).
    ("transformer", (2, 3), True),
    ("transformer", (5, 1), True),
    ("rnn", (5, 1), True),
  ],
)
def test_a_batched_layer_equals_its_steps_run_one_by_one(name, features, by_piece, key, monkeypatch):
  _by_piece(monkeypatch, by_piece)
  space = transformer(2) if name == "transformer" else bound(SPACES[name])
  x = random_features(space, _uniform(space), features[0], key)
  if name == "transformer":
    # Blocks of one shape but other values: a batch that mixed up its members' inputs or outputs would give
    # block 0's output to block 1, which the comparison leaf by leaf sees.
    x["block1"] = jax.tree.map(lambda leaf: 10.0 * leaf + 1.0, x["block1"])
  params = _params(space, space, *features)
  fn = lambda t: linear.apply(params, t, space, space)  # noqa: E731
  got = _jit(fn)(x)
  expected = _step_by_step(monkeypatch, fn, x)
  _assert_trees_close(got, expected)
  if by_piece:  # the step-by-step run's own bundles, piece by piece
    _assert_trees_close(_step_by_step(monkeypatch, fn, x, by_piece=True), expected)
  pool = lambda t: linear.invariant_pool(t, space)  # noqa: E731
  _assert_trees_close(_jit(pool)(x), _step_by_step(monkeypatch, pool, x))
  if name == "transformer":  # the comparison above ran batches of both blocks
    p, prog = _program_of(space, _uniform(space))
    assert len(prog.bundles) < len(p.bundles) and len(prog.reductions) < len(p.reductions)
    assert max(len(batch.members) for batch in prog.bundles) == 2
    assert not np.allclose(got["block0"]["query"], got["block1"]["query"])


def test_the_batches_do_not_grow_with_depth():
  """What XLA compiles per layer is a batch, whatever the number of blocks; the plan's steps grow with it."""
  counts = []
  for blocks in (2, 5):
    space = transformer(blocks)
    p, prog = _program_of(space, _uniform(space))
    counts.append(
      (
        len(prog.reductions),
        len(prog.bundles),
        sum(len(batch.segments) for batch in prog.bundles),
        sum(len(cluster.patterns) for batch in prog.bundles for cluster in batch.clusters),
        len(prog.classes_out.members),
      )
    )
    assert len(p.bundles) > 3 * blocks
  assert counts[0] == counts[1], counts


def test_distinct_sizes_run_unbatched():
  """Blocks whose labels differ in size have different shapes: each step is a batch of one."""
  space = transformer(2)
  p, prog = _program_of(space, {label: 2 + k for k, label in enumerate(space.labels)})
  assert all(len(batch.members) == 1 for batch in prog.bundles)
  assert len(prog.bundles) == len(p.bundles)
  assert prog.batches_anything  # the embedding and the head still share a layer-view shape
  assert _program_of(space, _uniform(space))[1].batches_anything
  mlp = bound(SPACES["mlp"])
  # An MLP of distinct widths has no two steps alike: apply runs it step by step, without stacks.
  assert not _program_of(mlp, {label: 2 + k for k, label in enumerate(mlp.labels)})[1].batches_anything


@pytest.mark.parametrize("invariant", [False, True])
def test_a_unf_runs_its_layers_on_stacks_and_equals_them_layer_by_layer(invariant, key, monkeypatch):
  space = transformer(2)
  x = random_features(space, _uniform(space), 1, key)
  net = unf.UNF(space, 1, 2, hidden=(3,), invariant=invariant, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
  graph, state = nnx.split(net)
  fn = lambda s, t: nnx.merge(graph, s)(t)  # noqa: E731
  _assert_trees_close(_jit(fn)(state, x), _step_by_step(monkeypatch, fn, state, x))


def test_a_unf_with_another_output_space_leaves_its_stacks_for_the_last_layer(key, monkeypatch):
  """The last layer reads ``space_in`` but writes ``space_out`` with a new label (``out_sizes``)."""
  space = transformer(2)
  space_out = unf.WeightSpace({"block0": {"norm": ("d",)}, "extra": ("d", "new")})
  x = random_features(space, _uniform(space), 1, key)
  net = unf.UNF(space, 1, 2, hidden=(3,), space_out=space_out, rngs=nnx.Rngs(2), param_dtype=jnp.float64)
  graph, state = nnx.split(net)
  fn = lambda s, t: nnx.merge(graph, s)(t, out_sizes={"new": 4})  # noqa: E731
  got = _jit(fn)(state, x)
  assert got["extra"].shape == (3, 4, 2)
  _assert_trees_close(got, _step_by_step(monkeypatch, fn, state, x))


def test_apply_layers_refuses_a_wrong_number_of_spaces(key):
  space = transformer(1)
  params = linear.init(key, space, space, 1, 1)
  with pytest.raises(ValueError, match="2 layers need 3 spaces"):
    linear.apply_layers([params, params], {}, [space, space], activation=jax.nn.relu)


@st.composite
def repeated_spaces(draw):
  """Spaces of 2 or 3 copies of one random block, each with its own labels, and maybe a shared label."""
  rank = draw(st.integers(1, 3))
  leaves = draw(st.lists(st.lists(st.sampled_from(["own", "other", "shared", None]), min_size=rank, max_size=rank)))
  copies = draw(st.integers(2, 3))
  spec = {}
  for c in range(copies):
    rename = {"own": f"own{c}", "other": f"other{c}", "shared": "shared", None: None}
    spec[f"copy{c}"] = {f"leaf{i}": tuple(rename[a] for a in axes) for i, axes in enumerate(leaves)} or {"x": ()}
  if draw(st.booleans()):
    spec["tied"] = ("shared", "shared")
  return spec


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=repeated_spaces(), size=st.integers(1, 3), by_piece=st.booleans())
def test_random_repeated_spaces_batch_to_the_same_numbers(spec, size, by_piece, key, monkeypatch):
  _by_piece(monkeypatch, by_piece)
  space = bound(spec, fixed=2)
  x = random_features(space, {label: size for label in space.labels}, 2, key)
  params = _params(space, space, 2, 2)
  fn = lambda t: linear.apply(params, t, space, space)  # noqa: E731
  expected = _step_by_step(monkeypatch, fn, x)
  _assert_trees_close(_jit(fn)(x), expected)
  if by_piece:
    _assert_trees_close(_step_by_step(monkeypatch, fn, x, by_piece=True), expected)
  pool = lambda t: linear.invariant_pool(t, space)  # noqa: E731
  _assert_trees_close(_jit(pool)(x), _step_by_step(monkeypatch, pool, x))
