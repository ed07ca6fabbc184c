"""The paper's zoo: GRU sequence-to-sequence models on integer arithmetic, trained together and stored in shards.

Zhou, Finn, Harrison (2024), "Universal Neural Functionals", Sec. 4.1 and
App. C.3, predict the test accuracy of 10,000 seq2seq models (a GRU encoder
and a GRU decoder, hidden 128) trained on arithmetic with inputs of up to 5
digits; the zoo was never released. This module rebuilds it as faithfully as
a 2-core machine allows.

**The task.** A problem is ``a + b`` or ``a - b`` with ``a`` and ``b`` of 1 to
5 digits (the number of digits uniform, then the number uniform among those
with that many digits), written as characters: the encoder reads
``digits(a) op digits(b)`` padded to :data:`INPUT_LENGTH`, the decoder writes
``str(a op b)`` (a leading ``-`` when negative) padded with the end token to
:data:`OUTPUT_LENGTH`. Problems come from a PRNG key: there is nothing to
download. Training decodes with teacher forcing; the test accuracy decodes
greedily (each step reads the previous prediction) and is the **per-token**
accuracy over the :data:`OUTPUT_LENGTH` answer positions (end tokens
included), on :attr:`ArithmeticConfig.eval_size` problems drawn from a key of
their own. Per token rather than per sequence: small models rarely get a whole
answer right, and exact-match accuracies would tie most of the zoo at 0.

**The models.** Both cells are GRUs laid out like flax's ``linen.GRUCell``
(``ir``, ``iz``, ``in`` input gates with biases; ``hr``, ``hz`` recurrent
kernels and ``hn`` with its bias), reading one-hot characters; the decoder
starts from the encoder's last state, and a dense head maps its states to
characters: 22 leaves, as in the paper. Because the decoder's state is the
encoder's, one hidden permutation is shared by both cells and the head; the
weight space is read from the computation by :func:`unf.infer_space`
(``io="fixed"``: characters and outputs keep their order).

**The zoo.** Each model draws its Adam learning rate log-uniform in ``[1e-4,
1e-2]`` and its batch size from ``{64, 128, 256}`` as in the paper, and, so
that accuracies spread as in the IRNN zoo, its initialization scale, number of
steps and label noise. Models of one batch size with similar step counts are
trained together (one ``jax.vmap`` inside one jitted ``lax.scan``) in shards;
each shard is written atomically when done, and :func:`generate` resumes from
the shards already on disk, re-training any that do not read back whole. The
splits are then written in the format of :mod:`experiments.rnn_zoo.zoo`, so
``zoo.load_split`` and the predictors read them as they read the IRNN zoo.

Example:
  >>> import tempfile
  >>> from experiments.rnn_zoo import arithmetic, zoo
  >>> config = arithmetic.ArithmeticConfig(num_models=4, hidden=4, batch_sizes=(8,), min_steps=2, max_steps=3,
  ...                                      eval_size=16, shard_size=2, chunk=2)
  >>> folder = tempfile.mkdtemp()
  >>> _ = arithmetic.generate(config, folder, progress=False)
  >>> split = zoo.load_split(folder, "train")
  >>> sorted(split.weights), split.space.labels
  (['decoder', 'encoder', 'head'], ('hidden',))
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import pathlib
import time
import warnings
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import unf
from experiments.rnn_zoo import zoo as zoo_lib
from tasks.data import write_atomically

#: The characters are the ten digits, then ``+``, ``-``, the end (padding) token and the decoder's start token.
DIGITS = "0123456789"
PLUS, MINUS, END, START = 10, 11, 12, 13
VOCAB_SIZE = 14
MAX_DIGITS = 5
#: ``digits(a) op digits(b)``, padded with END.
INPUT_LENGTH = 2 * MAX_DIGITS + 1
#: ``str(a op b)``, at most 6 characters (``199998``, ``-99999``), then at least one END.
OUTPUT_LENGTH = MAX_DIGITS + 2
HYPERPARAMETERS = ("learning_rate", "batch_size", "init_scale", "num_steps", "label_noise")
_GATES_IN, _GATES_H = ("ir", "iz", "in"), ("hr", "hz", "hn")


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
  """What the arithmetic zoo holds and how its models are trained.

  Attributes:
    num_models: models in the zoo, over all splits.
    seed: everything (hyper-parameters, initializations, batches, test problems, splits) follows from it.
    hidden: GRU state width (the paper's is 128).
    learning_rate: (low, high) of the log-uniform Adam learning rate (the paper's).
    batch_sizes: the batch sizes a model draws from, uniformly (the paper's).
    init_scale: (low, high) of the log-uniform multiplier on every kernel's ``1/sqrt(fan_in)`` standard deviation.
    min_steps, max_steps: range of the per-model number of training steps (uniform).
    label_noise: (low, high) of the uniform fraction of training answer characters replaced by random ones.
    clip_norm: global gradient-norm clip.
    eval_size: test problems on which each model's accuracy is measured (the same for all).
    split_fractions: shares of the models in the train and valid splits (test: the rest); the paper's 80/10/10.
    shard_size: models trained together and written as one shard.
    chunk: training steps per call of the jitted scan.
  """

  num_models: int = 3000
  seed: int = 0
  hidden: int = 16
  learning_rate: tuple[float, float] = (1e-4, 1e-2)
  batch_sizes: tuple[int, ...] = (64, 128, 256)
  init_scale: tuple[float, float] = (0.3, 3.0)
  min_steps: int = 100
  max_steps: int = 1000
  label_noise: tuple[float, float] = (0.0, 0.5)
  clip_norm: float = 1.0
  eval_size: int = 1000
  split_fractions: tuple[float, float] = (0.8, 0.1)
  shard_size: int = 250
  chunk: int = 50

  def __post_init__(self):
    if self.num_models < len(zoo_lib.SPLITS):
      raise ValueError(f"num_models must be at least {len(zoo_lib.SPLITS)} (one per split), got {self.num_models}.")
    if not 1 <= self.min_steps <= self.max_steps:
      raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps} and {self.max_steps}.")
    if not self.batch_sizes or min(self.batch_sizes) < 1:
      raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes}.")
    for name in ("hidden", "eval_size", "shard_size", "chunk"):
      if getattr(self, name) < 1:
        raise ValueError(f"ArithmeticConfig.{name} must be at least 1, got {getattr(self, name)}.")
    train, valid = self.split_fractions
    if not (0 < train and 0 < valid and train + valid < 1):
      raise ValueError(f"split_fractions {self.split_fractions} must be positive and sum to less than 1.")

  def fingerprint(self) -> str:
    """A short hash of every field: a shard written under another configuration is never reused."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


# --- the task ---------------------------------------------------------------------------------------


def _num_digits(value: jax.Array) -> jax.Array:
  """Digits of ``|value|`` (1 for 0), for values below 10**7."""
  magnitude = jnp.abs(value)
  return 1 + sum((magnitude >= 10**k).astype(jnp.int32) for k in range(1, MAX_DIGITS + 2))


def _digit(value: jax.Array, length: jax.Array, position: jax.Array) -> jax.Array:
  """The ``position``-th digit (from the most significant) of ``|value|``, which has ``length`` digits."""
  power = jnp.clip(length - 1 - position, 0, MAX_DIGITS + 1)
  return (jnp.abs(value) // (10 ** power.astype(jnp.int32))) % 10


def encode(a: jax.Array, minus: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The characters of the problems ``a + b`` (``minus`` false) or ``a - b``, and of their answers.

  Args:
    a, b: (n,) non-negative integers below ``10**MAX_DIGITS``.
    minus: (n,) booleans.

  Returns:
    ``(inputs, targets)``: (n, INPUT_LENGTH) and (n, OUTPUT_LENGTH) int32 characters.
  """
  a, b = a.astype(jnp.int32), b.astype(jnp.int32)
  answer = jnp.where(minus, a - b, a + b)
  len_a, len_b, len_answer = _num_digits(a), _num_digits(b), _num_digits(answer)
  p = jnp.arange(INPUT_LENGTH)[None, :]
  la, lb = len_a[:, None], len_b[:, None]
  op = jnp.where(minus, MINUS, PLUS)[:, None]
  inputs = jnp.where(
    p < la,
    _digit(a[:, None], la, p),
    jnp.where(p == la, op, jnp.where(p <= la + lb, _digit(b[:, None], lb, p - la - 1), END)),
  )
  q = jnp.arange(OUTPUT_LENGTH)[None, :]
  negative = (answer < 0)[:, None]
  ln = len_answer[:, None]
  start = negative.astype(jnp.int32)  # where the digits begin
  digits = jnp.where(q - start < ln, _digit(answer[:, None], ln, q - start), END)
  targets = jnp.where(negative & (q == 0), MINUS, jnp.where(q >= start, digits, END))
  return inputs.astype(jnp.int32), targets.astype(jnp.int32)


def sample_problems(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """``n`` random problems (see the module's docstring), as ``(inputs, targets)`` characters.

  Args:
    key: PRNG key.
    n: problems (static).

  Returns:
    (n, INPUT_LENGTH) and (n, OUTPUT_LENGTH) int32 characters, as from :func:`encode`.
  """
  k_len, k_value, k_op = jax.random.split(key, 3)
  lengths = jax.random.randint(k_len, (2, n), 1, MAX_DIGITS + 1)
  low = jnp.where(lengths == 1, 0, 10 ** (lengths - 1))
  values = low + jnp.floor(jax.random.uniform(k_value, (2, n)) * (10**lengths - low)).astype(jnp.int32)
  values = jnp.minimum(values, 10**lengths - 1)
  return encode(values[0], jax.random.bernoulli(k_op, 0.5, (n,)), values[1])


def decode(characters: Any) -> str:
  """One row of characters as text (``+``, ``-``, digits), up to its first end token."""
  text = []
  for c in np.asarray(characters).tolist():
    if c in (END, START):
      break
    text.append(DIGITS[c] if c < 10 else "+-"[c - PLUS])
  return "".join(text)


# --- the model --------------------------------------------------------------------------------------


def init_params(key: jax.Array, hidden: int, init_scale: jax.Array) -> dict:
  """One model's params: ``encoder`` and ``decoder`` GRU cells (``linen.GRUCell``'s layout) and a ``head``.

  Every kernel is ``N(0, init_scale**2 / fan_in)`` (fan-in 1 for the one-hot inputs' rows, ``hidden`` for the
  recurrent kernels and the head); biases start at zero.

  Args:
    key: PRNG key.
    hidden: the state width.
    init_scale: the model's initialization scale (a scalar).

  Returns:
    ``{"encoder": cell, "decoder": cell, "head": {"kernel", "bias"}}`` with ``cell`` =
    ``{ir, iz, in: {kernel (VOCAB_SIZE, hidden), bias}, hr, hz: {kernel (hidden, hidden)}, hn: {kernel, bias}}``.
  """
  keys = iter(jax.random.split(key, 13))

  def kernel(shape, fan_in):
    return init_scale * jax.random.normal(next(keys), shape) / math.sqrt(fan_in)

  def cell():
    gates: dict[str, dict[str, jax.Array]] = {}
    for name in _GATES_IN:
      gates[name] = {"kernel": kernel((VOCAB_SIZE, hidden), 1), "bias": jnp.zeros(hidden)}
    for name in _GATES_H:
      gates[name] = {"kernel": kernel((hidden, hidden), hidden)}
    gates["hn"]["bias"] = jnp.zeros(hidden)
    return gates

  return {
    "encoder": cell(),
    "decoder": cell(),
    "head": {"kernel": kernel((hidden, VOCAB_SIZE), hidden), "bias": jnp.zeros(VOCAB_SIZE)},
  }


def _cell_step(
  cell: dict, stacked: tuple[jax.Array, jax.Array, jax.Array], state: jax.Array, tokens: jax.Array
) -> jax.Array:
  """``linen.GRUCell``: r, z from input and state; n = tanh(x W_in + b_in + r * (h W_hn + b_hn))."""
  w_input, b_input, w_state = stacked
  from_input = w_input[:, tokens] + b_input[:, None]  # one-hot inputs: a row lookup; (3, batch, hidden)
  from_state = jnp.einsum("bh,ghk->gbk", state, w_state)
  r = jax.nn.sigmoid(from_input[0] + from_state[0])
  z = jax.nn.sigmoid(from_input[1] + from_state[1])
  n = jnp.tanh(from_input[2] + r * (from_state[2] + cell["hn"]["bias"]))
  return (1.0 - z) * n + z * state


def _stack(cell: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The three gates' kernels stacked on a new leading axis: one product per step instead of three.

  Stacked, not concatenated along the hidden axis, so that ``unf.infer_space`` sees the hidden axis whole.
  """
  return (
    jnp.stack([cell[g]["kernel"] for g in _GATES_IN]),
    jnp.stack([cell[g]["bias"] for g in _GATES_IN]),
    jnp.stack([cell[g]["kernel"] for g in _GATES_H]),
  )


def encode_state(params: dict, inputs: jax.Array) -> jax.Array:
  """The encoder's last state after reading (batch, INPUT_LENGTH) characters, from a zero state."""
  cell, stacked = params["encoder"], _stack(params["encoder"])
  state = jnp.zeros((inputs.shape[0], cell["hr"]["kernel"].shape[0]), cell["hr"]["kernel"].dtype)
  state, _ = jax.lax.scan(lambda s, x: (_cell_step(cell, stacked, s, x), None), state, inputs.T)
  return state


def logits_teacher_forced(params: dict, inputs: jax.Array, targets: jax.Array) -> jax.Array:
  """(batch, OUTPUT_LENGTH, VOCAB_SIZE) logits, the decoder reading START then the true answer's characters."""
  state = encode_state(params, inputs)
  previous = jnp.concatenate([jnp.full((targets.shape[0], 1), START, jnp.int32), targets[:, :-1]], axis=1)
  cell, stacked = params["decoder"], _stack(params["decoder"])

  def step(s, x):
    s = _cell_step(cell, stacked, s, x)
    return s, s

  _, states = jax.lax.scan(step, state, previous.T)
  return jnp.swapaxes(states, 0, 1) @ params["head"]["kernel"] + params["head"]["bias"]


def greedy_decode(params: dict, inputs: jax.Array) -> jax.Array:
  """(batch, OUTPUT_LENGTH) answers, each decoder step reading the previous step's most likely character."""
  cell, stacked = params["decoder"], _stack(params["decoder"])

  def step(carry, _):
    s, previous = carry
    s = _cell_step(cell, stacked, s, previous)
    token = jnp.argmax(s @ params["head"]["kernel"] + params["head"]["bias"], axis=-1).astype(jnp.int32)
    return (s, token), token

  start = jnp.full((inputs.shape[0],), START, jnp.int32)
  _, tokens = jax.lax.scan(step, (encode_state(params, inputs), start), None, length=OUTPUT_LENGTH)
  return tokens.T


def accuracy(params: dict, problems: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Per-token accuracy of greedy decoding over the answer positions, in [0, 1]."""
  inputs, targets = problems
  return jnp.mean(greedy_decode(params, inputs) == targets)


def weight_space(hidden: int) -> unf.WeightSpace:
  """The models' weight space, inferred from the teacher-forced computation (``io="fixed"``) and verified.

  One label, renamed ``hidden``: the state permutation shared by the encoder, the decoder and the head.
  """
  params = jax.tree.map(np.asarray, init_params(jax.random.key(0), hidden, jnp.float32(1.0)))
  inputs, targets = jax.tree.map(np.asarray, sample_problems(jax.random.key(1), 4))
  inferred = unf.infer_space(logits_teacher_forced, params, inputs, targets, io="fixed", verify=True)
  if len(inferred.labels) != 1:
    raise AssertionError(f"expected one hidden permutation, inferred {inferred.labels}")
  spec = {
    path: tuple("hidden" if axis is not None else None for axis in axes)
    for path, axes in zip(inferred.paths, inferred.axes)
  }
  nested: dict = {}
  for path, axes in spec.items():
    node = nested
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = axes
  fixed = {path: sizes for path, sizes in zip(inferred.paths, inferred.fixed_sizes) if sizes is not None}
  return unf.WeightSpace(nested, fixed_sizes=fixed)


# --- training ---------------------------------------------------------------------------------------


def sample_hyperparameters(config: ArithmeticConfig) -> dict[str, np.ndarray]:
  """Each model's hyper-parameters (see :class:`ArithmeticConfig`), drawn from ``config.seed``."""
  rng = np.random.default_rng([config.seed, 0])
  n = config.num_models

  def log_uniform(bounds):
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), n)).astype(np.float32)

  return {
    "learning_rate": log_uniform(config.learning_rate),
    "batch_size": rng.choice(np.asarray(config.batch_sizes, np.int32), n),
    "init_scale": log_uniform(config.init_scale),
    "num_steps": rng.integers(config.min_steps, config.max_steps + 1, n).astype(np.int32),
    "label_noise": rng.uniform(*config.label_noise, n).astype(np.float32),
  }


def _optimizer(clip_norm: float) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(clip_norm), optax.scale_by_adam())


def _loss(params: dict, inputs: jax.Array, targets: jax.Array) -> jax.Array:
  logits = logits_teacher_forced(params, inputs, targets)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


@functools.partial(jax.jit, static_argnames=("batch_size", "chunk", "clip_norm"))
def _train_chunk(
  state: tuple, hyper: dict, keys: jax.Array, start: jax.Array, *, batch_size: int, chunk: int, clip_norm: float
) -> tuple:
  """Advances every model of a shard ``chunk`` steps from ``start``; a model stops at its ``num_steps``."""
  optimizer = _optimizer(clip_norm)

  def model_step(params, opt_state, hyper, key, step):
    k_batch, k_noise, k_token = jax.random.split(jax.random.fold_in(key, step), 3)
    inputs, targets = sample_problems(k_batch, batch_size)
    noisy = jax.random.uniform(k_noise, targets.shape) < hyper["label_noise"]
    targets = jnp.where(noisy, jax.random.randint(k_token, targets.shape, 0, END + 1), targets)
    grads = jax.grad(_loss)(params, inputs, targets)
    direction, new_opt_state = optimizer.update(grads, opt_state, params)
    active = step < hyper["num_steps"]
    new_params = jax.tree.map(lambda p, d: jnp.where(active, p - hyper["learning_rate"] * d, p), params, direction)
    new_opt_state = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_opt_state, opt_state)
    return new_params, new_opt_state

  def scan_step(state, step):
    params, opt_state = state
    return jax.vmap(model_step, in_axes=(0, 0, 0, 0, None))(params, opt_state, hyper, keys, step), None

  state, _ = jax.lax.scan(scan_step, state, start + jnp.arange(chunk))
  return state


@jax.jit
def _evaluate(params: dict, problems: tuple[jax.Array, jax.Array]) -> jax.Array:
  return jax.vmap(accuracy, in_axes=(0, None))(params, problems)


def evaluation_problems(config: ArithmeticConfig) -> tuple[jax.Array, jax.Array]:
  """The fixed problems on which every model's accuracy is measured (a key of their own)."""
  return sample_problems(jax.random.fold_in(jax.random.key(config.seed), 3), config.eval_size)


def train_models(
  config: ArithmeticConfig, hyper: dict[str, np.ndarray], indices: np.ndarray, *, progress: bool = False
) -> tuple[dict, np.ndarray]:
  """Trains the models ``indices`` of the zoo together (all of one batch size) and measures their accuracy.

  A model's initialization and batches depend only on ``config.seed`` and its index, so it trains to the same
  weights whatever shard it is in (up to the rounding of batched products).

  Args:
    config: the zoo's configuration.
    hyper: every model's hyper-parameters, as from :func:`sample_hyperparameters`.
    indices: the models to train; they must share one batch size.
    progress: show a progress bar.

  Returns:
    The stacked params (numpy, leading model axis, in the order of ``indices``) and their test accuracies.
  """
  indices = np.asarray(indices)
  batch = np.unique(hyper["batch_size"][indices])
  if batch.size != 1:
    raise ValueError(f"train_models trains models of one batch size together, got batch sizes {batch.tolist()}.")
  root = jax.random.key(config.seed)
  init_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(root, 1), i))(indices)
  step_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(root, 2), i))(indices)
  mine = {name: jnp.asarray(hyper[name][indices]) for name in ("learning_rate", "num_steps", "label_noise")}
  params = jax.vmap(init_params, in_axes=(0, None, 0))(
    init_keys, config.hidden, jnp.asarray(hyper["init_scale"][indices])
  )
  state = (params, jax.vmap(_optimizer(config.clip_norm).init)(params))
  chunks = -(-int(mine["num_steps"].max()) // config.chunk)
  for c in tqdm.trange(chunks, desc=f"{indices.size} models", unit="chunk", disable=not progress, leave=False):
    state = _train_chunk(
      state,
      mine,
      step_keys,
      jnp.int32(c * config.chunk),
      batch_size=int(batch[0]),
      chunk=config.chunk,
      clip_norm=config.clip_norm,
    )
  return jax.tree.map(np.asarray, state[0]), np.asarray(_evaluate(state[0], evaluation_problems(config)))


# --- shards and generation --------------------------------------------------------------------------


def shard_plan(config: ArithmeticConfig, hyper: dict[str, np.ndarray]) -> list[np.ndarray]:
  """The zoo's shards: per batch size, its models sorted by step count, cut into ``shard_size`` pieces.

  Models with similar step counts train together, so few steps are spent on models that have stopped.
  """
  shards = []
  for batch in sorted(set(hyper["batch_size"].tolist())):
    members = np.flatnonzero(hyper["batch_size"] == batch)
    members = members[np.argsort(hyper["num_steps"][members], kind="stable")]
    shards.extend(np.array_split(members, -(-members.size // config.shard_size)))
  return shards


def _shard_path(folder: pathlib.Path, k: int) -> pathlib.Path:
  return folder / "shards" / f"shard-{k:05d}.npz"


def _write_shard(
  path: pathlib.Path, config: ArithmeticConfig, indices: np.ndarray, weights: dict, acc: np.ndarray
) -> None:
  arrays = {
    "weights/" + "/".join(k.key for k in p): np.asarray(leaf)
    for p, leaf in jax.tree_util.tree_flatten_with_path(weights)[0]
  }
  arrays.update(indices=np.asarray(indices, np.int64), accuracy=np.asarray(acc, np.float32))
  arrays["fingerprint"] = np.asarray(config.fingerprint())
  buffer = io.BytesIO()
  np.savez(buffer, allow_pickle=False, **arrays)
  write_atomically(path, buffer.getvalue())


def _read_shard(path: pathlib.Path, config: ArithmeticConfig, indices: np.ndarray) -> tuple[dict, np.ndarray] | None:
  """A shard's (weights, accuracy), or None if it is missing or does not read back whole (with a warning)."""
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as file:
      arrays = {name: file[name] for name in file.files}  # reads every array: a cut file fails here
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
    warnings.warn(f"shard {path} does not read back ({type(error).__name__}): training its models again.", stacklevel=2)
    return None
  if str(arrays.get("fingerprint")) != config.fingerprint():
    raise ValueError(
      f"{path} was written by another zoo configuration: generate into a new folder, or delete {path.parent}."
    )
  if "indices" not in arrays or "accuracy" not in arrays or not np.array_equal(arrays["indices"], indices):
    raise ValueError(f"{path} holds other models than this configuration assigns to it.")
  weights: dict = {}
  for name, value in arrays.items():
    if name.startswith("weights/"):
      *parents, leaf = name.removeprefix("weights/").split("/")
      node = weights
      for part in parents:
        node = node.setdefault(part, {})
      node[leaf] = value
  return weights, arrays["accuracy"]


def generate(config: ArithmeticConfig, folder: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
  """Trains the zoo shard by shard (resuming from shards on disk) and writes its splits and ``zoo.json``.

  Models whose weights diverged (a non-finite entry) are left out of the splits and counted.

  Args:
    config: the zoo's configuration.
    folder: where to write: ``shards/``, then ``{train,valid,test}.npz`` and ``zoo.json``.
    progress: show progress bars.

  Returns:
    The summary: the config, models per split, accuracy statistics, the wall time and the training rates
    (models per second and inner steps per second, counted over the shards trained in this call).
  """
  start = time.perf_counter()
  folder = pathlib.Path(folder)
  (folder / "shards").mkdir(parents=True, exist_ok=True)
  hyper = sample_hyperparameters(config)
  shards = shard_plan(config, hyper)
  weights_parts: list[dict] = []
  accuracy = np.zeros(config.num_models, np.float32)
  trained_models, trained_steps, train_seconds, reused = 0, 0, 0.0, 0
  for k, indices in enumerate(tqdm.tqdm(shards, desc="shards", unit="shard", disable=not progress)):
    path = _shard_path(folder, k)
    found = _read_shard(path, config, indices)
    if found is None:
      shard_start = time.perf_counter()
      found = train_models(config, hyper, indices, progress=progress)
      train_seconds += time.perf_counter() - shard_start
      trained_models += indices.size
      trained_steps += int(hyper["num_steps"][indices].sum())
      _write_shard(path, config, indices, *found)
    else:
      reused += 1
    weights_parts.append(found[0])
    accuracy[indices] = found[1]
  order = np.concatenate(shards)
  stacked = jax.tree.map(lambda *leaves: np.concatenate(leaves), *weights_parts)
  weights = jax.tree.map(lambda leaf: leaf[np.argsort(order)], stacked)  # zoo order
  summary = {
    "kind": "gru_arithmetic",
    "config": dataclasses.asdict(config),
    **zoo_lib.write_splits(folder, config, weights, accuracy, hyper, weight_space(config.hidden)),
    "shards": {"total": len(shards), "reused": reused},
    "training": {
      "models": trained_models,
      "seconds": train_seconds,
      "models_per_second": trained_models / train_seconds if train_seconds else math.nan,
      "inner_steps_per_second": trained_steps / train_seconds if train_seconds else math.nan,
    },
    "seconds": time.perf_counter() - start,
  }
  write_atomically(folder / "zoo.json", (json.dumps(summary, indent=2) + "\n").encode())
  return summary
