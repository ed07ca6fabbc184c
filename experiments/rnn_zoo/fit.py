"""Training a predictor, the same way for all: one objective, Adam, one budget.

Two objectives: ``"mse"``, the mean squared error on the standardized accuracy, and ``"bce"``, the paper's
binary cross-entropy between the accuracy (a number in [0, 1]) and the sigmoid of the prediction.

Training runs in chunks of ``eval_every`` steps, each one jitted ``lax.scan``;
after every chunk the checkpoint is scored by Kendall's tau on the zoo's
validation split, and :func:`fit` keeps the best one. The test split is never
read here.

Example:
  >>> import jax
  >>> import numpy as np
  >>> import unf
  >>> from flax import nnx
  >>> from experiments.rnn_zoo import fit, predictors
  >>> space = unf.WeightSpace({"dense": {"kernel": ("in", "out"), "bias": ("out",)}})
  >>> rng = np.random.default_rng(0)
  >>> inputs = {"dense": {"kernel": rng.normal(size=(8, 3, 2)), "bias": rng.normal(size=(8, 2))}}
  >>> targets = inputs["dense"]["bias"].mean(axis=1)  # a function of the weights to learn
  >>> model = predictors.make_predictor("deep_sets", space, train_inputs=None, rngs=nnx.Rngs(0))
  >>> config = fit.FitConfig(steps=20, batch_size=4, eval_every=10)
  >>> data = (inputs, targets)
  >>> result = fit.fit(model, data, data, key=jax.random.key(0), config=config, progress=False)
  >>> [checkpoint["step"] for checkpoint in result.history]
  [10, 20]
  >>> fit.predict(model, inputs).shape
  (8,)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from experiments.rnn_zoo.stats import kendall_tau

#: The training objectives of :class:`FitConfig`.
OBJECTIVES = ("mse", "bce")


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """The training budget, the same for every predictor.

  Attributes:
    steps: Adam steps.
    batch_size: zoo models per step (drawn without replacement within a step).
    learning_rate: Adam's learning rate.
    eval_every: steps between validation checkpoints (the best one by validation tau is kept).
    objective: ``"mse"`` (targets: standardized accuracies) or ``"bce"`` (targets: accuracies in [0, 1];
      the prediction is a logit), the paper's.
  """

  steps: int = 1500
  batch_size: int = 32
  learning_rate: float = 1e-3
  eval_every: int = 100
  objective: str = "mse"

  def __post_init__(self):
    for name in ("steps", "batch_size", "eval_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"FitConfig.{name} must be at least 1, got {getattr(self, name)}.")
    if self.objective not in OBJECTIVES:
      raise ValueError(f"FitConfig.objective must be one of {OBJECTIVES}, got {self.objective!r}.")

  @classmethod
  def paper(cls, num_train: int, *, epochs: int = 10, batch_size: int = 10) -> FitConfig:
    """The paper's budget for a training split of ``num_train`` models: BCE, Adam 1e-3, batch 10, 10 epochs.

    A checkpoint per epoch; the best by validation tau is kept (early stopping, without stopping early:
    the selected checkpoint is the same).
    """
    epoch = max(1, -(-num_train // batch_size))
    return cls(steps=epochs * epoch, batch_size=batch_size, learning_rate=1e-3, eval_every=epoch, objective="bce")


def _split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """The model's graph, its ``nnx.Param`` state and the rest of its state."""
  # nnx.split's stub returns a variadic tuple; its two filters (Param, then everything else) give two states.
  return cast(tuple[nnx.GraphDef, nnx.State, nnx.State], nnx.split(model, nnx.Param, ...))


def _predict(graphdef: nnx.GraphDef, params: Any, rest: Any, inputs: dict) -> jax.Array:
  model = nnx.merge(graphdef, params, rest)
  return jax.vmap(model)(inputs)


def _loss(params, graphdef, rest, inputs, targets, objective="mse"):
  predictions = _predict(graphdef, params, rest, inputs)
  if objective == "bce":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(predictions, targets))
  return jnp.mean((predictions - targets) ** 2)


@functools.partial(jax.jit, static_argnames=("graphdef", "learning_rate", "batch_size", "num_steps", "objective"))
def _train_steps(
  graphdef, params, rest, opt_state, inputs, targets, key, *, learning_rate, batch_size, num_steps, objective
):
  """``num_steps`` Adam steps on random batches of the training split: one ``lax.scan``."""
  optimizer = optax.adam(learning_rate)
  n = targets.shape[0]
  batch = min(batch_size, n)

  def step(carry, k):
    params, opt_state = carry
    index = jax.random.choice(k, n, (batch,), replace=False)
    x, y = jax.tree.map(lambda a: a[index], inputs), targets[index]
    loss, grads = jax.value_and_grad(_loss)(params, graphdef, rest, x, y, objective)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, num_steps))
  return params, opt_state, jnp.mean(losses)


