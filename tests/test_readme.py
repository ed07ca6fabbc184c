"""The README's quick start runs as written."""

import pathlib
import re

import jax
import jax.numpy as jnp

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_runs():
  namespace = {}
  exec(_python_blocks()[0], namespace)  # noqa: S102 - the README's own code
  assert namespace["update"]["layers"][0]["kernel"].shape == (64, 32, 1)
  assert namespace["score"].shape == (1,)
  assert jnp.all(jnp.isfinite(namespace["score"]))


def test_tasks_example_runs():
  (block,) = [b for b in _python_blocks() if "def train_step(" in b]
  namespace = {}
  exec(block, namespace)  # noqa: S102 - the README's own code
  assert jnp.isfinite(namespace["loss"]) and namespace["task"].name == "mlp_fashion8"


def test_metatrain_example_runs():
  (block,) = [b for b in _python_blocks() if "metatrain.train_local(" in b]
  namespace = {}
  exec(block, namespace)  # noqa: S102 - the README's own code
  assert len(namespace["history"]) == 5 and jnp.isfinite(namespace["history"][-1]["meta_loss"])
  assert all(jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(namespace["params"]))


def test_readme_names_the_two_setup_commands():
  text = README.read_text()
  assert "make run" in text and "make test" in text
