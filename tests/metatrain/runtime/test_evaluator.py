"""Evaluation while meta-training: the evaluators' numbers, their seeds, and their faults inside a run."""

import functools
import io
import os
import pathlib
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tasks
from metatrain import PES, TrainConfig, WorkerConfig, cli
from metatrain.evaluation.baselines import EVAL_SEED, adam_cosine
from metatrain.evaluation.curves import evaluation_curves, train_run
from metatrain.runtime import evaluator as evaluator_module
from metatrain.runtime import train as train_module
from metatrain.runtime.evaluator import Evaluation, InProcessEvaluator, Losses
from metatrain.runtime.ray_pool import RayEvaluator
from metatrain.runtime.summaries import MAIN_RUN, REFERENCE_RUN
from metatrain.runtime.worker import GradientWorker

SMOKE = str(pathlib.Path(__file__).resolve().parents[3] / "configs" / "smoke.gin")
CONFIG = WorkerConfig(task="mlp_fashion8", width=8, estimator=PES(num_pairs=2, truncation=5), horizon=20)
EVAL_TAGS = {"eval/final_train_loss", "eval/mean_train_loss", "eval/valid_loss"}
TIMEOUT = 300.0


def _theta(config=CONFIG, seed=0):
  return jax.tree.map(np.asarray, config.build_learned_optimizer().init_meta(jax.random.key(seed)))


@functools.partial(jax.jit, static_argnames=("make_optimizer", "steps"))
def _runs(task, hyper, keys, *, make_optimizer, steps):
  def run(key):
    params, losses = train_run(task, make_optimizer(hyper), key, steps)
    return losses, task.eval_loss(params, "train"), task.eval_loss(params, "valid")

  return jax.vmap(run)(keys)


def _direct(task, hyper, make_optimizer, steps, seeds):
  """An evaluation computed another way: :func:`train_run`, then the final losses (not ``evaluation_curves``).

  Returns:
    ``(curves, {"train": final train loss, "valid": final valid loss})``, means over seeds but the curves.
  """
  keys = jnp.stack([jax.random.key(30_000 + i) for i in range(seeds)])  # the evaluator's seeds, written out
  curves, train, valid = _runs(task, hyper, keys, make_optimizer=make_optimizer, steps=steps)
  return np.asarray(curves, np.float64), {"train": float(np.mean(train)), "valid": float(np.mean(valid))}


def _assert_losses(losses: Losses, curves: np.ndarray, final: dict[str, float]):
  np.testing.assert_allclose(losses.curve, curves.mean(axis=0), rtol=1e-5)
  np.testing.assert_allclose(losses.mean_train_loss, curves.mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.final_train_loss, final["train"], rtol=1e-5)
  np.testing.assert_allclose(losses.valid_loss, final["valid"], rtol=1e-5)


def _run(config, worker, workdir, monkeypatch=None, make_evaluator=None):
  if make_evaluator is not None:
    monkeypatch.setattr(train_module, "make_evaluator", make_evaluator)
  return train_module.train(config, worker, workdir)


def _smoke(*bindings):
  return cli.parse_config(SMOKE, ["TrainConfig.use_ray = False", *bindings])[:2]


def _events(folder):
  events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
  events.Reload()
  return events


def test_in_process_evaluation_equals_a_direct_computation():
  worker = _smoke()[1]  # the programs of the train tests below: compiled once (the session's compilation cache)
  evaluator = InProcessEvaluator(worker, 2)
  theta = _theta(worker)
  assert evaluator.submit(theta, 7)
  (evaluation,) = evaluator.wait(TIMEOUT)
  task = tasks.get(worker.task)
  lopt = worker.build_learned_optimizer()
  assert evaluation.step == 7 and evaluation.losses.curve.shape == (worker.horizon,)
  _assert_losses(evaluation.losses, *_direct(task, jax.tree.map(jnp.asarray, theta), lopt.optimizer, worker.horizon, 2))
  # Adam's reference: the picked rate trained on the same seeds, its pick the best of the rates tried.
  reference = evaluation.reference
  assert reference is not None and reference.learning_rate == reference.table[0][0]
  assert reference.table[0][1] == min(loss for _, loss in reference.table)
  assert {rate for rate, _ in reference.table} >= set(evaluator_module.REFERENCE_RATES)
  # Its runs: evaluation_curves of Adam-cosine at that rate on the same seeds (the learned runs' code is checked
  # against train_run above; one program fewer to compile).
  batch, evals = evaluation_curves(
    task,
    jnp.float32(reference.learning_rate),
    evaluator_module.evaluation_keys(2),
    make_optimizer=functools.partial(adam_cosine, steps=worker.horizon),
    steps=worker.horizon,
    every=worker.horizon,
  )
  final = {"train": float(np.mean(evals[:, -1, 0])), "valid": float(np.mean(evals[:, -1, 1]))}
  _assert_losses(reference.losses, np.asarray(batch, np.float64), final)
  # The next evaluation carries the same reference without computing it again.
  assert evaluator.submit(theta, 8)
  (again,) = evaluator.wait(TIMEOUT)
  assert again.reference is reference and again.losses.valid_loss == evaluation.losses.valid_loss
  assert evaluator.skipped == evaluator.lost == 0


