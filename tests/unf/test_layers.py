"""EquivariantLinear, InvariantPool and UNF: equivariance, invariance, init scale, width transfer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unf
from tests.unf import oracle
from tests.unf.spaces import SPACES, bound, sizes_for
from unf import linear
from unf.testing import assert_equivariant, assert_invariant, random_features


def _layer_fn(space_in, space_out, fin, fout, seed=0):
  params = linear.init(jax.random.key(seed), space_in, space_out, fin, fout, dtype=jnp.float64)
  # Random biases too, so the bias terms are exercised.
  params = {
    k: v + 0.3 * jax.random.normal(jax.random.key(i), v.shape, v.dtype) for i, (k, v) in enumerate(params.items())
  }
  return params, jax.jit(lambda x: linear.apply(params, x, space_in, space_out))


@pytest.mark.parametrize("name", sorted(SPACES))
def test_equivariant_linear_is_equivariant(name, key):
  space = bound(SPACES[name])
  x = random_features(space, sizes_for(space), 2, key)
  _, fn = _layer_fn(space, space, 2, 3)
  assert_equivariant(fn, space, key, x)


def test_equivariant_linear_between_different_spaces(key):
  space_in = bound(SPACES["rnn"])
  space_out = unf.WeightSpace({"gate": ("hidden", "hidden", "hidden"), "scale": ("embed",), "global": ()})
  x = random_features(space_in, sizes_for(space_in), 2, key)
  _, fn = _layer_fn(space_in, space_out, 2, 4)
  y = fn(x)
  n = sizes_for(space_in)["hidden"]
  assert y["gate"].shape == (n, n, n, 4) and y["global"].shape == (4,)
  assert_equivariant(fn, space_in, key, x, space_out=space_out)


def test_negative_control_dense_over_flattened_weights_fails(key):
  space = bound(SPACES["mlp"])
  x = random_features(space, sizes_for(space), 1, key)
  flat, unravel = jax.flatten_util.ravel_pytree(x)
  dense = jax.random.normal(key, (flat.size, flat.size), jnp.float64)
  with pytest.raises(AssertionError, match="not equivariant"):
    assert_equivariant(lambda t: unravel(dense @ jax.flatten_util.ravel_pytree(t)[0]), space, key, x)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_invariant_pool_is_invariant(name, key):
  space = bound(SPACES[name])
  x = random_features(space, sizes_for(space), 3, key)
  pool = unf.InvariantPool(space)
  y = pool(x)
  assert y.shape == (pool.output_size(3),)
  assert_invariant(pool, space, key, x)


def test_invariant_pool_values_match_direct_means(key):
  space = unf.WeightSpace({"r": ("h", "h"), "v": ("h",), "s": ()})
  x = random_features(space, {"h": 5}, 1, key)
  r, v, s = np.asarray(x["r"][..., 0]), np.asarray(x["v"][..., 0]), np.asarray(x["s"][..., 0])
  expected = sorted([r.mean(), np.diag(r).mean(), v.mean(), float(s)])
  assert np.allclose(sorted(np.asarray(unf.InvariantPool(space)(x))), expected)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_unf_equivariant_and_invariant(name, key):
  space = bound(SPACES[name])
  x = random_features(space, sizes_for(space), 2, key)
  net = unf.UNF(space, 2, 3, hidden=(4, 4), rngs=nnx.Rngs(0), param_dtype=jnp.float64)
  assert_equivariant(nnx.jit(lambda t: net(t)), space, key, x)
  inv = unf.UNF(space, 2, 5, hidden=(4,), invariant=True, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
  y = inv(x)
  assert y.shape == (5,)
  assert_invariant(nnx.jit(lambda t: inv(t)), space, key, x)


def test_parameters_do_not_depend_on_width_and_transfer(key):
  space = bound(SPACES["rnn"])
  net = unf.UNF(space, 2, 2, hidden=(4,), rngs=nnx.Rngs(0), param_dtype=jnp.float64)
  forward = nnx.jit(lambda t: net(t))
  small, wide = sizes_for(space, base=3), sizes_for(space, base=9)
  n, m = small["hidden"], wide["hidden"]
  assert forward(random_features(space, small, 2, key))["cell"]["dense_h"]["kernel"].shape == (n, n, 2)
  wide = random_features(space, wide, 2, key)
  assert forward(wide)["cell"]["dense_h"]["kernel"].shape == (m, m, 2)
  assert_equivariant(forward, space, key, wide)
  assert unf.num_parameters(net) == unf.num_parameters(unf.UNF(space, 2, 2, hidden=(4,), rngs=nnx.Rngs(1)))


def test_fused_and_plain_channel_mixing_agree(key, monkeypatch):
  space = bound(SPACES["mlp"])
  x = random_features(space, sizes_for(space), 3, key)
  params, _ = _layer_fn(space, space, 3, 4)
  program = lambda: jax.jit(lambda t: linear.apply(params, t, space, space)).lower(x).as_text()  # noqa: E731
  monkeypatch.setattr(linear, "_FUSED_OUTPUT_MIN", 0)  # fuse even these small tensors
  fused, fused_program = linear.apply(params, x, space, space), program()
  monkeypatch.setattr(linear, "_FUSED_CONTRACTION_MAX", 0)
  plain, plain_program = linear.apply(params, x, space, space), program()
  assert fused_program != plain_program  # the two paths really differ
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_gradients_flow_through_fused_path(key, monkeypatch):
  monkeypatch.setattr(linear, "_FUSED_OUTPUT_MIN", 0)
  space = bound(SPACES["mlp"])
  x = random_features(space, sizes_for(space), 3, key)
  params, _ = _layer_fn(space, space, 3, 4)

  def loss(p, t):
    return sum(jnp.sum(jnp.sin(y)) for y in jax.tree.leaves(linear.apply(p, t, space, space)))

  rev = jax.grad(loss)(params, x)
  direction = jax.tree.map(lambda a: jax.random.normal(key, a.shape, a.dtype), params)
  _, fwd = jax.jvp(lambda p: loss(p, x), (params,), (direction,))
  assert np.isclose(fwd, sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(rev), jax.tree.leaves(direction))))


@pytest.mark.parametrize("name", sorted(SPACES))
def test_init_keeps_unit_scale(name, key):
  space = bound(SPACES[name])
  x = random_features(space, sizes_for(space, base=40), 8, key)
  params = linear.init(key, space, space, 8, 16, dtype=jnp.float64)
  y = jax.jit(lambda t: linear.apply(params, t, space, space))(x)
  rms = {"/".join(map(str, p)): float(jnp.sqrt(jnp.mean(jnp.square(v)))) for p, v in zip(space.paths, space.flatten(y))}
  assert all(0.75 < r < 1.35 for r in rms.values()), rms


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_unf_keeps_scale_through_depth(name, key):
  space = bound(SPACES[name])
  x = random_features(space, sizes_for(space, base=40), 4, key)
  net = unf.UNF(space, 4, 4, hidden=(32,) * 5, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
  h = x
  for k, layer in enumerate(net.layers):
    h = jax.jit(lambda t, layer=layer: layer(t))(h)
    rms = float(jnp.sqrt(jnp.mean(jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(h)]) ** 2)))
    assert 0.5 < rms < 2.0, f"layer {k}: rms {rms}"
    h = jax.tree.map(net.activation, h)


def test_plans_are_cached_not_reenumerated(key):
  space = bound(SPACES["transformer"])
  x = random_features(space, sizes_for(space), 1, key)
  params = linear.init(key, space, space, 1, 1, dtype=jnp.float64)
  unf.basis.plan(space, space)
  misses = unf.basis.plan.cache_info().misses
  for _ in range(3):  # three fresh traces
    jax.jit(lambda p, t: linear.apply(p, t, space, space))(params, x)
  assert unf.basis.plan.cache_info().misses == misses


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_a_leaf_pairs_terms_are_enumerated_once_per_renamed_pair(data):
  """``basis._terms_of_pair`` enumerates on labels renamed to their rank (cached: the leaf pairs of isomorphic
  blocks share it), then renames the signatures back: the same terms, in the same order, as enumerating the
  pair's own labels."""
  names = data.draw(st.lists(st.sampled_from("abcdefgh"), min_size=2, max_size=5, unique=True))
  out = tuple(data.draw(st.lists(st.sampled_from(names), min_size=0, max_size=3)))
  inp = tuple(data.draw(st.lists(st.sampled_from(names), min_size=0, max_size=3)))
  assert unf.basis._terms_of_pair(out, inp) == unf.basis._pair_terms.__wrapped__(out, inp)


