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

:class:`LearnedOptimizer` holds the base term; :class:`NetworkLOpt` adds ``f``. The optax transformation is
a chain of small links (:mod:`metatrain.learned_optimizers.transforms`), as optax's ``adam`` is: finite
gradients, the sum of the base term, the weight decay and ``beta * f``, then the rate. The meta-trained SGDM
baseline (:class:`metatrain.LearnedSGDM`) is the same chain without ``f``'s term.

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
  0.9): ``beta * f`` starts at a few percent of ``m_gamma0`` per tensor
  (``python -m benchmarks.update_share`` measures it for every preset). Not
  zero: ES perturbations of every layer of ``f`` then change the loss from
  the start.
* Non-finite gradients: NaN and +-inf gradient entries are read as 0 before
  anything else (:func:`metatrain.learned_optimizers.features.finite_or_zero`): they leave the
  state, every update and the meta-gradients finite, the step count advances,
  and the entry's own update is its momentum's decay. A divergence is
  therefore not hidden from the inner loss, which the meta-objective sees.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

import unf
from metatrain import schedules
from metatrain.learned_optimizers import features as features_lib
from metatrain.learned_optimizers import transforms
from metatrain.types import PyTree, Theta

#: Initial learning rate ``alpha`` (the ``initial_alpha`` option's default).
INITIAL_ALPHA = 0.1
#: Initial scale ``beta`` of ``f``'s output.
INITIAL_BETA = 0.001
#: Initial decay ``gamma0`` of the base momentum.
INITIAL_GAMMA0 = 0.9
#: The factor on the usual initial scale of ``f``'s last layer.
HEAD_SCALE = 0.1
#: The values of each string option of :class:`LearnedOptimizer`, its default first.
CHOICES = {
  "features": ("paper", "adam"),
  "base": ("momentum", "adam", "nominal"),
  "update_scale": ("none", "fan_in"),
}


def fan_ins(params: PyTree) -> tuple[int, ...]:
  """The fan-in of every leaf of ``params`` in leaf order: the product of all axes but the last (1 for a vector).

  The ``reference_fan_in`` of a learned optimizer with ``update_scale="fan_in"``.

  Args:
    params: the params (or ``jax.eval_shape`` of them) of the network it is meta-trained on.
  """
  return tuple(transforms.fan_in(leaf.shape) for leaf in jax.tree.leaves(params))


def _dense_init(key: jax.Array, fan_in: int, fan_out: int, dtype: Any) -> dict:
  # He-normal: the layers feed a relu.
  kernel = jax.random.normal(key, (fan_in, fan_out), dtype) * math.sqrt(2.0 / fan_in)
  return {"kernel": kernel, "bias": jnp.zeros((fan_out,), dtype)}


