"""SIGTERM (preemption) of `metatrain train` in one process: a checkpoint of the current step, status 75, exact resume.

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

from metatrain import cli
from metatrain.runtime import checkpoint
from metatrain.runtime.train import PREEMPTED_EXIT_STATUS

ROOT = pathlib.Path(__file__).resolve().parents[3]
SMOKE = str(ROOT / "configs" / "smoke.gin")
BINDINGS = ["TrainConfig.use_ray = False", "TrainConfig.outer_steps = 40", "TrainConfig.checkpoint_every = 1000"]


def test_sigterm_checkpoints_the_current_step_and_the_restart_resumes_exactly(tmp_path, jax_cache_env):
  workdir, log = tmp_path / "preempted", tmp_path / "applied.jsonl"
  command = [sys.executable, "-m", "tests.metatrain.runtime.recorded_train", str(log), "train", "--config", SMOKE]
  command += ["--workdir", str(workdir), "--gin_bindings", *BINDINGS]
  env = {**os.environ, **jax_cache_env, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and process.poll() is None:
    if log.exists() and len(log.read_text().splitlines()) >= 12:
      break
    time.sleep(0.02)
  sent = time.monotonic()
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=60)
  assert process.returncode == PREEMPTED_EXIT_STATUS, err[-3000:]
  assert time.monotonic() - sent < 20  # bounded: the estimate in progress, then one save
  applied = len(log.read_text().splitlines())
  assert 12 <= applied < 40
  assert "stopped by SIGTERM at outer step" in err
  loaded = checkpoint.load(workdir)
  assert loaded.step == applied  # the step it was on, not the last periodic checkpoint (there was none)
  assert (workdir / "checkpoints" / str(applied) / "particles").is_dir()  # the inner runs, for an exact resume
  for folder in (workdir, tmp_path / "straight"):  # resume, then the run without the stop
    assert cli.main(["train", "--config", SMOKE, "--workdir", str(folder), "--gin_bindings", *BINDINGS]) == 0
  resumed, straight = checkpoint.load(workdir), checkpoint.load(tmp_path / "straight")
  assert resumed.step == straight.step == 40
  for a, b in zip(jax.tree.leaves(resumed.theta), jax.tree.leaves(straight.theta), strict=True):
    np.testing.assert_array_equal(a, b)
