"""The links of a learned optimizer's optax chain, each against optax's own transformation or a formula."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unf
from metatrain import learned_optimizers as lopt
from metatrain.learned_optimizers import transforms

STEPS = 30
pytestmark = pytest.mark.usefixtures("float64")


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(5, 4))), "b": jnp.asarray(rng.normal(size=(4,)))}


def _run(transformation, *, steps=STEPS, seed=1):
  """The updates of every step on random gradients (a zero entry now and then), the params moving with them."""
  rng = np.random.default_rng(seed)
  params = _params()
  state = transformation.init(params)
  update = jax.jit(transformation.update)
  out = []
  for step in range(steps):
    on = step % 7 != 3
    grads = jax.tree.map(lambda p, on=on: jnp.asarray(rng.normal(size=p.shape) * on), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


def _assert_same(a, b, rtol=1e-12):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-14)


def test_adam_direction_is_optax_scale_by_adam():
  decay = jnp.asarray(0.8)
  _assert_same(_run(transforms.adam_direction(decay)), _run(optax.scale_by_adam(b1=0.8, b2=0.999, eps=1e-8)))
  # The control: another first decay is another direction.
  with pytest.raises(AssertionError):
    _assert_same(_run(transforms.adam_direction(decay)), _run(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)))


def test_momentum_direction_is_an_ema_without_bias_correction():
  _assert_same(_run(transforms.momentum_direction(jnp.asarray(0.7))), _run(optax.ema(0.7, debias=False)))


def test_sum_of_adds_what_each_makes_of_the_same_gradients_and_weight_decay_is_adamw():
  decay = jnp.asarray(0.9)
  got = _run(transforms.sum_of(transforms.adam_direction(decay), transforms.weight_decay_term(jnp.asarray(0.01))))
  expected = _run(optax.chain(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8), optax.add_decayed_weights(0.01)))
  _assert_same(got, expected)
  # Each term reads the gradients, not the term before it: a chain of the two is something else.
  doubled = _run(transforms.sum_of(transforms.momentum_direction(decay), transforms.momentum_direction(decay)))
  _assert_same(doubled, jax.tree.map(lambda u: 2 * u, _run(transforms.momentum_direction(decay))))
  with pytest.raises(ValueError, match="at least one"):
    transforms.sum_of()


def test_finite_gradients_read_non_finite_entries_as_zero():
  grads = {"w": jnp.array([1.0, jnp.nan, jnp.inf, -jnp.inf]), "b": jnp.array([-2.0])}
  out, _ = transforms.finite_gradients().update(grads, optax.EmptyState())
  np.testing.assert_array_equal(out["w"], [1.0, 0.0, 0.0, 0.0])
  np.testing.assert_array_equal(out["b"], [-2.0])


def test_scale_by_fan_in_is_n0_over_n():
  params = _params()  # leaves in order: b (fan-in 1), w (fan-in 5)
  ones = jax.tree.map(jnp.ones_like, params)
  out, _ = transforms.scale_by_fan_in((2, 10)).update(ones, optax.EmptyState(), params)
  np.testing.assert_array_equal(out["b"], 2.0 * np.ones(4))
  np.testing.assert_array_equal(out["w"], 2.0 * np.ones((5, 4)))
  with pytest.raises(ValueError, match="needs the params"):
    transforms.scale_by_fan_in((2, 10)).update(ones, optax.EmptyState())


def test_learned_correction_keeps_the_momenta_that_its_features_read():
  """Its state's momenta are the EMAs of the gradients at every decay, written out in numpy."""
  rng = np.random.default_rng(2)
  params = _params()
  link = transforms.learned_correction(lambda x, step: jax.tree.map(lambda v: v[..., 0], x), second_moments=True)
  state = link.init(params)
  m = {k: np.zeros(v.shape + (6,)) for k, v in params.items()}
  v2 = {k: np.zeros(v.shape + (3,)) for k, v in params.items()}
  for _ in range(5):
    grads = {k: rng.normal(size=v.shape) for k, v in params.items()}
    out, state = link.update(jax.tree.map(jnp.asarray, grads), state, params)
    for k, g in grads.items():
      for i, d in enumerate(lopt.features.MOMENTUM_DECAYS):
        m[k][..., i] = d * m[k][..., i] + (1 - d) * g
      for i, d in enumerate(lopt.features.SECOND_MOMENT_DECAYS):
        v2[k][..., i] = d * v2[k][..., i] + (1 - d) * g**2
    # f here reads the first feature: the params normalised by their RMS.
    for k, p in params.items():
      rms = np.sqrt(np.mean(np.square(np.asarray(p))))
      np.testing.assert_allclose(out[k], np.clip(np.asarray(p) / (rms + 1e-8), -10, 10), rtol=1e-12)
  assert int(state.count) == 5
  for k in params:
    np.testing.assert_allclose(state.momenta[k], m[k], rtol=1e-12)
    np.testing.assert_allclose(state.second_moments[k], v2[k], rtol=1e-12)


@pytest.mark.parametrize("base", ["momentum", "adam", "nominal"])
def test_a_network_optimizer_without_f_is_the_sgdm_chain(base):
  """``beta = 0`` takes ``f``'s term out: what remains is :class:`metatrain.LearnedSGDM` at the same scalars."""
  space = unf.WeightSpace({"w": ("in", "hidden"), "b": ("hidden",)})
  options = {"base": base, "initial_alpha": 0.02}
  network = lopt.DeepSetsLOpt(space, width=4, features="adam", **options)
  theta = network.init_meta(jax.random.key(0), dtype=jnp.float64)
  theta = {**theta, "log_beta": jnp.asarray(-jnp.inf), "logit_gamma0": jnp.asarray(1.3)}
  if base == "nominal":
    theta["schedule"] = jnp.linspace(-0.2, 0.2, theta["schedule"].size)
  sgdm = lopt.LearnedSGDM(space, **options)
  scalars = {k: v for k, v in theta.items() if k in sgdm.init_meta(jax.random.key(0))}
  got = _run(network.optimizer(theta, total_steps=STEPS))
  _assert_same(got, _run(sgdm.optimizer(scalars, total_steps=STEPS)))
