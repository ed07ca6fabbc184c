"""Predicting a network's test accuracy from its weights: invariant UNF, Deep Sets and StatNN.

The experiment of Zhou, Finn, Harrison (2024), "Universal Neural Functionals",
Sec. 4.1 (Tiny RNN Zoo), at small scale, on a zoo from :mod:`metatrain.zoo`.
Three predictors map one model's weights to a scalar, each invariant to every
relabelling of the weight space's axes, ``f(sigma . W) = f(W)``:

- ``unf``: an invariant :class:`unf.UNF` (equivariant layers, :class:`unf.InvariantPool`, MLP head);
- ``deepsets``: per tensor, a pointwise MLP over its entries, mean-pooled; the tensors'
  vectors concatenated into an MLP head (invariant to any permutation of each tensor's entries);
- ``statnn``: per tensor, its mean, variance and 0/25/50/75/100% quantiles
  (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights"), into an MLP.

All three see the same inputs (each tensor shifted and scaled by one mean and
one standard deviation computed on the zoo's training split) and are trained
with the same budget: MSE on the standardized accuracy, Adam, the same steps
and batch size. The checkpoint with the best Kendall's tau on the zoo's
validation split is kept; the test split is read once, for the reported tau.

Example:
  >>> from metatrain.predict import kendall_tau
  >>> round(kendall_tau([1, 2, 3], [1, 3, 2]), 4)
  0.3333
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

import unf
from metatrain import zoo as zoo_lib
from metatrain.evaluate import mean_se

PREDICTORS = ("unf", "deepsets", "statnn")
# Test Kendall's tau on the Tiny RNN Zoo, Zhou et al. 2024, Table 2.
PAPER_TAU = {"unf": 0.8968, "deepsets": 0.8306, "statnn": 0.8839}
DISPLAY_NAMES = {"unf": "UNF (invariant)", "deepsets": "Deep Sets", "statnn": "StatNN"}
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


# --- Kendall's tau ----------------------------------------------------------------------------------


def kendall_tau(x: Any, y: Any) -> float:
  """Kendall's tau-b of two equally long sequences, with ties.

  ``tau_b = (n_c - n_d) / sqrt((n_0 - n_x) (n_0 - n_y))`` over the ``n_0 = n (n - 1) / 2``
  pairs, where ``n_c`` / ``n_d`` count concordant / discordant pairs and
  ``n_x`` / ``n_y`` the pairs tied in x / in y. Computed from the pairwise sign
  matrices, ``sum_{i<j} sign(x_i - x_j) sign(y_i - y_j)`` over the square root of
  the number of pairs untied in x times the number untied in y: O(n^2) memory,
  fine for a zoo's few hundred models. Equals ``scipy.stats.kendalltau``
  (its default, tau-b).

  Returns:
    tau in [-1, 1]; NaN if x or y is constant (no untied pairs) or n < 2.
  """
  x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f"kendall_tau needs sequences of equal length, got {x.size} and {y.size}.")
  upper = np.triu_indices(x.size, k=1)
  sx = np.sign(x[:, None] - x[None, :])[upper]
  sy = np.sign(y[:, None] - y[None, :])[upper]
  denominator = math.sqrt(float(np.sum(sx != 0)) * float(np.sum(sy != 0)))
  return float(np.sum(sx * sy) / denominator) if denominator > 0 else math.nan


# --- inputs -----------------------------------------------------------------------------------------


class Normalizer(NamedTuple):
  """Per weight tensor, one mean and one standard deviation (scalars, so relabelling commutes with it)."""

  mean: dict
  std: dict

  @classmethod
  def fit(cls, weights: dict) -> Normalizer:
    """Statistics over every entry of every model of ``weights`` (leading model axis)."""
    mean = jax.tree.map(lambda w: np.float32(np.mean(w)), weights)
    std = jax.tree.map(lambda w: np.float32(np.std(w) + 1e-8), weights)
    return cls(mean, std)

  def __call__(self, weights: dict) -> dict:
    return jax.tree.map(lambda w, m, s: ((w - m) / s).astype(np.float32), weights, self.mean, self.std)


def tensor_statistics(weights: dict, space: unf.WeightSpace) -> jax.Array:
  """StatNN's features of one model: per tensor (in ``space.paths`` order) its mean, variance and quantiles.

  Returns:
    A vector of ``7 * len(space)`` features: mean, variance, then the 0, 25, 50, 75 and 100% quantiles.
  """
  features = []
  for leaf in space.flatten(weights):
    flat = jnp.ravel(leaf)
    features.extend([jnp.mean(flat)[None], jnp.var(flat)[None], jnp.quantile(flat, jnp.asarray(QUANTILES))])
  return jnp.concatenate(features)


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


class UNFPredictor(nnx.Module):
  """An invariant UNF on the zoo's weight space: ``UNFPredictor(sigma . W) = UNFPredictor(W)``.

  Args:
    space: the weight space of one model.
    hidden: feature sizes of the equivariant layers.
    head_hidden: hidden sizes of the MLP after :class:`unf.InvariantPool`.
    rngs: flax random streams.
  """

  def __init__(self, space: unf.WeightSpace, *, hidden=(16, 16), head_hidden=(64,), rngs: nnx.Rngs):
    self.net = unf.UNF(space, 1, 1, hidden=hidden, invariant=True, head_hidden=head_hidden, rngs=rngs)

  def __call__(self, weights: dict) -> jax.Array:
    return self.net(jax.tree.map(lambda w: w[..., None], weights))[0]


class DeepSetsPredictor(nnx.Module):
  """Deep Sets per tensor: a pointwise MLP over each tensor's entries, mean-pooled, then an MLP head.

  Each tensor is a set of scalars; its own pointwise MLP (1 -> width -> width,
  ReLU) embeds every entry, the mean over entries pools them, and the pooled
  vectors of all tensors are concatenated. Invariant to any permutation of
  each tensor's entries, a larger group than the weight space's.
  """

  def __init__(self, space: unf.WeightSpace, *, width: int = 32, head_hidden=(64,), rngs: nnx.Rngs):
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

  def __init__(self, space: unf.WeightSpace, *, train_inputs: dict, head_hidden=(64, 64), rngs: nnx.Rngs):
    self.space = space
    features = jax.jit(jax.vmap(functools.partial(tensor_statistics, space=space)))(train_inputs)  # one compile
    self.feature_mean = Statistic(jnp.mean(features, axis=0))
    self.feature_std = Statistic(jnp.std(features, axis=0) + 1e-6)
    self.head = _mlp((features.shape[1], *head_hidden, 1), rngs)

  def __call__(self, weights: dict) -> jax.Array:
    features = (tensor_statistics(weights, self.space) - self.feature_mean[...]) / self.feature_std[...]
    return _run_mlp(self.head, features)[0]


def make_predictor(name: str, space: unf.WeightSpace, *, train_inputs: dict, rngs: nnx.Rngs) -> nnx.Module:
  """One of :data:`PREDICTORS`, built for ``space`` (``train_inputs`` is used by StatNN only)."""
  if name == "unf":
    return UNFPredictor(space, rngs=rngs)
  if name == "deepsets":
    return DeepSetsPredictor(space, rngs=rngs)
  if name == "statnn":
    return StatNNPredictor(space, train_inputs=train_inputs, rngs=rngs)
  raise ValueError(f"unknown predictor {name!r}; choose one of {PREDICTORS}.")


# --- training ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """The training budget, the same for every predictor.

  Attributes:
    steps: Adam steps.
    batch_size: zoo models per step (drawn without replacement within a step).
    learning_rate: Adam's learning rate.
    eval_every: steps between validation checkpoints (the best one by validation tau is kept).
  """

  steps: int = 1500
  batch_size: int = 32
  learning_rate: float = 1e-3
  eval_every: int = 100


def _predict(graphdef: nnx.GraphDef, params: Any, rest: Any, inputs: dict) -> jax.Array:
  model = nnx.merge(graphdef, params, rest)
  return jax.vmap(model)(inputs)


def _loss(params, graphdef, rest, inputs, targets):
  return jnp.mean((_predict(graphdef, params, rest, inputs) - targets) ** 2)


@functools.partial(jax.jit, static_argnames=("graphdef", "learning_rate", "batch_size", "num_steps"))
def _train_steps(graphdef, params, rest, opt_state, inputs, targets, key, *, learning_rate, batch_size, num_steps):
  """``num_steps`` Adam steps on random batches of the training split: one ``lax.scan``."""
  optimizer = optax.adam(learning_rate)
  n = targets.shape[0]
  batch = min(batch_size, n)

  def step(carry, k):
    params, opt_state = carry
    index = jax.random.choice(k, n, (batch,), replace=False)
    x, y = jax.tree.map(lambda a: a[index], inputs), targets[index]
    loss, grads = jax.value_and_grad(_loss)(params, graphdef, rest, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, num_steps))
  return params, opt_state, jnp.mean(losses)


def _static(config: FitConfig) -> dict:
  # Only what shapes the training program: runs of different lengths share one compile.
  return {"learning_rate": config.learning_rate, "batch_size": config.batch_size}


_predict_jit = jax.jit(_predict, static_argnames="graphdef")


class FitResult(NamedTuple):
  """A trained predictor: the selected checkpoint, its validation tau and the history."""

  model: nnx.Module
  step: int
  val_tau: float
  history: list[dict]


def loss(model: nnx.Module, inputs: dict, targets: Any) -> float:
  """The mean squared error of the model's predictions for a batch of weights (leading model axis)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return float(_loss(params, graphdef, rest, inputs, jnp.asarray(targets)))


