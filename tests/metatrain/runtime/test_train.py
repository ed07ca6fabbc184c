"""`metatrain train` end to end in one process: checkpoints, resume, TensorBoard, configuration errors."""

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metatrain import PES, NoiseReuseES, TrainConfig, WorkerConfig, cli, loading
from metatrain.exit_status import INTERRUPTED_EXIT_STATUS
from metatrain.outer import outer_schedule
from metatrain.runtime import checkpoint
from metatrain.runtime import train as train_module
from metatrain.runtime.summaries import MAIN_RUN
from metatrain.runtime.worker import Estimate

SMOKE = str(pathlib.Path(__file__).resolve().parents[3] / "configs" / "smoke.gin")
IN_PROCESS = ["TrainConfig.use_ray = False"]


def _train(workdir, *bindings):
  return cli.main(["train", "--config", SMOKE, "--workdir", str(workdir), "--gin_bindings", *IN_PROCESS, *bindings])


def _theta(workdir):
  """``(step, theta, config)`` of the workdir's newest checkpoint."""
  loaded = loading.load(workdir)
  with contextlib.closing(checkpoint.Checkpoints(workdir)) as checkpoints:
    config = checkpoints.latest_config()
  return loaded.step, loaded.theta, config


def test_train_writes_checkpoints_and_tensorboard(tmp_path):
  assert _train(tmp_path) == 0
  step, theta, config = _theta(tmp_path)
  assert step == 4 and np.all([np.isfinite(leaf).all() for leaf in jax.tree.leaves(theta)])
  assert (tmp_path / "checkpoints" / "4" / "particles").is_dir()  # the PES workers' particles
  assert "WorkerConfig.task = 'mlp_fashion8'" in config["gin"] and "PES.num_pairs = 2" in config["gin"]
  worker = WorkerConfig.from_json(config["worker"])
  assert worker == cli.parse_config(SMOKE, IN_PROCESS)[1]
  # TensorBoard names the run "learned" (not "."): no event file in the folder itself.
  assert not list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  events = EventAccumulator(str(tmp_path / "tensorboard" / MAIN_RUN))
  events.Reload()
  scalars = set(events.Tags()["scalars"])
  # TensorBoard's sections: meta/, throughput/, faults/ (the tags' prefixes), and nothing left outside them.
  assert {"meta/loss", "meta/grad_norm", "meta/learning_rate", "meta/staleness"} <= scalars
  assert {"throughput/inner_steps_per_second", "throughput/outer_steps_per_second"} <= scalars
  faults = {"stale_estimates", "nan_estimates", "nan_pairs", "live_workers", "lost_estimates"}
  assert {f"faults/{name}" for name in faults} <= scalars
  assert {tag.split("/")[0] for tag in scalars} == {"meta", "throughput", "faults"}
  losses = [e.value for e in events.Scalars("meta/loss")]
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert [e.step for e in events.Scalars("meta/loss")] == [1, 2, 3, 4]
  assert [e.value for e in events.Scalars("faults/live_workers")] == [2.0] * 4
  # The rate logged at step s is the outer schedule's at s: the rate of the learner's next update.
  train_config = cli.parse_config(SMOKE, IN_PROCESS)[0]
  schedule = outer_schedule(train_config.learning_rate, total_steps=4, warmup_steps=train_config.warmup_steps)
  logged = [e.value for e in events.Scalars("meta/learning_rate")]
  np.testing.assert_allclose(logged, [float(schedule(step)) for step in (1, 2, 3, 4)], rtol=1e-6)
  texts = events.Tags()["tensors"]
  assert any("operative_config" in t for t in texts)


class _Constant:
  """A learned optimizer with one parameter vector, for :func:`make_learner` (it only calls ``init_meta``)."""

  def init_meta(self, key):
    return {"w": np.zeros(2, np.float32)}


def test_the_learner_reports_the_schedule_its_adam_steps_by():
  """With a constant gradient, Adam's bias-corrected step is exactly its learning rate: each update is the rate
  the learner reported before it."""
  config = TrainConfig(learning_rate=0.5, outer_steps=10, warmup_steps=3)
  learner = train_module.make_learner(config, _Constant())
  expected = outer_schedule(0.5, total_steps=10, warmup_steps=3)
  for step in range(12):  # past the end of the schedule too
    rate = learner.learning_rate()
    assert rate == float(expected(step))
    before = np.asarray(learner.theta["w"])
    learner.apply([Estimate({"w": np.float32([0.3, -0.4])}, 1.0, step, 0, {})])
    np.testing.assert_allclose(np.asarray(learner.theta["w"]) - before, [-rate, rate], rtol=1e-4, atol=1e-7)
  skipped = learner.apply([Estimate({"w": np.float32([np.nan, 0.0])}, 1.0, 12, 0, {})])
  assert skipped["skipped_step"] == 1.0 and learner.learning_rate() == float(expected(12))  # no update, same rate


