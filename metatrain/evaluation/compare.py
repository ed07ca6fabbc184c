"""``metatrain eval``: meta-trained optimizers against tuned Adam and SGD with momentum on a task.

Every optimizer trains the same fresh inner runs (evaluation seeds, never used
in meta-training or tuning: same initial params and batches for each
optimizer) for the same number of steps. The baselines' learning rates are
picked by grid search on the validation loss after the same number of steps,
with tuning seeds of their own. Outputs, in one folder:

- ``curves.csv``: every curve, one row per (optimizer, seed, step, split):
  ``train_batch`` (the loss of each step's training batch), ``train`` and
  ``valid`` (``task.eval_loss`` on a fixed batch of the split, every ``every`` steps);
- ``curves.png``: mean and standard error bands over seeds, log-scale loss;
- ``summary.md``: final and best train and valid loss per optimizer, mean +- standard error;
- ``tensorboard/``: the mean curves.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

import tasks
from metatrain.evaluation.baselines import adam, grid_search, sgdm
from metatrain.evaluation.curves import evaluation_curves
from metatrain.evaluation.stats import mean_se
from metatrain.learned_optimizers import LearnedOptimizer
from metatrain.runtime import checkpoint
from metatrain.runtime.summaries import write_series
from metatrain.types import Theta

#: Evaluation run ``i`` uses ``jax.random.key(EVAL_SEED + i)``.
EVAL_SEED = 10_000
#: Tuning run ``i`` uses ``jax.random.key(TUNE_SEED + i)``.
TUNE_SEED = 20_000
#: Adam's learning-rate grid.
ADAM_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: SGDM's learning-rate grid.
SGDM_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
SPLITS = ("train", "valid")


@dataclasses.dataclass
class Curves:
  """One optimizer's runs on a task.

  Attributes:
    name: the optimizer's label.
    learning_rate: the tuned rate of a baseline (None for a learned optimizer).
    batch: training batch losses, shape ``(seeds, steps)``.
    evals: ``{"train": (seeds, evaluations), "valid": ...}`` at :attr:`eval_steps`.
    eval_steps: the steps evaluated, ``0, every, ..., steps``.
  """

  name: str
  learning_rate: float | None
  batch: np.ndarray
  evals: dict[str, np.ndarray]
  eval_steps: np.ndarray


def collect_curves(
  task: tasks.Task,
  learned: Sequence[tuple[str, LearnedOptimizer, Theta]],
  *,
  steps: int,
  seeds: int,
  every: int,
  tune_seeds: int = 2,
  adam_rates: Sequence[float] = ADAM_RATES,
  sgdm_rates: Sequence[float] = SGDM_RATES,
  progress: bool = True,
) -> list[Curves]:
  """Tunes Adam and SGDM, then trains every optimizer on ``seeds`` evaluation runs of ``task``.

  Args:
    task: the inner task.
    learned: ``(name, learned optimizer, theta)`` per learned optimizer.
    steps: inner steps per run (tuning runs included).
    seeds: evaluation runs per optimizer.
    every: steps between evaluations of the train and valid loss.
    tune_seeds: grid-search runs per learning rate.
    adam_rates, sgdm_rates: the grids.
    progress: show a progress bar.

  Returns:
    The baselines' curves, then the learned optimizers'.
  """
  baselines: list[tuple[str, Callable, Sequence[float]]] = [("adam", adam, adam_rates), ("sgdm", sgdm, sgdm_rates)]
  bar = tqdm.tqdm(total=2 * len(baselines) + len(learned), desc="evaluating", unit="stage", disable=not progress)
  keys = jnp.stack([jax.random.key(EVAL_SEED + i) for i in range(seeds)])
  tuning = range(TUNE_SEED, TUNE_SEED + tune_seeds)

  def curves(name, learning_rate, hyper, make_optimizer):
    bar.set_postfix(optimizer=name)
    batch, evals = evaluation_curves(task, hyper, keys, make_optimizer=make_optimizer, steps=steps, every=every)
    evals = np.asarray(evals)
    bar.update()
    return Curves(
      name,
      learning_rate,
      np.asarray(batch),
      {split: evals[..., i] for i, split in enumerate(SPLITS)},
      np.arange(0, steps + 1, every),
    )

  results = []
  for name, make_optimizer, rates in baselines:
    bar.set_postfix(optimizer=f"tuning {name}")
    best, _ = grid_search(task, make_optimizer, rates, steps=steps, seeds=tuning, split="valid")
    bar.update()
    results.append(curves(name, best, jnp.float32(best), make_optimizer))
  for name, learned_optimizer, theta in learned:
    results.append(curves(name, None, jax.tree.map(jnp.asarray, theta), learned_optimizer.optimizer))
  bar.close()
  return results


def write_csv(results: Sequence[Curves], path: pathlib.Path) -> None:
  """One row per (optimizer, seed, step, split): ``optimizer, learning_rate, seed, step, split, loss``."""
  with open(path, "w", newline="") as file:
    writer = csv.writer(file)
    writer.writerow(["optimizer", "learning_rate", "seed", "step", "split", "loss"])
    for c in results:
      rate = "" if c.learning_rate is None else repr(c.learning_rate)
      for seed in range(len(c.batch)):
        for step, loss in enumerate(c.batch[seed], start=1):
          writer.writerow([c.name, rate, EVAL_SEED + seed, step, "train_batch", repr(float(loss))])
        for split in SPLITS:
          for step, loss in zip(c.eval_steps, c.evals[split][seed]):
            writer.writerow([c.name, rate, EVAL_SEED + seed, int(step), split, repr(float(loss))])


def summary(results: Sequence[Curves], task_name: str, steps: int) -> str:
  """A markdown table: per optimizer, final and best train and valid loss, mean +- s.e. over seeds."""
  seeds = len(results[0].batch)
  lines = [
    f"Task `{task_name}`, {steps} steps, {seeds} evaluation seeds (mean +- standard error); "
    "`train` and `valid` are losses on fixed batches of each split, `best` is the lowest evaluated.",
    "",
    "| optimizer | learning rate | final train | best train | final valid | best valid |",
    "|---|---|---|---|---|---|",
  ]
  for c in results:
    cells = []
    for split in SPLITS:
      for values in (c.evals[split][:, -1], np.min(c.evals[split], axis=1)):
        cells.append("{:.4f} +- {:.4f}".format(*mean_se(values)))
    rate = "tuned: " + f"{c.learning_rate:g}" if c.learning_rate is not None else "meta-trained"
    lines.append(f"| {c.name} | {rate} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def parse_summary(text: str) -> dict[str, dict[str, tuple[float, float]]]:
  """Reads :func:`summary`'s table back: ``{optimizer: {column: (mean, s.e.)}}``."""
  columns = ("final train", "best train", "final valid", "best valid")
  table = {}
  for line in text.splitlines():
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    if len(cells) != 6 or "+-" not in cells[2]:
      continue
    pairs = [cell.split("+-") for cell in cells[2:]]
    table[cells[0]] = {column: (float(mean), float(se)) for column, (mean, se) in zip(columns, pairs)}
  return table


