"""A zoo of tiny character-level IRNNs on Shakespeare, for predicting generalization from weights.

The small-scale analogue of the Tiny RNN Zoo of Zhou, Finn, Harrison (2024),
"Universal Neural Functionals", Sec. 4: many small recurrent language models,
each trained with its own learning rate, initialization scale, number of
training steps and label noise, stored with their weights and their test
accuracy (next-character accuracy on a fixed batch of the corpus's test
split). :mod:`experiments.rnn_zoo.predictors` then learn to predict the
accuracy from the weights alone.

Every model of the zoo is trained at once: one ``jax.vmap`` over models inside
one jitted ``lax.scan`` over steps. Shapes are static; a model whose step
budget is spent keeps its weights (a per-model mask on the update).

The zoo is one ``.npz`` per split (``train``, ``valid``, ``test``: disjoint
models) holding the stacked weights (``weights/<leaf path>``, leading model
axis), the accuracy, each model's hyper-parameters, and the weight space as
JSON text (of :meth:`unf.WeightSpace.to_json`); :func:`load_split` gives them back
with the rebuilt :class:`unf.WeightSpace`.

Example:
  >>> import tempfile
  >>> from experiments.rnn_zoo import zoo
  >>> folder = tempfile.mkdtemp()
  >>> config = zoo.ZooConfig(num_models=4, embed=4, hidden=8, min_steps=2, max_steps=4, eval_windows=16, chunk=4)
  >>> _ = zoo.generate(config, folder, progress=False)
  >>> split = zoo.load_split(folder, "train")
  >>> split.accuracy.shape[0] == split.weights["head"]["kernel"].shape[0]
  True
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import unf
from tasks.base import SequenceData
from tasks.data import write_atomically
from tasks.registry import shakespeare_data

#: The zoo's splits (disjoint sets of models).
SPLITS = ("train", "valid", "test")
#: The hyper-parameters each model draws (see :class:`ZooConfig`).
HYPERPARAMETERS = ("learning_rate", "init_scale", "num_steps", "label_noise")
_WEIGHTS_PREFIX = "weights/"


@dataclasses.dataclass(frozen=True)
class ZooConfig:
  """What the zoo holds and how its models are trained.

  Each model draws its hyper-parameters independently: the Adam learning rate
  log-uniform in ``learning_rate``, the initialization scale log-uniform in
  ``init_scale`` (a multiplier on the fan-in-scaled standard deviation of the
  embedding, input and head matrices, so it means the same at every width;
  the recurrent matrix always starts at the identity, as in an IRNN), the
  number of training steps uniform in ``[min_steps, max_steps]``, and the
  label noise (the fraction of training targets replaced by uniformly random
  characters) uniform in ``label_noise``.

  Attributes:
    num_models: models in the zoo, over all splits.
    seed: everything (hyper-parameters, initializations, batches, splits) follows from it.
    embed: embedding width.
    hidden: recurrent state width.
    seq_len: characters per training and evaluation window.
    batch_size: windows per training step.
    min_steps, max_steps: range of the per-model number of training steps.
    learning_rate: (low, high) of the log-uniform Adam learning rate.
    init_scale: (low, high) of the log-uniform initialization scale.
    label_noise: (low, high) of the uniform label-noise fraction.
    clip_norm: global gradient-norm clip (keeps high learning rates finite).
    eval_windows: windows of the fixed test batch on which accuracy is measured.
    split_fractions: shares of the models in the zoo's train and valid splits (test: the rest).
    chunk: training steps per call of the jitted scan (one compile; the progress bar advances per chunk).
  """

  num_models: int = 300
  seed: int = 0
  embed: int = 8
  hidden: int = 32
  seq_len: int = 16
  batch_size: int = 16
  min_steps: int = 50
  max_steps: int = 600
  learning_rate: tuple[float, float] = (1e-3, 3e-2)
  init_scale: tuple[float, float] = (0.2, 3.0)
  label_noise: tuple[float, float] = (0.0, 0.6)
  clip_norm: float = 1.0
  eval_windows: int = 256
  split_fractions: tuple[float, float] = (0.6, 0.2)
  chunk: int = 50

  def __post_init__(self):
    if self.num_models < len(SPLITS):
      raise ValueError(f"num_models must be at least {len(SPLITS)} (one per split), got {self.num_models}.")
    if not 1 <= self.min_steps <= self.max_steps:
      raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps} and {self.max_steps}.")
    train, valid = self.split_fractions
    if not (0 < train and 0 < valid and train + valid < 1):
      raise ValueError(f"split_fractions {self.split_fractions} must be positive and sum to less than 1.")


class ZooSplit(NamedTuple):
  """One split of a zoo.

  Attributes:
    weights: the models' params, a nested dict of arrays with a leading model axis.
    accuracy: (models,) test next-character accuracy of each model, in [0, 1].
    hyperparameters: per name in :data:`HYPERPARAMETERS`, a (models,) array; also ``index``, the
      model's position in the whole zoo.
    space: the weight space of one model's params.
  """

  weights: dict
  accuracy: np.ndarray
  hyperparameters: dict[str, np.ndarray]
  space: unf.WeightSpace

  def __len__(self) -> int:
    return int(self.accuracy.shape[0])


# --- the model: a functional IRNN language model laid out like tasks.models.RNNLM ---------------


def init_params(key: jax.Array, config: ZooConfig, vocab_size: int, init_scale: jax.Array) -> dict:
  """Initial params of one IRNN LM, with the layout of ``tasks.models.RNNLM(cell="irnn")``.

  The embedding is ``N(0, 1)``, the input and head kernels ``N(0, 1 / fan_in)``,
  all three times ``init_scale``; the recurrent kernel is the identity and the
  biases are zero.

  Args:
    key: PRNG key of the initialization.
    config: the zoo's configuration (its ``embed`` and ``hidden`` widths).
    vocab_size: characters in the vocabulary.
    init_scale: the model's initialization scale (a scalar).

  Returns:
    The params: ``embed/embedding``, ``cell/dense_i/{kernel,bias}``, ``cell/dense_h/kernel``, ``head/{kernel,bias}``.
  """
  k_embed, k_input, k_head = jax.random.split(key, 3)
  e, h = config.embed, config.hidden
  return {
    "embed": {"embedding": init_scale * jax.random.normal(k_embed, (vocab_size, e))},
    "cell": {
      "dense_i": {"kernel": init_scale * jax.random.normal(k_input, (e, h)) / math.sqrt(e), "bias": jnp.zeros(h)},
      "dense_h": {"kernel": jnp.eye(h)},
    },
    "head": {
      "kernel": init_scale * jax.random.normal(k_head, (h, vocab_size)) / math.sqrt(h),
      "bias": jnp.zeros(vocab_size),
    },
  }


def apply(params: dict, tokens: jax.Array) -> jax.Array:
  """The IRNN's next-character logits: ``h_t = relu(x_t W_i + b_i + h_{t-1} W_h)``, ``logits_t = h_t W_o + b_o``.

  Args:
    params: one model's params, as from :func:`init_params`.
    tokens: (batch, time) character indices.

  Returns:
    (batch, time, vocab) logits.
  """
  inputs = params["embed"]["embedding"][tokens]
  cell = params["cell"]

  def step(state, x):
    state = jax.nn.relu(x @ cell["dense_i"]["kernel"] + cell["dense_i"]["bias"] + state @ cell["dense_h"]["kernel"])
    return state, state

  initial = jnp.zeros((tokens.shape[0], cell["dense_h"]["kernel"].shape[0]), inputs.dtype)
  _, states = jax.lax.scan(step, initial, jnp.swapaxes(inputs, 0, 1))
  return jnp.swapaxes(states, 0, 1) @ params["head"]["kernel"] + params["head"]["bias"]


def accuracy(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Fraction of positions whose most likely next character is the target.

  Args:
    params: one model's params.
    batch: (inputs, targets), both (batch, time) character indices.

  Returns:
    The accuracy, a scalar in [0, 1].
  """
  inputs, targets = batch
  return jnp.mean(jnp.argmax(apply(params, inputs), axis=-1) == targets)


