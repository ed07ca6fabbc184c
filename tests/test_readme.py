"""The README and the guide are true: examples run, commands parse, the set-up is CI's, the layout is the tree.

The README is the door (under 400 lines); the guide (docs/api/guide/*.md, pages of the docs site) holds the
reference. Both are checked alike: their examples, their commands and their links.
"""

import pathlib
import re
import shlex
import shutil
import subprocess

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "api" / "guide"
PAGES = (README, *sorted(GUIDE.glob("*.md")))
README_LINES = 400


def _blocks(language, pages=PAGES):
  """The fenced code blocks in ``language`` ("" for a plain fence) of ``pages``, in order."""
  blocks, current, opened = [], None, None
  for line in (line for page in pages for line in page.read_text().splitlines()):
    if current is None and line.startswith("```"):
      current, opened = [], line[3:].strip()
    elif current is not None and line.strip() == "```":
      if opened == language:
        blocks.append("\n".join(current) + "\n")
      current = None
    elif current is not None:
      current.append(line)
  return blocks


def _block_with(text, language="python"):
  (block,) = [b for b in _blocks(language) if text in b]
  return block


def _section(title, page=README):
  """The text of the section ``## title`` of ``page`` (up to the next ``## ``)."""
  match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", page.read_text(), flags=re.S | re.M)
  assert match, f"{page.name} has no section '## {title}'"
  return match.group(1)


def test_quick_start_runs():
  namespace = {}
  exec(_blocks("python", [README])[0], namespace)  # noqa: S102 - the README's own code
  assert namespace["update"]["layers"][0]["kernel"].shape == (64, 32, 1)
  assert namespace["score"].shape == (1,)
  assert jnp.all(jnp.isfinite(namespace["score"]))


def test_tasks_example_runs():
  namespace = {}
  exec(_block_with("def train_step(task"), namespace)  # noqa: S102 - the README's own code
  assert jnp.isfinite(namespace["loss"]) and namespace["task"].name == "mlp_fashion8"


def test_the_whole_path_meta_train_load_and_train_your_own_model_runs():
  """Meta-train, load for a user's wider flax MLP (other leaf names), train it in a plain optax loop."""
  namespace = {}
  try:
    exec(_block_with("metatrain.load_learned_optimizer(workdir"), namespace)  # noqa: S102 - the README's own code
    import unf

    params = namespace["params"]
    assert namespace["lopt"].space == unf.mlp_space(params) and params["layers"][2]["kernel"].shape == (128, 10)
    # The model trained: its loss on a fresh batch is below that of the model at initialisation (about 2.3).
    x, y = namespace["data"].sample_batch(jax.random.key(123))
    import optax

    def loss(params):
      logits = namespace["nnx"].merge(namespace["graphdef"], params)(x.reshape(len(x), -1))
      return float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())

    initial = namespace["nnx"].to_pure_dict(namespace["state"])
    assert loss(params) < loss(initial) - 0.3, (loss(initial), loss(params))
  finally:
    if "workdir" in namespace:
      shutil.rmtree(namespace["workdir"], ignore_errors=True)


def test_in_process_metatrain_example_runs():
  namespace = {}
  exec(_block_with("metatrain.outer_loop("), namespace)  # noqa: S102 - the README's own code
  assert len(namespace["history"]) == 5 and jnp.isfinite(namespace["history"][-1]["meta_loss"])
  assert all(jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(namespace["params"]))


def test_the_set_up_commands_are_the_makefile_targets_ci_runs():
  (setup,) = [b for b in _blocks("bash", [README]) if "make run" in b and "make test" in b]
  commands = [line.split("#")[0].strip() for line in setup.strip().splitlines()]
  assert commands == ["make run", "make test"]
  for target in ("run", "test", "lint", "docs", "lock"):  # the targets the README names
    dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, f"make {target}: {dry.stderr}"
  ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
  assert ci[-1] == "make test"


def _shell_commands():
  """Every command of the bash blocks of the README and the guide, continuation lines joined, comments dropped."""
  commands = []
  for block in _blocks("bash"):
    text = re.sub(r"\\\n\s*", " ", block)
    for line in text.splitlines():
      line = line.split("  #")[0].strip()
      if line and not line.startswith("#"):
        commands.append(shlex.split(line))
  return commands


def test_every_metatrain_command_in_the_readme_and_the_guide_parses():
  """Flags parse, configs exist and their gin bindings (with the README's overrides) give valid configs."""
  from metatrain import cli

  seen = 0
  for argv in _shell_commands():
    if not argv[0].endswith("metatrain"):
      continue
    seen += 1
    args = cli.build_parser().parse_args(argv[1:])
    if args.command == "train":
      train, worker, _ = cli.parse_config(str(ROOT / args.config), args.gin_bindings)
      assert train.outer_steps >= 1 and worker.task
  assert seen >= 4


