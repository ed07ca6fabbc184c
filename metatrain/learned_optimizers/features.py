"""Per-parameter input features of a learned optimizer, as pure functions over pytrees.

For every scalar parameter the learned optimizer sees 19 numbers (the feature
set of Zhou, Finn, Harrison 2024, after Metz et al. 2022):

* 8 tensor features: the parameter, its gradient, and momenta of the gradient
  at the decays :data:`MOMENTUM_DECAYS`. Each is normalised per tensor: first
  divided by its per-tensor RMS, ``sqrt(mean(x^2)) + 1e-8``, then clipped to
  ``[-10, 10]``. Normalising first makes the features scale-free; clipping
  second bounds the few entries that stand out from their tensor (an entry
  holding the whole tensor's mass reaches ``sqrt(size)``).
* 11 time features: ``tanh(t / tau - 1)`` for the time scales
  :data:`TIME_SCALES`, the same for every parameter.

:func:`adam_features` adds 6 per-coordinate features of second moments ``v_d``
(the ``"adam"`` feature set of a learned optimizer, after Metz et al. 2022,
"VeLO"), for the decays :data:`SECOND_MOMENT_DECAYS`:

* ``m_d / sqrt(v_d)``, the momentum at the same decay over the root of the
  second moment: Adam's direction without bias correction, scale-free and
  within ``[-1, 1]`` (``m_d^2 <= v_d`` by Jensen's inequality);
* ``r / (sqrt(v_d) + r / CLIP)`` with ``r`` the tensor's RMS of ``sqrt(v_d)``:
  the entry's inverse gradient scale relative to its tensor's, scale-free and
  within ``(0, CLIP]`` (an entry that never had a gradient, a dead unit, is at the bound).

Every function here is a pure map of explicit pytrees: jittable, vmappable,
and equivariant to any permutation of the entries of each tensor (a per-tensor
RMS does not depend on the order of the entries).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

#: The decays of the six gradient momenta.
MOMENTUM_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
#: The time scales ``tau`` of the features ``tanh(t / tau - 1)``.
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
#: Tensor features per parameter (8), the parameter, its gradient and the momenta, each normalised per tensor.
NUM_TENSOR_FEATURES = 2 + len(MOMENTUM_DECAYS)
#: Features per parameter (19), the tensor features and then the time features.
NUM_FEATURES = NUM_TENSOR_FEATURES + len(TIME_SCALES)
#: The decays of the second moments of the ``"adam"`` features (each also one of :data:`MOMENTUM_DECAYS`).
SECOND_MOMENT_DECAYS = (0.9, 0.99, 0.999)
#: Features per parameter added by :func:`adam_features` (6).
NUM_ADAM_FEATURES = 2 * len(SECOND_MOMENT_DECAYS)
#: The bound of every normalised tensor feature.
CLIP = 10.0
#: Added to the RMS a tensor feature is divided by.
EPSILON = 1e-8


def finite_or_zero(x: jax.Array) -> jax.Array:
  """``x`` with every NaN and +-inf entry replaced by 0.

  A learned optimizer treats a non-finite gradient entry as carrying no
  information: mapped to 0 (not to the largest float, as ``jnp.nan_to_num``
  does, which would overflow the per-tensor RMS), it leaves the momenta, the
  features and every other entry's update finite. The gradient of this map is
  0 at the replaced entries, so no NaN flows back through it either.
  """
  return jnp.where(jnp.isfinite(x), x, jnp.zeros((), x.dtype))


def update_momenta(momenta: Any, grads: Any, *, decays: Sequence[float] = MOMENTUM_DECAYS) -> Any:
  """One step of every momentum: ``m_d <- d * m_d + (1 - d) * g`` for each decay ``d``.

  Args:
    momenta: pytree shaped like ``grads``, each leaf with a trailing axis of ``len(decays)``.
    grads: the current gradient (use :func:`finite_or_zero` first if it may hold NaN).
    decays: the decay of each slot of the trailing axis.

  Returns:
    The updated momenta, same shapes and dtypes.
  """

  def one(m: jax.Array, g: jax.Array) -> jax.Array:
    d = jnp.asarray(decays, m.dtype)
    return d * m + (1 - d) * g[..., None].astype(m.dtype)

  return jax.tree.map(one, momenta, grads)


def update_second_moments(moments: Any, grads: Any, *, decays: Sequence[float] = SECOND_MOMENT_DECAYS) -> Any:
  """One step of every second moment: ``v_d <- d * v_d + (1 - d) * g^2`` for each decay ``d``.

  Args:
    moments: pytree shaped like ``grads``, each leaf with a trailing axis of ``len(decays)``.
    grads: the current gradient (finite).
    decays: the decay of each slot of the trailing axis.

  Returns:
    The updated second moments, same shapes and dtypes.
  """
  return update_momenta(moments, jax.tree.map(jnp.square, grads), decays=decays)


def _rms(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  # sqrt has an infinite derivative at 0 (an all-zero bias at init): take it of
  # a safe value there, so gradients through the features stay finite.
  mean_square = jnp.mean(jnp.square(x), axis=axes, keepdims=True)
  positive = mean_square > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, mean_square, 1)), 0)


def normalize(x: jax.Array, *, batch_axes: int = 0, clip: float = CLIP, eps: float = EPSILON) -> jax.Array:
  """Divides ``x`` by its RMS over the tensor, then clips to ``[-clip, clip]``.

  ``clip(x / (sqrt(mean(x^2)) + eps), -clip, clip)``; the mean runs over every
  axis except the last ``batch_axes`` (e.g. 1 for momenta stacked on a
  trailing axis, each normalised on its own).
  """
  axes = tuple(range(x.ndim - batch_axes))
  return jnp.clip(x / (_rms(x, axes) + eps), -clip, clip)


def time_features(
  step: jax.Array, *, time_scales: Sequence[float] = TIME_SCALES, dtype: Any = jnp.float32
) -> jax.Array:
  """``tanh(t / tau - 1)`` for every time scale ``tau``: a vector of ``len(time_scales)``."""
  t = jnp.asarray(step, dtype)
  return jnp.tanh(t / jnp.asarray(time_scales, dtype) - 1)


def tensor_features(params: Any, grads: Any, momenta: Any) -> Any:
  """The 8 tensor features of every parameter: the first :data:`NUM_TENSOR_FEATURES` of :func:`input_features`.

  Args:
    params, grads, momenta: as :func:`input_features`.

  Returns:
    A pytree shaped like ``params``, each leaf with a trailing axis of :data:`NUM_TENSOR_FEATURES`, in the
    params' dtype: the parameter, the gradient, then the momenta in the order of :data:`MOMENTUM_DECAYS`,
    each normalised within its tensor. The time features, the same for every parameter, are left out: a
    learned optimizer adds their share once per tensor (:meth:`metatrain.learned_optimizers.NetworkLOpt.f`)
    instead of reading 11 equal columns per parameter.
  """

  def one(p: jax.Array, g: jax.Array, m: jax.Array) -> jax.Array:
    dtype = p.dtype
    p, g, m = (finite_or_zero(x).astype(dtype) for x in (p, g, m))
    return jnp.concatenate([normalize(p)[..., None], normalize(g)[..., None], normalize(m, batch_axes=1)], axis=-1)

  return jax.tree.map(one, params, grads, momenta)


def input_features(params: Any, grads: Any, momenta: Any, step: jax.Array) -> Any:
  """The 19 input features of every parameter: :func:`tensor_features`, then :func:`time_features`.

  Args:
    params: the current parameters (a pytree of arrays).
    grads: the current gradient, same structure.
    momenta: momenta already updated with ``grads`` (:func:`update_momenta`),
      each leaf with a trailing axis of ``len(MOMENTUM_DECAYS)``.
    step: the training step ``t`` (the number of updates applied before this one).

  Returns:
    A pytree shaped like ``params``, each leaf with a trailing axis of
    :data:`NUM_FEATURES`, in the params' dtype. Order along it: parameter,
    gradient, the momenta in the order of :data:`MOMENTUM_DECAYS`, the time
    features in the order of :data:`TIME_SCALES`.

  Every tensor feature is normalised within its own tensor, so for any
  permutation ``P`` of a tensor's entries ``features(P . W, ...) = P . features(W, ...)``.
  Non-finite inputs are read as 0 (:func:`finite_or_zero`): the output is always finite.
  """

  def one(x: jax.Array) -> jax.Array:
    time = jnp.broadcast_to(time_features(step, dtype=x.dtype), x.shape[:-1] + (len(TIME_SCALES),))
    return jnp.concatenate([x, time], axis=-1)

  return jax.tree.map(one, tensor_features(params, grads, momenta))


def adam_features(momenta: Any, second_moments: Any) -> Any:
  """The 6 second-moment features of every parameter (see the module docstring), for the ``"adam"`` feature set.

  Args:
    momenta: momenta already updated (:func:`update_momenta`), trailing axis of ``len(MOMENTUM_DECAYS)``.
    second_moments: second moments already updated (:func:`update_second_moments`), trailing axis of
      ``len(SECOND_MOMENT_DECAYS)``.

  Returns:
    A pytree shaped like the params, each leaf with a trailing axis of :data:`NUM_ADAM_FEATURES`: the
    ``m_d / sqrt(v_d)`` in the order of :data:`SECOND_MOMENT_DECAYS`, then the inverse scales in that order.
    Finite for every input (a zero ``v_d`` gives ratio 0 and inverse scale ``CLIP``); equivariant to any
    permutation of each tensor's entries.
  """
  slots = [MOMENTUM_DECAYS.index(d) for d in SECOND_MOMENT_DECAYS]

  def one(m: jax.Array, v: jax.Array) -> jax.Array:
    positive = v > 0  # sqrt's derivative is infinite at 0: take it of a safe value there
    root = jnp.where(positive, jnp.sqrt(jnp.where(positive, v, 1)), 0)
    ratio = jnp.where(root > 0, m[..., slots] / jnp.where(root > 0, root, 1), 0)
    reference = _rms(root, tuple(range(root.ndim - 1)))
    inverse = jnp.where(reference > 0, reference / (root + reference / CLIP + EPSILON), CLIP)
    return jnp.concatenate([jnp.clip(ratio, -1, 1), inverse], axis=-1)

  return jax.tree.map(one, momenta, second_moments)