class _TwoParts(_Constant):
  """:class:`_Constant` whose second coordinate has a noise scale of 1/4 (as a UNF's last layer has less)."""

  def noise_scales(self, theta):
    return {"w": np.float32([1.0, 0.25])}


def test_a_per_part_learning_rate_scales_each_parts_adam_step():
  """With a constant gradient Adam's step is its rate: with per_part_learning_rate, the rate times the part's
  noise scale; without, the rate for both."""
  for per_part, factors in ((True, [1.0, 0.25]), (False, [1.0, 1.0])):
    config = TrainConfig(learning_rate=0.5, outer_steps=10, warmup_steps=3, per_part_learning_rate=per_part)
    learner = train_module.make_learner(config, _TwoParts())
    for step in range(4):
      rate, before = learner.learning_rate(), np.asarray(learner.theta["w"])
      learner.apply([Estimate({"w": np.float32([0.3, -0.4])}, 1.0, step, 0, {})])
      step_taken = np.asarray(learner.theta["w"]) - before
      np.testing.assert_allclose(step_taken, rate * np.float32([-1, 1]) * factors, rtol=1e-4, atol=1e-7)


def test_a_finished_run_starts_no_workers(tmp_path, monkeypatch, capsys):
  assert _train(tmp_path) == 0

  def no_pool(*args, **kwargs):
    raise AssertionError("a finished run started workers")

  monkeypatch.setattr(train_module, "make_pool", no_pool)
  assert _train(tmp_path) == 0
  assert f"the run in {tmp_path} is done: step 4 of 4" in capsys.readouterr().out
  assert _theta(tmp_path)[0] == 4