def test_evaluation_keys_are_not_the_workers():
  def data(keys):
    return {tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in keys}

  def children(key):
    return [key, *jax.random.split(key), *(jax.random.fold_in(key, step) for step in range(4))]

  # (split(key) and fold_in(key, 0 or 1) coincide: the sets count each key once.)
  evaluation = [child for key in evaluator_module.evaluation_keys(8) for child in children(key)]
  assert data(evaluator_module.evaluation_keys(8)) == data([jax.random.key(30_000 + i) for i in range(8)])
  workers = []
  for seed in (0, 1):
    for worker_id in range(2):
      worker = GradientWorker(CONFIG, worker_id, seed)
      workers += children(worker.init_key) + children(worker.key)
    workers += children(jax.random.key(seed))  # theta's initialisation
  assert not data(evaluation) & data(workers)
  # Nor metatrain eval's: the theta selected on the evaluator's runs is reported on others.
  reported = [child for i in range(8) for child in children(jax.random.key(EVAL_SEED + i))]
  assert not data(evaluation) & data(reported)


class _Blocked:
  """Evaluation runs that block until released (or raise, when told): a slow or broken evaluator."""

  def __init__(self, fail: int = 0):
    self.release, self.started, self.fail = threading.Event(), threading.Event(), fail

  def evaluate(self, theta, step, *, reference):
    self.started.set()
    if self.fail:
      self.fail -= 1
      raise RuntimeError("a broken evaluation")
    assert self.release.wait(TIMEOUT)
    return Evaluation(step, Losses(1.0, 2.0, 3.0, np.ones(4)), 0.0)


def test_a_failing_evaluation_is_lost_and_the_next_one_runs():
  runs = _Blocked(fail=1)
  evaluator = InProcessEvaluator(CONFIG, 1, runs=runs)
  runs.release.set()
  assert evaluator.submit(_theta(), 0)
  assert evaluator.wait(TIMEOUT) == [] and evaluator.lost == 1
  assert evaluator.submit(_theta(), 1)
  assert [e.step for e in evaluator.wait(TIMEOUT)] == [1] and evaluator.lost == 1


def test_a_slow_evaluator_skips_evaluations_and_never_an_outer_step(tmp_path, monkeypatch):
  config, worker = _smoke("TrainConfig.eval_every = 1")
  runs = _Blocked()
  evaluators = []

  def make_evaluator(config, worker, *, cache=None):
    evaluators.append(InProcessEvaluator(worker, 1, runs=runs))
    return evaluators[-1]

  monkeypatch.setattr(train_module, "FINAL_EVALUATION_TIMEOUT", 0.2)
  try:
    theta, history = _run(config, worker, tmp_path, monkeypatch, make_evaluator)
  finally:
    runs.release.set()
  # The evaluation of step 0 blocks for the whole run: every later step's is skipped, and all 4 steps ran.
  assert [m["skipped_evals"] for m in history] == [1.0, 2.0, 3.0, 4.0]
  assert [m["lost_evals"] for m in history] == [0.0] * 4
  assert evaluators[0].submitted == 0
  assert not EVAL_TAGS & set(_events(tmp_path / "tensorboard" / MAIN_RUN).Tags()["scalars"])