def plot(results: Sequence[Curves], path: pathlib.Path, title: str) -> None:
  """Train and valid loss against steps: mean and standard error bands, log-scale loss."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for axis, split in zip(axes, SPLITS):
    for c in results:
      mean, se = mean_se(c.evals[split])
      label = c.name if c.learning_rate is None else f"{c.name} (lr {c.learning_rate:g})"
      (line,) = axis.plot(c.eval_steps, mean, label=label)
      axis.fill_between(c.eval_steps, mean - se, mean + se, color=line.get_color(), alpha=0.25)
    axis.set_yscale("log")
    axis.set_xlabel("inner step")
    axis.set_title(f"{split} loss")
    axis.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("loss (log scale)")
  axes[1].legend()
  figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def write_tensorboard(results: Sequence[Curves], folder: pathlib.Path) -> None:
  """The mean curves over seeds: tags ``train_batch/<optimizer>``, ``train/<optimizer>``, ``valid/<optimizer>``."""
  series: dict[str, list[tuple[int, float]]] = {}
  for c in results:
    series[f"train_batch/{c.name}"] = list(enumerate(c.batch.mean(0), start=1))
    for split in SPLITS:
      series[f"{split}/{c.name}"] = list(zip(c.eval_steps, c.evals[split].mean(0)))
  write_series(folder, series)


def load_all(sources: Sequence[str | pathlib.Path], task: tasks.Task) -> list[checkpoint.LoadedOptimizer]:
  """The meta-trained optimizer of each source (a workdir or a checkpoint folder), built for ``task``'s space.

  A learned optimizer's meta-parameters do not depend on the widths of the
  networks it trains, so it runs on other widths and datasets of the same
  architecture; another architecture (more layers, a CNN for an MLP's
  optimizer) is a clear error.
  """
  return [checkpoint.load(source, space=task.space) for source in sources]


def names_of(loaded: Sequence[checkpoint.LoadedOptimizer]) -> list[str]:
  """Display names ``"<kind> (step N)"``, with the workdir's name added where two would be the same."""
  names = [f"{item.learned_optimizer.name} (step {item.step})" for item in loaded]
  return [
    f"{name} [{item.path.parent.parent.name}]" if names.count(name) > 1 else name for name, item in zip(names, loaded)
  ]


def compare(
  sources: Sequence[str | pathlib.Path],
  task_name: str,
  out: str | pathlib.Path | None = None,
  *,
  steps: int = 2000,
  seeds: int = 5,
  every: int = 20,
  tune_seeds: int = 2,
  progress: bool = True,
) -> tuple[list[Curves], pathlib.Path]:
  """``metatrain eval``: the meta-trained optimizers of ``sources`` against tuned Adam and SGDM on a task.

  Runs :func:`collect_curves` and writes every output (see the module docstring). Bad input (no
  checkpoint, an unknown task, an optimizer that does not fit the task's weight space) is a clear
  error before anything runs.

  Args:
    sources: ``metatrain train`` workdirs or checkpoint folders.
    task_name: a registered task (``tasks.names()``).
    out: the output folder (default: ``<first workdir>/eval/<task>``).
    steps, seeds, every, tune_seeds, progress: as :func:`collect_curves`.

  Returns:
    ``(curves, out)``: the curves of every optimizer, and the folder written.
  """
  task = tasks.get(task_name)
  loaded = load_all(sources, task)
  learned = [(name, item.learned_optimizer, item.theta) for name, item in zip(names_of(loaded), loaded)]
  out = pathlib.Path(out) if out is not None else loaded[0].path.parent.parent / "eval" / task_name
  out.mkdir(parents=True, exist_ok=True)
  results = collect_curves(
    task, learned, steps=steps, seeds=seeds, every=every, tune_seeds=tune_seeds, progress=progress
  )
  write_csv(results, out / "curves.csv")
  (out / "summary.md").write_text(summary(results, task_name, steps))
  plot(results, out / "curves.png", f"{task_name}: {steps} steps, {seeds} seeds")
  write_tensorboard(results, out / "tensorboard")
  return results, out
