"""Learned optimizers: features, the shared contract every learned optimizer passes, symmetry, sizes."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
import unf
from metatrain import learned_optimizers as lopt
from metatrain.learned_optimizers import features
from tests.unf.spaces import SPACES, bound, sizes_for
from unf.testing import assert_equivariant

# --- features against an independent numpy computation --------------------------------------------------------

DECAYS = np.array([0.1, 0.5, 0.9, 0.99, 0.999, 0.9999])
TAUS = np.array([1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5])


def _numpy_features(p, g, m_prev, step):
  """The 19 features of one tensor, written out entry by entry from their definition."""
  m = np.empty_like(m_prev)
  for i, d in enumerate(DECAYS):
    m[..., i] = d * m_prev[..., i] + (1 - d) * g

  def normalize(x):
    rms = np.sqrt(np.sum(x.astype(np.float64) ** 2) / x.size) + 1e-8
    return np.clip(x / rms, -10, 10)

  columns = [normalize(p), normalize(g)] + [normalize(m[..., i]) for i in range(len(DECAYS))]
  columns += [np.full(p.shape, np.tanh(step / tau - 1)) for tau in TAUS]
  return np.stack(columns, axis=-1), m


def _at(path, tree):
  return functools.reduce(lambda t, k: t[k], path, tree)


def test_features_match_numpy():
  rng = np.random.default_rng(0)
  shapes = {"a": (12, 11), "b": {"c": (5,)}, "zero": (2, 2)}
  params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes, is_leaf=lambda s: isinstance(s, tuple))
  params["zero"] = np.zeros((2, 2), np.float32)  # an all-zero tensor (a bias at init): RMS 0
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  grads["a"][1, 2] = 300.0  # holds most of its tensor's mass: normalised to about sqrt(132) > 10, clipped
  momenta = jax.tree.map(lambda p: rng.normal(size=p.shape + (6,)).astype(np.float32), params)
  step = 57

  new_momenta = features.update_momenta(momenta, grads)
  got = features.input_features(params, grads, new_momenta, jnp.asarray(step, jnp.int32))

  assert features.NUM_FEATURES == 19
  for path in (("a",), ("b", "c"), ("zero",)):
    leaf = functools.partial(_at, path)
    expected, expected_m = _numpy_features(leaf(params), leaf(grads), leaf(momenta), step)
    assert leaf(got).shape == leaf(params).shape + (19,) and leaf(got).dtype == jnp.float32
    # float32 rounds 1 - 0.999 by 5e-5 relative: the oracle runs in float64.
    np.testing.assert_allclose(leaf(new_momenta), expected_m, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(leaf(got), expected, rtol=1e-4, atol=1e-5, err_msg=str(path))
  assert float(got["a"][1, 2, 1]) == 10.0  # the clip is exercised
  # The tensor features are the first 8 columns, bit for bit (what the learned correction gives f).
  assert features.NUM_TENSOR_FEATURES == 8
  tensor = features.tensor_features(params, grads, new_momenta)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b[..., :8]), tensor, got)


def test_features_follow_params_dtype_and_read_non_finite_as_zero():
  params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
  grads = {"w": jnp.asarray([[1.0, jnp.nan], [jnp.inf, 2.0], [-jnp.inf, 3.0]], jnp.bfloat16)}
  momenta = features.update_momenta({"w": jnp.zeros((3, 2, 6), jnp.bfloat16)}, grads)
  got = features.input_features(params, grads, momenta, jnp.asarray(0))
  assert got["w"].dtype == jnp.bfloat16 and got["w"].shape == (3, 2, 19)
  assert bool(jnp.all(jnp.isfinite(got["w"])))
  clean = {"w": jnp.asarray([[1.0, 0], [0, 2.0], [0, 3.0]], jnp.bfloat16)}
  np.testing.assert_array_equal(
    got["w"][..., :2], features.input_features(params, clean, momenta, jnp.asarray(0))["w"][..., :2]
  )


# --- the contract: every learned optimizer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task():
  return tasks.get("mlp_fashion8")


# mlp_fashion8's fan-ins, leaf by leaf (layers/0/bias, layers/0/kernel, layers/1/bias, layers/1/kernel).
MLP_FAN_INS = (1, 64, 1, 32)
# Every kind with its defaults, and the UNF optimizer with every option away from its default.
VARIANTS = {name: (name, {}) for name in sorted(lopt.LEARNED_OPTIMIZERS)}
VARIANTS["unf-adam_mup"] = ("unf", {**lopt.PRESETS["adam_mup"], "reference_fan_in": MLP_FAN_INS})


@pytest.fixture(params=sorted(VARIANTS))
def make_lopt(request):
  kind, options = VARIANTS[request.param]
  cls = lopt.LEARNED_OPTIMIZERS[kind]

  def make(space, **more):  # f's options (width, ...) where the kind has an f
    return cls(space, **{k: v for k, v in {**options, **more}.items() if k in lopt.option_names(cls)})

  return make


@functools.partial(jax.jit, static_argnames=("learned", "steps"))
def _train(learned, theta, task, key, *, steps):
  """``steps`` steps of the learned optimizer in a plain optax loop; returns the final params."""
  optimizer = learned.optimizer(theta)
  init_key, data_key = jax.random.split(key)
  params = task.init(init_key)

  def step(carry, batch_key):
    params, state = carry
    grads = jax.grad(task.loss)(params, task.sample_batch(batch_key, "train"))
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(data_key, steps))
  return params


def test_trains_a_task_in_a_plain_optax_loop(make_lopt, task, key):
  learned = make_lopt(task.space)
  theta = learned.init_meta(jax.random.key(1))
  initial = float(task.eval_loss(task.init(jax.random.split(key)[0])))
  final = float(task.eval_loss(_train(learned, theta, task, key, steps=100)))
  # Measured: 2.32 -> 1.57 for both (momentum SGD at lr 0.1 would reach about the same).
  assert final < initial - 0.5, f"valid loss {initial:.3f} -> {final:.3f}"


def test_starts_close_to_its_base_term(make_lopt, task, key):
  """At init ``beta * f`` is a small perturbation of the base step: ``-alpha * m_gamma0`` (lr 0.1, decay 0.9),
  or Adam's ``-alpha * m_hat / (sqrt(v_hat) + eps)`` with the Adam base.

  Measured on mlp_fashion8 after 10 steps: 0.5% to 3% per tensor (up to 35% at the first step, where
  ``m_gamma0 = 0.1 g`` is smallest). Without ``f`` (sgdm) the update is the base step exactly.
  """
  learned = make_lopt(task.space)
  optimizer = learned.optimizer(learned.init_meta(jax.random.key(1)))

  @jax.jit
  def step(task, params, state, batch_key):
    grads = jax.grad(task.loss)(params, task.sample_batch(batch_key, "train"))
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  params = task.init(key)
  state = optimizer.init(params)
  for batch_key in jax.random.split(jax.random.key(2), 10):
    params, state, updates = step(task, params, state, batch_key)
  alpha = learned.initial_alpha
  bases = jax.tree.leaves(optax.tree.get(state, "momentum"))
  if learned.base == "adam":  # bias-corrected at t = 10, decays 0.9 and 0.999
    v_hat = [v / (1 - 0.999**10) for v in jax.tree.leaves(optax.tree.get(state, "second_moment"))]
    bases = [m / (1 - 0.9**10) / (jnp.sqrt(v) + 1e-8) for m, v in zip(bases, v_hat)]
  for u, base in zip(jax.tree.leaves(updates), bases):
    error = float(jnp.linalg.norm(u + alpha * base) / jnp.linalg.norm(alpha * base))
    if isinstance(learned, lopt.NetworkLOpt):
      assert 1e-4 < error < 0.1, error  # close, but f does contribute
    else:
      assert error < 1e-6, error


def test_state_shapes_and_dtypes(make_lopt, task, key):
  learned = make_lopt(task.space)
  optimizer = learned.optimizer(learned.init_meta(key))
  params = task.init(key)
  state = optimizer.init(params)
  # The chain's links' states (metatrain.learned_optimizers.transforms), found by their fields' names.
  for p, momentum in zip(jax.tree.leaves(params), jax.tree.leaves(optax.tree.get(state, "momentum"))):
    assert momentum.shape == p.shape and momentum.dtype == p.dtype
  if learned.base != "momentum":  # Adam's second moment at 0.999
    for p, moment in zip(jax.tree.leaves(params), jax.tree.leaves(optax.tree.get(state, "second_moment"))):
      assert moment.shape == p.shape and moment.dtype == p.dtype
  if isinstance(learned, lopt.NetworkLOpt):  # what f's features read
    for p, momenta in zip(jax.tree.leaves(params), jax.tree.leaves(optax.tree.get(state, "momenta"))):
      assert momenta.shape == p.shape + (6,) and momenta.dtype == p.dtype
    moments = jax.tree.leaves(optax.tree.get(state, "second_moments"))
    assert len(moments) == (len(jax.tree.leaves(params)) if learned.features == "adam" else 0)
    for p, moment in zip(jax.tree.leaves(params), moments):
      assert moment.shape == p.shape + (3,) and moment.dtype == p.dtype
  else:  # no f, no features: the same chain without f's link
    assert optax.tree.get_all_with_path(state, "momenta") == []
  counts = [c for _, c in optax.tree.get_all_with_path(state, "count")]
  assert all(c.shape == () and c.dtype == jnp.int32 and int(c) == 0 for c in counts)  # none for plain momentum SGD
  grads = jax.tree.map(jnp.ones_like, params)
  updates, new_state = jax.jit(optimizer.update)(grads, state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), updates) == jax.tree.map(lambda x: (x.shape, x.dtype), params)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert [int(c) for _, c in optax.tree.get_all_with_path(new_state, "count")] == [1] * len(counts)
  # Composes with other optax transformations.
  chained = optax.chain(optimizer, optax.scale(2.0))
  doubled, _ = jax.jit(chained.update)(grads, chained.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 2 * b, rtol=1e-6), doubled, updates)


def test_update_requires_params(make_lopt, task, key):
  learned = make_lopt(task.space)
  optimizer = learned.optimizer(learned.init_meta(key))
  params = task.init(key)
  with pytest.raises(ValueError, match="needs the params"):
    optimizer.update(params, optimizer.init(params))


def test_jit_and_vmap_over_theta(make_lopt, task, key):
  learned = make_lopt(task.space)
  assert hash(learned) == hash(make_lopt(task.space)) and learned == make_lopt(task.space)  # a static jit argument
  theta = learned.init_meta(jax.random.key(1))
  leaves, treedef = jax.tree.flatten(theta)
  noise = [jax.random.normal(k, (3,) + x.shape) for k, x in zip(jax.random.split(key, len(leaves)), leaves)]
  thetas = jax.tree.unflatten(treedef, [x + 0.1 * n for x, n in zip(leaves, noise)])
  # 100 steps: the unbatched runs reuse the compilation of the training test.
  run = jax.jit(jax.vmap(lambda th, task: task.eval_loss(_train(learned, th, task, key, steps=100)), (0, None)))
  batched = run(thetas, task)
  one_by_one = []
  for i in range(3):
    theta_i = jax.tree.map(lambda x, i=i: x[i], thetas)
    one_by_one.append(float(task.eval_loss(_train(learned, theta_i, task, key, steps=100))))
  np.testing.assert_allclose(batched, one_by_one, rtol=1e-4)
  assert np.ptp(one_by_one) > 1e-4  # the perturbations matter


def _with_non_finite(grads):
  grads = jax.tree.map(lambda g: g, grads)
  grads["layers"][0]["kernel"] = grads["layers"][0]["kernel"].at[3, 4].set(jnp.nan)
  grads["layers"][1]["bias"] = grads["layers"][1]["bias"].at[2].set(jnp.inf)
  return grads


def test_non_finite_gradients_leave_everything_finite(make_lopt, task, key):
  """NaN / inf gradient entries are read as 0: finite updates, state and meta-gradients."""
  learned = make_lopt(task.space)
  theta = learned.init_meta(jax.random.key(1))
  optimizer = learned.optimizer(theta)
  update = jax.jit(optimizer.update)
  params = task.init(key)  # its biases are all zero: the features' RMS is 0 there
  grads = jax.grad(task.loss)(params, task.sample_batch(jax.random.key(2)))
  _, state = update(grads, optimizer.init(params), params)  # a state that is not all zeros
  bad = _with_non_finite(grads)
  zeroed = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0), bad)
  updates, new_state = update(bad, state, params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((updates, new_state)))
  expected, _ = update(zeroed, state, params)
  jax.tree.map(np.testing.assert_array_equal, updates, expected)

  def objective(theta, params):
    updates, _ = learned.optimizer(theta).update(bad, state, params)
    return sum(jnp.sum(jnp.square(u)) for u in jax.tree.leaves(updates))

  meta_grads = jax.jit(jax.grad(objective, argnums=(0, 1)))(theta, params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(meta_grads))
  assert float(jnp.abs(meta_grads[0]["log_beta" if "log_beta" in theta else "log_alpha"])) > 0


def test_meta_gradients_stay_finite_where_a_gradient_has_always_been_zero(task, key):
  """The Adam base's ``sqrt(v_hat)`` at ``v_hat = 0`` (a weight whose gradient was always exactly 0, such as
  one of an always-zero input) has an infinite derivative: backpropagating through it must not give NaN."""
  learned = lopt.LEARNED_OPTIMIZERS["sgdm"](task.space, base="adam")
  theta = learned.init_meta(jax.random.key(1))
  batch = task.sample_batch(jax.random.key(2))

  def objective(theta, params):
    grads = jax.grad(task.loss)(params, batch)
    grads["layers"][0]["kernel"] = grads["layers"][0]["kernel"].at[3, 4].set(0.0)  # v_hat = 0 there
    optimizer = learned.optimizer(theta)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return sum(jnp.sum(jnp.square(u)) for u in jax.tree.leaves(updates))

  meta_grads = jax.jit(jax.grad(objective, argnums=(0, 1)))(theta, task.init(key))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(meta_grads))


def _mlp_params(hidden):
  return {
    "layers": {
      0: {"kernel": jnp.ones((64, hidden)), "bias": jnp.ones(hidden)},
      1: {"kernel": jnp.ones((hidden, 10)), "bias": jnp.ones(10)},
    }
  }


def test_meta_parameter_count_does_not_depend_on_widths(make_lopt, task, key):
  # Spaces carry labels, not widths: the space of a 64-128-10 MLP is that of mlp_fashion8 (64-32-10).
  narrow, wide = make_lopt(task.space), make_lopt(unf.mlp_space(_mlp_params(128)))
  theta = narrow.init_meta(key)
  count = narrow.num_meta_parameters(theta)
  assert wide.num_meta_parameters(wide.init_meta(key)) == count
  assert lopt.describe(narrow, theta).splitlines()[-1].split() == ["total", f"{count:,}"]
  # A theta meta-trained on the narrow network runs on the wide one.
  params = _mlp_params(128)
  optimizer = wide.optimizer(theta)
  updates, _ = optimizer.update(params, optimizer.init(params), params)
  assert updates["layers"][0]["kernel"].shape == (64, 128)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_unf_meta_parameter_count(task, key):
  learned = lopt.UNFLOpt(task.space)
  count = learned.num_meta_parameters(learned.init_meta(key))
  # 3 scalars, Dense 19 -> 32 and Dense 32 -> 32 (kernels and biases), then EquivariantLinear 32 -> 1: one weight
  # per basis term and input channel, one bias per equivariant bias term (both counted by unf.basis).
  head = 32 * unf.basis.count_terms(task.space, task.space) + unf.basis.count_bias_terms(task.space)
  assert count == 3 + (19 * 32 + 32) + (32 * 32 + 32) + head
  assert head == 1028  # the 2,727 the guide quotes (learned_optimizers.md)


def test_every_learned_optimizer_is_registered():
  """The contract tests run over the registry: a learned optimizer class not in it would escape them."""

  def descendants(cls):
    return {cls} | {d for sub in cls.__subclasses__() for d in descendants(sub)}

  kinds = {cls for cls in descendants(lopt.LearnedOptimizer) if cls.name and not cls.__name__.startswith("_")}
  assert kinds == set(lopt.LEARNED_OPTIMIZERS.values())
  assert all(lopt.LEARNED_OPTIMIZERS[cls.name] is cls for cls in kinds)


def test_description_round_trips_through_json(make_lopt, task):
  learned = make_lopt(task.space, width=8)
  assert lopt.from_json(learned.to_json()) == learned
  with pytest.raises(ValueError, match="unknown learned optimizer 'adam'"):
    lopt.from_json({**learned.to_json(), "kind": "adam"})
  # A description written before the options existed reads as the defaults, except where the behaviour of
  # that time was another value: a UNF then mixed every fixed axis.
  old = {"kind": learned.name, "width": 8, "space": learned.to_json()["space"]}
  before = {"fixed_axes": "mix"} if learned.name == "unf" else {}
  cls = lopt.LEARNED_OPTIMIZERS[learned.name]
  expected = {k: v for k, v in {"width": 8, **before}.items() if k in lopt.option_names(cls)}
  assert lopt.from_json(old) == cls(task.space, **expected)
  if learned.name == "sgdm":  # written when it carried f's options, with no effect: they are dropped
    with_f = {**old, "pointwise_layers": 3, "features": "adam", "initial_beta": 0.05, "base": "adam"}
    assert lopt.from_json(with_f) == cls(task.space, base="adam")
  if learned.name == "unf":  # every value of the option travels
    for value in ("mix", "label", 20):
      described = make_lopt(task.space, width=8, fixed_axes=value)
      assert lopt.from_json(json.loads(json.dumps(described.to_json()))) == described


# mlp_fashion8's space as a flax ``nnx.Sequential`` lays it out (layers/0 and layers/2, an activation between),
# with its labels renamed input -> x, hidden0 -> a, output -> y: the reverse of their alphabetical order.
RENAMED_MLP_SPACE = unf.WeightSpace(
  {"layers": {0: {"kernel": ("x", "a"), "bias": ("a",)}, 2: {"kernel": ("a", "y"), "bias": ("y",)}}}
)


def _as_sequential(tree):
  """A pytree of mlp_fashion8's space (layers/0, layers/1) under the paths of RENAMED_MLP_SPACE."""
  return {"layers": {0: tree["layers"][0], 2: tree["layers"][1]}}