def test_train_writes_evaluations_and_the_adam_reference(tmp_path, smoke_run):
  config, worker = _smoke("TrainConfig.eval_every = 2", "TrainConfig.eval_seeds = 2")
  theta, history = _run(config, worker, tmp_path)
  # Evaluations draw nothing from the learner's or the workers' randomness: the same thetas as without.
  for leaf, expected in zip(jax.tree.leaves(theta), jax.tree.leaves(smoke_run.theta)):
    np.testing.assert_array_equal(leaf, expected)
  events = _events(tmp_path / "tensorboard" / MAIN_RUN)
  assert EVAL_TAGS <= set(events.Tags()["scalars"])
  assert {"faults/skipped_evals", "faults/lost_evals"} <= set(events.Tags()["scalars"])
  assert history[-1]["lost_evals"] == 0.0
  steps = [e.step for e in events.Scalars("eval/valid_loss")]
  assert set(steps) <= {0, 2, 4} and steps[-1] == 4  # the final theta is always evaluated
  assert len(steps) + history[-1]["skipped_evals"] == 3
  # The final evaluation is the final theta's, on the evaluation seeds.
  task = tasks.get(worker.task)
  lopt = worker.build_learned_optimizer()
  curves, final = _direct(task, jax.tree.map(jnp.asarray, theta), lopt.optimizer, worker.horizon, 2)
  np.testing.assert_allclose(events.Scalars("eval/valid_loss")[-1].value, final["valid"], rtol=1e-5)
  np.testing.assert_allclose(events.Scalars("eval/mean_train_loss")[-1].value, curves.mean(), rtol=1e-5)
  # The curve, as an image at every evaluation.
  images = events.Images("eval/curve")
  assert [image.step for image in images] == steps
  picture = Image.open(io.BytesIO(images[-1].encoded_image_string))
  assert picture.size[0] >= 400 and picture.size[1] >= 300
  # Adam's reference: a run of its own with the same tags, one value repeated at every evaluation step.
  reference = _events(tmp_path / "tensorboard" / REFERENCE_RUN)
  assert set(reference.Tags()["scalars"]) == EVAL_TAGS
  for tag in EVAL_TAGS:
    points = reference.Scalars(tag)
    assert [p.step for p in points] == steps and len({p.value for p in points}) == 1
  adam_valid = reference.Scalars("eval/valid_loss")[0].value
  assert np.isfinite(adam_valid) and adam_valid < np.log(10)  # Adam learns in 20 steps: below chance


class _KilledOnce(RayEvaluator):
  """A Ray evaluator whose actor process is killed (SIGKILL) during its first evaluation."""

  killed = False

  def _start(self, theta, step, *, reference):
    import ray

    pid = None if self.killed else ray.get(self.actor.pid.remote())  # up (calls run in order: before the next)
    super()._start(theta, step, reference=reference)
    if pid is not None:
      os.kill(pid, signal.SIGKILL)
      self.killed = True


def test_a_killed_evaluation_actor_loses_an_evaluation_and_the_run_goes_on(
  tmp_path, monkeypatch, ray_session, jax_cache_env
):
  # One worker (1 CPU) and the evaluation actor (0 CPUs) in the session's 2-CPU Ray.
  bindings = ["TrainConfig.eval_every = 2", "TrainConfig.num_workers = 1", "TrainConfig.eval_seeds = 2"]
  config, worker = cli.parse_config(SMOKE, bindings)[:2]
  assert config.use_ray
  evaluators = []

  def make_evaluator(config, worker, *, cache=None):
    evaluator = _KilledOnce(worker, config.eval_seeds, num_cpus=0, env_vars=jax_cache_env)
    evaluators.append(evaluator)
    return evaluator

  theta, history = _run(config, worker, tmp_path, monkeypatch, make_evaluator)
  assert len(history) == 4 and evaluators[0].lost == 1
  assert history[-1]["lost_evals"] == 1.0
  # The replacement actor evaluated the final theta.
  steps = [e.step for e in _events(tmp_path / "tensorboard" / MAIN_RUN).Scalars("eval/valid_loss")]
  assert steps[-1] == 4 and 0 not in steps
  assert set(_events(tmp_path / "tensorboard" / REFERENCE_RUN).Tags()["scalars"]) == EVAL_TAGS