def _dense(params: dict, x: jax.Array) -> jax.Array:
  return x @ params["kernel"].astype(x.dtype) + params["bias"].astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class LearnedOptimizer:
  """A learned optimizer for the networks of one weight space: the base of every kind.

  Holds the base term and its meta-learned scalars; :class:`NetworkLOpt` adds the network ``f``. Its
  :meth:`optimizer` is an optax chain (:mod:`metatrain.learned_optimizers.transforms`):

    ``chain(finite_gradients(), sum_of(base, [weight decay], [beta * f]), rate)``

  Frozen and hashable: pass a learned optimizer to ``jax.jit`` as a static argument; its meta-parameters
  ``theta`` are an ordinary argument (vmap over them, perturb them, differentiate them).

  The options (keyword-only; the defaults are this project's first version, and
  :data:`metatrain.learned_optimizers.PRESETS` names useful sets, ``"paper"`` among them):

  * ``base``: the update's base term, ``"momentum"`` (``m_gamma0``, the paper's), ``"adam"``
    (``m_hat / (sqrt(v_hat) + 1e-8)``: the momentum with decay ``gamma0`` and the second moment at decay
    0.999, both bias-corrected; Adam's direction, so ``alpha`` is an Adam learning rate) or ``"nominal"``:
    the best hand-designed optimizer, Adam (AdamW with ``initial_weight_decay > 0``) with a linear warm-up
    and cosine decay over the run's ``total_steps`` (:func:`metatrain.schedules.warmup_cosine`), at peak rate
    ``alpha``. What is learned on top of it: ``alpha`` (start it at the tuned Adam-cosine rate), a correction
    of the schedule ``exp(sum_k c_k cos(k pi t / T))`` (:func:`metatrain.schedules.schedule_correction`,
    ``theta["schedule"]``, zero at first), the weight decay (in log space) and, in a :class:`NetworkLOpt`,
    ``beta * f`` added to the Adam direction, with ``f``'s last layer at zero: at initialisation the optimizer
    **is** Adam-cosine (AdamW-cosine). The update is
    ``-alpha * lr(t) * correction(t / T) * (m_hat / (sqrt(v_hat) + 1e-8) + wd * W + beta * f)``, with ``lr`` the
    warm-up + cosine schedule of peak 1. The horizon is an input: ``optimizer(theta, total_steps=T)``.
  * ``initial_alpha``: the initial ``alpha``. With the momentum base, ``alpha * (1 - gamma0)`` is the
    equivalent heavy-ball learning rate: 0.1 (the paper's) starts as heavy-ball SGD at 0.01.
  * ``initial_weight_decay``: the initial decoupled weight decay of the ``"nominal"`` base (0: none, and
    none is learned).
  * ``horizon``: the horizon T it was meta-trained at (recorded by :class:`metatrain.WorkerConfig`; carried by
    checkpoints and shipped optimizers, and the ``total_steps`` a user may start from). None when unknown.
  * ``update_scale``: ``"none"`` or ``"fan_in"``: the terms of Adam's scale (``beta * f`` and the Adam base,
    O(1) per entry) of a tensor with fan-in ``n`` are multiplied by ``n_0 / n``, ``n_0`` its fan-in in the
    network meta-trained on (``reference_fan_in``, one per leaf: :func:`fan_ins`). As muP scales Adam's
    learning rate, it keeps one theta's updates alike at other widths; at the reference widths it is 1.

  Args:
    space: the weight space of the networks it optimizes (checked on every update).
    base, initial_alpha, initial_weight_decay, horizon, update_scale, reference_fan_in: the options above.

  Attributes:
    name: the kind's key in :data:`metatrain.LEARNED_OPTIMIZERS` (and in configs and checkpoints).
  """

  space: unf.WeightSpace
  base: str = dataclasses.field(default="momentum", kw_only=True)
  initial_alpha: float = dataclasses.field(default=INITIAL_ALPHA, kw_only=True)
  initial_weight_decay: float = dataclasses.field(default=0.0, kw_only=True)
  horizon: int | None = dataclasses.field(default=None, kw_only=True)
  update_scale: str = dataclasses.field(default="none", kw_only=True)
  reference_fan_in: tuple[int, ...] | None = dataclasses.field(default=None, kw_only=True)
  name: ClassVar[str] = ""

  def __post_init__(self):
    for option, choices in CHOICES.items():
      if hasattr(self, option) and getattr(self, option) not in choices:
        raise ValueError(f"{type(self).__name__}: {option}={getattr(self, option)!r}; choose one of {choices}.")
    if not self.initial_alpha > 0:
      raise ValueError(f"{type(self).__name__}: initial_alpha must be positive, got {self.initial_alpha!r}.")
    if self.initial_weight_decay < 0 or (self.initial_weight_decay > 0 and self.base != "nominal"):
      raise ValueError(
        f"{type(self).__name__}: initial_weight_decay={self.initial_weight_decay!r}; a weight decay is learned with "
        "base='nominal' only, and must not be negative."
      )
    if self.horizon is not None and self.horizon < 1:
      raise ValueError(f"{type(self).__name__}: horizon={self.horizon!r} must be a positive number of steps.")
    if self.reference_fan_in is not None:
      object.__setattr__(self, "reference_fan_in", tuple(int(n) for n in self.reference_fan_in))
      if len(self.reference_fan_in) != len(self.space):
        raise ValueError(
          f"{type(self).__name__}: reference_fan_in has {len(self.reference_fan_in)} entries for a space of "
          f"{len(self.space)} leaves: give one per leaf (metatrain.learned_optimizers.fan_ins(params))."
        )
    elif self.update_scale == "fan_in":
      raise ValueError(
        f"{type(self).__name__}: update_scale='fan_in' needs reference_fan_in, the fan-in of every leaf of the "
        "network it is meta-trained on: reference_fan_in=metatrain.learned_optimizers.fan_ins(params)."
      )

  # --- meta-parameters

  def init_meta(self, key: jax.Array, *, dtype: Any = jnp.float32) -> Theta:
    """Initial meta-parameters of the base term: ``log_alpha`` (``initial_alpha``) and ``logit_gamma0`` (0.9).

    With the ``"nominal"`` base also ``schedule`` (zeros, :data:`metatrain.schedules.SCHEDULE_TERMS`) and, with a
    weight decay, ``log_weight_decay``. ``key`` is unused here (kinds with ``f`` draw its weights).
    """
    del key
    scalars = {
      "log_alpha": jnp.asarray(math.log(self.initial_alpha), dtype),
      "logit_gamma0": jnp.asarray(math.log(INITIAL_GAMMA0 / (1 - INITIAL_GAMMA0)), dtype),
    }
    if self.base == "nominal":
      scalars["schedule"] = jnp.zeros((schedules.SCHEDULE_TERMS,), dtype)
      if self.initial_weight_decay > 0:
        scalars["log_weight_decay"] = jnp.asarray(math.log(self.initial_weight_decay), dtype)
    return scalars

  def noise_scales(self, theta: Theta) -> Theta:
    """The scale of every part of ``theta`` for evolution strategies' perturbations (``per_part_noise``).

    ES perturbs every meta-parameter with the same std; here every scale is 1 (:class:`NetworkLOpt` scales its
    last layer).

    Args:
      theta: meta-parameters of this optimizer.

    Returns:
      A pytree shaped like ``theta`` of scalar factors (arrays of ``theta``'s dtypes).
    """
    return jax.tree.map(lambda x: jnp.ones((), jnp.result_type(x)), theta)

  def num_meta_parameters(self, theta: Theta) -> int:
    """Number of scalars in one ``theta`` (independent of the inner network's widths)."""
    return _size(theta)

  def transfer(self, theta: Theta, space: unf.WeightSpace) -> tuple[LearnedOptimizer, Theta]:
    """The same learned optimizer for a weight space that matches this one up to renaming.

    ``space`` must have the same leaves in the same order (paths may differ)
    with one consistent renaming of the labels (:meth:`unf.WeightSpace.match`);
    label sizes (widths) do not matter. The returned optimizer computes the
    same update on the renamed params as this one on the original params
    (its ``reference_fan_in`` is kept: at other widths ``update_scale`` applies).

    Args:
      theta: meta-parameters of this optimizer.
      space: the other weight space (with fixed sizes, as the ``unf`` builders give it).

    Returns:
      ``(learned_optimizer, theta)`` for ``space``.

    Raises:
      ValueError: naming the first difference when the spaces do not match up to renaming.
    """
    self.space.match(space)
    return dataclasses.replace(self, space=space), theta

  def options(self) -> dict[str, Any]:
    """The options (every keyword argument but ``space``) as JSON-ready values."""
    values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "space"}
    if values["reference_fan_in"] is not None:  # a tuple: JSON has lists
      values["reference_fan_in"] = list(values["reference_fan_in"])
    return values

  def to_json(self) -> dict[str, Any]:
    """The optimizer as JSON-ready values, its kind, options and weight space.

    :func:`metatrain.learned_optimizers.from_json` reads them back.
    """
    return {"kind": self.name, **self.options(), "space": self.space.to_json()}

  # --- the update rule: an optax chain

  def optimizer(self, theta: Theta, *, total_steps: int | None = None) -> optax.GradientTransformation:
    """The learned optimizer at meta-parameters ``theta``, as a pure optax transformation.

    ``update(grads, state, params)`` returns ``updates = -alpha * (base + beta * f(features))``
    (apply them with ``optax.apply_updates``) and the new state: the chain's, a tuple of its links'
    NamedTuple states (:mod:`metatrain.learned_optimizers.transforms`). ``params`` is required: the space
    checks them, and they are one of ``f``'s features.

    Args:
      theta: the meta-parameters.
      total_steps: the length of the run it trains (T), which the ``"nominal"`` base's warm-up and cosine
        decay span, as VeLO's ``num_steps``; required there (the horizon it was meta-trained at is
        ``self.horizon``), ignored by the other bases.

    Raises:
      ValueError: the ``"nominal"`` base without ``total_steps``.
    """
    alpha = jnp.exp(theta["log_alpha"])
    schedule = None
    if self.base == "nominal":
      if total_steps is None:
        trained = f" (it was meta-trained at total_steps={self.horizon})" if self.horizon else ""
        raise ValueError(
          f"{type(self).__name__} with the 'nominal' base follows a warm-up + cosine schedule over the run: pass "
          f"the number of steps your run takes, optimizer(theta, total_steps=...){trained}."
        )
      steps, warmup_cosine = total_steps, schedules.warmup_cosine(1.0, total_steps)

      def schedule(count: jax.Array) -> jax.Array:
        return jnp.asarray(warmup_cosine(count)) * schedules.schedule_correction(theta["schedule"], count, steps)

    return optax.chain(
      _checked_params(self.space, type(self).__name__),
      transforms.finite_gradients(),
      transforms.sum_of(*self._terms(theta)),
      transforms.rate(alpha, schedule),
    )

  def _terms(self, theta: Theta) -> list[optax.GradientTransformation]:
    """The terms of the direction, summed in order: the base term, then the weight decay."""
    gamma0 = jax.nn.sigmoid(theta["logit_gamma0"])
    if self.base == "momentum":
      terms = [transforms.momentum_direction(gamma0)]
    else:
      terms = [optax.chain(transforms.adam_direction(gamma0), *self._fan_in_scale())]
    if "log_weight_decay" in theta:
      terms.append(transforms.weight_decay_term(jnp.exp(theta["log_weight_decay"])))
    return terms

  def _fan_in_scale(self) -> list[optax.GradientTransformation]:
    """``update_scale="fan_in"``'s link, or none."""
    if self.update_scale == "none":
      return []
    assert self.reference_fan_in is not None  # checked at construction
    return [transforms.scale_by_fan_in(self.reference_fan_in)]


