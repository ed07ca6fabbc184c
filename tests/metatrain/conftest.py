"""Fixtures shared by the metatrain tests: one smoke meta-training run per session."""

import pathlib
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.gin")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
  """``configs/smoke.gin`` meta-trained in this process (4 outer steps, seconds).

  Returns:
    A namespace: ``workdir``, the final ``theta`` the run returned, and its ``train`` and ``worker`` configs.
  """
  from metatrain import cli
  from metatrain.runtime.train import train

  workdir = tmp_path_factory.mktemp("smoke")
  train_config, worker_config, operative = cli.parse_config(SMOKE, ["TrainConfig.use_ray = False"])
  theta, _ = train(train_config, worker_config, workdir, operative_config=operative)
  return types.SimpleNamespace(workdir=workdir, theta=theta, train=train_config, worker=worker_config)
