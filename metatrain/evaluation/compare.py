"""``metatrain eval``: meta-trained optimizers against tuned hand-designed optimizers on a task.

The baselines (:data:`BASELINES`): Adam and SGD with momentum at constant
rates, and Adam and AdamW with linear warm-up and cosine decay. Every
optimizer trains the same fresh inner runs (evaluation seeds, never used in
meta-training or tuning: same initial params and batches for each optimizer)
for the same number of steps. The baselines' hyper-parameters are picked by
grid search (:func:`metatrain.grid_search`, which extends a grid whose pick
lies on its edge) on the validation loss after the same number of steps, with
tuning seeds of their own; AdamW's peak rate is Adam-cosine's, then its weight
decay is tuned, then its rate again. The test split is never looked at in
tuning. Outputs, in one folder:

- ``curves.csv``: every curve, one row per (optimizer, seed, step, split):
  ``train_batch`` (the loss of each step's training batch), ``train``,
  ``valid`` and ``test`` (``task.eval_loss`` on a fixed batch of the split, every ``every`` steps);
- ``curves.png``: mean and standard error bands over seeds, log-scale loss;
- ``summary.md``: final train, valid and test loss and best valid loss per optimizer, mean +- standard
  error; then every meta-trained optimizer against every other optimizer, paired on the evaluation seeds:
  the mean difference of the final train and test loss with its 95% t interval;
- ``tensorboard/``: the mean curves.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import tasks
from metatrain import loading
from metatrain.evaluation.baselines import EVAL_SEED, TUNE_SEED, adam, adam_cosine, adamw_cosine, grid_search, sgdm
from metatrain.evaluation.curves import evaluation_curves
from metatrain.evaluation.stats import PairedDifference, mean_se, paired_difference
from metatrain.learned_optimizers import LearnedOptimizer
from metatrain.runtime.summaries import write_series
from metatrain.types import Theta

#: Adam's learning-rate grid.
ADAM_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: SGDM's learning-rate grid.
SGDM_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
#: AdamW's weight-decay grid (decoupled from the gradient, as in :func:`metatrain.adamw_cosine`).
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)
#: The hand-designed baselines, in the order they are tuned and reported.
BASELINES = ("adam", "sgdm", "adam_cosine", "adamw_cosine")
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class Curves:
  """One optimizer's runs on a task.

  Attributes:
    name: the optimizer's label.
    learning_rate: the tuned (peak) rate of a baseline (None for a learned optimizer).
    batch: training batch losses, shape ``(seeds, steps)``.
    evals: ``{"train": (seeds, evaluations), "valid": ..., "test": ...}`` at :attr:`eval_steps`.
    eval_steps: the steps evaluated, ``0, every, ..., steps``.
    weight_decay: the tuned weight decay of AdamW (None otherwise).
  """

  name: str
  learning_rate: float | None
  batch: np.ndarray
  evals: dict[str, np.ndarray]
  eval_steps: np.ndarray
  weight_decay: float | None = None

  @property
  def learned(self) -> bool:
    """Whether this is a meta-trained optimizer (no tuned hyper-parameters)."""
    return self.learning_rate is None

  def final(self, split: str) -> np.ndarray:
    """The final ``split`` loss of every seed."""
    return self.evals[split][:, -1]


def collect_curves(
  task: tasks.Task,
  learned: Sequence[tuple[str, LearnedOptimizer, Theta]],
  *,
  steps: int,
  seeds: int,
  every: int,
  tune_seeds: int = 2,
  tune_split: str = "valid",
  adam_rates: Sequence[float] = ADAM_RATES,
  sgdm_rates: Sequence[float] = SGDM_RATES,
  weight_decays: Sequence[float] = WEIGHT_DECAYS,
  baselines: Sequence[str] = BASELINES,
  transfer_from: tasks.Task | None = None,
  progress: bool = True,
) -> list[Curves]:
  """Tunes the baselines, then trains every optimizer on ``seeds`` evaluation runs of ``task``.

  Args:
    task: the inner task.
    learned: ``(name, learned optimizer, theta)`` per learned optimizer.
    steps: inner steps per run (tuning runs included; the schedules decay over them).
    seeds: evaluation runs per optimizer.
    every: steps between evaluations of the train, valid and test loss.
    tune_seeds: grid-search runs per value.
    tune_split: the split whose final loss the grid searches minimise: "valid" (the default, how a user
      tunes), or "train" (the best a baseline can do on the meta-objective, the training loss).
    adam_rates, sgdm_rates, weight_decays: the initial grids (Adam's rates serve the cosine schedules too).
    baselines: which of :data:`BASELINES` to run.
    transfer_from: another task (the one the learned optimizers were meta-trained on): Adam and
      Adam-cosine are also tuned there and run here at those rates, untuned, as ``adam @ TASK`` and
      ``adam_cosine @ TASK`` (a user's rate carried over to a new width, against a learned optimizer
      carried over too).
    progress: show a progress bar.

  Returns:
    The baselines' curves (in the order of ``baselines``), then the learned optimizers'.
  """
  unknown = sorted(set(baselines) - set(BASELINES))
  if unknown:
    raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES}.")
  bar = tqdm.tqdm(total=2 * len(baselines) + len(learned), desc="evaluating", unit="stage", disable=not progress)
  keys = jnp.stack([jax.random.key(EVAL_SEED + i) for i in range(seeds)])
  tuning = range(TUNE_SEED, TUNE_SEED + tune_seeds)

  def curves(name, learning_rate, hyper, make_optimizer, weight_decay=None):
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
      weight_decay,
    )

  def tune(make_optimizer, grid):
    return grid_search(task, make_optimizer, grid, steps=steps, seeds=tuning, split=tune_split)[0]

  def cosine(lr):
    return adam_cosine(lr, steps=steps)

  results: list[Curves] = []
  tuned: dict[str, float] = {}
  make: Callable[[Any], optax.GradientTransformation]
  grids: dict[str, tuple[Callable[[Any], optax.GradientTransformation], Sequence[float]]] = {
    "adam": (adam, adam_rates),
    "sgdm": (sgdm, sgdm_rates),
    "adam_cosine": (cosine, adam_rates),
  }
  for name in baselines:
    bar.set_postfix(optimizer=f"tuning {name}")
    if name == "adamw_cosine":
      rate = tuned.get("adam_cosine") or tune(cosine, adam_rates)
      decay = tune(lambda wd, rate=rate: adamw_cosine(rate, steps=steps, weight_decay=wd), weight_decays)
      rate = tune(lambda lr, decay=decay: adamw_cosine(lr, steps=steps, weight_decay=decay), adam_rates)
      bar.update()
      make = functools.partial(adamw_cosine, steps=steps, weight_decay=decay)
      results.append(curves(name, rate, jnp.float32(rate), make, decay))
      continue
    make, grid = grids[name]
    tuned[name] = tune(make, grid)
    bar.update()
    results.append(curves(name, tuned[name], jnp.float32(tuned[name]), make))
  if transfer_from is not None:
    for name, make in (("adam", adam), ("adam_cosine", cosine)):
      bar.set_postfix(optimizer=f"tuning {name} on {transfer_from.name}")
      rate = grid_search(transfer_from, make, adam_rates, steps=steps, seeds=tuning, split=tune_split)[0]
      results.append(curves(f"{name} @ {transfer_from.name}", rate, jnp.float32(rate), make))
  for name, learned_optimizer, theta in learned:
    make = functools.partial(learned_optimizer.optimizer, total_steps=steps)
    results.append(curves(name, None, jax.tree.map(jnp.asarray, theta), make))
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


def _hyper(c: Curves) -> str:
  if c.learned:
    return "meta-trained"
  assert c.learning_rate is not None
  return f"tuned: lr {c.learning_rate:g}" + (f", wd {c.weight_decay:g}" if c.weight_decay is not None else "")


#: The columns of :func:`summary`'s first table, after the optimizer and its hyper-parameters.
COLUMNS = ("final train", "final valid", "final test", "best valid")


def paired_rows(
  results: Sequence[Curves], *, confidence: float = 0.95
) -> list[tuple[str, str, dict[str, PairedDifference]]]:
  """Every meta-trained optimizer against every other optimizer, paired on the shared evaluation seeds.

  Returns:
    ``(a, b, {"final train": d, "final test": d})`` rows, ``d`` the paired difference ``a - b`` of the final
    loss (negative: ``a`` ends lower) with its ``confidence`` t interval (:func:`paired_difference`).
  """
  rows = []
  for i, a in enumerate(results):
    if not a.learned:
      continue
    for j, b in enumerate(results):
      if j == i or (b.learned and j < i):
        continue
      rows.append(
        (
          a.name,
          b.name,
          {f"final {s}": paired_difference(a.final(s), b.final(s), confidence=confidence) for s in ("train", "test")},
        )
      )
  return rows


def summary(results: Sequence[Curves], task_name: str, steps: int) -> str:
  """Markdown: per optimizer the :data:`COLUMNS` (mean +- s.e. over seeds), then the paired differences."""
  seeds = len(results[0].batch)
  lines = [
    f"Task `{task_name}`, {steps} steps, {seeds} evaluation seeds (mean +- standard error); "
    "`train`, `valid` and `test` are losses on fixed batches of each split, `best` is the lowest evaluated.",
    "",
    "| optimizer | hyper-parameters | " + " | ".join(COLUMNS) + " |",
    "|---|---|" + "---|" * len(COLUMNS),
  ]
  for c in results:
    values = [c.final("train"), c.final("valid"), c.final("test"), np.min(c.evals["valid"], axis=1)]
    cells = ["{:.4f} +- {:.4f}".format(*mean_se(v)) for v in values]
    lines.append(f"| {c.name} | {_hyper(c)} | " + " | ".join(cells) + " |")
  rows = paired_rows(results) if seeds > 1 else []
  if rows:
    lines += [
      "",
      f"Paired on the {seeds} evaluation seeds: mean difference `a - b` of the final loss [95% t interval]; "
      "negative: `a` ends lower. `*`: the interval excludes 0.",
      "",
      "| a | b | final train | final test |",
      "|---|---|---|---|",
    ]
    for a, b, d in rows:
      cells = [f"{d[k]}{' *' if d[k].excludes_zero() else ''}" for k in ("final train", "final test")]
      lines.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def parse_summary(text: str) -> dict[str, dict[str, tuple[float, float]]]:
  """Reads :func:`summary`'s first table back: ``{optimizer: {column: (mean, s.e.)}}``."""
  table = {}
  for line in text.splitlines():
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    if len(cells) != 2 + len(COLUMNS) or "+-" not in cells[2]:
      continue
    pairs = [cell.split("+-") for cell in cells[2:]]
    table[cells[0]] = {column: (float(mean), float(se)) for column, (mean, se) in zip(COLUMNS, pairs)}
  return table


def plot(results: Sequence[Curves], path: pathlib.Path, title: str) -> None:
  """Train and valid loss against steps: mean and standard error bands, log-scale loss."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(1, len(SPLITS), figsize=(16, 4), sharey=True)
  for axis, split in zip(axes, SPLITS):
    for c in results:
      mean, se = mean_se(c.evals[split])
      label = c.name if c.learned else f"{c.name} ({_hyper(c).removeprefix('tuned: ')})"
      (line,) = axis.plot(c.eval_steps, mean, label=label)
      axis.fill_between(c.eval_steps, mean - se, mean + se, color=line.get_color(), alpha=0.25)
    axis.set_yscale("log")
    axis.set_xlabel("inner step")
    axis.set_title(f"{split} loss")
    axis.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("loss (log scale)")
  axes[-1].legend(fontsize=8)
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


def load_all(sources: Sequence[str | pathlib.Path], task: tasks.Task) -> list[loading.LoadedOptimizer]:
  """The meta-trained optimizer of each source (a workdir or a checkpoint folder), built for ``task``'s space.

  A learned optimizer's meta-parameters do not depend on the widths of the
  networks it trains, so it runs on other widths and datasets of the same
  architecture; another architecture (more layers, a CNN for an MLP's
  optimizer) is a clear error.
  """
  return [loading.load(source, space=task.space) for source in sources]


def _workdir(path: pathlib.Path) -> pathlib.Path:
  """The run a loaded optimizer comes from: WORKDIR of WORKDIR/selected or WORKDIR/checkpoints/STEP, else the
  folder itself (a shipped optimizer's)."""
  if path.parent.name == "checkpoints":
    return path.parent.parent
  return path.parent if path.name == "selected" else path


def names_of(loaded: Sequence[loading.LoadedOptimizer]) -> list[str]:
  """Display names ``"<kind> (step N)"``, with the workdir's name added where two are of the same kind.

  Where two workdirs of one kind have the same name (``runs/a/rnn_lm_unf`` and ``runs/b/rnn_lm_unf``), as many
  of the folders above them as tell them apart are added (``[a/rnn_lm_unf]``). (Runs of one kind selected at
  different steps then still name their run, which the pooling of meta-training seeds reads:
  ``experiments/learned_optimizers/pooled.py``.)
  """
  kinds = [item.learned_optimizer.name for item in loaded]
  workdirs = [_workdir(item.path) for item in loaded]

  def run(index: int) -> str:
    same_kind = [workdir for workdir, kind in zip(workdirs, kinds) if kind == kinds[index]]
    parts = suffix = workdirs[index].parts
    for depth in range(1, len(parts) + 1):
      suffix = parts[-depth:]
      if sum(workdir.parts[-depth:] == suffix for workdir in same_kind) == 1:
        break
    return "/".join(suffix)

  return [
    f"{kind} (step {item.step})" + (f" [{run(index)}]" if kinds.count(kind) > 1 else "")
    for index, (kind, item) in enumerate(zip(kinds, loaded))
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
  tune_split: str = "valid",
  transfer_from: str | None = None,
  baselines: Sequence[str] | None = None,
  progress: bool = True,
) -> tuple[list[Curves], pathlib.Path]:
  """``metatrain eval``: the meta-trained optimizers of ``sources`` against the tuned baselines on a task.

  Runs :func:`collect_curves` and writes every output (see the module docstring). Bad input (no
  checkpoint, an unknown task, an optimizer that does not fit the task's weight space) is a clear
  error before anything runs.

  Args:
    sources: ``metatrain train`` workdirs or checkpoint folders.
    task_name: a registered task (``tasks.names()``).
    out: the output folder (default: ``<first workdir>/eval/<task>``).
    steps, seeds, every, tune_seeds, tune_split, progress: as :func:`collect_curves`.
    transfer_from: the name of a task to carry Adam's tuned rates over from (:func:`collect_curves`).
    baselines: which of :data:`BASELINES` to run (default: all).

  Returns:
    ``(curves, out)``: the curves of every optimizer, and the folder written.
  """
  task = tasks.get(task_name)
  source = tasks.get(transfer_from) if transfer_from else None
  baselines = BASELINES if baselines is None else tuple(baselines)
  unknown = sorted(set(baselines) - set(BASELINES))
  if unknown:
    raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}.")
  loaded = load_all(sources, task)
  learned = [(name, item.learned_optimizer, item.theta) for name, item in zip(names_of(loaded), loaded)]
  out = pathlib.Path(out) if out is not None else loaded[0].path.parent.parent / "eval" / task_name
  out.mkdir(parents=True, exist_ok=True)
  results = collect_curves(
    task,
    learned,
    steps=steps,
    seeds=seeds,
    every=every,
    tune_seeds=tune_seeds,
    tune_split=tune_split,
    transfer_from=source,
    baselines=baselines,
    progress=progress,
  )
  write_csv(results, out / "curves.csv")
  (out / "summary.md").write_text(summary(results, task_name, steps))
  plot(results, out / "curves.png", f"{task_name}: {steps} steps, {seeds} seeds")
  write_tensorboard(results, out / "tensorboard")
  return results, out
