"""Meta-trained optimizers shipped in the package: exported from checkpoints, loaded by name, reproduced."""

import functools

import jax
import numpy as np
import optax
import pytest

import metatrain
import tasks
from metatrain import cli, loading, pretrained
from metatrain.evaluation.compare import EVAL_SEED


def test_export_writes_files_that_read_back_as_the_checkpoint(smoke_run, tmp_path, monkeypatch):
  folder = tmp_path / "smoke_unf"
  monkeypatch.chdir(smoke_run.workdir.parent)  # a relative workdir, as users type it (orbax wants absolute paths)
  source = smoke_run.workdir.name
  assert cli.main(["export", "--checkpoint", source, "--out", str(folder), "--note", "n"]) == 0
  assert sorted(p.name for p in folder.iterdir()) == ["optimizer.json", "theta.npz"]
  lopt, theta = pretrained.read(folder)
  expected = loading.load(smoke_run.workdir)
  assert lopt == expected.learned_optimizer
  jax.tree.map(np.testing.assert_array_equal, theta, expected.theta)
  info = pretrained._read_json(folder)["info"]
  assert info["task"] == "mlp_fashion8" and info["outer_steps"] == 4 and info["note"] == "n"
  assert len(info["check"]["train_batch_losses"]) == pretrained.CHECK_STEPS
  # A damaged file is a clear error, not a wrong optimizer.
  np.savez(folder / "theta.npz", leaf_0000=np.zeros(3))
  with pytest.raises(ValueError, match="files are damaged"):
    pretrained.read(folder)
  assert cli.main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2


def test_optimizers_are_shipped_for_the_mlp_task():
  names = metatrain.pretrained_names()
  assert "mlp_fashion8_unf" in names
  with pytest.raises(KeyError, match="no shipped optimizer 'mlp_fashion8_lion'"):
    pretrained.load("mlp_fashion8_lion")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step(task, optimizer, params, state, key):
  loss, grads = jax.value_and_grad(task.loss)(params, task.sample_batch(key, "train"))
  updates, state = optimizer.update(grads, state, params)
  return optax.apply_updates(params, updates), state, loss


@pytest.mark.parametrize("name", metatrain.pretrained_names())
def test_a_shipped_optimizer_loads_by_name_and_reproduces_its_trajectory_in_a_plain_optax_loop(name):
  """The stored trajectory (recorded at export, one lax.scan) against a step-by-step optax loop here."""
  info = pretrained.info(name)
  task = tasks.get(info["task"])
  lopt, theta = metatrain.load_learned_optimizer(name, space=task.space)
  # The check was recorded over a run of CHECK_STEPS steps: an optimizer with a schedule is told so.
  optimizer = lopt.optimizer(jax.tree.map(jax.numpy.asarray, theta), total_steps=pretrained.CHECK_STEPS)
  init_key, data_key = jax.random.split(jax.random.key(EVAL_SEED))
  params = task.init(init_key)
  state, losses = optimizer.init(params), []
  for key in jax.random.split(data_key, pretrained.CHECK_STEPS):
    params, state, loss = _step(task, optimizer, params, state, key)
    losses.append(float(loss))
  stored = np.asarray(info["check"]["train_batch_losses"])
  assert info["check"]["seed"] == EVAL_SEED and len(stored) == len(losses)
  # Step for step while rounding differences are small; after that (training amplifies the float32 rounding of
  # the scan against this loop: up to 1% by step 60 on rnn_lm, and from 2e-5 at step 25 to 0.4% by step 50 with
  # cnn_fashion16_unf) the means of 20-step windows. A wrong theta, horizon or base term differs from step 1.
  np.testing.assert_allclose(losses[:20], stored[:20], rtol=1e-3, atol=1e-4)
  windows = lambda x: np.asarray(x).reshape(-1, 20).mean(axis=1)  # noqa: E731
  np.testing.assert_allclose(windows(losses), windows(stored), rtol=1e-2)
  assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:5])  # it trains


def test_a_shipped_optimizer_takes_infer_spaces_default_io_fixed_space():
  """infer_space's default fixes the input and output axes, which the shipped optimizer was meta-trained to
  permute: the loader reads them as permutable, and the updates are those of the meta-training space."""
  import unf

  task = tasks.get("mlp_fashion8")
  params = task.init(jax.random.key(0))
  x, _ = task.sample_batch(jax.random.key(1))
  inferred = unf.infer_space(task.apply, params, x)  # io="fixed"
  assert inferred != task.space and any(a is None for axes in inferred.axes for a in axes)
  relaxed = inferred.relaxed_to(task.space)
  assert relaxed.match(task.space)  # the same space up to names
  lopt, theta = metatrain.load_learned_optimizer("mlp_fashion8_unf", space=inferred)
  reference, reference_theta = metatrain.load_learned_optimizer("mlp_fashion8_unf", space=task.space)
  grads = jax.grad(task.loss)(params, task.sample_batch(jax.random.key(2)))
  got = lopt.optimizer(theta, total_steps=100)
  expected = reference.optimizer(reference_theta, total_steps=100)
  state, expected_state = got.init(params), expected.init(params)
  for _ in range(2):  # the second step, past a warm-up's zero
    updates, state = got.update(grads, state, params)
    expected_updates, expected_state = expected.update(grads, expected_state, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), updates, expected_updates)
  # Not the other way round: a space that permutes an axis the optimizer fixes is still refused.
  with pytest.raises(ValueError, match="not the other way round"):
    metatrain.load_learned_optimizer("mlp_fashion8_unf", space=unf.WeightSpace({"w": ("a", "b")}))