def test_transfer_to_a_renamed_space_gives_the_same_updates(make_lopt, task, key):
  """A theta meta-trained on one space runs on the same architecture with other leaf paths and label names."""
  learned = make_lopt(task.space)
  rng = np.random.default_rng(0)  # every entry nonzero: no zero bias can hide a wrongly mapped term
  theta = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), learned.init_meta(key))
  params = task.init(key)
  grads = jax.grad(task.loss)(params, task.sample_batch(jax.random.key(2)))
  space, renamed_params, renamed_grads = RENAMED_MLP_SPACE, _as_sequential(params), _as_sequential(grads)
  other, other_theta = learned.transfer(theta, space)
  assert other.space == space and type(other) is type(learned) and other.options() == learned.options()
  original = learned.optimizer(theta)
  moved = other.optimizer(other_theta)
  updates, _ = original.update(grads, original.init(params), params)
  renamed_updates, _ = moved.update(renamed_grads, moved.init(renamed_params), renamed_params)
  for a, b in zip(space.flatten(_as_sequential(updates)), space.flatten(renamed_updates)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The control: theta applied without the transfer (its head keyed by the old names) does not run there.
  if isinstance(learned, lopt.NetworkLOpt):
    with pytest.raises((KeyError, ValueError)):
      learned.optimizer(theta).update(renamed_grads, original.init(renamed_params), renamed_params)


def test_fan_in_scale_is_one_at_the_reference_widths_and_n0_over_n_elsewhere(task, key):
  """``update_scale="fan_in"``: identical updates on the meta-training widths; at 4x the width, 1/4 of them."""
  options = {**lopt.PRESETS["adam"], "width": 8}
  scaled = lopt.UNFLOpt(task.space, **options, update_scale="fan_in", reference_fan_in=MLP_FAN_INS)
  plain = lopt.UNFLOpt(task.space, **options)
  theta = plain.init_meta(key)
  for params in (task.init(key), _mlp_params(128)):  # 64-32-10, then 64-128-10
    grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)
    results = []
    for learned in (scaled, plain):
      optimizer = learned.optimizer(theta)
      results.append(optimizer.update(grads, optimizer.init(params), params)[0])
    hidden = params["layers"][0]["kernel"].shape[1]
    # n0 / n per leaf: layers/0 keeps its fan-ins (1, 64); layers/1/kernel's is the hidden width.
    factors = {"layers/0/bias": 1, "layers/0/kernel": 1, "layers/1/bias": 1, "layers/1/kernel": 32 / hidden}
    for path, s, p in zip(task.space.paths, task.space.flatten(results[0]), task.space.flatten(results[1])):
      np.testing.assert_allclose(s, factors[unf.space.path_str(path)] * p, rtol=1e-5, atol=1e-9)
  with pytest.raises(ValueError, match="reference_fan_in"):
    lopt.UNFLOpt(task.space, update_scale="fan_in")


