"""The Tiny RNN Zoo experiment driver: every predictor trained and scored over seeds, and the command line.

Each predictor of :data:`~experiments.rnn_zoo.predictors.PREDICTORS` is
trained with the same budget (:class:`~experiments.rnn_zoo.fit.FitConfig`) for
seeds ``0 .. seeds - 1``; the checkpoint with the best validation tau is
scored once on the test split. The results go to ``results.md`` (a markdown
table beside the paper's numbers), ``results.csv`` (per predictor: mean and
standard error over seeds) and ``runs.csv`` (per seed).

The command line, ``python -m experiments.rnn_zoo``, has two subcommands::

  python -m experiments.rnn_zoo generate --out runs/zoo --models 300 --seed 0
  python -m experiments.rnn_zoo predict --zoo runs/zoo --seeds 3 --out runs/zoo/results

Example:
  >>> from experiments.rnn_zoo.main import summarize
  >>> rows = [{"predictor": "unf", "test_tau": t, "val_tau": t, "parameters": 9, "seconds": 1.0} for t in (0.5, 0.7)]
  >>> (summary,) = summarize(rows)
  >>> round(summary["test_tau"], 4), round(summary["test_tau_se"], 4), summary["paper_test_tau"]
  (0.6, 0.1, 0.8968)
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

import unf
from experiments.rnn_zoo import arithmetic
from experiments.rnn_zoo import zoo as zoo_lib
from experiments.rnn_zoo.fit import FitConfig, fit, predict
from experiments.rnn_zoo.predictors import (
  PAPER_TAU,
  PREDICTORS,
  SIZES,
  display_name,
  make_predictor,
  parse_spec,
  prepare,
)
from experiments.rnn_zoo.stats import bootstrap_tau, kendall_tau, paired_tau_difference
from metatrain.evaluation.stats import mean_se
from tasks.data import write_atomically

# --- the experiment ---------------------------------------------------------------------------------


def run_seed(
  name: str,
  zoo: dict[str, zoo_lib.ZooSplit],
  seed: int,
  *,
  config: FitConfig,
  sizes: str = "small",
  progress: bool = True,
) -> dict:
  """Builds, trains and evaluates one predictor for one seed.

  Args:
    name: a key of :data:`~experiments.rnn_zoo.predictors.PREDICTORS`, or ``name@preset``
      (:func:`~experiments.rnn_zoo.predictors.parse_spec`: that size preset instead of ``sizes``).
    zoo: the zoo's three splits (see :func:`experiments.rnn_zoo.zoo.load_zoo`).
    seed: seeds the predictor's initialization and its training batches.
    config: the training budget (with ``objective="bce"`` the targets are the accuracies themselves).
    sizes: the predictor's size preset (a key of :data:`~experiments.rnn_zoo.predictors.SIZES`).
    progress: show a progress bar.

  Returns:
    Its row of results: ``predictor``, ``seed``, ``test_tau`` (of the selected checkpoint), ``val_tau``,
    ``best_step``, ``parameters`` and ``seconds``; and ``test_predictions``, its (test models,) scores.
  """
  start = time.perf_counter()
  spec, (name, preset) = name, parse_spec(name)
  sizes = preset or sizes
  data = prepare(zoo)
  if config.objective == "bce":
    data = {split: (inputs, zoo[split].accuracy.astype(np.float32)) for split, (inputs, _) in data.items()}
  model = make_predictor(name, zoo["train"].space, train_inputs=data["train"][0], rngs=nnx.Rngs(seed), sizes=sizes)
  result = fit(
    model,
    data["train"],
    data["valid"],
    key=jax.random.key(seed),
    config=config,
    progress=progress,
    description=f"{name} seed {seed}",
  )
  test_predictions = predict(model, data["test"][0])
  return {
    "predictor": spec,
    "seed": seed,
    "test_tau": kendall_tau(test_predictions, zoo["test"].accuracy),
    "val_tau": result.val_tau,
    "best_step": result.step,
    "parameters": unf.num_parameters(model),
    "seconds": time.perf_counter() - start,
    "test_predictions": test_predictions,
  }


def summarize(rows: Sequence[dict]) -> list[dict]:
  """Per predictor (in order of appearance): mean and standard error of test and validation tau over seeds.

  Args:
    rows: rows of :func:`run_seed`.

  Returns:
    One row per predictor: ``seeds``, ``test_tau`` and ``test_tau_se``, ``val_tau`` and ``val_tau_se``,
    ``parameters``, ``seconds_per_seed`` and ``paper_test_tau`` (NaN for a predictor not in the paper).
  """
  names = list(dict.fromkeys(row["predictor"] for row in rows))
  out = []
  for name in names:
    mine = [row for row in rows if row["predictor"] == name]
    test, test_se = mean_se([row["test_tau"] for row in mine])
    val, val_se = mean_se([row["val_tau"] for row in mine])
    out.append(
      {
        "predictor": name,
        "seeds": len(mine),
        "test_tau": test,
        "test_tau_se": test_se,
        "val_tau": val,
        "val_tau_se": val_se,
        "parameters": mine[0]["parameters"],
        "seconds_per_seed": float(np.mean([row["seconds"] for row in mine])),
        "paper_test_tau": PAPER_TAU.get(parse_spec(name)[0], math.nan),
      }
    )
  return out


#: The paired comparisons of the report, (a, b) for tau(a) - tau(b) on the same test models. A predictor at a
#: preset of its own (``unf@bounded``) is also compared with StatNN, Deep Sets and its plain name.
COMPARISONS = (("unf", "statnn"), ("unf", "deep_sets"), ("statnn", "deep_sets"))


def comparisons(names: Sequence[str]) -> list[tuple[str, str]]:
  """The pairs of :data:`COMPARISONS` among ``names``, then each ``name@preset`` against the others."""
  pairs = [(a, b) for a, b in COMPARISONS if a in names and b in names]
  for spec in names:
    name, preset = parse_spec(spec)
    if preset:
      pairs += [(spec, b) for b in ("statnn", "deep_sets", name) if b in names and b != spec]
  return pairs


def intervals(
  rows: Sequence[dict], accuracy: np.ndarray, *, num_resamples: int = 2000, seed: int = 0
) -> tuple[list[dict], list[dict]]:
  """Bootstrap intervals over the test models: per predictor, and paired between predictors.

  A predictor's statistic is its tau averaged over its seeds; the resamples are the same for every predictor
  (:func:`~experiments.rnn_zoo.stats.bootstrap_indices` with ``seed``), so differences are paired.

  Args:
    rows: rows of :func:`run_seed`, with their ``test_predictions``.
    accuracy: the test models' true accuracies.
    num_resamples: bootstrap resamples.
    seed: the resamples' seed.

  Returns:
    ``(per_predictor, paired)``: rows ``{"predictor", "tau", "low", "high", "se"}`` and, for each pair of
    :data:`COMPARISONS` whose predictors both ran, ``{"a", "b", "difference", "low", "high", "se",
    "p_two_sided"}``; with fewer than two test models every number is NaN (tau is undefined).
  """
  names = list(dict.fromkeys(row["predictor"] for row in rows))
  if np.size(accuracy) < 2:
    undefined = {"low": math.nan, "high": math.nan, "se": math.nan}
    per_predictor = [{"predictor": name, "tau": math.nan, **undefined} for name in names]
    pairs = comparisons(names)
    return per_predictor, [
      {"a": a, "b": b, "difference": math.nan, **undefined, "p_two_sided": math.nan} for a, b in pairs
    ]
  predictions = {
    name: np.stack([row["test_predictions"] for row in rows if row["predictor"] == name]) for name in names
  }
  options = {"num_resamples": num_resamples, "seed": seed}
  per_predictor = [{"predictor": name, **bootstrap_tau(predictions[name], accuracy, **options)} for name in names]
  paired = [
    {"a": a, "b": b, **paired_tau_difference(predictions[a], predictions[b], accuracy, **options)}
    for a, b in comparisons(names)
  ]
  return per_predictor, paired


def intervals_table(per_predictor: Sequence[dict], paired: Sequence[dict]) -> str:
  """The bootstrap intervals of :func:`intervals` as two markdown tables."""
  lines = ["| predictor | test tau (seed mean) | bootstrap 95% interval | bootstrap s.e. |", "|---|---|---|---|"]
  for row in per_predictor:
    name = display_name(row["predictor"])
    lines.append(f"| {name} | {row['tau']:.4f} | [{row['low']:.4f}, {row['high']:.4f}] | {row['se']:.4f} |")
  lines += ["", "| paired difference | tau(a) - tau(b) | bootstrap 95% interval | p (two-sided) |", "|---|---|---|---|"]
  for row in paired:
    a, b = (display_name(row[k]) for k in ("a", "b"))
    lines.append(
      f"| {a} - {b} | {row['difference']:+.4f} | [{row['low']:+.4f}, {row['high']:+.4f}] | {row['p_two_sided']:.4f} |"
    )
  return "\n".join(lines) + "\n"


def markdown_table(summary: Sequence[dict]) -> str:
  """The results as a markdown table, one line per predictor.

  Args:
    summary: rows of :func:`summarize`.

  Returns:
    The table's text, ending in a newline.
  """
  lines = [
    "| predictor | test tau (mean +- s.e.) | val tau (mean +- s.e.) | parameters | wall time per seed (s) "
    "| paper test tau |",
    "|---|---|---|---|---|---|",
  ]
  for row in summary:
    lines.append(
      f"| {display_name(row['predictor'])} "
      f"| {row['test_tau']:.4f} +- {row['test_tau_se']:.4f} | {row['val_tau']:.4f} +- {row['val_tau_se']:.4f} "
      f"| {row['parameters']:,} | {row['seconds_per_seed']:.1f} | {row['paper_test_tau']:.4f} |"
    )
  return "\n".join(lines) + "\n"


def _csv_text_union(rows: Sequence[dict]) -> str:
  """Rows with different keys in one CSV (blank where a row lacks a column)."""
  fields = list(dict.fromkeys(key for row in rows for key in row))
  return _csv_text([{key: row.get(key, "") for key in fields} for row in rows])


def _csv_text(rows: Sequence[dict]) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def run_experiment(
  zoo_dir: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  seeds: int = 3,
  predictors: Sequence[str] = PREDICTORS,
  config: FitConfig | None = None,
  sizes: str = "small",
  progress: bool = True,
  log: Callable[[str], Any] = print,
) -> list[dict]:
  """Trains every predictor with seeds ``0 .. seeds - 1`` and writes its results to ``out_dir``.

  The files: ``results.md`` (the table beside the paper's, then bootstrap intervals over the test models and
  paired differences), ``results.csv`` (per predictor), ``runs.csv`` (per seed), ``intervals.csv`` and
  ``predictions.npz`` (per predictor, the (seeds, test models) predictions, and the test accuracies).

  Args:
    zoo_dir: a zoo folder written by :func:`experiments.rnn_zoo.zoo.generate`.
    out_dir: where to write the results (created if missing).
    seeds: seeds per predictor.
    predictors: keys of :data:`~experiments.rnn_zoo.predictors.PREDICTORS`, or ``name@preset`` (a preset of
      its own; compared with the others on the same test models).
    config: the training budget, the same for every predictor (default: :class:`FitConfig`'s).
    sizes: the predictors' size preset (a key of :data:`~experiments.rnn_zoo.predictors.SIZES`).
    progress: show progress bars.
    log: where the progress lines and the final table go.

  Returns:
    The summary rows (one per predictor).
  """
  for spec in predictors:  # every spec is checked before anything trains
    parse_spec(spec)
  config = FitConfig() if config is None else config
  zoo = zoo_lib.load_zoo(zoo_dir)
  counts = {split: len(part) for split, part in zoo.items()}
  log(
    f"zoo {zoo_dir}: {counts} models; test accuracy {zoo['test'].accuracy.min():.3f}..{zoo['test'].accuracy.max():.3f}"
  )
  rows = []
  for name in predictors:
    for seed in range(seeds):
      rows.append(run_seed(name, zoo, seed, config=config, sizes=sizes, progress=progress))
      log(
        f"  {name} seed {seed}: test tau {rows[-1]['test_tau']:.4f}, val tau {rows[-1]['val_tau']:.4f} "
        f"(step {rows[-1]['best_step']}), {rows[-1]['seconds']:.1f} s"
      )
  summary = summarize(rows)
  per_predictor, paired = intervals(rows, zoo["test"].accuracy)
  table = markdown_table(summary) + "\n" + intervals_table(per_predictor, paired)
  header = (
    f"Zoo: {zoo_dir} ({counts['train']} / {counts['valid']} / {counts['test']} models). Budget: {config.steps} "
    f"steps, batch {config.batch_size}, Adam {config.learning_rate:g}, objective {config.objective}, checkpoint "
    f"every {config.eval_every} steps selected by validation tau. Predictor sizes: {sizes}. Seeds: {seeds}.\n\n"
  )
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_atomically(out / "results.md", (header + table).encode())
  write_atomically(out / "results.csv", _csv_text(summary).encode())
  runs = [{k: v for k, v in row.items() if k != "test_predictions"} for row in rows]
  write_atomically(out / "runs.csv", _csv_text(runs).encode())
  interval_rows = [{"kind": "predictor", **row} for row in per_predictor] + [
    {"kind": "paired", **row} for row in paired
  ]
  write_atomically(out / "intervals.csv", _csv_text_union(interval_rows).encode())
  buffer = io.BytesIO()
  names = list(dict.fromkeys(row["predictor"] for row in rows))
  arrays = {n: np.stack([r["test_predictions"] for r in rows if r["predictor"] == n]) for n in names}
  np.savez(buffer, allow_pickle=False, test_accuracy=zoo["test"].accuracy, **arrays)
  write_atomically(out / "predictions.npz", buffer.getvalue())
  log("")
  log(table)
  return summary


# --- command line -----------------------------------------------------------------------------------

# Per flag, the config field it sets and its help: `generate` sets a ZooConfig, `predict` a FitConfig.
_GENERATE_FLAGS = {
  "models": ("num_models", "models in the zoo, all splits"),
  "seed": ("seed", "everything (hyper-parameters, initializations, batches, splits) follows from it"),
  "min_steps": ("min_steps", "fewest training steps of a model"),
  "max_steps": ("max_steps", "most training steps of a model"),
  "hidden": ("hidden", "recurrent state width"),
  "embed": ("embed", "embedding width"),
  "batch_size": ("batch_size", "windows per training step"),
  "eval_windows": ("eval_windows", "test windows for accuracy"),
  "chunk": ("chunk", "training steps per jitted call"),
}
_ARITHMETIC_FLAGS = {
  "models": ("num_models", "models in the zoo, all splits"),
  "seed": ("seed", "everything (hyper-parameters, initializations, batches, test problems, splits) follows from it"),
  "hidden": ("hidden", "GRU state width (the paper's: 128)"),
  "min_steps": ("min_steps", "fewest training steps of a model"),
  "max_steps": ("max_steps", "most training steps of a model"),
  "eval_size": ("eval_size", "test problems for accuracy"),
  "shard_size": ("shard_size", "models trained together and written as one shard"),
  "chunk": ("chunk", "training steps per jitted call"),
}
_PREDICT_FLAGS = {
  "steps": ("steps", "Adam steps per predictor and seed"),
  "batch_size": ("batch_size", "zoo models per step"),
  "learning_rate": ("learning_rate", "Adam's learning rate"),
  "eval_every": ("eval_every", "steps between validation checkpoints"),
  "objective": ("objective", "mse (standardized accuracy) or bce (the paper's)"),
}


def _add_config_flags(parser: argparse.ArgumentParser, defaults: Any, flags: dict[str, tuple[str, str]]) -> None:
  for flag, (field, help_text) in flags.items():
    default = getattr(defaults, field)
    parser.add_argument(f"--{flag}", type=type(default), default=default, help=help_text)


def _config_from_flags(cls: type, args: argparse.Namespace, flags: dict[str, tuple[str, str]]) -> Any:
  return cls(**{field: getattr(args, flag) for flag, (field, _) in flags.items()})


def _generate(args: argparse.Namespace) -> int:
  config = _config_from_flags(zoo_lib.ZooConfig, args, _GENERATE_FLAGS)
  summary = zoo_lib.generate(config, args.out, progress=not args.no_progress)
  acc = summary["accuracy"]
  print(f"zoo: {os.path.abspath(args.out)}")
  print(f"  models: {summary['models']} ({summary['diverged']} diverged, left out)")
  print(f"  test accuracy: min {acc['min']:.4f}, mean {acc['mean']:.4f}, max {acc['max']:.4f}, std {acc['std']:.4f}")
  print(f"  wall time: {summary['seconds']:.1f} s")
  return 0


def _arithmetic(args: argparse.Namespace) -> int:
  config = _config_from_flags(arithmetic.ArithmeticConfig, args, _ARITHMETIC_FLAGS)
  summary = arithmetic.generate(config, args.out, progress=not args.no_progress)
  acc, rate = summary["accuracy"], summary["training"]
  print(f"zoo: {os.path.abspath(args.out)}")
  print(f"  models: {summary['models']} ({summary['diverged']} diverged, left out)")
  print(f"  test per-token accuracy: min {acc['min']:.4f}, mean {acc['mean']:.4f}, max {acc['max']:.4f}")
  print(
    f"  shards: {summary['shards']['total']} ({summary['shards']['reused']} reused); trained {rate['models']} models "
    f"at {rate['models_per_second']:.2f} models/s, {rate['inner_steps_per_second']:.0f} inner steps/s"
  )
  print(f"  wall time: {summary['seconds']:.1f} s")
  return 0


def _predict(args: argparse.Namespace) -> int:
  if args.budget == "paper":
    config = FitConfig.paper(len(zoo_lib.load_split(args.zoo, "train")))
  else:
    config = _config_from_flags(FitConfig, args, _PREDICT_FLAGS)
  start = time.perf_counter()
  run_experiment(
    args.zoo,
    args.out,
    seeds=args.seeds,
    predictors=args.predictors,
    config=config,
    sizes=args.sizes,
    progress=not args.no_progress,
  )
  print(f"results: {os.path.abspath(args.out)}/results.md (total {time.perf_counter() - start:.1f} s)")
  return 0


def _predictor_spec(spec: str) -> str:
  try:
    parse_spec(spec)
  except ValueError as error:
    raise argparse.ArgumentTypeError(str(error)) from None
  return spec


def build_parser() -> argparse.ArgumentParser:
  """The parser of ``python -m experiments.rnn_zoo {generate,predict}``.

  Returns:
    The parser; a parsed namespace's ``handler`` runs its subcommand (see :func:`main`).
  """
  parser = argparse.ArgumentParser(
    prog="python -m experiments.rnn_zoo", description="The Tiny RNN Zoo: predicting test accuracy from weights."
  )
  commands = parser.add_subparsers(dest="command", required=True, metavar="{generate,arithmetic,predict}")
  formatter = argparse.ArgumentDefaultsHelpFormatter
  generate_parser = commands.add_parser(
    "generate", help="train a zoo of tiny IRNNs and write its splits", formatter_class=formatter
  )
  generate_parser.add_argument("--out", required=True, help="folder for {train,valid,test}.npz and zoo.json")
  _add_config_flags(generate_parser, zoo_lib.ZooConfig(), _GENERATE_FLAGS)
  generate_parser.set_defaults(handler=_generate)
  arithmetic_parser = commands.add_parser(
    "arithmetic",
    help="train the paper's zoo of GRU seq2seq models on arithmetic (resumable)",
    formatter_class=formatter,
  )
  arithmetic_parser.add_argument("--out", required=True, help="folder for shards/, {train,valid,test}.npz, zoo.json")
  _add_config_flags(arithmetic_parser, arithmetic.ArithmeticConfig(), _ARITHMETIC_FLAGS)
  arithmetic_parser.set_defaults(handler=_arithmetic)
  predict_parser = commands.add_parser(
    "predict", help="train and score every predictor on a zoo", formatter_class=formatter
  )
  predict_parser.add_argument("--zoo", required=True, help="a zoo folder written by the generate subcommand")
  predict_parser.add_argument("--out", required=True, help="folder for results.md, results.csv and runs.csv")
  predict_parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per predictor")
  predict_parser.add_argument(
    "--predictors",
    nargs="+",
    default=list(PREDICTORS),
    type=_predictor_spec,
    metavar="NAME[@PRESET]",
    help=f"predictors, of {PREDICTORS}; name@preset trains one at a size preset of its own (e.g. unf@bounded)",
  )
  predict_parser.add_argument("--sizes", default="small", choices=list(SIZES), help="the predictors' size preset")
  predict_parser.add_argument(
    "--budget",
    default="flags",
    choices=["flags", "paper"],
    help="paper: BCE, Adam 1e-3, batch 10, 10 epochs, a checkpoint per epoch (overrides the budget flags)",
  )
  _add_config_flags(predict_parser, FitConfig(), _PREDICT_FLAGS)
  predict_parser.set_defaults(handler=_predict)
  for command in (generate_parser, arithmetic_parser, predict_parser):
    command.add_argument("--no_progress", action="store_true", help="no progress bars")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``python -m experiments.rnn_zoo generate ...`` or ``... predict ...``.

  Args:
    argv: the arguments after the program name (default: ``sys.argv[1:]``).

  Returns:
    The exit status, 0 on success.
  """
  args = build_parser().parse_args(argv)
  return args.handler(args)