def test_train_config_checks_the_evaluation_fields():
  with pytest.raises(ValueError, match="eval_every"):
    TrainConfig(eval_every=-1)
  with pytest.raises(ValueError, match="eval_seeds"):
    TrainConfig(eval_seeds=0)
  with pytest.raises(ValueError, match="eval_cpus"):
    TrainConfig(eval_cpus=-0.5)
  assert train_module.make_evaluator(TrainConfig(eval_every=0), CONFIG) is None


@pytest.mark.parametrize(
  ("requested", "cluster", "workers", "expected"),
  [(1.0, 4.0, 2.0, 1.0), (2.0, 4.0, 2.0, 2.0), (1.0, 2.0, 2.0, 0.0), (3.0, 4.5, 2.0, 2.0), (0.0, 2.0, 2.0, 0.0)],
)
def test_the_evaluator_asks_for_no_more_cpus_than_the_workers_leave(requested, cluster, workers, expected):
  cpus, warning = train_module.evaluator_cpus(requested, cluster, workers)
  assert cpus == expected
  assert bool(warning) == (expected < requested)
  if warning:
    assert f"TrainConfig.eval_cpus = {requested:g}" in warning and f"{cluster - workers:g} free" in warning


def test_make_evaluator_gives_the_ray_actor_the_free_cpus_and_says_so(monkeypatch, capsys):
  from metatrain.runtime import ray_pool

  asked = []
  monkeypatch.setattr(ray_pool.ray, "cluster_resources", lambda: {"CPU": 2.0})
  monkeypatch.setattr(ray_pool, "RayEvaluator", lambda worker, seeds, *, num_cpus, env_vars: asked.append(num_cpus))
  config = TrainConfig(eval_every=1, use_ray=True, num_workers=2, worker_cpus=1, eval_cpus=1.0)
  train_module.make_evaluator(config, CONFIG)
  assert asked == [0.0]  # 1 CPU would never be scheduled beside 2 workers on 2 CPUs: every evaluation skipped
  assert "TrainConfig.eval_cpus = 1 asks for more CPUs than are free" in capsys.readouterr().out


def test_a_task_family_is_evaluated_on_a_fixed_sample_named_in_the_tags_and_selected_on_its_mean(tmp_path):
  import contextlib
  import dataclasses

  from metatrain.runtime.selection import Selection
  from metatrain.runtime.summaries import Summaries

  worker = dataclasses.replace(_smoke()[1], task_family="mlp_fashion8_sizes")
  members = evaluator_module.family_members(worker)
  names = [task.name for task in members]
  # The draws of the evaluation keys, distinct: the same in every evaluation and every run.
  family = tasks.families()["mlp_fashion8_sizes"]
  drawn = [family.sample(jax.random.key(30_000 + i)).name for i in range(evaluator_module.FAMILY_DRAWS)]
  assert names == list(dict.fromkeys(drawn)) and len(names) >= 2
  assert [task.name for task in evaluator_module.family_members(worker)] == names
  runs = evaluator_module.EvaluationRuns(worker, 2)
  theta = _theta(worker)
  evaluation = runs.evaluate(theta, 3)
  assert list(evaluation.members) == names
  # One member against a direct computation, with the learned optimizer on that member's space.
  small = next(task for task in members if task.name.endswith("_n2000"))
  lopt = dataclasses.replace(worker.build_learned_optimizer(), space=small.space)
  _assert_losses(
    evaluation.members[small.name], *_direct(small, jax.tree.map(jnp.asarray, theta), lopt.optimizer, worker.horizon, 2)
  )
  # The members differ (2,000 examples against 50,000), and the selection compares their mean.
  valid = [losses.valid_loss for losses in evaluation.members.values()]
  assert len(set(valid)) == len(valid)
  assert evaluation.selection_loss == pytest.approx(np.mean(valid))
  assert evaluation.selection_loss != evaluation.losses.valid_loss
  selection = Selection(tmp_path / "selected", worker.build_learned_optimizer(), worker.to_json())
  assert selection.offer(evaluation) and selection.valid_loss == pytest.approx(np.mean(valid))
  with contextlib.closing(Summaries(tmp_path / "tensorboard", run=MAIN_RUN)) as summaries:
    summaries.evaluation(evaluation)
  tags = set(_events(tmp_path / "tensorboard" / MAIN_RUN).Tags()["scalars"])
  assert {f"eval/{name}/valid_loss" for name in names} <= tags and EVAL_TAGS <= tags
