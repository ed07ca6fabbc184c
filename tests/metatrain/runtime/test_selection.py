"""The run's selected theta (best validation loss, the start included), its loading, export and resumed config."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import metatrain
import tasks
from metatrain import PES, WorkerConfig, loading
from metatrain import learned_optimizers as lopt
from metatrain.evaluation.baselines import tune_adam_cosine
from metatrain.runtime import train as train_module
from metatrain.runtime.evaluator import Evaluation, Losses
from metatrain.runtime.selection import Selection


@pytest.fixture(scope="module")
def nominal():
  task = tasks.get("mlp_fashion8")
  learned = lopt.UNFLOpt(task.space, **{**lopt.PRESETS["nominal"], "initial_alpha": 0.03, "horizon": 2000})
  return learned, learned.init_meta(jax.random.key(0))


def _evaluation(step, valid, theta):
  losses = Losses(final_train_loss=valid - 0.1, mean_train_loss=valid, valid_loss=valid, curve=np.zeros(3))
  return Evaluation(step, losses, 0.0, theta=jax.tree.map(np.asarray, theta))


def _shifted(theta, by):
  return {**theta, "log_alpha": np.asarray(theta["log_alpha"]) + by}


def test_selects_the_lowest_validation_loss_and_never_worse_than_the_start(nominal, tmp_path):
  learned, theta = nominal
  folder = tmp_path / "selected"
  selection = Selection(folder, learned, {"task": "mlp_fashion8"})
  offers = [(0, 0.50), (100, 0.52), (200, 0.47), (300, float("nan")), (400, 0.49)]
  taken = [selection.offer(_evaluation(step, valid, _shifted(theta, step))) for step, valid in offers]
  assert taken == [True, False, True, False, False]
  loaded_lopt, loaded = metatrain.load_learned_optimizer(str(folder))
  assert loaded_lopt == learned
  np.testing.assert_allclose(loaded["log_alpha"], np.asarray(theta["log_alpha"]) + 200)
  info = json.loads((folder / "optimizer.json").read_text())["info"]
  assert (info["selected_step"], info["valid_loss"], info["start_valid_loss"]) == (200, 0.47, 0.50)
  # A resumed run reads its selection back: a worse theta later is not taken, a better one is.
  again = Selection(folder, learned, {"task": "mlp_fashion8"})
  assert again.valid_loss == 0.47
  assert not again.offer(_evaluation(500, 0.48, theta)) and again.offer(_evaluation(600, 0.46, theta))
  assert loading.load(folder).step == 600


def test_export_ships_the_selected_theta_from_the_workdir_or_its_selected_folder(nominal, tmp_path):
  learned, theta = nominal
  selection = Selection(tmp_path / "run" / "selected", learned, {"task": "mlp_fashion8"})
  assert selection.offer(_evaluation(300, 0.45, _shifted(theta, 0.5)))
  for name, source in [("from_workdir", tmp_path / "run"), ("from_selected", tmp_path / "run" / "selected")]:
    loading.export(source, tmp_path / name, note=name)
    shipped_lopt, shipped = metatrain.pretrained.read(tmp_path / name)
    assert shipped_lopt == learned
    np.testing.assert_allclose(shipped["log_alpha"], np.asarray(theta["log_alpha"]) + 0.5)
    info = json.loads((tmp_path / name / "optimizer.json").read_text())["info"]
    assert info["outer_steps"] == 300 and info["selection"]["valid_loss"] == 0.45 and info["note"] == name


def test_a_shipped_nominal_optimizer_carries_its_horizon_and_needs_total_steps(nominal, tmp_path):
  learned, theta = nominal
  metatrain.pretrained.write(tmp_path / "shipped", learned, theta, {"outer_steps": 7})
  loaded_lopt, loaded = metatrain.load_learned_optimizer(str(tmp_path / "shipped"))
  assert loaded_lopt.horizon == 2000
  with pytest.raises(ValueError, match=r"total_steps=\.\.\..*meta-trained at total_steps=2000"):
    loaded_lopt.optimizer(loaded)
  task = tasks.get("mlp_fashion8")
  params = task.init(jax.random.key(0))
  optimizer = loaded_lopt.optimizer(loaded, total_steps=4000)  # a user's run, twice as long
  updates, _ = optimizer.update(jax.tree.map(np.ones_like, params), optimizer.init(params), params)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))  # the warm-up starts at 0


def test_resolved_starts_the_nominal_at_the_tuned_adam_cosine_rate():
  worker = WorkerConfig(preset="nominal", horizon=40, estimator=PES(num_pairs=1, truncation=20))
  resolved = worker.resolved()
  rate, _ = tune_adam_cosine(tasks.get("mlp_fashion8"), 40)
  assert resolved.options == {"initial_alpha": rate}
  assert resolved.build_learned_optimizer().initial_alpha == rate
  given = dataclasses.replace(worker, options={"initial_alpha": 0.5})
  assert given.resolved() is given and WorkerConfig().resolved() == WorkerConfig()  # nothing to derive


class _Saved:
  """The part of Checkpoints that resolve reads: the steps, and the newest config."""

  def __init__(self, worker):
    self.config = {"worker": worker.to_json()} if worker else None

  def steps(self):
    return [10] if self.config else []

  def latest_config(self):
    return self.config


def test_a_resumed_run_keeps_the_rate_its_first_start_derived(monkeypatch):
  worker = WorkerConfig(preset="nominal", horizon=40, estimator=PES(num_pairs=1, truncation=20))
  saved = dataclasses.replace(worker, options={"initial_alpha": 0.0123})
  monkeypatch.setattr(WorkerConfig, "resolved", lambda self: pytest.fail("tuned again on resume"))
  assert train_module.resolve(worker, _Saved(saved)).options == {"initial_alpha": 0.0123}
  # Another config (here another horizon) is resolved afresh, and resume then names the difference.
  calls = []
  monkeypatch.setattr(WorkerConfig, "resolved", lambda self: calls.append(self) or self)
  other = dataclasses.replace(worker, horizon=60, estimator=PES(num_pairs=1, truncation=20))
  assert train_module.resolve(other, _Saved(saved)) is other and calls == [other]
  assert train_module.resolve(worker, _Saved(None)) is worker and calls[-1] is worker
