"""The unf tests run in float64 so equivariance holds to tight tolerances."""

import pytest


@pytest.fixture(autouse=True)
def _every_unf_test_in_float64(float64):
  """``float64`` (tests/conftest.py) for every test here."""
  yield