def test_transfer_refuses_another_architecture(make_lopt, task):
  learned = make_lopt(task.space)
  deeper = unf.mlp_space({"layers": {i: {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)} for i in range(3)}})
  with pytest.raises(ValueError, match="leaves"):
    learned.transfer(learned.init_meta(jax.random.key(0)), deeper)


# --- symmetry ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _PositionDependentLOpt(lopt.UNFLOpt):
  """A deliberately broken UNFLOpt: its last layer adds a term that depends on each entry's position."""

  def _head(self, head, hidden):
    out = super()._head(head, hidden)
    return jax.tree.map(lambda y: y + 0.1 * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size, out)


def _update_fn(learned, theta, count):
  """The update as one map of per-parameter features: (params, grads, momentum, momenta) -> (update, state).

  Packs everything on one trailing axis, so that ``assert_equivariant`` permutes it all at once.
  """
  optimizer = learned.optimizer(theta)

  @jax.jit
  def fn(x):
    params, grads, momentum = (jax.tree.map(lambda v, i=i: v[..., i], x) for i in range(3))
    momenta = jax.tree.map(lambda v: v[..., 3:9], x)
    # Every link's state set by its fields' names (metatrain.learned_optimizers.transforms); every count is t.
    state = optax.tree.set(optimizer.init(params), momentum=momentum, momenta=momenta, count=count)
    if x_has_moments:
      moments = jax.tree.map(lambda v: jnp.abs(v[..., 9:]), x)
      state = optax.tree.set(state, second_moments=moments)
      if learned.base != "momentum":  # the Adam base's own second moment: the one at decay 0.999
        state = optax.tree.set(state, second_moment=jax.tree.map(lambda v: v[..., -1], moments))
    updates, state = optimizer.update(grads, state, params)
    extra = (optax.tree.get(state, "second_moments"),) if x_has_moments else ()
    return jax.tree.map(
      lambda u, m, ms, *v: jnp.concatenate([u[..., None], m[..., None], ms, *v], -1),
      updates,
      optax.tree.get(state, "momentum"),
      optax.tree.get(state, "momenta"),
      *extra,
    )

  x_has_moments = learned.features == "adam"
  assert learned.base == "momentum" or x_has_moments, "the Adam base's second moment comes from the features'"

  return fn