def _loss(params: dict, inputs: jax.Array, targets: jax.Array) -> jax.Array:
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply(params, inputs), targets))


# --- hyper-parameters and training ------------------------------------------------------------------


def sample_hyperparameters(config: ZooConfig) -> dict[str, np.ndarray]:
  """Each model's hyper-parameters (see :class:`ZooConfig`), drawn from ``config.seed``.

  Args:
    config: the zoo's configuration (its ranges, ``num_models`` and ``seed``).

  Returns:
    Per name in :data:`HYPERPARAMETERS`, a (num_models,) array.
  """
  rng = np.random.default_rng([config.seed, 0])
  n = config.num_models

  def log_uniform(bounds):
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), n)).astype(np.float32)

  return {
    "learning_rate": log_uniform(config.learning_rate),
    "init_scale": log_uniform(config.init_scale),
    "num_steps": rng.integers(config.min_steps, config.max_steps + 1, n).astype(np.int32),
    "label_noise": rng.uniform(*config.label_noise, n).astype(np.float32),
  }


def _optimizer(clip_norm: float) -> optax.GradientTransformation:
  # The learning rate differs per model: it multiplies the direction outside the transformation.
  return optax.chain(optax.clip_by_global_norm(clip_norm), optax.scale_by_adam())


@functools.partial(jax.jit, static_argnames=("batch_size", "chunk", "clip_norm"))
def _train_chunk(
  data: SequenceData,
  state: tuple,
  hyper: dict,
  keys: jax.Array,
  start: jax.Array,
  *,
  batch_size: int,
  chunk: int,
  clip_norm: float,
) -> tuple:
  """Advances every model ``chunk`` steps from step ``start``: one scan of a vmapped step.

  A model trains at step t only while ``t < num_steps``; afterwards its params
  and optimizer state are carried unchanged, so shapes stay static.
  """
  optimizer = _optimizer(clip_norm)

  def model_step(params, opt_state, hyper, key, step):
    k_batch, k_noise, k_token = jax.random.split(jax.random.fold_in(key, step), 3)
    inputs, targets = data.sample(k_batch, "train", batch_size)
    noisy = jax.random.uniform(k_noise, targets.shape) < hyper["label_noise"]
    targets = jnp.where(noisy, jax.random.randint(k_token, targets.shape, 0, data.num_classes), targets)
    grads = jax.grad(_loss)(params, inputs, targets)
    direction, new_opt_state = optimizer.update(grads, opt_state, params)
    active = step < hyper["num_steps"]
    new_params = jax.tree.map(lambda p, d: jnp.where(active, p - hyper["learning_rate"] * d, p), params, direction)
    new_opt_state = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_opt_state, opt_state)
    return new_params, new_opt_state

  def scan_step(state, step):
    params, opt_state = state
    params, opt_state = jax.vmap(model_step, in_axes=(0, 0, 0, 0, None))(params, opt_state, hyper, keys, step)
    return (params, opt_state), None

  state, _ = jax.lax.scan(scan_step, state, start + jnp.arange(chunk))
  return state


