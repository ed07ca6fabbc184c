"""Three predictors of a network's test accuracy from its weights: invariant UNF, Deep Sets and StatNN.

The predictors of Zhou, Finn, Harrison (2024), "Universal Neural Functionals",
Sec. 4.1 (Tiny RNN Zoo), for a zoo from :mod:`experiments.rnn_zoo.zoo`. Each
maps one model's weights to a scalar, invariant to every relabelling of the
weight space's axes, ``f(sigma . W) = f(W)``:

- ``unf``: an invariant :class:`unf.UNF` (equivariant layers, :class:`unf.InvariantPool`, MLP head);
- ``deep_sets``: per tensor, a pointwise MLP over its entries, mean-pooled; the tensors'
  vectors concatenated into an MLP head (invariant to any permutation of each tensor's entries);
- ``statnn``: per tensor, its mean, variance and 0/25/50/75/100% quantiles
  (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights"), into an MLP.

All three see the same inputs (:func:`prepare`: each tensor shifted and scaled
by one mean and one standard deviation computed on the zoo's training split).

Example:
  >>> import jax.numpy as jnp
  >>> import unf
  >>> from flax import nnx
  >>> from experiments.rnn_zoo.predictors import make_predictor
  >>> space = unf.WeightSpace({"dense": {"kernel": ("in", "out"), "bias": ("out",)}})
  >>> weights = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
  >>> model = make_predictor("deep_sets", space, train_inputs=None, rngs=nnx.Rngs(0))
  >>> model(weights).shape
  ()
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import unf
from experiments.rnn_zoo import zoo as zoo_lib

#: The predictors' keys, in the order of the results table.
PREDICTORS = ("unf", "deep_sets", "statnn")
# Test Kendall's tau on the Tiny RNN Zoo, Zhou et al. 2024, Table 2.
PAPER_TAU = {"unf": 0.8968, "deep_sets": 0.8306, "statnn": 0.8839}
DISPLAY_NAMES = {"unf": "UNF (invariant)", "deep_sets": "Deep Sets", "statnn": "StatNN"}
#: The label that the authors' code gives every fixed axis of a zoo's models (the character axes of the
#: arithmetic zoo's encoder, decoder and head; the IRNN zoo's vocabulary), shared by all of them.
CHARACTERS = "characters"
_PAPER_HEADS: dict[str, dict[str, Any]] = {
  "deep_sets": {"width": 16, "head_hidden": (512,)},
  "statnn": {"head_hidden": (600, 600, 600)},
}
#: Per size preset, each predictor's keyword arguments:
#:
#: - ``"small"``: this project's first zoo;
#: - ``"paper"``: the authors' code (``gen_pred``): 16-channel UNF and Deep Sets layers with an MLP head of
#:   512, StatNN with three hidden layers of 600, and the UNF's space with every fixed axis given one shared,
#:   permutable label (:data:`CHARACTERS`), as the authors do;
#: - ``"paper3"``: the same with the paper's three equivariant layers (its code has two);
#: - ``"bounded"``: the paper's sizes, with the fixed axes as ``unf.infer_space`` gives them; the UNF's
#:   default ``fixed_axes="auto"`` gives each long one a label of its own (:func:`unf.basis.label_fixed_axes`).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
  "small": {"unf": {}, "deep_sets": {}, "statnn": {}},
  "paper": {"unf": {"hidden": (16, 16), "head_hidden": (512,), "fixed_label": CHARACTERS}, **_PAPER_HEADS},
  "paper3": {"unf": {"hidden": (16, 16, 16), "head_hidden": (512,), "fixed_label": CHARACTERS}, **_PAPER_HEADS},
  "bounded": {"unf": {"hidden": (16, 16), "head_hidden": (512,)}, **_PAPER_HEADS},
}


def parse_spec(spec: str) -> tuple[str, str | None]:
  """A predictor spec, ``name`` or ``name@preset`` (a predictor at a size preset of its own), split.

  ``predict --predictors unf unf@bounded deep_sets`` compares two UNFs on the same test models, paired.

  Raises:
    ValueError: an unknown predictor or size preset, naming the choices.

  Example:
    >>> parse_spec("unf@bounded"), parse_spec("statnn")
    (('unf', 'bounded'), ('statnn', None))
  """
  name, _, preset = spec.partition("@")
  if name not in PREDICTORS:
    raise ValueError(f"unknown predictor {name!r} in {spec!r}; choose one of {PREDICTORS} (or name@preset).")
  if preset and preset not in SIZES:
    raise ValueError(f"unknown size preset {preset!r} in {spec!r}; choose one of {tuple(SIZES)}.")
  return name, preset or None


def display_name(spec: str) -> str:
  """The results tables' name of a predictor spec: ``"UNF (invariant) [bounded]"`` for ``"unf@bounded"``."""
  name, preset = parse_spec(spec)
  return DISPLAY_NAMES[name] + (f" [{preset}]" if preset else "")


#: The quantiles StatNN reads of every tensor.
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


# --- inputs -----------------------------------------------------------------------------------------


