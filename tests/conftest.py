"""Shared fixtures: a PRNG key per test, and one local Ray for the whole session."""

import os
import shutil

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
  """A fresh, fixed PRNG key: every test is reproducible."""
  return jax.random.key(0)


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
  """A JAX persistent compilation cache for the session: workers with one config compile once, not once each."""
  return str(tmp_path_factory.mktemp("jax-cache"))


def jax_cache_env(cache_dir: str) -> dict[str, str]:
  """Environment variables that turn on JAX's persistent compilation cache in ``cache_dir`` for every compile."""
  return {
    "JAX_COMPILATION_CACHE_DIR": cache_dir,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory, jax_cache_dir):
  """One local Ray (2 CPUs, no dashboard) for the whole session (starting Ray takes seconds and ~0.7 GB).

  Its temp files live under pytest's temp folder and are removed at the end;
  actors share the session's JAX compilation cache.

  Returns:
    The ``ray`` module, initialised.
  """
  import ray

  temp_dir = str(tmp_path_factory.mktemp("ray"))  # short: Ray's socket paths must stay under 107 bytes
  ray.init(
    num_cpus=2,
    include_dashboard=False,
    _temp_dir=temp_dir,
    runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", **jax_cache_env(jax_cache_dir)}},
  )
  yield ray
  ray.shutdown()
  shutil.rmtree(temp_dir, ignore_errors=True)