def test_a_plan_through_the_renamed_pairs_equals_the_plan_pair_by_pair(monkeypatch):
  """The whole plan (reductions, groups, their order: the parameters' layout) as without the renaming."""
  space = bound(SPACES["transformer"])
  fast = unf.basis.plan.__wrapped__(space, space)
  monkeypatch.setattr(unf.basis, "_terms_of_pair", unf.basis._pair_terms.__wrapped__)
  assert unf.basis.plan.__wrapped__(space, space) == fast
  assert fast.num_terms == oracle.closed_form_count_terms(space, space)


# --- random spaces (hypothesis) -----------------------------------------------------

LABELS = ["a", "b", "c", "d"]


@st.composite
def weight_spaces(draw):
  n_leaves = draw(st.integers(1, 3))
  spec = {}
  for i in range(n_leaves):
    rank = draw(st.integers(0, 3))
    spec[f"leaf{i}"] = tuple(draw(st.sampled_from([*LABELS, None])) for _ in range(rank))
  # Sometimes force a 3-way tie, the hardest case.
  if draw(st.booleans()):
    spec["tied"] = ("a", "a", "a")
  return spec


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=weight_spaces(), data=st.data())
def test_random_spaces_equivariant(spec, data, key):
  space = bound(spec, fixed=2)
  sizes = {label: data.draw(st.integers(1, 4)) for label in space.labels}
  x = random_features(space, sizes, 2, key)
  _, fn = _layer_fn(space, space, 2, 2)
  assert_equivariant(fn, space, key, x)
  assert_invariant(unf.InvariantPool(space), space, key, x)


@pytest.mark.parametrize("name", ["mlp", "rnn", "transformer"])
def test_bias_terms_match_closed_form(name):
  space = bound(SPACES[name])
  params = linear.init(jax.random.key(0), space, space, 1, 5)
  biases = sum(v.size for k, v in params.items() if k.endswith("|bias"))
  # Per leaf: the partitions of its own axes into same-label blocks (Bell numbers), 5 channels each.
  expected = sum(
    5 * int(np.prod([unf.basis.bell(axes.count(label)) for label in set(axes) - {None}])) for axes in space.axes
  )
  assert biases == expected == 5 * unf.basis.count_bias_terms(space)
