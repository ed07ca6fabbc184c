"""What every gradient estimator shares: the interface, and the antithetic maths (noise, unrolls, the estimate).

An *inner problem* is any pytree object with

- ``horizon``: the number of inner steps of one run (static int);
- ``init(theta, key) -> state``: a fresh inner run;
- ``step(theta, state, key) -> (state, loss)``: one inner step and its
  (normalised) meta-loss.

:class:`metatrain.problem.LearnedOptimizerProblem` is the one meta-training
uses; the statistical tests plug in a quadratic. A *particle* is the state of
one inner run that an estimator advances a truncation at a time (for PES, with
the noise it has accumulated): the one name, across the package, for what a
worker keeps between estimates and a checkpoint may save
(``TrainConfig.checkpoint_particles``). An *estimator* is a frozen
dataclass deriving from :class:`Estimator`: a pure state machine
``step(problem, state, theta, key) -> (state, grad, metrics)``. Everything
here is pure.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from metatrain.types import Metrics, PyTree, Theta


@dataclasses.dataclass(frozen=True)
class Estimator:
  """The interface of a gradient estimator of the meta-loss (the base class of every estimator).

  Subclasses are frozen dataclasses of hyper-parameters (hashable: they are
  static under ``jax.jit``), registered under :attr:`name` in
  :data:`metatrain.estimators.ESTIMATORS`. The state is a pytree of arrays that
  the caller passes in and gets back; metrics come back as values.

  Attributes:
    name: the estimator's key in the registry (and in configs and checkpoints).
    num_pairs: antithetic pairs per estimate (2 x num_pairs inner runs).
  """

  name: ClassVar[str]
  num_pairs: int = 8

  def init(self, problem: Any, theta: Theta, key: jax.Array) -> PyTree:
    """The estimator's initial state for ``problem`` at ``theta``."""
    raise NotImplementedError

  def step(self, problem: Any, state: PyTree, theta: Theta, key: jax.Array) -> tuple[PyTree, Theta, Metrics]:
    """One estimate: ``(state, theta, key) -> (state, gradient estimate shaped like theta, metrics)``."""
    raise NotImplementedError

  def inner_steps(self, horizon: int) -> int:
    """Inner steps (both signs of every pair counted) that one :meth:`step` runs on problems of ``horizon``."""
    raise NotImplementedError

  def check(self, horizon: int) -> None:
    """Raises a ValueError naming the problem when the estimator cannot run on problems of ``horizon`` steps."""

  def to_json(self) -> dict[str, Any]:
    """The estimator as JSON-ready values ``{"name": ..., <its fields>}``; ``estimators.from_json`` reads them."""
    return {"name": self.name, **dataclasses.asdict(self)}


