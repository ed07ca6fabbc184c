"""Shared fixtures: a PRNG key per test, and one local Ray for the whole session.

Every process of the session (this one, pytest-xdist's workers, which inherit
its environment, subprocesses, Ray actors) shares one JAX persistent
compilation cache in a temporary folder, removed at the end: the same small
programs compile once per session, and no test writes to the user's own cache
folder. Under ``make test`` every xdist worker starts its own local Ray.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# JAX's own threshold (programs compiled in over a second) in this process, which the main job would
# otherwise lower to 0 for the rest of the session: writing every small test program costs minutes.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# `make test` (CI) runs hypothesis derandomized, so that a failure reproduces on the next run; plain
# `pytest` draws new examples each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def key():
  """A fresh, fixed PRNG key: every test is reproducible."""
  return jax.random.key(0)


@pytest.fixture
def float64():
  """float64 for the test (tight tolerances against independent computations), float32 again after it."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="session")
def jax_cache_env():
  """Environment variables that give worker processes the session's JAX compilation cache.

  Every compile is cached, so workers with the same config compile once per
  session, not once each (a worker's first estimate: ~12 s -> ~1 s).

  Returns:
    A dict of environment variables (the folder is ``JAX_COMPILATION_CACHE_DIR``).
  """
  return {
    "JAX_COMPILATION_CACHE_DIR": os.environ["JAX_COMPILATION_CACHE_DIR"],
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }


@pytest.fixture(scope="session")
def ray_session(jax_cache_env):
  """One local Ray (2 CPUs, no dashboard) per session and per xdist worker (starting Ray takes seconds and ~0.7 GB).

  Its temp files go to a fresh folder under /tmp (pytest's can be too deep for
  Ray's socket paths, 107 bytes at most), removed at the end; actors share the
  session's JAX compilation cache.

  Returns:
    The ``ray`` module, initialised.
  """
  import ray

  temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
  try:
    ray.init(
      num_cpus=2,
      include_dashboard=False,
      _temp_dir=temp_dir,
      runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", **jax_cache_env}},
    )
    yield ray
  finally:
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
