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
  "ray": {"metatrain/runtime/ray_pool.py", "metatrain/runtime/ray_nodes.py"},
  "orbax": {"metatrain/runtime/checkpoint.py", "metatrain/loading.py"},
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


# --- no import cycles --------------------------------------------------------------------------------------

# The packages whose modules import each other without a cycle.
ACYCLIC = ("unf", "tasks", "metatrain")


def module_files(root, packages):
  """``{dotted name: path}`` of every module of ``packages`` under ``root`` (a package by its ``__init__.py``)."""
  found = {}
  for package in packages:
    for path in sorted((root / package).rglob("*.py")):
      parts = path.relative_to(root).with_suffix("").parts
      found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return found


def _is_type_checking(test):
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
  )


def _import_statements(nodes, when="module"):
  """``(statement, when)`` for each import among ``nodes``: when the module is imported (``"module"``, class
  bodies and ``try``/``with``/``if`` blocks included), when a function runs (``"function"``), or never
  (``"typing"``: under ``if TYPE_CHECKING:``)."""
  for node in nodes:
    if isinstance(node, ast.Import | ast.ImportFrom):
      yield node, when
    elif isinstance(node, ast.If) and _is_type_checking(node.test):
      yield from _import_statements(node.body, "typing")
      yield from _import_statements(node.orelse, when)
    else:
      in_function = when == "module" and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
      yield from _import_statements(ast.iter_child_nodes(node), "function" if in_function else when)


def import_graph(modules):
  """The imports between ``modules`` (:func:`module_files`): ``{when: {module: {imported module: line}}}``.

  ``import a.b`` and ``from a import b`` (``b`` a module) import ``a.b``; ``from a.b import name`` (``name``
  not a module) imports ``a.b``; relative imports are resolved. The parent packages that Python imports
  first (``a`` for ``a.b``) are not edges: a package's ``__init__`` that imports its own modules is no cycle
  (they find it in ``sys.modules``), while ``from a import name`` of a name ``a/__init__.py`` defines is one.
  """
  graph = {"module": {}, "function": {}, "typing": {}}
  for name, path in modules.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node, when in _import_statements(ast.parse(path.read_text()).body):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      else:
        base = node.module or ""
        if node.level:
          parts = package.split(".")
          base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
      for target in targets:
        if target in modules and target != name:
          graph[when].setdefault(name, {}).setdefault(target, node.lineno)
  return graph


def _path(graph, start, goal):
  """The shortest chain of imports ``[start, ..., goal]`` in ``graph`` (None if there is none)."""
  previous, frontier = {start: None}, [start]
  while frontier:
    following = []
    for module in frontier:
      for target in sorted(graph.get(module, {})):
        if target == goal:
          chain = [goal, module]
          while previous[chain[-1]] is not None:
            chain.append(previous[chain[-1]])
          return chain[::-1]
        if target not in previous:
          previous[target] = module
          following.append(target)
    frontier = following
  return None


def import_cycles(graph):
  """One shortest cycle ``[a, b, ..., a]`` through the first module of each strongly connected component of
  ``graph`` (``{module: {imported module: line}}``) that holds more than one module."""
  reaches = {module: set() for module in graph}
  for module in graph:  # a few hundred modules: a search from each is quick
    frontier = [module]
    while frontier:
      for target in graph.get(frontier.pop(), {}):
        if target not in reaches[module]:
          reaches[module].add(target)
          frontier.append(target)
  # A module's component: the modules it reaches that reach it back (none when it is on no cycle).
  components = {frozenset(m for m in reaches[module] if module in reaches.get(m, ())) for module in graph}
  return [_path(graph, min(c), min(c)) for c in sorted(components - {frozenset()}, key=min)]


def _chain(modules, graph, chain):
  """``a (a/file.py:LINE) -> b (...) -> c``: each import of the chain of modules, with where it is."""
  steps = [f"{a} ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(chain, chain[1:])]
  return " -> ".join([*steps, chain[-1]])


def test_no_import_cycles():
  """The module-level imports of ``unf``, ``tasks`` and ``metatrain`` form no cycle (one imports a module
  half-initialised, and which half depends on which module was imported first)."""
  modules = module_files(ROOT, ACYCLIC)
  graph = import_graph(modules)["module"]
  cycles = import_cycles(graph)
  assert not cycles, "import cycles:\n" + "\n".join(_chain(modules, graph, cycle) for cycle in cycles)


def hidden_cycles(graph):
  """``(module, line, cycle)`` for each import inside a function that closes a cycle of module-level imports."""
  found = []
  for module, targets in sorted(graph["function"].items()):
    for target, line in sorted(targets.items()):
      if chain := _path(graph["module"], target, module):
        found.append((module, line, [module, *chain]))
  return found


def test_no_import_cycle_is_hidden_inside_a_function():
  """An import inside a function defers loading a module (a heavy framework), never a cycle: the module it
  imports does not import the function's module back, at module level, through any chain."""
  modules = module_files(ROOT, ACYCLIC)
  graph = import_graph(modules)
  problems = [
    f"{modules[module].relative_to(ROOT)}:{line} imports {cycle[1]} inside a function, which imports it back: "
    + _chain(modules, graph["module"], cycle[1:])
    for module, line, cycle in hidden_cycles(graph)
  ]
  assert not problems, "\n".join(problems)


def test_the_cycle_checks_can_fail(tmp_path):
  files = {
    "__init__.py": "from pkg.a import x\n",  # the package's own modules: pkg.a needs pkg only as its parent
    "a.py": "import pkg.b\nx = 1\n",
    "b.py": "from . import c\n",
    "c.py": "from typing import TYPE_CHECKING\nfrom .a import x\nif TYPE_CHECKING:\n  from pkg import d\n",
    "d.py": "import pkg.c\n\ndef f():\n  from pkg.e import y\n",
    "e.py": "try:\n  from pkg.d import f\nexcept ImportError:\n  f = 0\nclass E:\n  def g(self):\n    import pkg.a\n",
  }
  (tmp_path / "pkg").mkdir()
  for name, text in files.items():
    (tmp_path / "pkg" / name).write_text(text)
  graph = import_graph(module_files(tmp_path, ["pkg"]))
  assert import_cycles(graph["module"]) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
  assert graph["typing"] == {"pkg.c": {"pkg.d": 4}}  # c -> d -> c is for type checkers only: no cycle
  # d -> e inside f while e -> d at module level: hidden; e -> a inside a method: a does not import e back.
  assert graph["function"] == {"pkg.d": {"pkg.e": 4}, "pkg.e": {"pkg.a": 7}}
  assert hidden_cycles(graph) == [("pkg.d", 4, ["pkg.d", "pkg.e", "pkg.d"])]