def _static(config: FitConfig) -> dict:
  # Only what shapes the training program: runs of different lengths share one compile.
  return {"learning_rate": config.learning_rate, "batch_size": config.batch_size, "objective": config.objective}


_predict_jit = jax.jit(_predict, static_argnames="graphdef")


class FitResult(NamedTuple):
  """A trained predictor: the selected checkpoint, its validation tau and the history.

  Attributes:
    model: the predictor, at the selected checkpoint.
    step: the training step of the selected checkpoint.
    val_tau: its Kendall's tau on the validation split (NaN if no checkpoint had a defined tau).
    history: per checkpoint, ``{"step", "train_loss", "val_tau"}``.
  """

  model: nnx.Module
  step: int
  val_tau: float
  history: list[dict]


def loss(model: nnx.Module, inputs: dict, targets: Any, objective: str = "mse") -> float:
  """The training objective of the model's predictions.

  Args:
    model: a predictor.
    inputs: weights with a leading model axis.
    targets: (models,) targets.
    objective: ``"mse"``, ``mean((predict(model, inputs) - targets) ** 2)``, or ``"bce"``, the mean binary
      cross-entropy of ``sigmoid(predict(model, inputs))`` against targets in [0, 1].

  Returns:
    The mean loss.
  """
  graphdef, params, rest = _split(model)
  return float(_loss(params, graphdef, rest, inputs, jnp.asarray(targets), objective))


def train_steps(
  model: nnx.Module, inputs: dict, targets: Any, key: jax.Array, *, config: FitConfig, steps: int
) -> float:
  """Trains ``model`` in place for ``steps`` Adam steps from a fresh optimizer state, without checkpoints.

  Args:
    model: a predictor, updated in place.
    inputs: weights of the training models, with a leading model axis.
    targets: (models,) targets.
    key: PRNG key of the batches.
    config: the learning rate and batch size (its ``steps`` is not used).
    steps: Adam steps to take.

  Returns:
    The mean training loss over the steps.
  """
  graphdef, params, rest = _split(model)
  opt_state = optax.adam(config.learning_rate).init(params)
  params, _, mean_loss = _train_steps(
    graphdef, params, rest, opt_state, inputs, jnp.asarray(targets), key, **_static(config), num_steps=steps
  )
  nnx.update(model, params)
  return float(mean_loss)


def predict(model: nnx.Module, inputs: dict) -> np.ndarray:
  """The model's predictions for a batch of weights: one jitted ``jax.vmap`` of the model over models.

  Args:
    model: a predictor.
    inputs: weights with a leading model axis.

  Returns:
    (models,) predictions.
  """
  graphdef, params, rest = _split(model)
  return np.asarray(_predict_jit(graphdef, params, rest, inputs))


def fit(
  model: nnx.Module,
  train: tuple[dict, np.ndarray],
  valid: tuple[dict, np.ndarray],
  *,
  key: jax.Array,
  config: FitConfig,
  progress: bool = True,
  description: str = "fit",
) -> FitResult:
  """Trains a predictor on ``config.objective``; keeps the checkpoint with the best validation Kendall's tau.

  Args:
    model: the predictor; it is left at the selected checkpoint.
    train: (inputs, targets) of the zoo's training split (inputs: weights with a leading model axis).
    valid: (inputs, targets) of the zoo's validation split, used for model selection only.
    key: PRNG key of the batches.
    config: the budget.
    progress: show a progress bar.
    description: its label.

  Returns:
    The selected checkpoint's step and validation tau, and the history of every checkpoint.
  """
  graphdef, params, rest = _split(model)
  opt_state = optax.adam(config.learning_rate).init(params)
  inputs, targets = train
  best = (-math.inf, 0, params)
  history = []
  bar = tqdm.tqdm(total=config.steps, desc=description, unit="step", disable=not progress, leave=False)
  done = 0
  while done < config.steps:
    chunk = min(config.eval_every, config.steps - done)
    key, k = jax.random.split(key)
    params, opt_state, train_loss = _train_steps(
      graphdef, params, rest, opt_state, inputs, jnp.asarray(targets), k, **_static(config), num_steps=chunk
    )
    done += chunk
    tau = kendall_tau(np.asarray(_predict_jit(graphdef, params, rest, valid[0])), valid[1])
    history.append({"step": done, "train_loss": float(train_loss), "val_tau": tau})
    if tau > best[0]:  # NaN never wins
      best = (tau, done, params)
    bar.update(chunk)
    bar.set_postfix(loss=f"{float(train_loss):.3f}", val_tau=f"{tau:.3f}")
  bar.close()
  if best[0] == -math.inf:
    best = (math.nan, done, params)
  nnx.update(model, best[2])
  return FitResult(model, best[1], best[0], history)