def train_steps(model: nnx.Module, inputs: dict, targets: Any, key: jax.Array, *, config: FitConfig, steps: int):
  """Trains ``model`` in place for ``steps`` Adam steps (fresh optimizer state); returns the mean training loss."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = optax.adam(config.learning_rate).init(params)
  params, _, mean_loss = _train_steps(
    graphdef, params, rest, opt_state, inputs, jnp.asarray(targets), key, **_static(config), num_steps=steps
  )
  nnx.update(model, params)
  return float(mean_loss)


def predict(model: nnx.Module, inputs: dict) -> np.ndarray:
  """The model's predictions for a batch of weights (leading model axis)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
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
  """Trains a predictor with MSE on targets; keeps the checkpoint with the best validation Kendall's tau.

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
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
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


# --- the experiment ---------------------------------------------------------------------------------


def prepare(zoo: dict[str, zoo_lib.ZooSplit]) -> dict[str, tuple[dict, np.ndarray]]:
  """Inputs and targets per split: weights normalized and accuracies standardized with training-split statistics."""
  normalizer = Normalizer.fit(zoo["train"].weights)
  mean, std = float(zoo["train"].accuracy.mean()), float(zoo["train"].accuracy.std() + 1e-8)
  return {
    split: (normalizer(part.weights), ((part.accuracy - mean) / std).astype(np.float32)) for split, part in zoo.items()
  }


def run_seed(name: str, zoo: dict[str, zoo_lib.ZooSplit], seed: int, *, config: FitConfig, progress=True) -> dict:
  """Builds, trains and evaluates one predictor for one seed; returns its row of results."""
  start = time.perf_counter()
  data = prepare(zoo)
  model = make_predictor(name, zoo["train"].space, train_inputs=data["train"][0], rngs=nnx.Rngs(seed))
  result = fit(
    model,
    data["train"],
    data["valid"],
    key=jax.random.key(seed),
    config=config,
    progress=progress,
    description=f"{name} seed {seed}",
  )
  test_tau = kendall_tau(predict(model, data["test"][0]), zoo["test"].accuracy)
  return {
    "predictor": name,
    "seed": seed,
    "test_tau": test_tau,
    "val_tau": result.val_tau,
    "best_step": result.step,
    "parameters": unf.num_parameters(model),
    "seconds": time.perf_counter() - start,
  }


def summarize(rows: Sequence[dict]) -> list[dict]:
  """Per predictor (in order of appearance): mean and standard error of test and validation tau over seeds."""
  names = list(dict.fromkeys(row["predictor"] for row in rows))
  out = []
  for name in names:
    mine = [row for row in rows if row["predictor"] == name]
    test, test_se = mean_se([row["test_tau"] for row in mine])
    val, val_se = mean_se([row["val_tau"] for row in mine])
    out.append(
      {
        "predictor": name,
        "seeds": len(mine),
        "test_tau": test,
        "test_tau_se": test_se,
        "val_tau": val,
        "val_tau_se": val_se,
        "parameters": mine[0]["parameters"],
        "seconds_per_seed": float(np.mean([row["seconds"] for row in mine])),
        "paper_test_tau": PAPER_TAU.get(name, math.nan),
      }
    )
  return out


def markdown_table(summary: Sequence[dict]) -> str:
  """The results as a markdown table."""
  lines = [
    "| predictor | test tau (mean +- s.e.) | val tau (mean +- s.e.) | parameters | wall time per seed (s) "
    "| paper test tau |",
    "|---|---|---|---|---|---|",
  ]
  for row in summary:
    lines.append(
      f"| {DISPLAY_NAMES.get(row['predictor'], row['predictor'])} "
      f"| {row['test_tau']:.4f} +- {row['test_tau_se']:.4f} | {row['val_tau']:.4f} +- {row['val_tau_se']:.4f} "
      f"| {row['parameters']:,} | {row['seconds_per_seed']:.1f} | {row['paper_test_tau']:.4f} |"
    )
  return "\n".join(lines) + "\n"


def _csv_text(rows: Sequence[dict]) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def run_experiment(
  zoo_dir: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  seeds: int = 3,
  predictors: Sequence[str] = PREDICTORS,
  config: FitConfig = FitConfig(),
  progress: bool = True,
  log: Callable[[str], Any] = print,
) -> list[dict]:
  """Trains every predictor with seeds ``0 .. seeds - 1`` and writes ``results.md``, ``results.csv`` and ``runs.csv``.

  Returns:
    The summary rows (one per predictor).
  """
  zoo = zoo_lib.load_zoo(zoo_dir)
  sizes = {split: len(part) for split, part in zoo.items()}
  log(
    f"zoo {zoo_dir}: {sizes} models; test accuracy {zoo['test'].accuracy.min():.3f}..{zoo['test'].accuracy.max():.3f}"
  )
  rows = []
  for name in predictors:
    for seed in range(seeds):
      rows.append(run_seed(name, zoo, seed, config=config, progress=progress))
      log(
        f"  {name} seed {seed}: test tau {rows[-1]['test_tau']:.4f}, val tau {rows[-1]['val_tau']:.4f} "
        f"(step {rows[-1]['best_step']}), {rows[-1]['seconds']:.1f} s"
      )
  summary = summarize(rows)
  table = markdown_table(summary)
  header = (
    f"Zoo: {zoo_dir} ({sizes['train']} / {sizes['valid']} / {sizes['test']} models). Budget: {config.steps} steps, "
    f"batch {config.batch_size}, Adam {config.learning_rate:g}, checkpoint every {config.eval_every} steps selected "
    f"by validation tau. Seeds: {seeds}.\n\n"
  )
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  zoo_lib.write_atomically(out / "results.md", (header + table).encode())
  zoo_lib.write_atomically(out / "results.csv", _csv_text(summary).encode())
  zoo_lib.write_atomically(out / "runs.csv", _csv_text(rows).encode())
  log("")
  log(table)
  return summary


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
  """The arguments of ``python -m metatrain.predict`` (added to ``parser`` if given, e.g. a subcommand)."""
  parser = parser or argparse.ArgumentParser(
    prog="python -m metatrain.predict", description="Predict test accuracy from weights on a zoo."
  )
  defaults = FitConfig()
  parser.add_argument("--zoo", required=True, help="a zoo folder written by `python -m metatrain.zoo`")
  parser.add_argument("--out", required=True, help="folder for results.md, results.csv and runs.csv")
  parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per predictor")
  parser.add_argument("--predictors", nargs="+", default=list(PREDICTORS), choices=PREDICTORS)
  parser.add_argument("--steps", type=int, default=defaults.steps)
  parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
  parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate)
  parser.add_argument("--eval_every", type=int, default=defaults.eval_every)
  parser.add_argument("--no_progress", action="store_true", help="no progress bars")
  return parser


def run(args: argparse.Namespace) -> int:
  """Runs the experiment that parsed arguments of :func:`build_parser` describe."""
  config = FitConfig(
    steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate, eval_every=args.eval_every
  )
  start = time.perf_counter()
  run_experiment(
    args.zoo, args.out, seeds=args.seeds, predictors=args.predictors, config=config, progress=not args.no_progress
  )
  print(f"results: {os.path.abspath(args.out)}/results.md (total {time.perf_counter() - start:.1f} s)")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m metatrain.predict --zoo DIR --seeds 3 --out DIR``."""
  return run(build_parser().parse_args(argv))


if __name__ == "__main__":
  raise SystemExit(main())
