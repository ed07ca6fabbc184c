"""Shared fixtures: a PRNG key per test (Ray's session fixture comes with the distributed issue)."""

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
  """A fresh, fixed PRNG key: every test is reproducible."""
  return jax.random.key(0)
