"""Learned optimizers: per-parameter networks that output an update, as optax transformations.

Implements the learned optimizers of Zhou, Finn, Harrison (2024), "Universal
Neural Functionals", Sec. 5.2. For every parameter ``W`` the update is

  ``W <- W - alpha * (m_gamma0 + beta * f(features))``

where ``m_gamma0`` is a momentum of the gradient with decay ``gamma0``, ``f``
a network over the 19 per-parameter features of
:mod:`metatrain.learned_optimizers.features`,
and ``alpha``, ``beta``, ``gamma0`` are meta-learned in log, log and logit
space (initially 0.1, 0.001 and 0.9). The meta-parameters ``theta`` (a pytree
of arrays, :meth:`LearnedOptimizer.init_meta`) hold these three scalars and ``f``'s weights.

``f`` is a pointwise ``Dense(19 -> width)``, relu, pointwise
``Dense(width -> width)``, relu, then a last layer that gives every learned
optimizer its symmetry:

* :class:`metatrain.UNFLOpt`: a ``unf`` ``EquivariantLinear(width -> 1)`` on the
  network's weight space. ``update(sigma . W) = sigma . update(W)`` for every
  ``sigma`` of the space's group (one permutation per label), and the number
  of meta-parameters does not depend on the network's widths.
* :class:`metatrain.DeepSetsLOpt`: a Deep Sets layer per tensor (the paper's main
  baseline), equivariant to any permutation of the entries of each tensor.

Example (a meta-trained optimizer drops into any optax loop of its space):

  >>> import jax, jax.numpy as jnp, optax, unf, metatrain
  >>> params = {"dense0": {"kernel": jnp.ones((4, 8)), "bias": jnp.zeros(8)},
  ...           "dense1": {"kernel": jnp.ones((8, 2)), "bias": jnp.zeros(2)}}
  >>> lopt = metatrain.UNFLOpt(unf.mlp_space(params))
  >>> optimizer = lopt.optimizer(lopt.init_meta(jax.random.key(0)))
  >>> state = optimizer.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, state = jax.jit(optimizer.update)(grads, state, params)  # params are required
  >>> params = optax.apply_updates(params, updates)
  >>> params["dense0"]["kernel"].shape
  (4, 8)

Choices made here:

* Initialisation: ``f``'s last layer starts at :data:`HEAD_SCALE` (0.1) times
  its usual scale, so that the initial optimizer is close to momentum SGD with
  learning rate 0.1 on an exponential moving average of the gradient (decay
  0.9). On ``mlp_fashion8`` ``f`` starts at RMS 0.02 to 0.1 per tensor and
  ``beta * f`` is 0.5% to 3% of ``m_gamma0`` per tensor after 10 steps
  (measured; up to 35% at the first step, where ``m_gamma0 = 0.1 g`` is
  smallest). Not zero: ES perturbations of every layer of ``f`` then change
  the loss from the start.
* Non-finite gradients: NaN and +-inf gradient entries are read as 0 before
  anything else (:func:`metatrain.learned_optimizers.features.finite_or_zero`): they leave the
  state, every update and the meta-gradients finite, the step count advances,
  and the entry's own update is its momentum's decay. A divergence is
  therefore not hidden from the inner loss, which the meta-objective sees.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

import unf
from metatrain.learned_optimizers import features as features_lib
from metatrain.types import PyTree, Theta

#: Initial learning rate ``alpha``.
INITIAL_ALPHA = 0.1
#: Initial scale ``beta`` of ``f``'s output.
INITIAL_BETA = 0.001
#: Initial decay ``gamma0`` of the base momentum.
INITIAL_GAMMA0 = 0.9
#: The factor on the usual initial scale of ``f``'s last layer.
HEAD_SCALE = 0.1


class LearnedOptimizerState(NamedTuple):
  """The state of a learned optimizer's optax transformation.

  Attributes:
    momenta: pytree shaped like params; every leaf has a trailing axis with the
      momenta at :data:`metatrain.learned_optimizers.features.MOMENTUM_DECAYS`.
    momentum: ``m_gamma0``, the momentum with the learned decay, shaped like params.
    count: int32 scalar, the number of updates applied.
  """

  momenta: PyTree
  momentum: PyTree
  count: jax.Array  # type: ignore[assignment]  # optax's name for the step counter (shadows tuple.count)


def _dense_init(key: jax.Array, fan_in: int, fan_out: int, dtype: Any) -> dict:
  # He-normal: the layers feed a relu.
  kernel = jax.random.normal(key, (fan_in, fan_out), dtype) * math.sqrt(2.0 / fan_in)
  return {"kernel": kernel, "bias": jnp.zeros((fan_out,), dtype)}


def _dense(params: dict, x: jax.Array) -> jax.Array:
  return x @ params["kernel"].astype(x.dtype) + params["bias"].astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class LearnedOptimizer:
  """A learned optimizer for the networks of one weight space (the base of every kind).

  Holds the shared machinery: the features, ``f``'s pointwise layers and the
  update rule. Subclasses choose ``f``'s last layer (``_init_head``, ``_head``),
  which sets the optimizer's symmetry. Frozen and hashable: pass a learned
  optimizer to ``jax.jit`` as a static argument; its meta-parameters ``theta``
  are an ordinary argument (vmap over them, perturb them, differentiate them).

  Args:
    space: the weight space of the networks it optimizes.
    width: hidden features per parameter.

  Attributes:
    name: the kind's key in :data:`metatrain.LEARNED_OPTIMIZERS` (and in configs and checkpoints).
    head_name: what ``f``'s last layer is, for :func:`describe`.
  """

  space: unf.WeightSpace
  width: int = dataclasses.field(default=32, kw_only=True)
  name: ClassVar[str] = ""
  head_name: ClassVar[str] = "last layer"

  # --- the last layer of f: width features per parameter -> one number per parameter

  def _init_head(self, key: jax.Array, dtype: Any) -> dict:
    raise NotImplementedError

  def _head(self, head: dict, hidden: dict) -> dict:
    """``hidden``: a nested dict of the space with a trailing ``width`` axis -> a trailing axis of 1."""
    raise NotImplementedError

  def _transfer_head(self, head: dict, space: unf.WeightSpace) -> dict:
    """The same last layer for ``space``, which matches ``self.space`` up to renaming."""
    raise NotImplementedError

  # --- meta-parameters

  def init_meta(self, key: jax.Array, *, dtype: Any = jnp.float32) -> Theta:
    """Initial meta-parameters: alpha 0.1, beta 0.001, gamma0 0.9 and a freshly initialised ``f``.

    Returns:
      A dict of arrays: ``log_alpha``, ``log_beta``, ``logit_gamma0`` (scalars)
      and ``f`` (``dense0``, ``dense1`` and ``head``, the last layer).
    """
    k0, k1, k2 = jax.random.split(key, 3)
    head = jax.tree.map(lambda w: HEAD_SCALE * w, self._init_head(k2, dtype))
    return {
      "log_alpha": jnp.asarray(math.log(INITIAL_ALPHA), dtype),
      "log_beta": jnp.asarray(math.log(INITIAL_BETA), dtype),
      "logit_gamma0": jnp.asarray(math.log(INITIAL_GAMMA0 / (1 - INITIAL_GAMMA0)), dtype),
      "f": {
        "dense0": _dense_init(k0, features_lib.NUM_FEATURES, self.width, dtype),
        "dense1": _dense_init(k1, self.width, self.width, dtype),
        "head": head,
      },
    }

  def num_meta_parameters(self, theta: Theta) -> int:
    """Number of scalars in one ``theta`` (independent of the inner network's widths)."""
    return _size(theta)

  def transfer(self, theta: Theta, space: unf.WeightSpace) -> tuple[LearnedOptimizer, Theta]:
    """The same learned optimizer for a weight space that matches this one up to renaming.

    ``space`` must have the same leaves in the same order (paths may differ)
    with one consistent renaming of the labels (:meth:`unf.WeightSpace.match`);
    label sizes (widths) do not matter. The returned optimizer computes the
    same update on the renamed params as this one on the original params.

    Args:
      theta: meta-parameters of this optimizer.
      space: the other weight space (with fixed sizes, as the ``unf`` builders give it).

    Returns:
      ``(learned_optimizer, theta)`` for ``space``.

    Raises:
      ValueError: naming the first difference when the spaces do not match up to renaming.
    """
    self.space.match(space)
    head = self._transfer_head(theta["f"]["head"], space)
    return dataclasses.replace(self, space=space), {**theta, "f": {**theta["f"], "head": head}}

  def to_json(self) -> dict[str, Any]:
    """The optimizer as JSON-ready values, its kind, width and weight space.

    :func:`metatrain.learned_optimizers.from_json` reads them back.
    """
    return {"kind": self.name, "width": self.width, "space": json.loads(self.space.to_json())}

  # --- the update rule

  def f(self, theta: Theta, x: PyTree) -> dict:
    """The network ``f``: per-parameter features (trailing axis of 19) -> one number per parameter.

    Args:
      theta: meta-parameters from :meth:`LearnedOptimizer.init_meta`.
      x: nested dict of the space, each leaf with a trailing feature axis.

    Returns:
      A nested dict of the space, each leaf shaped like its parameter.
    """
    hidden = jax.tree.map(
      lambda h: jax.nn.relu(_dense(theta["f"]["dense1"], jax.nn.relu(_dense(theta["f"]["dense0"], h)))), x
    )
    out = self._head(theta["f"]["head"], self.space.unflatten(self.space.flatten(hidden)))
    return jax.tree.map(lambda y: y[..., 0], out)

  def optimizer(self, theta: Theta) -> optax.GradientTransformation:
    """The learned optimizer at meta-parameters ``theta``, as a pure optax transformation.

    ``update(grads, state, params)`` returns ``updates = -alpha * (m_gamma0 + beta * f(features))``
    (apply them with ``optax.apply_updates``) and the new :class:`LearnedOptimizerState`.
    ``params`` is required: the parameters are one of ``f``'s features.
    """

    def init(params: PyTree) -> LearnedOptimizerState:
      self.space.validate(params)
      num_decays = len(features_lib.MOMENTUM_DECAYS)
      return LearnedOptimizerState(
        momenta=jax.tree.map(lambda p: jnp.zeros(p.shape + (num_decays,), p.dtype), params),
        momentum=jax.tree.map(jnp.zeros_like, params),
        count=jnp.zeros((), jnp.int32),
      )

    def update(
      updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.OptState]:
      # optax's names: ``updates`` are the gradients here, ``state`` a LearnedOptimizerState.
      grads, state = updates, typing.cast(LearnedOptimizerState, state)
      if params is None:
        raise ValueError(
          f"{type(self).__name__}.optimizer(theta).update needs the params (one of its features): "
          "call update(grads, state, params)."
        )
      self.space.validate(params)
      grads = jax.tree.map(features_lib.finite_or_zero, grads)
      momenta = features_lib.update_momenta(state.momenta, grads)
      gamma0 = jax.nn.sigmoid(theta["logit_gamma0"])
      momentum = jax.tree.map(lambda m, g: (gamma0 * m + (1 - gamma0) * g).astype(m.dtype), state.momentum, grads)
      out = self.f(theta, features_lib.input_features(params, grads, momenta, state.count))
      alpha, beta = jnp.exp(theta["log_alpha"]), jnp.exp(theta["log_beta"])
      updates = jax.tree.map(lambda p, m, y: (-alpha * (m + beta * y)).astype(p.dtype), params, momentum, out)
      return updates, LearnedOptimizerState(momenta, momentum, jnp.asarray(optax.safe_int32_increment(state.count)))

    return optax.GradientTransformation(init, update)


def describe(lopt: LearnedOptimizer, theta: Theta) -> str:
  """A table of the meta-parameter count of every component of ``theta``.

  Args:
    lopt: the learned optimizer.
    theta: its meta-parameters.

  Returns:
    Lines ``component  count``: alpha, beta, gamma0, each layer of ``f``, and the total.
  """
  rows = [
    ("alpha (log)", theta["log_alpha"].size),
    ("beta (log)", theta["log_beta"].size),
    ("gamma0 (logit)", theta["logit_gamma0"].size),
  ]
  rows += [
    (f"f/dense0 (Dense {features_lib.NUM_FEATURES} -> {lopt.width})", _size(theta["f"]["dense0"])),
    (f"f/dense1 (Dense {lopt.width} -> {lopt.width})", _size(theta["f"]["dense1"])),
    (f"f/head ({lopt.head_name} {lopt.width} -> 1)", _size(theta["f"]["head"])),
  ]
  rows.append(("total", lopt.num_meta_parameters(theta)))
  name_width = max(len(name) for name, _ in rows)
  lines = [f"{type(lopt).__name__} meta-parameters"]
  lines += [f"  {name:<{name_width}}  {count:>9,}" for name, count in rows]
  return "\n".join(lines)


def _size(tree: PyTree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))