class Normalizer(NamedTuple):
  """Per weight tensor, one mean and one standard deviation (scalars, so relabelling commutes with it).

  ``Normalizer(sigma . W) = sigma . Normalizer(W)`` for every relabelling ``sigma`` of the weight space.

  Attributes:
    mean: per tensor, the mean of its entries over the fitted models.
    std: per tensor, the standard deviation of its entries over the fitted models (plus 1e-8).
  """

  mean: dict
  std: dict

  @classmethod
  def fit(cls, weights: dict) -> Normalizer:
    """Statistics over every entry of every model of ``weights``.

    Args:
      weights: the models' params, with a leading model axis.

    Returns:
      The fitted normalizer.
    """
    mean = jax.tree.map(lambda w: np.float32(np.mean(w)), weights)
    std = jax.tree.map(lambda w: np.float32(np.std(w) + 1e-8), weights)
    return cls(mean, std)

  def __call__(self, weights: dict) -> dict:
    """``(w - mean) / std`` per tensor, as float32 (any leading axes)."""
    return jax.tree.map(lambda w, m, s: ((w - m) / s).astype(np.float32), weights, self.mean, self.std)


def tensor_statistics(weights: dict, space: unf.WeightSpace) -> jax.Array:
  """StatNN's features of one model: per tensor (in ``space.paths`` order) its mean, variance and quantiles.

  Args:
    weights: one model's params.
    space: their weight space.

  Returns:
    A vector of ``7 * len(space)`` features: mean, variance, then the 0, 25, 50, 75 and 100% quantiles.
  """
  features = []
  for leaf in space.flatten(weights):
    flat = jnp.ravel(leaf)
    features.extend([jnp.mean(flat)[None], jnp.var(flat)[None], jnp.quantile(flat, jnp.asarray(QUANTILES))])
  return jnp.concatenate(features)


def prepare(splits: dict[str, zoo_lib.ZooSplit]) -> dict[str, tuple[dict, np.ndarray]]:
  """The inputs and targets every predictor trains and is scored on, with training-split statistics only.

  Args:
    splits: the zoo's splits (see :func:`experiments.rnn_zoo.zoo.load_zoo`); ``"train"`` must be one.

  Returns:
    Per split, ``(inputs, targets)``: the weights normalized by a :class:`Normalizer` fitted on the
    training split, and the accuracies standardized by the training split's mean and standard deviation.
  """
  normalizer = Normalizer.fit(splits["train"].weights)
  mean, std = float(splits["train"].accuracy.mean()), float(splits["train"].accuracy.std() + 1e-8)
  return {
    split: (normalizer(part.weights), ((part.accuracy - mean) / std).astype(np.float32))
    for split, part in splits.items()
  }


# --- predictors -------------------------------------------------------------------------------------


class Statistic(nnx.Variable):
  """A fixed, non-trainable array fitted on the training split (feature standardization)."""


def _mlp(sizes: Sequence[int], rngs: nnx.Rngs) -> nnx.List:
  return nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])


def _run_mlp(layers: nnx.List, h: jax.Array) -> jax.Array:
  for k, layer in enumerate(layers):
    h = layer(h)
    if k < len(layers) - 1:
      h = jax.nn.relu(h)
  return h


def share_one_fixed_label(space: unf.WeightSpace, label: str) -> unf.WeightSpace:
  """``space`` with every fixed axis given one shared label, ``label`` (the authors' code, for the zoos).

  The UNF on the result is equivariant to a larger group than the true one (which permutes no fixed
  axis): it also permutes the characters, the same way in every tensor that has them.

  Raises:
    ValueError: when ``label`` is taken, or when the fixed axes differ in length (one label has one size).

  Example:
    >>> import unf
    >>> space = unf.WeightSpace({"embed": (None, "h"), "head": ("h", None)},
    ...                         fixed_sizes={("embed",): (14, None), ("head",): (None, 14)})
    >>> share_one_fixed_label(space, "characters")
    WeightSpace(
      embed: (characters, h)
      head: (h, characters)
    )
  """
  if label in space.labels:
    raise ValueError(f"share_one_fixed_label: the space already has a label {label!r}; choose another name.")
  lengths = {n for i in range(len(space)) for n in space.fixed_shape(i)}
  if len(lengths) > 1:
    raise ValueError(
      f"share_one_fixed_label: the fixed axes have lengths {sorted(lengths)}, but one shared label needs one length; "
      "label them by hand (unf.WeightSpace) or leave them fixed."
    )
  spec = jax.tree.map(
    lambda axes: tuple(label if a is None else a for a in axes), space.spec(), is_leaf=lambda x: isinstance(x, tuple)
  )
  return unf.WeightSpace(spec)


