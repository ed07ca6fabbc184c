"""JAX's persistent compilation cache for the main job: this process's, and the environment its workers get.

The folder is :meth:`metatrain.runtime.config.TrainConfig.compilation_cache_dir`. The learner's process
turns the cache on with :func:`enable_compilation_cache`; Ray workers and the evaluation actor, separate
processes, get it through their environment (:func:`cache_env`), which JAX reads when it is imported.
"""

from __future__ import annotations

import os

import jax


def enable_compilation_cache(folder: str | None) -> str | None:
  """Points this process's JAX at the persistent compilation cache ``folder`` (None: leaves JAX as it is).

  Every program is cached, however short its compilation (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``
  overrides it): the many small programs of a start-up (initialising theta and the particles, the
  learner's first step) add up to seconds. Measured on ``configs/default.gin``, 2 cores: one worker's
  start-up up to its first estimate took 13 s with JAX's default threshold (1 s) and 6 s with none.

  Args:
    folder: the cache folder (created if missing), or None.

  Returns:
    ``folder``, for the workers' environment (:func:`cache_env`).
  """
  if folder is None:
    return None
  from jax.experimental.compilation_cache import compilation_cache

  os.makedirs(folder, exist_ok=True)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if jax.config.values.get("jax_compilation_cache_dir") != folder:
    jax.config.update("jax_compilation_cache_dir", folder)
    compilation_cache.reset_cache()  # a cache already set up (or off) in this process is re-read
  return folder


def cache_env(folder: str | None) -> dict[str, str] | None:
  """The environment variables that give a worker process the compilation cache ``folder`` (None: none).

  The same settings as :func:`enable_compilation_cache`'s: every program cached, unless
  ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise in this process.

  Args:
    folder: the cache folder, or None.
  """
  if folder is None:
    return None
  threshold = os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  return {"JAX_COMPILATION_CACHE_DIR": folder, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": threshold}
