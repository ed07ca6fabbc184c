"""Package-level contracts: the public API and dependency direction."""

import subprocess
import sys

import unf


def test_import_unf_does_not_import_ray_gin_or_tensorflow():
  code = "import sys, unf; print(sorted(m for m in ('ray', 'gin', 'tensorflow', 'torch') if m in sys.modules))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[]"


def test_public_api_is_exported_and_documented():
  for name in unf.__all__:
    obj = getattr(unf, name)
    assert obj.__doc__ and obj.__doc__.strip(), f"unf.{name} has no docstring"