@jax.jit
def _evaluate(data_batch: tuple[jax.Array, jax.Array], params: dict) -> jax.Array:
  return jax.vmap(accuracy, in_axes=(0, None))(params, data_batch)


def train_zoo(
  config: ZooConfig, hyperparameters: dict[str, np.ndarray], *, data: SequenceData | None = None, progress: bool = True
) -> tuple[dict, np.ndarray]:
  """Trains every model of the zoo and measures its test accuracy.

  Args:
    config: the zoo's configuration.
    hyperparameters: per-model arrays, as from :func:`sample_hyperparameters`.
    data: the corpus windows (default: the Shakespeare corpus at ``config.seq_len``).
    progress: show a progress bar.

  Returns:
    The stacked params (numpy, leading model axis) and the (models,) test accuracies on
    ``config.eval_windows`` evenly spaced windows of the test split.
  """
  data = shakespeare_data(config.seq_len) if data is None else data
  n = len(hyperparameters["num_steps"])
  root = jax.random.key(config.seed)
  init_keys = jax.random.split(jax.random.fold_in(root, 1), n)
  step_keys = jax.random.split(jax.random.fold_in(root, 2), n)
  hyper = {name: jnp.asarray(value) for name, value in hyperparameters.items()}
  params = jax.vmap(init_params, in_axes=(0, None, None, 0))(init_keys, config, data.num_classes, hyper["init_scale"])
  state = (params, jax.vmap(_optimizer(config.clip_norm).init)(params))
  steps = int(np.max(hyperparameters["num_steps"]))
  chunks = -(-steps // config.chunk)
  for c in tqdm.trange(chunks, desc=f"training {n} models", unit="chunk", disable=not progress, leave=False):
    state = _train_chunk(
      data,
      state,
      hyper,
      step_keys,
      jnp.int32(c * config.chunk),
      batch_size=config.batch_size,
      chunk=config.chunk,
      clip_norm=config.clip_norm,
    )
  params = state[0]
  test_accuracy = _evaluate(data.eval_batch("test", config.eval_windows), params)
  return jax.tree.map(np.asarray, params), np.asarray(test_accuracy)


# --- storage ----------------------------------------------------------------------------------------


def save_split(path: str | os.PathLike, split: ZooSplit) -> None:
  """Writes a split as one ``.npz``, atomically (a temporary file, then a rename).

  Args:
    path: the file to write.
    split: the models to store.
  """
  arrays = {
    _WEIGHTS_PREFIX + "/".join(map(str, p)): np.asarray(leaf)
    for p, leaf in zip(split.space.paths, split.space.flatten(split.weights))
  }
  arrays["accuracy"] = np.asarray(split.accuracy, np.float32)
  arrays.update({f"hyper/{name}": np.asarray(value) for name, value in split.hyperparameters.items()})
  arrays["space"] = np.asarray(json.dumps(split.space.to_json()))
  buffer = io.BytesIO()
  # Numbers and text only: no pickles, as load_split reads them with allow_pickle=False.
  np.savez(buffer, allow_pickle=False, **arrays)
  write_atomically(pathlib.Path(path), buffer.getvalue())


def load_split(folder: str | os.PathLike, split: str) -> ZooSplit:
  """Reads one split of a zoo written by :func:`generate`.

  Args:
    folder: the zoo's folder.
    split: one of :data:`SPLITS`.

  Returns:
    The split, with its weight space rebuilt from the stored JSON.

  Raises:
    FileNotFoundError: the split's file is missing.
    ValueError: an unknown split, or weights that do not match the stored space.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}.")
  path = pathlib.Path(folder) / f"{split}.npz"
  if not path.exists():
    raise FileNotFoundError(
      f"zoo split {path} not found: generate the zoo with `python -m experiments.rnn_zoo generate --out DIR`."
    )
  with np.load(path, allow_pickle=False) as file:
    space = unf.WeightSpace.from_json(str(file["space"]))
    leaves = [file[_WEIGHTS_PREFIX + "/".join(map(str, p))] for p in space.paths]
    accuracy = file["accuracy"]
    hyper = {name.removeprefix("hyper/"): file[name] for name in file.files if name.startswith("hyper/")}
  weights = space.unflatten(leaves)
  space.validate(jax.tree.map(lambda leaf: leaf[0], weights))  # one model's params lie in the space
  if any(leaf.shape[0] != accuracy.shape[0] for leaf in leaves):
    raise ValueError(f"{path}: weights and accuracies disagree on the number of models.")
  return ZooSplit(weights, accuracy, hyper, space)


def load_zoo(folder: str | os.PathLike) -> dict[str, ZooSplit]:
  """All three splits of a zoo.

  Args:
    folder: the zoo's folder.

  Returns:
    Per name in :data:`SPLITS`, the split (see :func:`load_split`).
  """
  return {split: load_split(folder, split) for split in SPLITS}


def _select(tree: Any, index: np.ndarray) -> Any:
  return jax.tree.map(lambda leaf: leaf[index], tree)


def split_indices(config: ZooConfig) -> dict[str, np.ndarray]:
  """Disjoint, sorted model indices of the zoo's train / valid / test splits (a seeded shuffle).

  Args:
    config: the zoo's configuration (``num_models``, ``seed`` and ``split_fractions``).

  Returns:
    Per name in :data:`SPLITS`, the indices of its models; every split holds at least one.
  """
  order = np.random.default_rng([config.seed, 1]).permutation(config.num_models)
  n = config.num_models
  n_train = min(max(1, round(config.split_fractions[0] * n)), n - 2)  # every split keeps a model
  n_valid = min(max(1, round(config.split_fractions[1] * n)), n - n_train - 1)
  parts = np.split(order, [n_train, n_train + n_valid])
  return {split: np.sort(part) for split, part in zip(SPLITS, parts)}


def write_splits(
  folder: pathlib.Path, config: Any, weights: dict, accuracy: np.ndarray, hyper: dict, space: unf.WeightSpace
) -> dict[str, Any]:
  """Writes a trained zoo's ``{train,valid,test}.npz`` (models in zoo order); diverged models are left out.

  Args:
    folder: where to write.
    config: the zoo's configuration (its ``num_models``, ``seed`` and ``split_fractions``, see :func:`split_indices`).
    weights: every model's params, leading model axis in zoo order.
    accuracy: every model's test accuracy.
    hyper: every model's hyper-parameters; ``index`` (the position in the zoo) is added.
    space: one model's weight space.

  Returns:
    The summary's ``models`` (per split), ``diverged`` (models with a non-finite weight), ``accuracy``
    (min, mean, max, std over the zoo) and ``space`` (as text).
  """
  hyper = {**hyper, "index": np.arange(config.num_models, dtype=np.int32)}
  finite = np.all(
    [np.isfinite(leaf).reshape(config.num_models, -1).all(axis=1) for leaf in jax.tree.leaves(weights)], 0
  )
  counts = {}
  for split, index in split_indices(config).items():
    index = index[finite[index]]  # a diverged model has no meaningful weights: leave it out (counted)
    part = ZooSplit(_select(weights, index), accuracy[index], {k: v[index] for k, v in hyper.items()}, space)
    save_split(folder / f"{split}.npz", part)
    counts[split] = len(part)
  statistics = {name: float(getattr(np, name)(accuracy)) for name in ("min", "mean", "max", "std")}
  return {"models": counts, "diverged": int(np.sum(~finite)), "accuracy": statistics, "space": str(space)}


def generate(config: ZooConfig, folder: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
  """Trains the zoo and writes ``{train,valid,test}.npz`` and ``zoo.json`` (a summary) to ``folder``.

  Models whose weights diverged (a non-finite entry) are left out of the splits and counted.

  Args:
    config: the zoo's configuration.
    folder: where to write (created if missing).
    progress: show a progress bar.

  Returns:
    The summary: the config, the number of models per split, accuracy statistics and the wall time.
  """
  start = time.perf_counter()
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  hyper = sample_hyperparameters(config)
  weights, test_accuracy = train_zoo(config, hyper, progress=progress)
  space = unf.rnn_space(jax.tree.map(lambda leaf: leaf[0], weights))
  summary = {"config": dataclasses.asdict(config), **write_splits(folder, config, weights, test_accuracy, hyper, space)}
  summary["seconds"] = time.perf_counter() - start
  write_atomically(folder / "zoo.json", (json.dumps(summary, indent=2) + "\n").encode())
  return summary
