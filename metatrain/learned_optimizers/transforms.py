"""The links of a learned optimizer's optax chain: small gradient transformations, each with its own state.

A learned optimizer (:meth:`metatrain.LearnedOptimizer.optimizer`) is, as optax's ``adam`` is
``scale_by_adam`` followed by a scale:

  ``chain(finite_gradients(), sum_of(base, [weight decay], [learned correction]), rate)``

* :func:`finite_gradients`: NaN and +-inf gradient entries read as 0.
* the base term, a direction: :func:`momentum_direction` (``m_gamma0``, the paper's) or :func:`adam_direction`
  (``m_hat / (sqrt(v_hat) + eps)``), with :func:`scale_by_fan_in` for ``update_scale="fan_in"``;
* :func:`weight_decay_term`: ``wd * W``, the decoupled weight decay of AdamW;
* :func:`learned_correction`: ``f`` of the per-parameter features, times ``beta``;
* the rate: ``-alpha``, or ``-alpha * lr(t)`` with the ``"nominal"`` base's schedule (``optax.scale`` and
  ``optax.scale_by_schedule``).

:func:`sum_of` applies each of its transformations to the same gradients and adds their outputs in order. A
kind without ``f`` (:class:`metatrain.LearnedSGDM`) is the same chain without the correction.

Every function here is pure, and every state a NamedTuple of arrays: jittable, vmappable over particles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from metatrain.learned_optimizers import features as features_lib
from metatrain.types import PyTree

#: Added to the root of the second moment in :func:`adam_direction`.
ADAM_EPSILON = 1e-8
#: The decay of :func:`adam_direction`'s second moment (Adam's 0.999; the last of the features' decays).
SECOND_MOMENT_DECAY = features_lib.SECOND_MOMENT_DECAYS[-1]


class SumState(NamedTuple):
  """The state of :func:`sum_of`: one state per summed transformation, in order."""

  inner: tuple


class MomentumState(NamedTuple):
  """The state of :func:`momentum_direction`: ``m_gamma0``, shaped like the params."""

  momentum: PyTree


class AdamDirectionState(NamedTuple):
  """The state of :func:`adam_direction`.

  Attributes:
    count: int32 scalar, the number of updates applied.
    momentum: the first moment at the learned decay, shaped like the params.
    second_moment: the second moment at :data:`SECOND_MOMENT_DECAY`, shaped like the params.
  """

  count: jax.Array  # type: ignore[assignment]  # optax's name for the step counter (shadows tuple.count)
  momentum: PyTree
  second_moment: PyTree


class CorrectionState(NamedTuple):
  """The state of :func:`learned_correction`: what ``f``'s features read.

  Attributes:
    count: int32 scalar, the number of updates applied (the time features' ``t``).
    momenta: every leaf with a trailing axis of the momenta at
      :data:`metatrain.learned_optimizers.features.MOMENTUM_DECAYS`.
    second_moments: with the ``"adam"`` features, the second moments at
      :data:`metatrain.learned_optimizers.features.SECOND_MOMENT_DECAYS` (a trailing axis); None otherwise.
  """

  count: jax.Array  # type: ignore[assignment]
  momenta: PyTree
  second_moments: PyTree = None


def _zeros(trailing: int | None = None) -> Callable[[jax.Array], jax.Array]:
  extra = () if trailing is None else (trailing,)
  return lambda p: jnp.zeros(p.shape + extra, p.dtype)


def finite_gradients() -> optax.GradientTransformation:
  """Every NaN and +-inf entry of the gradient read as 0 (:func:`metatrain.learned_optimizers.features.finite_or_zero`).

  A non-finite entry then leaves every state and every update finite; its own update is what the rest of the
  chain makes of a zero gradient (its momentum's decay).
  """

  def update(updates, state, params=None):
    del params
    return jax.tree.map(features_lib.finite_or_zero, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def sum_of(*transforms: optax.GradientTransformation) -> optax.GradientTransformation:
  """The sum of transformations that each read the same gradients: ``u = T_1(g) + T_2(g) + ...``, in order.

  Where :func:`optax.chain` feeds each transformation the last one's output, ``sum_of`` feeds them all the
  input and adds what they return (left to right), with their states side by side in :class:`SumState`.

  Args:
    transforms: at least one gradient transformation; each receives the params too.
  """
  if not transforms:
    raise ValueError("sum_of needs at least one transformation.")

  def init(params):
    return SumState(tuple(t.init(params) for t in transforms))

  def update(updates, state, params=None):
    total, states = None, []
    for t, inner in zip(transforms, state.inner):
      out, inner = t.update(updates, inner, params)
      total = out if total is None else jax.tree.map(jnp.add, total, out)
      states.append(inner)
    return total, SumState(tuple(states))

  return optax.GradientTransformation(init, update)


def momentum_direction(decay: jax.Array) -> optax.GradientTransformation:
  """The heavy-ball momentum ``m <- decay * m + (1 - decay) * g`` (no bias correction): the paper's base term.

  Args:
    decay: the decay ``gamma0`` (a traced scalar: it is meta-learned).
  """

  def init(params):
    return MomentumState(jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    momentum = jax.tree.map(lambda m, g: (decay * m + (1 - decay) * g).astype(m.dtype), state.momentum, updates)
    return momentum, MomentumState(momentum)

  return optax.GradientTransformation(init, update)


def _safe_sqrt(v: jax.Array) -> jax.Array:
  # sqrt's derivative is infinite at 0 (a weight whose gradient has always been 0): take it of a safe value
  # there, so meta-gradients through the base stay finite (the values are the same).
  return jnp.where(v > 0, jnp.sqrt(jnp.where(v > 0, v, 1)), 0)


def adam_direction(decay: jax.Array, *, eps: float = ADAM_EPSILON) -> optax.GradientTransformation:
  """Adam's direction ``m_hat / (sqrt(v_hat) + eps)``, both moments bias-corrected (Kingma & Ba 2015).

  As ``optax.scale_by_adam(b1=decay, b2=0.999, eps=eps)``, with a traced first decay (it is meta-learned)
  and a square root whose derivative stays finite where ``v`` is 0.

  Args:
    decay: the first moment's decay ``gamma0``.
    eps: added to the root of the second moment.
  """

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return AdamDirectionState(jnp.zeros((), jnp.int32), zeros, zeros)

  def update(updates, state, params=None):
    del params
    d = SECOND_MOMENT_DECAY
    momentum = jax.tree.map(lambda m, g: (decay * m + (1 - decay) * g).astype(m.dtype), state.momentum, updates)

    def ema_of_square(v: jax.Array, g: jax.Array) -> jax.Array:
      decay_v = jnp.asarray(d, v.dtype)  # in v's dtype, as the features' second moments
      return decay_v * v + (1 - decay_v) * jnp.square(g).astype(v.dtype)

    second = jax.tree.map(ema_of_square, state.second_moment, updates)
    count = jnp.asarray(optax.safe_int32_increment(state.count))

    def one(m: jax.Array, v: jax.Array) -> jax.Array:
      t = count.astype(m.dtype)  # the bias corrections in the moments' precision
      return (m / (1 - decay**t)) / (_safe_sqrt(v / (1 - d**t)) + eps)

    direction = jax.tree.map(one, momentum, second)
    return direction, AdamDirectionState(count, momentum, second)

  return optax.GradientTransformation(init, update)


def fan_in(shape: tuple[int, ...]) -> int:
  """The fan-in of a tensor of ``shape``: the product of all axes but the last (1 for a vector)."""
  return math.prod(shape[:-1]) if len(shape) > 1 else 1


def scale_by_fan_in(reference_fan_in: Sequence[int]) -> optax.GradientTransformation:
  """Every leaf times ``n_0 / n``: ``n`` its fan-in (:func:`fan_in`), ``n_0`` its entry of ``reference_fan_in``.

  ``update_scale="fan_in"``'s muP-style factor: 1 at the reference widths. Needs the params (their shapes).
  """

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_fan_in needs the params (their fan-ins): call update(grads, state, params).")
    leaves, treedef = jax.tree.flatten(updates)
    factors = [n0 / fan_in(p.shape) for n0, p in zip(reference_fan_in, jax.tree.leaves(params))]
    return jax.tree.unflatten(treedef, [s * u for s, u in zip(factors, leaves)]), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def weight_decay_term(rate: jax.Array) -> optax.GradientTransformation:
  """``rate * W``: the decoupled weight decay of AdamW, as a term of a :func:`sum_of` (needs the params)."""

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("weight_decay_term needs the params: call update(grads, state, params).")
    del updates
    return jax.tree.map(lambda p: rate * p, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def learned_correction(
  f: Callable[[PyTree, jax.Array], PyTree], *, second_moments: bool = False
) -> optax.GradientTransformation:
  """``f`` of the per-parameter features (:mod:`metatrain.learned_optimizers.features`): the learned term.

  ``f(x, step)`` reads the tensor features ``x`` of every parameter: the params, the gradient and its momenta
  (:func:`metatrain.learned_optimizers.features.tensor_features`, 8 per parameter), and with
  ``second_moments`` the 6 of :func:`metatrain.learned_optimizers.features.adam_features` after them. The
  step's 11 time features, the same for every parameter, are ``f``'s to compute from ``step``
  (:func:`metatrain.learned_optimizers.features.time_features`): computed once, not broadcast to every entry.

  Args:
    f: ``(x, step) -> updates``: ``x`` every leaf with a trailing feature axis, ``step`` the number of updates
      before this one (an int32 scalar); one number per parameter, shaped like the params.
    second_moments: whether the features include the second-moment ones (the ``"adam"`` feature set).
  """

  def init(params):
    moments = jax.tree.map(_zeros(len(features_lib.SECOND_MOMENT_DECAYS)), params) if second_moments else None
    momenta = jax.tree.map(_zeros(len(features_lib.MOMENTUM_DECAYS)), params)
    return CorrectionState(jnp.zeros((), jnp.int32), momenta, moments)

  def update(updates, state, params=None):
    if params is None:
      raise ValueError(
        "the learned correction needs the params (one of its features): call update(grads, state, params)."
      )
    grads = updates
    momenta = features_lib.update_momenta(state.momenta, grads)
    x = features_lib.tensor_features(params, grads, momenta)
    moments = None
    if second_moments:
      moments = features_lib.update_second_moments(state.second_moments, grads)
      extra = features_lib.adam_features(momenta, moments)
      x = jax.tree.map(lambda a, b: jnp.concatenate([a, b.astype(a.dtype)], axis=-1), x, extra)
    out = f(x, state.count)
    return out, CorrectionState(jnp.asarray(optax.safe_int32_increment(state.count)), momenta, moments)

  return optax.GradientTransformation(init, update)


def rate(alpha: jax.Array, schedule: Callable[[jax.Array], jax.Array] | None = None) -> optax.GradientTransformation:
  """``-alpha`` times the direction, or ``-alpha * schedule(t)`` at step ``t`` (0 at the first update)."""
  if schedule is None:
    return optax.scale(-alpha)
  return optax.scale_by_schedule(lambda count: -(alpha * schedule(jnp.asarray(count))))


__all__ = [
  "ADAM_EPSILON",
  "SECOND_MOMENT_DECAY",
  "AdamDirectionState",
  "CorrectionState",
  "MomentumState",
  "SumState",
  "adam_direction",
  "finite_gradients",
  "learned_correction",
  "momentum_direction",
  "rate",
  "fan_in",
  "scale_by_fan_in",
  "sum_of",
  "weight_decay_term",
]