class UNFPredictor(nnx.Module):
  """An invariant UNF on the zoo's weight space: ``UNFPredictor(sigma . W) = UNFPredictor(W)``.

  Args:
    space: the weight space of one model.
    hidden: feature sizes of the equivariant layers.
    head_hidden: hidden sizes of the MLP after :class:`unf.InvariantPool`.
    fixed_label: when given, every fixed axis of ``space`` gets this one shared label first
      (:func:`share_one_fixed_label`, the authors' choice); otherwise fixed axes stay fixed (and the UNF's
      ``fixed_axes="auto"`` labels the long ones apart).
    rngs: flax random streams.
  """

  def __init__(
    self,
    space: unf.WeightSpace,
    *,
    hidden: Sequence[int] = (16, 16),
    head_hidden: Sequence[int] = (64,),
    fixed_label: str | None = None,
    rngs: nnx.Rngs,
  ):
    if fixed_label is not None:
      space = share_one_fixed_label(space, fixed_label)
    self.net = unf.UNF(space, 1, 1, hidden=hidden, invariant=True, head_hidden=head_hidden, rngs=rngs)

  def __call__(self, weights: dict) -> jax.Array:
    return self.net(jax.tree.map(lambda w: w[..., None], weights))[0]


class DeepSetsPredictor(nnx.Module):
  """Deep Sets per tensor: a pointwise MLP over each tensor's entries, mean-pooled, then an MLP head.

  Each tensor is a set of scalars; its own pointwise MLP (1 -> width -> width,
  ReLU) embeds every entry, the mean over entries pools them, and the pooled
  vectors of all tensors are concatenated. Invariant to any permutation of
  each tensor's entries, a larger group than the weight space's.

  Args:
    space: the weight space of one model.
    width: width of the per-entry MLP.
    head_hidden: hidden sizes of the MLP head.
    rngs: flax random streams.
  """

  def __init__(self, space: unf.WeightSpace, *, width: int = 32, head_hidden: Sequence[int] = (64,), rngs: nnx.Rngs):
    self.space = space
    self.encoders = nnx.List([_mlp((1, width, width), rngs) for _ in space.paths])
    self.head = _mlp((width * len(space), *head_hidden, 1), rngs)

  def __call__(self, weights: dict) -> jax.Array:
    pooled = []
    for encoder, leaf in zip(self.encoders, self.space.flatten(weights)):
      h = jax.nn.relu(_run_mlp(encoder, jnp.reshape(leaf, (-1, 1))))  # pool after a nonlinearity
      pooled.append(jnp.mean(h, axis=0))
    return _run_mlp(self.head, jnp.concatenate(pooled))[0]


class StatNNPredictor(nnx.Module):
  """StatNN: an MLP on per-tensor statistics (:func:`tensor_statistics`), standardized on the training split.

  Args:
    space: the weight space of one model.
    train_inputs: the (normalized) weights of the zoo's training split, with a leading model axis: the
      features' means and standard deviations are fitted on them.
    head_hidden: hidden sizes of the MLP.
    rngs: flax random streams.
  """

  def __init__(
    self, space: unf.WeightSpace, *, train_inputs: dict, head_hidden: Sequence[int] = (64, 64), rngs: nnx.Rngs
  ):
    self.space = space
    features = jax.jit(jax.vmap(functools.partial(tensor_statistics, space=space)))(train_inputs)  # one compile
    self.feature_mean = Statistic(jnp.mean(features, axis=0))
    self.feature_std = Statistic(jnp.std(features, axis=0) + 1e-6)
    self.head = _mlp((features.shape[1], *head_hidden, 1), rngs)

  def __call__(self, weights: dict) -> jax.Array:
    features = (tensor_statistics(weights, self.space) - self.feature_mean[...]) / self.feature_std[...]
    return _run_mlp(self.head, features)[0]


def make_predictor(
  name: str, space: unf.WeightSpace, *, train_inputs: dict | None, rngs: nnx.Rngs, sizes: str = "small"
) -> nnx.Module:
  """One of :data:`PREDICTORS`, built for ``space`` with the sizes of a preset of :data:`SIZES`.

  Args:
    name: a key of :data:`PREDICTORS`.
    space: the weight space of one model.
    train_inputs: the normalized weights of the zoo's training split (leading model axis); StatNN fits its
      feature standardization on them, the others ignore them.
    rngs: flax random streams.
    sizes: a key of :data:`SIZES`.

  Returns:
    The predictor, an ``nnx.Module`` mapping one model's weights to a scalar.

  Raises:
    ValueError: an unknown name or size preset, or StatNN without ``train_inputs``.
  """
  if sizes not in SIZES:
    raise ValueError(f"unknown size preset {sizes!r}; choose one of {tuple(SIZES)}.")
  if name not in PREDICTORS:
    raise ValueError(f"unknown predictor {name!r}; choose one of {PREDICTORS}.")
  options = SIZES[sizes][name]
  if name == "unf":
    return UNFPredictor(space, rngs=rngs, **options)
  if name == "deep_sets":
    return DeepSetsPredictor(space, rngs=rngs, **options)
  if train_inputs is None:
    raise ValueError("make_predictor('statnn', ...) needs train_inputs: it standardizes features on them.")
  return StatNNPredictor(space, train_inputs=train_inputs, rngs=rngs, **options)
