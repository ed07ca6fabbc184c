"""The Task API on real data: training, sampling, normalization, symmetry, registry."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special

import tasks
import unf

PAPER_TASKS = ["mlp_fashion8", "cnn_fashion16", "rnn_lm", "lstm_lm", "transformer_lm"]


@functools.partial(jax.jit, static_argnums=(2, 3))
def _train(task, key, steps, learning_rate):
  """Adam for ``steps`` steps in one scan; returns final params and the train losses."""
  optimizer = optax.adam(learning_rate)
  init_key, data_key = jax.random.split(key)
  params = task.init(init_key)

  def step(carry, k):
    params, state = carry
    loss, grads = jax.value_and_grad(task.loss)(params, task.sample_batch(k, "train"))
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(data_key, steps))
  return params, losses


# Steps, learning rate, and the validation loss every run must reach (initial losses are
# about log(10) = 2.30 for images and log(vocab) ~ 4.3 for the character models).
TRAINING = {
  "mlp_fashion8": (300, 3e-3, 0.75),
  "cnn_fashion16": (300, 3e-3, 1.0),
  "rnn_lm": (300, 3e-3, 3.0),
  "lstm_lm": (300, 1e-2, 3.0),
  "transformer_lm": (400, 3e-3, 3.1),
}


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_paper_tasks_train_on_real_data(name, key):
  task = tasks.get(name)
  steps, learning_rate, target = TRAINING[name]
  initial = float(task.eval_loss(task.init(jax.random.split(key)[0])))
  params, losses = _train(task, key, steps, learning_rate)
  final = float(task.eval_loss(params, "valid"))
  assert np.isfinite(losses).all()
  assert initial > target + 0.5, f"{name}: initial valid loss {initial:.3f}"
  assert final < target, f"{name}: valid loss {initial:.3f} -> {final:.3f}, expected < {target}"


IO_LABELS = {"input", "output", "vocab", "position"}  # the builders' io="permutable" labels


def _task_params_inputs(name, key):
  task = tasks.get(name)
  return task, task.init(key), task.sample_batch(key, "valid")[0]


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_space_is_a_symmetry_on_hidden_labels(name, key):
  task, params, inputs = _task_params_inputs(name, key)
  hidden = [label for label in task.space.labels if label not in IO_LABELS]
  assert hidden, task.space
  apply = jax.jit(task.apply)
  # float32 with the default tolerances, which follow the dtype (rounding in a permuted sum is ~1e-6 here).
  assert unf.check_symmetry(apply, params, task.space, inputs, labels=hidden) < 1e-3


def test_sample_batch_is_jittable_vmappable_and_keeps_data_out_of_programs(key):
  task = tasks.get("mlp_fashion8")
  sample = jax.jit(jax.vmap(lambda t, k: t.sample_batch(k, "train"), in_axes=(None, 0)))
  x, y = sample(task, jax.random.split(key, 16))
  assert x.shape == (16, 128, 8, 8, 1) and y.shape == (16, 128)
  assert not np.array_equal(x[0], x[1])  # different keys, different batches
  # The 50k training images are an argument of the compiled program, not a constant in it.
  hlo = jax.jit(lambda t, k: t.sample_batch(k, "train")).lower(task, key).as_text()
  assert len(hlo) < 200_000, len(hlo)


def test_lm_batches_are_shifted_windows_of_the_corpus(key):
  task = tasks.get("rnn_lm")
  inputs, targets = task.sample_batch(key, "train")
  assert inputs.shape == targets.shape == (64, 16)
  np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
  corpus = np.asarray(task.data.tokens["train"])
  row = np.asarray(inputs[0])
  starts = np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(corpus, 16) == row, axis=1))
  assert starts.size >= 1 and corpus[starts[0] + 16] == targets[0, -1]


def test_vmapped_init_gives_distinct_runs(key):
  task = tasks.get("mlp_fashion8")
  params = jax.jit(jax.vmap(task.init))(jax.random.split(key, 4))
  kernels = params["layers"][0]["kernel"]
  assert kernels.shape == (4, 64, 32) and not np.allclose(kernels[0], kernels[1])
  again = jax.jit(jax.vmap(task.init))(jax.random.split(key, 4))
  np.testing.assert_array_equal(kernels, again["layers"][0]["kernel"])  # reproducible from the seed


def test_normalized_clips_and_maps_non_finite_to_the_ceiling():
  task = tasks.get("mlp_fashion8")
  ceiling = 1.5 * np.log(10)
  values = task.normalized(jnp.array([0.5, 100.0, jnp.nan, jnp.inf, -jnp.inf]))
  np.testing.assert_allclose(values, [0.5, ceiling, ceiling, ceiling, ceiling], rtol=1e-6)


def test_eval_loss_is_a_fixed_batch(key):
  task = tasks.get("mlp_fashion8")
  params = task.init(key)
  assert float(task.eval_loss(params, "valid")) == float(task.eval_loss(params, "valid"))
  x, y = task.data.eval_batch("valid", task.eval_size)
  logp = scipy.special.log_softmax(np.asarray(task.apply(params, x), np.float64), axis=1)
  expected = -logp[np.arange(len(y)), np.asarray(y)].mean()
  np.testing.assert_allclose(task.eval_loss(params, "valid"), expected, rtol=1e-5)


def test_tasks_share_device_data():
  assert tasks.get("rnn_lm").data.tokens is tasks.get("lstm_lm").data.tokens
  assert tasks.get("mlp_fashion8").data is tasks.registry.fashion_mnist_data(8)


def test_registry_lists_names_and_rejects_unknown():
  assert {*PAPER_TASKS, "cnn_cifar16"} <= set(tasks.names())
  with pytest.raises(KeyError, match="known tasks: .*mlp_fashion8"):
    tasks.get("mlp_mnist")
  with pytest.raises(ValueError, match="unknown split"):
    tasks.get("mlp_fashion8").sample_batch(jax.random.key(0), "validation")


def test_task_family_is_deterministic_and_varied():
  family = tasks.families()["mlp_fashion_family"]
  first = [family.sample(jax.random.key(i)) for i in range(12)]
  again = [family.sample(jax.random.key(i)) for i in range(12)]
  assert all(a is b for a, b in zip(first, again))
  assert len({t.name for t in first}) >= 6
  variant = first[0]
  params = variant.init(jax.random.key(0))
  assert variant.space.validate(params)
  assert np.isfinite(float(variant.loss(params, variant.sample_batch(jax.random.key(1)))))


def test_classification_batches_are_distinct_and_uniform(key):
  n, batch, draws = 1000, 128, 2000
  data = tasks.ClassificationData(
    inputs={s: jnp.arange(n, dtype=jnp.float32)[:, None] for s in ("train", "valid", "test")},
    labels={s: jnp.arange(n, dtype=jnp.int32) for s in ("train", "valid", "test")},
    num_classes=n,
  )
  _, labels = jax.jit(jax.vmap(lambda k: data.sample(k, "train", batch)))(jax.random.split(key, draws))
  labels = np.asarray(labels)
  assert all(len(set(row)) == batch for row in labels[:100])  # no example twice in a batch
  counts = np.bincount(labels.ravel(), minlength=n)
  expected = draws * batch / n  # 256 per example
  assert np.abs(counts - expected).max() < 6 * np.sqrt(expected), (counts.min(), counts.max())
  first_slot = np.bincount(labels[:, 0], minlength=n)  # each slot is uniform too, not only the union
  assert first_slot.max() <= 10 and (first_slot > 0).sum() > 800


def test_cnn_cifar16_without_data_says_where_to_put_it(monkeypatch, tmp_path):
  monkeypatch.setenv("UNF_CIFAR10_DIR", str(tmp_path / "no-cifar"))
  tasks.registry.cifar10_data.cache_clear()
  tasks.registry.cnn.cache_clear()
  with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
    tasks.get("cnn_cifar16")


def test_conv_as_matmul_equals_flax_conv(key):
  from flax import nnx

  from tasks.models import conv_as_matmul

  conv = nnx.Conv(3, 5, (3, 3), strides=(2, 2), padding="SAME", rngs=nnx.Rngs(0))
  conv.bias[...] = jax.random.normal(key, (5,))
  for shape in [(2, 16, 16, 3), (2, 9, 7, 3)]:
    x = jax.random.normal(key, shape)
    np.testing.assert_allclose(conv_as_matmul(conv, x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_space_equals_the_space_read_from_the_computation(name, key):
  """The builders' space of every paper task, with its io labels fixed, is the one unf.infer_space finds."""
  task, params, inputs = _task_params_inputs(name, key)
  fixed_io = unf.WeightSpace(
    task.space.unflatten([tuple(None if a in IO_LABELS else a for a in axes) for axes in task.space.axes])
  ).with_fixed_sizes(params)
  inferred = unf.infer_space(task.apply, params, inputs)
  assert inferred.match(fixed_io)  # a bijection of labels, leaf by leaf: the same partition
  assert len(inferred.labels) == len(fixed_io.labels)


def test_small_data_task_trains_on_its_first_examples_only():
  small, full = tasks.get("mlp_fashion8_small"), tasks.get("mlp_fashion8")
  n = tasks.registry.SMALL_TRAIN
  np.testing.assert_array_equal(small.data.inputs["train"], full.data.inputs["train"][:n])
  assert all(small.data.inputs[split] is full.data.inputs[split] for split in ("valid", "test"))
  # Every training batch comes from the subset: its examples are rows of the first n.
  x, _ = jax.jit(jax.vmap(lambda k: small.sample_batch(k, "train")))(jax.random.split(jax.random.key(0), 20))
  rows = {r.tobytes() for r in np.asarray(full.data.inputs["train"][:n])}
  assert all(r.tobytes() in rows for r in np.asarray(x).reshape(-1, x.shape[-3], x.shape[-2], x.shape[-1]))
  assert small.space == full.space
  sizes = tasks.families()["mlp_fashion8_sizes"]
  drawn = {sizes.sample(jax.random.key(i)).data.labels["train"].shape[0] for i in range(16)}
  assert drawn == {full.data.labels["train"].shape[0], 2000, 5000}  # the small task's 1,000 is held out