def _generic_theta(learned, seed=0):
  """Random float64 meta-parameters, every entry nonzero (no zero bias that could hide a broken term).

  Drawn by numpy in the structure of ``init_meta``'s: eager ``jax.random`` compiles once per leaf shape.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(learned.init_meta, dtype=jnp.float64), jax.random.key(0))
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape)), shapes)


def _random_inputs(space, features, seed=0):
  """A random pytree of ``space`` with distinct label sizes and a trailing feature axis.

  numpy draws it: ``jax.random`` would compile once per leaf shape (seconds on 2 cores).
  """
  rng = np.random.default_rng(seed)
  sizes = sizes_for(space)
  leaves = []
  for index, axes in enumerate(space.axes):
    fixed = iter(space.fixed_shape(index))
    shape = tuple(sizes[a] if a is not None else next(fixed) for a in axes)
    leaves.append(jnp.asarray(rng.normal(size=(*shape, features))))
  return space.unflatten(leaves)


def _set_space(space):
  """Every tensor flattened into a set of its own: this space's group permutes each tensor's entries freely."""
  return unf.WeightSpace(space.unflatten([(f"entries{i}",) for i in range(len(space))]))


def _on_sets(fn, space, shapes):
  def on_sets(x):
    y = fn(space.unflatten([v.reshape(s + v.shape[-1:]) for v, s in zip(space.flatten(x), shapes)]))
    return space.unflatten([v.reshape((-1, v.shape[-1])) for v in space.flatten(y)])

  return on_sets


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("kind", ["unf", "deep_sets"])
@pytest.mark.parametrize("feature_set", ["paper", "adam"])
def test_f_adds_the_time_features_once_as_if_every_entry_read_them(kind, feature_set, task):
  """``f(theta, x, step)`` (x without the 11 time columns, what the chain passes) against ``f`` on all the
  features with the time ones broadcast to every entry (the paper's layout), in float64: the same numbers."""
  learned = lopt.LEARNED_OPTIMIZERS[kind](task.space, width=8, features=feature_set)
  theta = _generic_theta(learned)
  step = jnp.asarray(37, jnp.int32)
  x = _random_inputs(task.space, learned.num_features - len(features.TIME_SCALES))
  time = features.time_features(step, dtype=jnp.float64)
  full = jax.tree.map(  # tensor features, then time, then the second-moment ones (features' column order)
    lambda v: jnp.concatenate([v[..., :8], jnp.broadcast_to(time, v.shape[:-1] + time.shape), v[..., 8:]], axis=-1),
    x,
  )
  got, expected = learned.f(theta, x, step), learned.f(theta, full)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12), got, expected)
  assert not np.allclose(learned.f(theta, x, step + 400)["layers"][0]["kernel"], got["layers"][0]["kernel"])


