"""SIGTERM (preemption) and Ctrl-C of `metatrain train` in one process: a checkpoint of the current step,
status 75 (SIGTERM) or 130 (Ctrl-C), exact resume; a second Ctrl-C during that checkpoint stops at once.

The same on a multi-node Ray, with SIGKILLs and worker kills besides, is the
chaos soak of ``test_cluster_faults.py``.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from metatrain import cli, loading
from metatrain.exit_status import INTERRUPTED_EXIT_STATUS, PREEMPTED_EXIT_STATUS

ROOT = pathlib.Path(__file__).resolve().parents[3]
SMOKE = str(ROOT / "configs" / "smoke.gin")
BINDINGS = ["TrainConfig.use_ray = False", "TrainConfig.outer_steps = 40", "TrainConfig.checkpoint_every = 1000"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The run without a stop, once for the module: what every resumed run must end at."""
  folder = tmp_path_factory.mktemp("straight")
  assert cli.main(["train", "--config", SMOKE, "--workdir", str(folder), "--gin_bindings", *BINDINGS]) == 0
  return loading.load(folder)


def _start(tmp_path, jax_cache_env, bindings, **env_vars):
  workdir, log = tmp_path / "stopped", tmp_path / "applied.jsonl"
  command = [sys.executable, "-m", "tests.metatrain.runtime.recorded_train", str(log), "train", "--config", SMOKE]
  command += ["--workdir", str(workdir), "--gin_bindings", *bindings]
  env = {**os.environ, **jax_cache_env, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), **env_vars}
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  return process, workdir, log


def _wait_for(log, steps, process, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and process.poll() is None:
    if log.exists() and len(log.read_text().splitlines()) >= steps:
      return
    time.sleep(0.02)
  raise AssertionError(f"the run did not reach {steps} steps: {process.communicate()[1][-3000:]}")


@pytest.mark.parametrize(
  ("signum", "status", "said"),
  [
    (signal.SIGTERM, PREEMPTED_EXIT_STATUS, "stopped by SIGTERM at outer step"),
    (signal.SIGINT, INTERRUPTED_EXIT_STATUS, "stopped by Ctrl-C (SIGINT) at outer step"),
  ],
)
def test_a_stop_signal_checkpoints_the_current_step_and_the_restart_resumes_exactly(
  tmp_path, jax_cache_env, straight, signum, status, said
):
  process, workdir, log = _start(tmp_path, jax_cache_env, BINDINGS)
  _wait_for(log, 12, process)
  sent = time.monotonic()
  process.send_signal(signum)
  _, err = process.communicate(timeout=60)
  assert process.returncode == status, err[-3000:]
  assert time.monotonic() - sent < 20  # bounded: the estimate in progress, then one save
  applied = len(log.read_text().splitlines())
  assert 12 <= applied < 40
  assert said in err
  assert "KeyboardInterrupt" not in err  # Ctrl-C is a stop like SIGTERM, not a traceback
  loaded = loading.load(workdir)
  assert loaded.step == applied  # the step it was on, not the last periodic checkpoint (there was none)
  assert (workdir / "checkpoints" / str(applied) / "particles").is_dir()  # the inner runs, for an exact resume
  assert cli.main(["train", "--config", SMOKE, "--workdir", str(workdir), "--gin_bindings", *BINDINGS]) == 0
  resumed = loading.load(workdir)
  assert resumed.step == straight.step == 40
  for a, b in zip(jax.tree.leaves(resumed.theta), jax.tree.leaves(straight.theta), strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_second_ctrl_c_during_the_checkpoint_stops_at_once_and_keeps_the_previous_one(tmp_path, jax_cache_env):
  armed = tmp_path / "armed"
  first = [*BINDINGS[:1], "TrainConfig.outer_steps = 10"]
  process, workdir, log = _start(tmp_path, jax_cache_env, first)
  assert process.wait(timeout=300) == 0, process.communicate()[1][-3000:]
  assert loading.load(workdir).step == 10  # the previous checkpoint
  process, workdir, log = _start(tmp_path, jax_cache_env, BINDINGS, SLOW_SAVE=str(armed))
  _wait_for(log, 14, process)  # resumed from 10, and on
  armed.write_text("armed")  # the next save (the stop's checkpoint) takes 30 s: the second Ctrl-C lands in it
  process.send_signal(signal.SIGINT)
  deadline = time.monotonic() + 60
  while not armed.with_suffix(".saving").exists() and time.monotonic() < deadline and process.poll() is None:
    time.sleep(0.02)
  assert armed.with_suffix(".saving").exists(), process.communicate()[1][-3000:]
  sent = time.monotonic()
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=60)
  assert process.returncode == INTERRUPTED_EXIT_STATUS, err[-3000:]
  assert time.monotonic() - sent < 20  # not the 30 s the save would have taken
  assert "stopped at once by Ctrl-C" in err
  applied = len(log.read_text().splitlines())
  assert applied > 10
  folder = workdir / "checkpoints"
  assert not (folder / str(applied)).exists()  # the interrupted checkpoint is gone, not left half-written
  assert not list(folder.glob("*.orbax-checkpoint-tmp*"))
  assert loading.load(workdir).step == 10  # the previous checkpoint, intact
