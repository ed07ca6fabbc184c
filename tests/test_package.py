"""Package-level contracts: dependency direction, what imports what, and a documented public API."""

import ast
import importlib
import inspect
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("ray", "gin", "orbax", "tensorboardX", "tensorflow", "torch")
# The public namespaces whose API must be documented (their __all__).
PUBLIC = (
  "unf",
  "unf.testing",
  "tasks",
  "metatrain",
  "metatrain.learned_optimizers",
  "metatrain.estimators",
  "metatrain.evaluation",
  "metatrain.runtime",
)


@pytest.mark.parametrize("module", ["unf", "tasks", "metatrain", "metatrain.runtime", "experiments.rnn_zoo.zoo"])
def test_importing_a_package_loads_no_heavy_framework(module):
  """In a fresh interpreter: ray, gin, orbax, tensorboardX (and TensorFlow, PyTorch) stay unloaded."""
  code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == "[]", f"import {module} loaded {out.stdout.strip()}"


def _imports(path):
  """Top-level names of the modules a source file imports."""
  tree = ast.parse(path.read_text())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
  return names


# Each framework is imported by exactly these files (the thin layers around it).
ALLOWED = {
  "ray": {"metatrain/runtime/ray_pool.py"},
  "orbax": {"metatrain/runtime/checkpoint.py"},
  "tensorboardX": {"metatrain/runtime/summaries.py"},
  "gin": {"metatrain/cli.py"},
}


def test_frameworks_are_imported_by_their_one_thin_layer():
  sources = [p for package in ("unf", "tasks", "metatrain", "experiments") for p in (ROOT / package).rglob("*.py")]
  found = {name: set() for name in ALLOWED}
  for path in sources:
    for name in _imports(path) & set(ALLOWED):
      found[name].add(str(path.relative_to(ROOT)))
  assert found == ALLOWED


def test_dependency_direction():
  """``unf`` <- ``tasks`` <- ``metatrain`` <- ``experiments``: nothing imports a package to its right."""
  order = ["unf", "tasks", "metatrain", "experiments"]
  for rank, package in enumerate(order):
    for path in (ROOT / package).rglob("*.py"):
      later = _imports(path) & set(order[rank + 1 :])
      assert not later, f"{path.relative_to(ROOT)} imports {sorted(later)}"


# --- a documented public API -------------------------------------------------------------------------------


def _parameters(obj):
  target = obj.__init__ if inspect.isclass(obj) else obj
  if target is object.__init__:
    return []
  skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
  try:
    parameters = inspect.signature(target).parameters.values()
  except (TypeError, ValueError):
    return []
  return [p.name for p in parameters if p.name not in ("self", "cls") and p.kind not in skip]


def docstring_problems(name, obj):
  """What the docstring of a public function or class lacks: a one-line summary sentence, and an entry
  (``name:`` in Args or Attributes) for every parameter, unless it says ``Args: as ...``."""
  doc = inspect.getdoc(obj) or ""
  if not doc.strip():
    return [f"{name}: no docstring"]
  problems = []
  summary = doc.strip().splitlines()[0]
  if not summary.endswith((".", ":")):
    problems.append(f"{name}: the first line is not a one-line summary sentence: {summary!r}")
  if re.search(r"^Args: (as|see) ", doc, re.M):
    return problems
  for parameter in _parameters(obj):
    if not re.search(rf"^\s*([\w, ]+, )?{parameter}(, [\w, ]+)?( \(.*?\))?:", doc, re.M):
      problems.append(f"{name}: parameter {parameter!r} is not documented")
  return problems


def _public_objects():
  for module_name in PUBLIC:
    module = importlib.import_module(module_name)
    for name in module.__all__:
      obj = getattr(module, name)
      if inspect.isclass(obj) or inspect.isfunction(obj):
        yield f"{module_name}.{name}", obj


def test_public_api_is_documented():
  problems = []
  for name, obj in _public_objects():
    problems += docstring_problems(name, obj)
    if inspect.isclass(obj):  # its public methods and properties, defined on the class itself
      for attribute, member in vars(obj).items():
        function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if not attribute.startswith("_") and inspect.isfunction(function) and not inspect.getdoc(function):
          problems.append(f"{name}.{attribute}: no docstring")
  assert not problems, "\n".join(problems)


def test_the_docstring_check_can_fail():
  def undocumented(space, *, width=3):
    """Builds a thing."""

  def documented(space, *, width=3):
    """Builds a thing.

    Args:
      space: the space.
      width: its width.
    """

  assert docstring_problems("f", undocumented) == [
    "f: parameter 'space' is not documented",
    "f: parameter 'width' is not documented",
  ]
  assert docstring_problems("f", documented) == []
  assert docstring_problems("f", lambda: None) == ["f: no docstring"]