class _Interrupt:
  """Wraps a pool and raises KeyboardInterrupt (Ctrl-C) at the n-th gather."""

  def __init__(self, pool, after):
    self.pool, self.after, self.calls = pool, after, 0

  def __getattr__(self, name):
    return getattr(self.pool, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.pool.close()

  def gather(self, count, timeout=None):
    self.calls += 1
    if self.calls > self.after:
      raise KeyboardInterrupt
    return self.pool.gather(count)


@pytest.mark.parametrize("estimator", ["PES", "FullES"])
def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch, estimator):
  # A synchronous run interrupted by Ctrl-C and resumed must retrace the uninterrupted one exactly:
  # the checkpoint carries theta, the outer optimizer state and the PES workers' inner runs.
  bindings = [f"WorkerConfig.estimator = @{estimator}()", f"{estimator}.num_pairs = 2"]
  assert _train(tmp_path / "straight", *bindings) == 0
  make_pool = train_module.make_pool
  monkeypatch.setattr(train_module, "make_pool", lambda *a, **k: _Interrupt(make_pool(*a, **k), after=2))
  # A KeyboardInterrupt raised inside the loop (not through the signal handler): saved at exit, status 130.
  assert _train(tmp_path / "resumed", *bindings) == INTERRUPTED_EXIT_STATUS
  assert _theta(tmp_path / "resumed")[0] == 2  # saved at exit
  monkeypatch.setattr(train_module, "make_pool", make_pool)
  assert _train(tmp_path / "resumed", *bindings) == 0
  straight, resumed = _theta(tmp_path / "straight"), _theta(tmp_path / "resumed")
  assert straight[0] == resumed[0] == 4
  for a, b in zip(jax.tree.leaves(straight[1]), jax.tree.leaves(resumed[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_particles_can_be_left_out_of_checkpoints(tmp_path):
  assert _train(tmp_path, "TrainConfig.checkpoint_particles = False") == 0
  assert _theta(tmp_path)[0] == 4
  assert not (tmp_path / "checkpoints" / "4" / "particles").exists()
  # Resuming without particles works: the workers start fresh inner runs.
  assert _train(tmp_path, "TrainConfig.checkpoint_particles = False", "TrainConfig.outer_steps = 6") == 0
  assert _theta(tmp_path)[0] == 6


def test_particles_restore_only_into_the_same_kind_of_estimator():
  pes = WorkerConfig(estimator=PES(num_pairs=2))
  assert train_module.particles_fit(pes, pes)
  assert train_module.particles_fit(pes, WorkerConfig(estimator=PES(num_pairs=2, std=0.1)))
  # The same leaves and shapes, another meaning (accumulated noise vs one reused noise): fresh runs.
  assert not train_module.particles_fit(pes, WorkerConfig(estimator=NoiseReuseES(num_pairs=2)))


def test_incompatible_checkpoint_is_a_clear_error(tmp_path, capsys):
  assert _train(tmp_path) == 0
  capsys.readouterr()
  assert _train(tmp_path, "WorkerConfig.learned_optimizer = 'deep_sets'") == 2
  assert "different learned optimizer or task" in capsys.readouterr().err
  assert _train(tmp_path, "WorkerConfig.preset = 'paper'") == 2  # another shape of theta: refused before restoring
  assert "preset" in capsys.readouterr().err
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]  # nothing moved aside


@pytest.mark.parametrize(
  "bindings, message",
  [
    (["TrainConfig.no_such_option = 3"], "No configurable matching|no_such_option"),
    (["TrainConfig.outer_steps = 'ten'"], "TrainConfig.outer_steps must be int"),
    (["WorkerConfig.task = 'mlp_mnist'"], "unknown task 'mlp_mnist'"),
    (["WorkerConfig.estimator = @REINFORCE()"], "No configurable matching reference '@REINFORCE\\(\\)'"),
    (["WorkerConfig.estimator = 'pes'"], "WorkerConfig.estimator must be Estimator"),
    (["PES.truncation = 3"], "horizon \\(20\\) must be a positive multiple of the truncation length \\(3\\)"),
  ],
)
def test_bad_configuration_stops_at_start_up(tmp_path, capsys, bindings, message):
  assert _train(tmp_path, *bindings) == 2
  assert re.search(message, capsys.readouterr().err)
  assert not (tmp_path / "checkpoints").exists()  # stopped before any work


def test_config_file_errors_name_file_and_line(tmp_path, capsys):
  config = tmp_path / "bad.gin"
  config.write_text("WorkerConfig.task = 'mlp_fashion8'\nWorkerConfig.widht = 3\n")
  assert cli.main(["train", "--config", str(config), "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err
  assert "widht" in err and "bad.gin" in err and "line 2" in err
  assert cli.main(["train", "--config", str(tmp_path / "missing.gin"), "--workdir", str(tmp_path / "w")]) == 2


def test_unwritable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(PermissionError, match="not writable"):
    _train(blocker / "run")


def test_train_config_checks_types():
  with pytest.raises(TypeError, match="TrainConfig.learning_rate must be float"):
    TrainConfig(learning_rate="fast")
  assert TrainConfig(learning_rate=1).learning_rate == 1  # an int is a fine float


def test_killed_learner_process_resumes_from_its_latest_checkpoint(tmp_path):
  # SIGKILL: no exit checkpoint, possibly a half-written one. The restarted run resumes from the
  # latest complete checkpoint and ends where an uninterrupted run ends.
  bindings = ["TrainConfig.outer_steps = 60", "TrainConfig.checkpoint_every = 5"]
  workdir = tmp_path / "killed"
  command = [sys.executable, "-m", "metatrain.cli", "train", "--config", SMOKE, "--workdir", str(workdir)]
  process = subprocess.Popen(
    [*command, "--gin_bindings", *IN_PROCESS, *bindings],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
  )
  deadline = time.monotonic() + 300
  checkpoints = workdir / "checkpoints"
  while time.monotonic() < deadline and process.poll() is None:
    if checkpoints.exists() and any(p.name.isdigit() and int(p.name) >= 10 for p in checkpoints.iterdir()):
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
  killed_at = _theta(workdir)[0]
  assert 10 <= killed_at < 60
  assert _train(workdir, *bindings) == 0
  assert _train(tmp_path / "straight", *bindings) == 0
  straight, resumed = _theta(tmp_path / "straight"), _theta(workdir)
  assert straight[0] == resumed[0] == 60
  for a, b in zip(jax.tree.leaves(straight[1]), jax.tree.leaves(resumed[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_worker_accelerators_reach_the_ray_actors(monkeypatch):
  # gin: TrainConfig.worker_gpus = 1 / TrainConfig.worker_resources = {"TPU": 4}
  from metatrain.runtime import ray_pool

  monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)  # the workers cache everything
  made = {}
  monkeypatch.setattr(ray_pool, "RayPool", lambda *args, **kwargs: made.update(kwargs))
  config = TrainConfig(
    num_workers=2, worker_cpus=8, worker_gpus=0.5, worker_resources={"TPU": 4}, address="auto", worker_patience=7.0
  )
  train_module.make_pool(config, WorkerConfig(), cache="/cache")
  assert made == {
    "address": "auto",
    "num_cpus": 8,
    "num_gpus": 0.5,
    "resources": {"TPU": 4},
    "env_vars": {"JAX_COMPILATION_CACHE_DIR": "/cache", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"},
    "keep_particles": True,
    "patience": 7.0,
  }
  env = ray_pool.worker_env(num_gpus=0, resources={"TPU": 4})
  assert "JAX_PLATFORMS" not in env  # a TPU worker must see its TPU
  assert ray_pool.worker_env()["JAX_PLATFORMS"] == "cpu"


def _cache_entries(folder):
  return sorted(p.name for p in folder.iterdir() if p.name.endswith("-cache"))


def test_the_main_job_keeps_a_persistent_compilation_cache(tmp_path):
  """A second run of the same config, on a new workdir, finds every compilation in the cache (a subprocess each:
  JAX's cache settings are per process)."""
  cache = tmp_path / "cache"
  # Without the test session's cache settings: the job's own threshold (0) caches every program. With a 1 s
  # threshold, a program that compiles in about a second would be cached or not depending on the machine's load.
  session = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
  env = {name: value for name, value in os.environ.items() if name not in session}

  def run(workdir):
    command = [sys.executable, "-m", "metatrain.cli", "train", "--config", SMOKE, "--workdir", str(tmp_path / workdir)]
    bindings = [*IN_PROCESS, f"TrainConfig.compilation_cache = {str(cache)!r}", "TrainConfig.num_workers = 1"]
    return subprocess.run([*command, "--gin_bindings", *bindings], capture_output=True, text=True, env=env, timeout=600)

  first = run("first")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "compiling the workers' step" in first.stdout
  entries = _cache_entries(cache)
  assert entries, "nothing was written to the compilation cache"
  second = run("second")
  assert second.returncode == 0, second.stderr[-3000:]
  assert _cache_entries(cache) == entries  # every program came from the cache: none was compiled again


def test_bindings_of_an_estimator_not_chosen_are_reported(tmp_path):
  with pytest.warns(UserWarning, match=r"unused bindings \['PES.num_pairs', 'PES.truncation', 'PES.std'\]: the estim"):
    _, worker, _ = cli.parse_config(SMOKE, ["WorkerConfig.estimator = @FullES()", "FullES.num_pairs = 3"])
  assert worker.estimator.num_pairs == 3
  # Unbound, the estimator is PES and takes the PES bindings.
  config = pathlib.Path(SMOKE).read_text().replace("WorkerConfig.estimator = @PES()", "")
  path = tmp_path / "no_estimator.gin"
  path.write_text(config)
  assert cli.parse_config(str(path), [])[1].estimator == cli.parse_config(SMOKE, [])[1].estimator


def test_every_config_in_configs_parses_without_a_warning():
  """A user who runs a shipped config sees no warning (an included file's bindings of another estimator did)."""
  configs = sorted((pathlib.Path(SMOKE).parent).rglob("*.gin"))
  assert len(configs) >= 30
  for config in configs:
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      train, worker, _ = cli.parse_config(str(config), [])
    assert train.outer_steps >= 1 and worker.task, config


def test_presets_and_options_build_the_configured_learned_optimizer():
  from metatrain import learned_optimizers

  config = WorkerConfig(preset="adam_mup", options={"initial_alpha": 0.02}, width=8)
  learned = config.build_learned_optimizer()
  expected = {**learned_optimizers.PRESETS["adam_mup"], "initial_alpha": 0.02, "width": 8}
  assert all(getattr(learned, name) == value for name, value in expected.items())
  assert learned.reference_fan_in == (1, 64, 1, 32)  # mlp_fashion8's fan-ins, leaf by leaf
  assert WorkerConfig.from_json(config.to_json()) == config
  with pytest.raises(ValueError, match="unknown preset 'best'"):
    WorkerConfig(preset="best")
  with pytest.raises(ValueError, match="unexpected keyword argument 'depth'"):
    WorkerConfig(options={"depth": 3}).build_learned_optimizer()