def _checked_params(space: unf.WeightSpace, kind: str) -> optax.GradientTransformation:
  """The first link: ``params`` are required and must be of ``space`` (the update's leaves and axes follow it)."""

  def init(params: PyTree) -> optax.EmptyState:
    space.validate(params)
    return optax.EmptyState()

  def update(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    if params is None:
      raise ValueError(f"{kind}.optimizer(theta).update needs the params: call update(grads, state, params).")
    space.validate(params)
    return updates, state

  return optax.GradientTransformation(init, update)


@dataclasses.dataclass(frozen=True)
class NetworkLOpt(LearnedOptimizer):
  """A learned optimizer with a network ``f``: ``-alpha * (base + beta * f(features))`` (the paper's).

  ``f`` is ``pointwise_layers`` pointwise ``Dense(width)`` + relu layers over the per-parameter features of
  :mod:`metatrain.learned_optimizers.features`, then a last layer that subclasses choose (``_init_head``,
  ``_head``), which sets the optimizer's symmetry. Its term of the chain is
  :func:`metatrain.learned_optimizers.transforms.learned_correction` times ``beta``.

  The options of ``f`` (keyword-only), beside :class:`LearnedOptimizer`'s:

  * ``width``: hidden features per parameter.
  * ``pointwise_layers``: pointwise ``Dense(width)`` + relu layers before the last layer (the paper: 3).
  * ``features``: ``"paper"`` (the 19 features) or ``"adam"`` (also the 6 second-moment features of
    :func:`metatrain.learned_optimizers.features.adam_features`; the state then carries second moments).
  * ``initial_beta``: the initial ``beta`` (0.001, the paper's). ``f``'s output is O(0.1) per entry at
    init, so against the Adam base (O(1) per entry) 0.001 would leave ``f`` a tiny share of the update,
    where against the momentum base it is a few percent; the Adam presets start at 0.05, which gives it
    about the same share (``python -m benchmarks.update_share``).

  Args:
    space: the weight space of the networks it optimizes.
    width, pointwise_layers, features, initial_beta: the options above.
    base, initial_alpha, initial_weight_decay, horizon, update_scale, reference_fan_in: the options of
      :class:`LearnedOptimizer`.

  Attributes:
    head_name: what ``f``'s last layer is, for :func:`describe`.
  """

  width: int = dataclasses.field(default=32, kw_only=True)
  pointwise_layers: int = dataclasses.field(default=2, kw_only=True)
  features: str = dataclasses.field(default="paper", kw_only=True)
  initial_beta: float = dataclasses.field(default=INITIAL_BETA, kw_only=True)
  head_name: ClassVar[str] = "last layer"

  def __post_init__(self):
    super().__post_init__()
    if self.width < 1 or self.pointwise_layers < 1:
      raise ValueError(f"{type(self).__name__}: width and pointwise_layers must be at least 1.")
    if not self.initial_beta > 0:
      raise ValueError(f"{type(self).__name__}: initial_beta must be positive, got {self.initial_beta!r}.")

  @property
  def num_features(self) -> int:
    """The number of input features per parameter (19, or 25 with the ``"adam"`` features)."""
    extra = features_lib.NUM_ADAM_FEATURES if self.features == "adam" else 0
    return features_lib.NUM_FEATURES + extra

  # --- the last layer of f: width features per parameter -> one number per parameter

  def _init_head(self, key: jax.Array, dtype: Any) -> dict:
    raise NotImplementedError

  def _head(self, head: dict, hidden: dict) -> dict:
    """``hidden``: a nested dict of the space with a trailing ``width`` axis -> a trailing axis of 1."""
    raise NotImplementedError

  def _transfer_head(self, head: dict, space: unf.WeightSpace) -> dict:
    """The same last layer for ``space``, which matches ``self.space`` up to renaming."""
    raise NotImplementedError

  def _head_noise_scales(self, head: dict) -> dict:
    """The scales of ``f``'s last layer for :meth:`noise_scales`: 1 everywhere unless a kind says otherwise."""
    return jax.tree.map(lambda x: jnp.ones((), jnp.result_type(x)), head)

  # --- meta-parameters

  def init_meta(self, key: jax.Array, *, dtype: Any = jnp.float32) -> Theta:
    """Initial meta-parameters: the base term's (:meth:`LearnedOptimizer.init_meta`), beta ``initial_beta`` and a
    fresh ``f``.

    Returns:
      A dict of arrays: ``log_alpha``, ``log_beta``, ``logit_gamma0`` (scalars), the ``"nominal"`` base's
      ``schedule`` (and ``log_weight_decay``), and ``f`` (``dense0``, ``dense1``, ... and ``head``, the last
      layer, at :data:`HEAD_SCALE` times its usual scale, or zero with the ``"nominal"`` base).
    """
    keys = jax.random.split(key, self.pointwise_layers + 1)
    sizes = (self.num_features,) + (self.width,) * self.pointwise_layers
    f = {f"dense{i}": _dense_init(keys[i], sizes[i], sizes[i + 1], dtype) for i in range(self.pointwise_layers)}
    head_scale = 0.0 if self.base == "nominal" else HEAD_SCALE
    f["head"] = jax.tree.map(lambda w: head_scale * w, self._init_head(keys[-1], dtype))
    scalars = super().init_meta(key, dtype=dtype)
    return {**scalars, "log_beta": jnp.asarray(math.log(self.initial_beta), dtype), "f": f}

  def noise_scales(self, theta: Theta) -> Theta:
    """The scale of every part of ``theta`` for evolution strategies' perturbations (``per_part_noise``).

    ES perturbs every meta-parameter with the same std. A UNF's last layer sums many more inputs per
    output entry than a Deep Sets layer (:func:`unf.linear.input_channels`: 192-320 on ``mlp_fashion8``,
    up to 2,880 on ``transformer_lm``, against Deep Sets' 64), so the same std moves ``f``'s output 2-7x
    further (issue 22, part 5). Here every weight matrix of
    the last layer has scale ``sqrt(2 * width / input_channels)``, so that a perturbation moves each output
    entry of ``f`` about as far as it moves a Deep Sets layer's; everything else has scale 1 (so Deep Sets'
    scales are all 1).
    """
    scales = super().noise_scales(theta)
    return {**scales, "f": {**scales["f"], "head": self._head_noise_scales(theta["f"]["head"])}}

  def transfer(self, theta: Theta, space: unf.WeightSpace) -> tuple[LearnedOptimizer, Theta]:
    """The same learned optimizer for a weight space that matches this one up to renaming
    (:meth:`LearnedOptimizer.transfer`): ``f``'s last layer is carried over to the renamed leaves."""
    moved, theta = super().transfer(theta, space)
    head = self._transfer_head(theta["f"]["head"], space)
    return moved, {**theta, "f": {**theta["f"], "head": head}}

  # --- the update rule

  def f(self, theta: Theta, x: PyTree, step: jax.Array | None = None) -> dict:
    """The network ``f``: per-parameter features -> one number each.

    Args:
      theta: meta-parameters from :meth:`init_meta`.
      x: nested dict of the space, each leaf with a trailing feature axis: all :attr:`num_features` features
        in the order of :mod:`metatrain.learned_optimizers.features` when ``step`` is None; with ``step``,
        every feature but the 11 time features (what
        :func:`metatrain.learned_optimizers.transforms.learned_correction` passes).
      step: the step whose time features ``f`` adds itself: their share of the first layer is computed once
        per tensor and added to every entry's, equal (within float rounding) to reading them per entry.

    Returns:
      A nested dict of the space, each leaf shaped like its parameter.
    """
    layers = [theta["f"][f"dense{i}"] for i in range(self.pointwise_layers)]
    first = layers[0]
    if step is not None:  # the kernel's rows of the time features, applied once: a per-tensor bias
      time_rows = np.arange(features_lib.NUM_TENSOR_FEATURES, features_lib.NUM_FEATURES)
      tensor_rows = np.setdiff1d(np.arange(self.num_features), time_rows)
      kernel = first["kernel"]

      def first_layer(h: jax.Array) -> jax.Array:
        time = features_lib.time_features(step, dtype=h.dtype)
        bias = time @ kernel[time_rows].astype(h.dtype) + first["bias"].astype(h.dtype)
        return h @ kernel[tensor_rows].astype(h.dtype) + bias

    else:
      first_layer = functools.partial(_dense, first)

    def pointwise(h: jax.Array) -> jax.Array:
      h = jax.nn.relu(first_layer(h))
      for layer in layers[1:]:
        h = jax.nn.relu(_dense(layer, h))
      return h

    hidden = jax.tree.map(pointwise, x)
    out = self._head(theta["f"]["head"], self.space.unflatten(self.space.flatten(hidden)))
    return jax.tree.map(lambda y: y[..., 0], out)

  def _terms(self, theta: Theta) -> list[optax.GradientTransformation]:
    """The base term and the weight decay, then ``beta * f``."""
    correction = transforms.learned_correction(functools.partial(self.f, theta), second_moments=self.features == "adam")
    beta = jnp.exp(theta["log_beta"])
    return [*super()._terms(theta), optax.chain(correction, optax.scale(beta), *self._fan_in_scale())]


def describe(lopt: LearnedOptimizer, theta: Theta) -> str:
  """A table of the meta-parameter count of every component of ``theta``.

  Args:
    lopt: the learned optimizer.
    theta: its meta-parameters.

  Returns:
    Lines ``component  count``: alpha, beta, gamma0, each layer of ``f``, and the total.
  """
  rows = [("alpha (log)", theta["log_alpha"].size)]
  if "log_beta" in theta:
    rows.append(("beta (log)", theta["log_beta"].size))
  rows.append(("gamma0 (logit)", theta["logit_gamma0"].size))
  if "schedule" in theta:
    rows.append(("schedule correction", theta["schedule"].size))
  if "log_weight_decay" in theta:
    rows.append(("weight decay (log)", theta["log_weight_decay"].size))
  if isinstance(lopt, NetworkLOpt):
    sizes = (lopt.num_features,) + (lopt.width,) * lopt.pointwise_layers
    for i in range(lopt.pointwise_layers):
      rows.append((f"f/dense{i} (Dense {sizes[i]} -> {sizes[i + 1]})", _size(theta["f"][f"dense{i}"])))
    rows.append((f"f/head ({lopt.head_name} {lopt.width} -> 1)", _size(theta["f"]["head"])))
  rows.append(("total", lopt.num_meta_parameters(theta)))
  name_width = max(len(name) for name, _ in rows)
  lines = [f"{type(lopt).__name__} meta-parameters"]
  lines += [f"  {name:<{name_width}}  {count:>9,}" for name, count in rows]
  return "\n".join(lines)


def _size(tree: PyTree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))
