"""The loader of meta-trained optimizers (:mod:`metatrain.loading`): round trips from a real smoke run, other
spaces, and clear refusals."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tasks
import unf
from metatrain import UNFLOpt, load_learned_optimizer, loading


def _updates(learned_optimizer, theta, params, grads):
  optimizer = learned_optimizer.optimizer(theta)
  state = optimizer.init(params)
  for _ in range(3):  # a few steps: the momenta and the step count take part
    updates, state = optimizer.update(grads, state, params)
  return updates


def _grads(task, params, seed=2):
  return jax.grad(task.loss)(params, task.sample_batch(jax.random.key(seed)))


def test_loads_the_optimizer_the_run_trained(smoke_run):
  lopt, theta = load_learned_optimizer(smoke_run.workdir)
  in_run = smoke_run.worker.build_learned_optimizer()
  assert lopt == in_run and lopt.space == tasks.get("mlp_fashion8").space
  for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(smoke_run.theta)):
    np.testing.assert_array_equal(a, np.asarray(b))
  task = tasks.get("mlp_fashion8")
  params = task.init(jax.random.key(0))
  grads = _grads(task, params)
  jax.tree.map(
    np.testing.assert_array_equal,
    _updates(lopt, theta, params, grads),
    _updates(in_run, smoke_run.theta, params, grads),
  )
  # A step folder gives the same; the newest checkpoint is the last step.
  loaded = loading.load(smoke_run.workdir / "checkpoints" / "4")
  assert loaded.step == 4 and loaded.path == smoke_run.workdir / "checkpoints" / "4"
  assert loading.load(smoke_run.workdir / "checkpoints").step == 4


def _user_mlp(hidden):
  """A user's own flax MLP 64-hidden-10: an ``nnx.Sequential`` whose layers are ``layers/0`` and ``layers/2``."""
  model = nnx.Sequential(
    nnx.Linear(64, hidden, rngs=nnx.Rngs(0)), jax.nn.relu, nnx.Linear(hidden, 10, rngs=nnx.Rngs(1))
  )
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_loads_for_a_users_wider_network_with_other_names(smoke_run):
  """Same architecture, other paths (layers/2), other widths: the update is the in-run optimizer's, renamed."""
  params = _user_mlp(128)
  space = unf.mlp_space(params)
  lopt, theta = load_learned_optimizer(smoke_run.workdir, space=space)
  assert lopt.space == space and space != tasks.get("mlp_fashion8").space
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  # The in-run optimizer on the same numbers under the training task's leaf names.
  rename = lambda tree: {"layers": {0: tree["layers"][0], 1: tree["layers"][2]}}  # noqa: E731
  in_run = UNFLOpt(smoke_run.worker.build_learned_optimizer().space)
  expected = _updates(in_run, smoke_run.theta, rename(params), rename(grads))
  got = rename(_updates(lopt, theta, params, grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), got, expected)
  assert got["layers"][0]["kernel"].shape == (64, 128)


def test_loading_reads_no_dataset_and_builds_no_learner(smoke_run):
  code = textwrap.dedent(
    f"""
      import sys
      from metatrain import load_learned_optimizer
      lopt, theta = load_learned_optimizer({str(smoke_run.workdir)!r})
      print(type(lopt).__name__, "metatrain.runtime.learner" in sys.modules, "tasks.fashion_mnist" in sys.modules)
      print("metatrain.runtime.checkpoint" in sys.modules, "metatrain.evaluation.compare" in sys.modules)
      """
  )
  env = {**os.environ, "UNF_FASHION_MNIST_DIR": "/nonexistent", "UNF_DATA_DIR": "/nonexistent"}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  found, imported = out.stdout.splitlines()
  name, learner, _ = found.split()
  assert name == "UNFLOpt" and learner == "False"
  assert imported == "False False"  # the loader is no part of the runtime's checkpoints or of `metatrain eval`


def test_refuses_another_architecture(smoke_run):
  space = tasks.get("cnn_fashion16").space
  with pytest.raises(ValueError, match=r"meta-trained on another architecture.*6 leaves|leaves") as info:
    load_learned_optimizer(smoke_run.workdir, space=space)
  assert str(smoke_run.workdir) in str(info.value)


def test_refuses_an_empty_folder_and_a_missing_one(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"no checkpoints in {tmp_path}: pass the workdir"):
    load_learned_optimizer(tmp_path)
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    load_learned_optimizer(tmp_path / "missing")


def test_refuses_a_truncated_checkpoint(smoke_run, tmp_path):
  workdir = shutil.copytree(smoke_run.workdir, tmp_path / "run")
  for step in ("2", "4"):  # every checkpoint of the run damaged: nothing to fall back to
    for path in (workdir / "checkpoints" / step / "state").rglob("*"):
      if path.is_file() and path.stat().st_size > 64:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  ckpts = workdir / "checkpoints"
  with pytest.raises(
    ValueError, match=f"no checkpoint in {workdir} reads; {ckpts}/4: state/.* is cut short .*; {ckpts}/2: "
  ):
    load_learned_optimizer(workdir)


def test_falls_back_to_the_newest_checkpoint_that_reads(smoke_run, tmp_path):
  workdir = shutil.copytree(smoke_run.workdir, tmp_path / "run")
  shutil.rmtree(workdir / "checkpoints" / "4" / "state")
  assert loading.load(workdir).step == 2
  with pytest.raises(ValueError, match="checkpoints/4: state/_METADATA is missing"):
    loading.load(workdir / "checkpoints" / "4")


def test_loads_a_checkpoint_written_before_it_described_its_optimizer(smoke_run, tmp_path):
  """Older checkpoints: no ``learned_optimizer`` item, and the worker config in its old layout (the task's
  space is rebuilt, which needs the task to be registered)."""
  workdir = shutil.copytree(smoke_run.workdir, tmp_path / "run")
  for step in ("2", "4"):
    folder = workdir / "checkpoints" / step
    shutil.rmtree(folder / "learned_optimizer")
    config_file = folder / "config" / "metadata"  # where orbax writes a JsonSave item
    config = json.loads(config_file.read_text())
    estimator = config["worker"].pop("estimator")
    config["worker"]["optimizer"] = config["worker"].pop("learned_optimizer")
    config["worker"].update(estimator=estimator.pop("name"), **{k: estimator[k] for k in ("num_pairs", "std", "clip")})
    config["worker"]["truncation"] = estimator["truncation"]
    config_file.write_text(json.dumps(config))
    # Complete as saved in that layout: its file listing says so (a listing of other sizes means damage).
    sizes = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    sizes.pop(loading.FILES)
    (folder / loading.FILES).write_text(json.dumps(sizes, indent=0, sort_keys=True))
  lopt, theta = load_learned_optimizer(workdir)
  assert lopt == smoke_run.worker.build_learned_optimizer()
  for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(smoke_run.theta)):
    np.testing.assert_array_equal(a, np.asarray(b))