@pytest.mark.usefixtures("float64")
class TestSymmetry:
  def _inputs(self, name, key):
    space = bound(SPACES[name])
    return space, _random_inputs(space, 3 + 6)

  @pytest.mark.parametrize("name", sorted(SPACES))
  def test_unf_lopt_is_equivariant(self, name, key):
    space, x = self._inputs(name, key)
    learned = lopt.UNFLOpt(space, width=8)
    fn = _update_fn(learned, _generic_theta(learned), jnp.asarray(37, jnp.int32))
    assert_equivariant(fn, space, jax.random.key(3), x)

  @pytest.mark.parametrize("name", ["mlp", "cnn"])
  def test_unf_lopt_with_every_option_is_equivariant(self, name, key):
    space, _ = self._inputs(name, key)
    x = _random_inputs(space, 3 + 6 + 3)
    shapes = [v.shape[:-1] for v in space.flatten(x)]
    reference = lopt.fan_ins([jnp.zeros(tuple(max(1, n - 1) for n in shape)) for shape in shapes])
    learned = lopt.UNFLOpt(space, width=8, **{**lopt.PRESETS["adam_mup"], "reference_fan_in": reference})
    fn = _update_fn(learned, _generic_theta(learned), jnp.asarray(37, jnp.int32))
    assert_equivariant(fn, space, jax.random.key(3), x)

  @pytest.mark.parametrize("name", ["mlp", "rnn"])
  def test_deep_sets_lopt_is_equivariant_to_any_permutation_of_each_tensor(self, name, key):
    space, x = self._inputs(name, key)
    learned = lopt.DeepSetsLOpt(space, width=8)
    fn = _update_fn(learned, _generic_theta(learned), jnp.asarray(37, jnp.int32))
    shapes = [v.shape[:-1] for v in space.flatten(x)]
    sets = _set_space(space)
    x_sets = sets.unflatten([v.reshape((-1, v.shape[-1])) for v in space.flatten(x)])
    assert_equivariant(_on_sets(fn, space, shapes), sets, jax.random.key(3), x_sets)
    assert_equivariant(fn, space, jax.random.key(4), x)  # hence to the network's symmetry group too

  def test_negative_controls(self, key):
    space, x = self._inputs("mlp", key)
    broken = _PositionDependentLOpt(space, width=8)
    with pytest.raises(AssertionError, match="not equivariant"):
      assert_equivariant(_update_fn(broken, _generic_theta(broken), jnp.asarray(37)), space, jax.random.key(3), x)
    # The UNF optimizer uses the structure of the space: it is not equivariant to arbitrary entry permutations.
    learned = lopt.UNFLOpt(space, width=8)
    fn = _update_fn(learned, _generic_theta(learned), jnp.asarray(37))
    shapes = [v.shape[:-1] for v in space.flatten(x)]
    sets = _set_space(space)
    x_sets = sets.unflatten([v.reshape((-1, v.shape[-1])) for v in space.flatten(x)])
    with pytest.raises(AssertionError, match="not equivariant"):
      assert_equivariant(_on_sets(fn, space, shapes), sets, jax.random.key(3), x_sets)