def start_steps(key: jax.Array, num: int, horizon: int, truncation: int, random_offsets: bool) -> jax.Array:
  """Initial step counters of ``num`` runs: random multiples of the truncation length, so resets are spread out.

  Returns:
    An int32 vector of ``num`` counters in ``{0, truncation, ..., horizon - truncation}`` (all 0 without
    ``random_offsets``).
  """
  check_truncation(horizon, truncation)
  if not random_offsets:
    return jnp.zeros((num,), jnp.int32)
  return truncation * jax.random.randint(key, (num,), 0, horizon // truncation)


def check_truncation(horizon: int, truncation: int) -> None:
  """Raises a ValueError unless ``horizon`` is a positive multiple of ``truncation``."""
  if truncation < 1 or horizon < truncation or horizon % truncation:
    raise ValueError(
      f"the horizon ({horizon}) must be a positive multiple of the truncation length ({truncation}): "
      "set both so that truncations tile whole runs."
    )


def sample_noise(key: jax.Array, theta: Theta, num: int, std: float, scales: Theta | None = None) -> Theta:
  """``num`` Gaussian perturbations of ``theta`` with standard deviation ``std`` (leading axis ``num``).

  With ``scales`` (a pytree like ``theta`` of factors broadcastable to its leaves, :func:`noise_scales`),
  each part's standard deviation is ``std * scale``; the draws are the same, only multiplied.
  """
  leaves, treedef = jax.tree.flatten(theta)
  factors = [1.0] * len(leaves) if scales is None else _leaves_like(scales, treedef)
  keys = jax.random.split(key, len(leaves))
  noise = [
    std * jnp.asarray(s, jnp.result_type(x)) * jax.random.normal(k, (num, *jnp.shape(x)), jnp.result_type(x))
    for k, x, s in zip(keys, leaves, factors)
  ]
  return jax.tree.unflatten(treedef, noise)


def _leaves_like(scales: Theta, treedef: Any) -> list[Any]:
  """The leaves of ``scales``, which must have ``treedef``'s structure (a factor per leaf of theta)."""
  leaves, structure = jax.tree.flatten(scales)
  if structure != treedef:
    raise ValueError(
      f"noise scales must be shaped like theta (a factor per leaf): got {structure}, expected {treedef}."
    )
  return leaves


def noise_scales(problem: Any, theta: Theta, per_part: bool) -> Theta | None:
  """The problem's scale of every part of ``theta`` when ``per_part`` (its ``noise_scales(theta)``), else None.

  Raises:
    ValueError: ``per_part`` with a problem that does not say its scales.
  """
  if not per_part:
    return None
  scales = getattr(problem, "noise_scales", None)
  if scales is None:
    raise ValueError(
      f"per_part_noise=True scales the noise of each part of theta by the problem's noise_scales(theta), and "
      f"{type(problem).__name__} has none: give it one, or set per_part_noise=False."
    )
  return scales(theta)


def whiten(directions: Theta, scales: Theta | None) -> Theta:
  """``directions / scales**2``: what turns perturbations of std ``std * scale`` into an unbiased estimate.

  With noise ``eps ~ N(0, std^2 diag(s^2))`` the antithetic estimate of the gradient of the smoothed loss is
  ``Sigma^-1 eps (L+ - L-) / 2 = eps / s^2 * (L+ - L-) / (2 std^2)``; :func:`estimate` applies the rest.
  """
  if scales is None:
    return directions
  treedef = jax.tree.structure(directions)
  factors = _leaves_like(scales, treedef)
  leaves = [d / jnp.square(jnp.asarray(s, d.dtype)) for d, s in zip(jax.tree.leaves(directions), factors)]
  return jax.tree.unflatten(treedef, leaves)


def add(theta: Theta, delta: Theta, sign: float = 1.0) -> Theta:
  """``theta + sign * delta`` where ``delta`` has a leading particle axis."""
  return jax.tree.map(lambda t, d: t + sign * d, theta, delta)


def where(mask: jax.Array, new: Any, old: Any) -> Any:
  """Per particle (leading axis), ``new`` where ``mask`` else ``old``."""

  def pick(n, o):
    return jnp.where(mask.reshape(mask.shape + (1,) * (o.ndim - mask.ndim)), n, o)

  return jax.tree.map(pick, new, old)


def init_particles(problem: Any, theta: Theta, key: jax.Array, num: int) -> Any:
  """``num`` fresh particles (leading axis ``num``): the states of fresh inner runs."""
  return jax.vmap(problem.init, in_axes=(None, 0))(theta, jax.random.split(key, num))


def unroll_pairs(
  problem: Any, theta_pos: Theta, theta_neg: Theta, state_pos: Any, state_neg: Any, key: jax.Array, length: int
) -> tuple[Any, Any, jax.Array, jax.Array]:
  """Advances every antithetic pair ``length`` steps in one vmapped ``lax.scan``.

  The two members of a pair share their data keys; both signs and all pairs
  run in the same vectorised call.

  Returns:
    ``(state_pos, state_neg, loss_pos, loss_neg)``, losses averaged over the
    ``length`` steps, shape ``(num_pairs,)``.
  """
  stack = lambda a, b: jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)  # noqa: E731
  thetas, states = stack(theta_pos, theta_neg), stack(state_pos, state_neg)
  num = jax.tree.leaves(state_pos)[0].shape[0]
  signs = jax.vmap(problem.step, in_axes=(0, 0, None))  # both signs, one key
  pairs = jax.vmap(signs, in_axes=(1, 1, 0), out_axes=1)  # every pair, its own key

  def body(states, keys):
    return pairs(thetas, states, keys)

  keys = jax.random.split(key, length * num).reshape(length, num)
  states, losses = jax.lax.scan(body, states, keys)
  mean = jnp.mean(losses, axis=0)  # (2, num)
  first, second = (jax.tree.map(lambda x, i=i: x[i], states) for i in (0, 1))
  return first, second, mean[0], mean[1]


def unroll_perturbed(
  problem: Any, theta: Theta, eps: Theta, state_pos: Any, state_neg: Any, key: jax.Array, length: int
) -> tuple[Any, Any, jax.Array, jax.Array]:
  """:func:`unroll_pairs` under ``theta + eps_i`` and ``theta - eps_i``."""
  return unroll_pairs(problem, add(theta, eps), add(theta, eps, -1.0), state_pos, state_neg, key, length)


def end_truncation(
  problem: Any, theta: Theta, key: jax.Array, steps: jax.Array, truncation: int
) -> tuple[jax.Array, Any, jax.Array]:
  """Bookkeeping at a truncation boundary: which runs reached the horizon, fresh runs, new step counters.

  Returns:
    ``(done, fresh, steps)``: a mask per pair, fresh inner runs to select with
    :func:`where`, and the step counters (0 where the run restarts).
  """
  steps = steps + truncation
  done = steps >= problem.horizon
  fresh = init_particles(problem, theta, key, steps.shape[0])
  return done, fresh, jnp.where(done, 0, steps)


