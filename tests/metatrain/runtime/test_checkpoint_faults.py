"""Damaged checkpoints, a full disk, and workdirs given as ``epath`` paths, through ``metatrain train``.

One real run (``configs/smoke.gin`` in this process, 8 outer steps, a
checkpoint each step: 6, 7 and 8 kept) is copied and damaged by each test; a
resume must skip the damaged checkpoint with a one-line warning, move it
aside, and retrace the run from the one before it to the same theta.
"""

import contextlib
import logging
import os
import pathlib
import shutil
import subprocess

import jax
import numpy as np
import pytest
from etils import epath

from metatrain import cli, loading
from metatrain.exit_status import SAVE_FAILED_EXIT_STATUS
from metatrain.runtime import checkpoint
from metatrain.runtime.train import train

# A damaged checkpoint is found by its listed file sizes before orbax reads it: a restore failing part-way
# left tensorstore reads that raised "Event loop is closed" later, into whichever test ran then.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

SMOKE = str(pathlib.Path(__file__).resolve().parents[3] / "configs" / "smoke.gin")
BINDINGS = ["TrainConfig.use_ray = False", "TrainConfig.outer_steps = 8", "TrainConfig.checkpoint_every = 1"]


def _train(workdir, *bindings: str) -> int:
  return cli.main(["train", "--config", SMOKE, "--workdir", str(workdir), "--gin_bindings", *BINDINGS, *bindings])


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """The run of 8 steps: ``(workdir, theta at step 8)``."""
  workdir = tmp_path_factory.mktemp("finished")
  assert _train(workdir) == 0
  assert checkpoint.Checkpoints(workdir).steps() == [6, 7, 8]
  return workdir, loading.load(workdir).theta


def _biggest(folder: pathlib.Path) -> pathlib.Path:
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _cut(path: pathlib.Path) -> str:
  size = path.stat().st_size
  path.write_bytes(path.read_bytes()[:10])  # as a full disk or a killed copy leaves it
  return f"is cut short (10 of {size} bytes)"


def _remove(path: pathlib.Path) -> str:
  path.unlink()
  return "is missing"


@pytest.mark.parametrize(
  "damage, pick",
  [
    (_cut, lambda step: _biggest(step / "state" / "d")),  # the arrays of theta
    (_remove, lambda step: step / "state" / "_METADATA"),
    (_cut, lambda step: step / "state" / "manifest.ocdbt"),
  ],
  ids=["array-cut", "metadata-removed", "manifest-cut"],
)
def test_a_damaged_checkpoint_is_moved_aside_and_the_run_goes_on_past_it(finished, tmp_path, caplog, damage, pick):
  workdir = shutil.copytree(finished[0], tmp_path / "run")
  latest = workdir / "checkpoints" / "8"
  path = pick(latest)
  what = damage(path)
  damaged = {p.relative_to(latest): p.read_bytes() for p in latest.rglob("*") if p.is_file()}
  with caplog.at_level(logging.WARNING, logger="metatrain.runtime.checkpoint"):
    assert _train(workdir) == 0  # resumes from 7, computes step 8 again, saves it
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1, warnings
  (warning,) = warnings
  assert "\n" not in warning and len(warning) < 400, warning
  assert f"checkpoint {latest} is damaged ({path.relative_to(latest)} {what})" in warning
  assert "moved to 8.corrupt; resuming from step 7" in warning
  # Moved aside, byte for byte, never deleted; the new checkpoint 8 is the uninterrupted run's.
  aside = workdir / "checkpoints" / "8.corrupt"
  assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == damaged
  loaded = loading.load(workdir)
  assert loaded.step == 8
  _assert_same(loaded.theta, finished[1])


def test_a_workdir_where_no_checkpoint_restores_stops_with_a_clear_error(finished, tmp_path, capsys):
  workdir = shutil.copytree(finished[0], tmp_path / "run")
  folders = [workdir / "checkpoints" / str(step) for step in (6, 7, 8)]
  whats = [_cut(_biggest(folder / "state" / "d")) for folder in folders]
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  capsys.readouterr()
  assert _train(workdir) == 2
  error = capsys.readouterr().err
  assert f"no checkpoint in {workdir / 'checkpoints'} restores" in error
  for folder, what in zip(folders, whats):
    assert f"{folder}: state/d/" in error and what in error
  assert "Nothing was changed" in error
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before  # nothing moved or written


@contextlib.contextmanager
def _tmpfs(folder: pathlib.Path, size: str):
  """A tmpfs of ``size`` mounted at ``folder`` (root only)."""
  folder.mkdir()
  subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
  try:
    yield folder
  finally:
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _resize(folder: pathlib.Path, size: str) -> None:
  subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI and make test run as root)")
def test_a_full_disk_stops_the_run_and_keeps_the_checkpoints_written(tmp_path, capsys):
  """Checkpoints every step, none deleted, on a 4 MB tmpfs: one save fails, the run stops with a clear error;
  with room made, the same command resumes from the latest checkpoint and ends the run."""
  with _tmpfs(tmp_path / "disk", "4m") as disk:
    workdir = disk / "run"
    bindings = ["TrainConfig.outer_steps = 60", "TrainConfig.keep_checkpoints = 100"]
    capsys.readouterr()
    assert _train(workdir, *bindings) == SAVE_FAILED_EXIT_STATUS
    error = capsys.readouterr().err.strip().splitlines()[-1]
    written = checkpoint.Checkpoints(workdir).steps()
    assert written and written == list(range(1, written[-1] + 1))
    assert f"metatrain: checkpoint {written[-1] + 1} could not be written in {workdir / 'checkpoints'}" in error
    assert "No space left on device" in error and f"the checkpoint of step {written[-1]} is intact" in error
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == sorted(str(s) for s in written)
    before = loading.load(workdir)
    assert before.step == written[-1]
    _resize(disk, "64m")
    assert _train(workdir, *bindings) == 0
    assert loading.load(workdir).step == 60
  assert written[-1] < 60


def test_a_workdir_given_as_an_epath_is_used_through_epath(tmp_path):
  """The code path of ``gs://`` workdirs, on a local folder: ``epath.Path`` in, ``epath.Path`` out."""
  from metatrain.runtime.config import TrainConfig, WorkerConfig

  train_config, worker_config, _ = cli.parse_config(SMOKE, ["TrainConfig.use_ray = False"])
  assert isinstance(train_config, TrainConfig) and isinstance(worker_config, WorkerConfig)
  workdir = epath.Path(tmp_path) / "run"
  theta, _ = train(train_config, worker_config, workdir)
  loaded = loading.load(workdir)
  assert isinstance(loaded.path, epath.Path) and loaded.path == workdir / "checkpoints" / "4"
  _assert_same(loaded.theta, theta)
  assert str(loading.as_path("gs://bucket/run")) == "gs://bucket/run"  # a URL is left as it is
  assert loading.as_path("relative") == epath.Path(pathlib.Path("relative").absolute())
