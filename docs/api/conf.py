"""Sphinx configuration of the docs site (``make docs``, built into ``build/docs``): the guide and the API.

Each package's page is written by the ``public-modules`` directive below: the
package docstring, a table of its public API (``__all__``), then one section per
public module found on disk (``automodule`` with ``:members:``), so the pages
follow the code without listing its modules or functions by hand.

Objects are documented where they are defined (``unf.space.WeightSpace``), the
documented ones only (a module constant needs a ``#:`` comment or a docstring
for a ``:data:`` reference to find it); references to their public names
(``unf.WeightSpace``, or ``WeightSpace`` inside ``unf``) resolve to that same
object where it is documented (``_resolve_public_name``). Names from the
standard library and third-party packages (jax, flax, optax, ...) are not
linked: intersphinx would need the network at build time, so nitpicky mode
ignores them.
"""

import importlib
import pkgutil
import sys
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
logger = logging.getLogger(__name__)

project = "unf-metatrain"
author = "unf-metatrain authors"
copyright = "2024, unf-metatrain authors"  # noqa: A001 - the name Sphinx reads

# The guide (guide/*.md: the reference the README points to) is Markdown, read by MyST; tests/test_readme.py
# runs its examples and parses its commands as it does the README's.
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
html_theme = "alabaster"

autodoc_member_order = "bysource"
autosummary_generate = False  # summary tables only: the pages are written by `public-modules`
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

nitpicky = True
UNLINKED = [*sorted(sys.stdlib_module_names), "jax", "jaxlib", "flax", "nnx", "optax", "numpy", "np", "ray", "gin"]
UNLINKED += ["orbax", "tensorboardX", "scipy", "etils", "epath"]
nitpick_ignore_regex = [(r"py:.*", rf"({'|'.join(UNLINKED)})(\..*)?")]


def public_modules(package, onerror):
  """The names of a package's public modules and subpackages, recursively, in sorted order.

  A module is public when no part of its dotted name starts with an underscore.
  ``onerror(name)`` is called, inside the ``except``, for a subpackage that fails to import.
  """
  found = pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.", onerror=onerror)
  return sorted(info.name for info in found if not any(part.startswith("_") for part in info.name.split(".")))


class PublicModules(SphinxDirective):
  """``.. public-modules:: PACKAGE``: the package's API table, then a section per public module."""

  required_arguments = 1

  def run(self):
    name = self.arguments[0]
    try:
      package = importlib.import_module(name)
    except Exception as error:  # a warning like any other, so that the build reports every problem
      logger.warning(f"public-modules: cannot import {name}: {error!r}", location=self.get_location())
      return []

    def onerror(module_name):
      error = sys.exc_info()[1]
      logger.warning(f"public-modules: cannot import {module_name}: {error!r}", location=self.get_location())

    lines = [f".. automodule:: {name}", ""]
    if getattr(package, "__all__", None):
      lines += [".. rubric:: Public API", "", ".. autosummary::", ""]
      lines += [f"   {member}" for member in package.__all__] + [""]
    for module_name in public_modules(package, onerror):
      lines += [f"``{module_name}``", "-" * (len(module_name) + 4), ""]
      lines += [f".. automodule:: {module_name}", "   :members:"]
      if hasattr(sys.modules.get(module_name), "__path__"):  # a subpackage (imported by the walk)
        lines.append("   :ignore-module-all:")  # its own objects; its re-exports have their own sections
      lines.append("")
    container = nodes.section()
    nested_parse_with_titles(self.state, StringList(lines, source=f"public-modules:{name}"), container)
    return container.children


def _import(dotted):
  """The object at a dotted path (``unf.WeightSpace``), or None."""
  parts = dotted.split(".")
  for split in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:split]))
    except ImportError:
      continue
    for attribute in parts[split:]:
      obj = getattr(obj, attribute, None)
    return obj
  return None


def _resolve_public_name(app, env, node, contnode):
  """Resolves a reference to a public name (``unf.WeightSpace``) to where that same object is documented."""
  if node.get("refdomain") != "py":
    return None
  target, context = node["reftarget"], node.get("py:module")
  name = target.rpartition(".")[2]
  py = env.get_domain("py")
  for candidate in ([f"{context}.{target}"] if context else []) + [target]:
    obj = _import(candidate)
    if obj is None:
      continue
    for documented in py.objects:
      if documented != candidate and documented.rpartition(".")[2] == name and _import(documented) is obj:
        node = node.deepcopy()
        node["reftarget"] = documented
        return py.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], documented, node, contnode)
  return None


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """Leaves out NamedTuple fields ("Alias for field number 0"): the class's Attributes section documents them."""
  if isinstance(getattr(obj, "__doc__", None), str) and obj.__doc__.startswith("Alias for field number"):
    return True
  return None


def setup(app):
  app.add_directive("public-modules", PublicModules)
  app.connect("missing-reference", _resolve_public_name)
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)