def estimate(
  loss_pos: jax.Array,
  loss_neg: jax.Array,
  directions: Theta,
  *,
  std: float,
  clip: float | None,
) -> tuple[Theta, dict[str, jax.Array]]:
  """The antithetic estimate ``mean_i (L+_i - L-_i) / (2 std^2) * direction_i``.

  ``direction_i`` is the pair's perturbation (ES) or its accumulated
  perturbations (PES). A pair whose loss difference is NaN or infinite
  contributes zero and is counted; ``clip`` bounds each loss difference.
  """
  difference = loss_pos - loss_neg
  finite = jnp.isfinite(difference)
  difference = jnp.where(finite, difference, 0.0)
  if clip is not None:
    difference = jnp.clip(difference, -clip, clip)
  num = difference.shape[0]
  grad = jax.tree.map(lambda d: jnp.tensordot(difference, d, axes=1) / (2.0 * std**2 * num), directions)
  both = jnp.where(finite, 0.5 * (loss_pos + loss_neg), 0.0)
  metrics = {
    "meta_loss": jnp.sum(both) / jnp.maximum(jnp.sum(finite), 1),
    "nan_pairs": num - jnp.sum(finite),
  }
  return grad, metrics


def truncation_loss(problem: Any, theta: Theta, state: Any, keys: jax.Array) -> tuple[jax.Array, Any]:
  """One run's mean meta-loss over ``len(keys)`` inner steps from ``state`` under ``theta``, and its state after them.

  Differentiable in ``theta``: ``jax.grad`` backpropagates through the
  ``lax.scan`` of the steps. ``state`` is an input, not a function of
  ``theta``, so the gradient stops at the truncation's start (truncated
  backpropagation).

  Returns:
    ``(loss, state)``: the mean of the steps' meta-losses and the run's new state.
  """
  state, losses = jax.lax.scan(lambda state, key: problem.step(theta, state, key), state, keys)
  return jnp.mean(losses), state


#: ``((loss, state), d loss / d theta)`` of :func:`truncation_loss`.
truncation_value_and_grad = jax.value_and_grad(truncation_loss, argnums=1, has_aux=True)


def finite_rows(tree: PyTree) -> jax.Array:
  """Per particle (leading axis): True where every entry of every leaf is finite."""
  rows = [jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(rows), axis=0)


def row_norms(tree: PyTree) -> jax.Array:
  """Per particle (leading axis): the Euclidean norm over every entry of every leaf."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1) for x in jax.tree.leaves(tree)))


def mean_gradient(losses: jax.Array, grads: Theta, *, clip: float | None) -> tuple[Theta, dict[str, jax.Array]]:
  """The mean ``mean_i g_i`` of per-run gradients (leading axis), as :func:`estimate` averages pairs.

  A run whose loss or gradient is NaN or infinite contributes zero and is
  counted in ``nan_pairs``; ``clip`` bounds the norm of each run's gradient.

  Returns:
    ``(gradient, {"meta_loss": mean loss of the finite runs, "nan_pairs": non-finite runs})``.
  """
  finite = jnp.isfinite(losses) & finite_rows(grads)
  grads = where(finite, grads, jax.tree.map(jnp.zeros_like, grads))
  scale = finite.astype(losses.dtype)
  if clip is not None:
    scale = scale * jnp.minimum(1.0, clip / jnp.maximum(row_norms(grads), jnp.finfo(losses.dtype).tiny))
  num = losses.shape[0]
  grad = jax.tree.map(lambda g: jnp.tensordot(scale.astype(g.dtype), g, axes=1) / num, grads)
  metrics = {
    "meta_loss": jnp.sum(jnp.where(finite, losses, 0.0)) / jnp.maximum(jnp.sum(finite), 1),
    "nan_pairs": num - jnp.sum(finite),
  }
  return grad, metrics


@dataclasses.dataclass(frozen=True)
class TruncatedEstimator(Estimator):
  """The hyper-parameters and bookkeeping of estimators that advance inner runs one truncation at a time.

  Args:
    num_pairs: antithetic pairs (2 x num_pairs inner runs).
    truncation: inner steps per estimate (K); the horizon is the problem's, a multiple of K.
    std: perturbation standard deviation.
    clip: optional bound on each pair's loss difference.
    random_offsets: start pairs at random multiples of K (spreads resets over the horizon).
    per_part_noise: perturb each part of theta with std ``std * scale``, the scales the problem gives
      (:meth:`metatrain.LearnedOptimizer.noise_scales`: a UNF's last layer less than the rest); the estimate
      stays unbiased for the loss smoothed with that noise (:func:`whiten`). False: one std for all.
  """

  num_pairs: int = 8
  truncation: int = 50
  std: float = 0.01
  clip: float | None = None
  random_offsets: bool = True
  per_part_noise: bool = False

  def inner_steps(self, horizon: int) -> int:
    """``2 * num_pairs * truncation``: both members of every pair advance one truncation."""
    return 2 * self.num_pairs * self.truncation

  def check(self, horizon: int) -> None:
    """Raises a ValueError unless ``horizon`` is a positive multiple of the truncation."""
    check_truncation(horizon, self.truncation)

  def _start(self, problem: Any, theta: Theta, key: jax.Array, num: int | None = None) -> tuple[PyTree, jax.Array]:
    """Fresh runs, one per pair (or ``num``), and their step counters (random multiples of the truncation)."""
    num = self.num_pairs if num is None else num
    init_key, offset_key = jax.random.split(key)
    runs = init_particles(problem, theta, init_key, num)
    return runs, start_steps(offset_key, num, problem.horizon, self.truncation, self.random_offsets)