def test_every_experiment_command_in_the_readme_and_the_guide_parses():
  from experiments.rnn_zoo.main import build_parser

  commands = [argv for argv in _shell_commands() if argv[:3] == [".venv/bin/python", "-m", "experiments.rnn_zoo"]]
  assert {argv[3] for argv in commands} == {"generate", "arithmetic", "predict"}
  for argv in commands:
    build_parser().parse_args(argv[3:])


def _layout_folders():
  """The folders the Layout block names: ``name/`` at the start of a line; indented by two, inside the last one."""
  folders, parent = set(), ""
  for line in _block_with("unf/", language="").splitlines():
    match = re.match(r"^( {0,2})([\w-]+(?:/[\w-]+)*/)(\s|$)", line)
    if match:
      indent, name = match.group(1), match.group(2)
      parent = name if not indent else parent
      path = name if not indent else parent + name
      parts = path.rstrip("/").split("/")
      folders |= {"/".join(parts[: k + 1]) + "/" for k in range(len(parts))}  # experiments/rnn_zoo/ names both
  return folders


def test_the_layout_section_is_the_tree():
  named = _layout_folders()
  assert {"unf/", "metatrain/runtime/", "experiments/rnn_zoo/"} <= named
  for folder in named:
    assert (ROOT / folder).is_dir(), f"the guide's layout names {folder}, which does not exist"
  packages = {p.parent for p in ROOT.glob("*/__init__.py")} | {p.parent for p in ROOT.glob("*/*/__init__.py")}
  packages = {f"{p.relative_to(ROOT)}/" for p in packages if p.parts[len(ROOT.parts)] not in ("tests", "benchmarks")}
  assert packages <= named, f"the layout leaves out {sorted(packages - named)}"


@pytest.mark.parametrize(
  ("page", "title"),
  [
    (README, "Set-up: two commands"),
    (README, "Quick start"),
    (README, "Any model"),
    (README, "Results at a glance"),
    (README, "Where the rest is"),
    (GUIDE / "development.md", "Tests"),
    (GUIDE / "development.md", "Layout"),
  ],
)
def test_the_pages_have_their_sections(page, title):
  assert _section(title, page).strip()


def test_the_readme_is_a_door():
  """Under 400 lines, and it links every page of the guide (the guide is in the docs site's toctree: -W)."""
  lines = len(README.read_text().splitlines())
  assert lines < README_LINES, f"README.md has {lines} lines; move reference material into docs/api/guide/"
  linked = set(re.findall(r"\]\(docs/api/guide/(\w+\.md)\)", README.read_text()))
  assert linked == {page.name for page in PAGES[1:]}


def test_every_code_fence_closes():
  for page in PAGES:
    fences = [n for n, line in enumerate(page.read_text().splitlines(), 1) if line.startswith("```")]
    assert len(fences) % 2 == 0, f"{page.relative_to(ROOT)}: a code fence opened at line {fences[-1]} never closes"


def test_every_relative_link_and_image_exists():
  for page in PAGES:
    for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
      if "://" not in target:
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"


def test_benchmark_tables_name_existing_benchmarks():
  for module in set(re.findall(r"python -m (benchmarks\.\w+)", " ".join(p.read_text() for p in PAGES))):
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


def test_the_shipped_optimizer_example_runs():
  """A shipped optimizer, loaded by name for a 4x wider MLP, trains it in a plain optax loop (and so does Adam)."""
  namespace = {}
  exec(_block_with('metatrain.load_learned_optimizer("mlp_fashion8_unf"'), namespace)  # noqa: S102 - the README's own code
  initial = float(namespace["loss"](namespace["initial"], *namespace["data"].eval_batch("test", 10_000)))
  assert initial > 2.0  # about ln(10) at initialisation
  for name in ("learned", "adam"):
    assert namespace[name] < initial - 1.5, (name, namespace[name])
  assert namespace["lopt"].space == namespace["unf"].mlp_space(namespace["initial"])


def test_any_model_example_infers_the_residual_space_and_runs_a_learned_optimizer():
  namespace = {}
  exec(_section("Any model").split("```python")[1].split("```")[0], namespace)  # noqa: S102 - the README's own code
  space = namespace["space"]
  assert space.spec() == {
    "down": ("up:1", "embed:1"),
    "embed": (None, "embed:1"),
    "head": ("embed:1", None),
    "norm": ("embed:1",),
    "up": ("embed:1", "up:1"),
  }
  assert namespace["why"] == (None, "an axis of the outputs")
  assert jnp.all(jnp.isfinite(namespace["params"]["up"]))
