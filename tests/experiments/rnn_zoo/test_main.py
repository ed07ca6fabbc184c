"""The experiment driver and the command line ``python -m experiments.rnn_zoo {generate,predict}``."""

import csv
import dataclasses
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import unf
from experiments.rnn_zoo import fit, main, predictors, stats


def test_generate_flags_give_the_tiny_config(tiny, zoo_folder):
  """The zoo the command line wrote was generated with exactly the tiny config (all its fields)."""
  written = json.loads((zoo_folder / "zoo.json").read_text())["config"]
  assert written == json.loads(json.dumps(dataclasses.asdict(tiny)))


def test_predict_defaults_are_the_full_experiment():
  args = main.build_parser().parse_args(["predict", "--zoo", "z", "--out", "o"])
  defaults = fit.FitConfig()
  assert (args.steps, args.batch_size, args.learning_rate, args.eval_every, args.objective) == (
    1500,
    32,
    1e-3,
    100,
    "mse",
  )
  assert (args.steps, args.batch_size, args.learning_rate, args.eval_every, args.objective) == dataclasses.astuple(
    defaults
  )
  assert args.sizes == "small" and args.budget == "flags"
  assert args.predictors == ["unf", "deep_sets", "statnn"] and args.seeds == 3 and not args.no_progress


def test_the_parser_refuses_a_missing_subcommand_and_the_old_predictor_key(capsys):
  parser = main.build_parser()
  with pytest.raises(SystemExit):
    parser.parse_args([])
  assert "{generate,arithmetic,predict}" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    parser.parse_args(["predict", "--zoo", "z", "--out", "o", "--predictors", "deepsets"])
  assert "unknown predictor 'deepsets'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    parser.parse_args(["predict", "--zoo", "z", "--out", "o", "--predictors", "unf@wide"])
  assert "unknown size preset 'wide' in 'unf@wide'" in capsys.readouterr().err


def test_experiment_driver_writes_results(zoo_folder, tmp_path, capsys):
  out = tmp_path / "results"
  argv = ["predict", "--zoo", str(zoo_folder), "--out", str(out), "--seeds", "2", "--steps", "40"]
  argv += ["--eval_every", "40", "--batch_size", "4", "--learning_rate", "0.003"]
  assert main.main([*argv, "--predictors", "statnn", "deep_sets", "--no_progress"]) == 0
  table = (out / "results.md").read_text()
  assert "Budget: 40 steps, batch 4, Adam 0.003, objective mse, checkpoint every 40 steps" in table
  assert "Predictor sizes: small. Seeds: 2." in table
  assert "| StatNN - Deep Sets |" in table and "bootstrap 95% interval" in table
  saved = np.load(out / "predictions.npz")
  assert saved["statnn"].shape == saved["deep_sets"].shape == (2, saved["test_accuracy"].size)
  with open(out / "intervals.csv") as file:
    interval_rows = list(csv.DictReader(file))
  assert [row["kind"] for row in interval_rows] == ["predictor", "predictor", "paired"]
  assert saved["test_accuracy"].size == 1 and all(math.isnan(float(row["low"])) for row in interval_rows)
  assert "| StatNN |" in table and "| Deep Sets |" in table and "0.8839" in table and "0.8306" in table
  with open(out / "runs.csv") as file:
    runs = list(csv.DictReader(file))
  with open(out / "results.csv") as file:
    results = list(csv.DictReader(file))
  assert [(row["predictor"], row["seed"]) for row in runs] == [
    ("statnn", "0"),
    ("statnn", "1"),
    ("deep_sets", "0"),
    ("deep_sets", "1"),
  ]
  # the summary is the mean over the per-seed rows
  for run in runs:  # the saved predictions are those scored
    tau = stats.kendall_tau(saved[run["predictor"]][int(run["seed"])], saved["test_accuracy"])
    assert float(run["test_tau"]) == pytest.approx(tau, nan_ok=True)
  for row in results:
    taus = [float(run["test_tau"]) for run in runs if run["predictor"] == row["predictor"]]
    assert float(row["test_tau"]) == pytest.approx(np.mean(taus), nan_ok=True)
  assert "| StatNN |" in capsys.readouterr().out


def test_intervals_are_the_bootstrap_of_the_seeds_predictions():
  rng = np.random.default_rng(0)
  accuracy = rng.uniform(size=40)
  rows = [
    {"predictor": name, "seed": s, "test_predictions": accuracy + noise * rng.normal(size=40)}
    for name, noise in (("unf", 0.05), ("statnn", 0.3), ("deep_sets", 1.0))
    for s in range(3)
  ]
  per_predictor, paired = main.intervals(rows, accuracy, num_resamples=300, seed=4)
  stacked = {n: np.stack([r["test_predictions"] for r in rows if r["predictor"] == n]) for n in ("unf", "statnn")}
  assert per_predictor[0] == {
    "predictor": "unf",
    **stats.bootstrap_tau(stacked["unf"], accuracy, num_resamples=300, seed=4),
  }
  expected = stats.paired_tau_difference(stacked["unf"], stacked["statnn"], accuracy, num_resamples=300, seed=4)
  assert paired[0] == {"a": "unf", "b": "statnn", **expected}
  assert [(row["a"], row["b"]) for row in paired] == list(main.COMPARISONS)
  assert paired[0]["low"] > 0  # 0.05 noise ranks better than 0.3 noise on 40 models
  table = main.intervals_table(per_predictor, paired)
  assert "| UNF (invariant) - StatNN | +" in table


def test_a_predictor_at_a_preset_of_its_own_is_compared_with_the_others_on_the_same_test_models():
  rng = np.random.default_rng(1)
  accuracy = rng.uniform(size=30)
  names = ("unf", "unf@bounded", "statnn")
  rows = [
    {"predictor": name, "seed": s, "test_predictions": accuracy + noise * rng.normal(size=30)}
    for name, noise in zip(names, (0.05, 0.2, 0.5))
    for s in range(2)
  ]
  _, paired = main.intervals(rows, accuracy, num_resamples=200, seed=2)
  assert [(row["a"], row["b"]) for row in paired] == [
    ("unf", "statnn"),
    ("unf@bounded", "statnn"),
    ("unf@bounded", "unf"),
  ]
  stacked = {n: np.stack([r["test_predictions"] for r in rows if r["predictor"] == n]) for n in names}
  expected = stats.paired_tau_difference(stacked["unf@bounded"], stacked["unf"], accuracy, num_resamples=200, seed=2)
  assert paired[2] == {"a": "unf@bounded", "b": "unf", **expected}
  assert "| UNF (invariant) [bounded] - UNF (invariant) |" in main.intervals_table([], paired)


def test_summary_mean_and_standard_error():
  rows = [
    {"predictor": "unf", "test_tau": t, "val_tau": v, "parameters": 10, "seconds": 1.0}
    for t, v in [(0.5, 0.1), (0.7, 0.2), (0.9, 0.3)]
  ]
  (summary,) = main.summarize(rows)
  assert summary["test_tau"] == pytest.approx(0.7)
  assert summary["test_tau_se"] == pytest.approx(0.2 / math.sqrt(3))  # sample std 0.2, three seeds
  assert summary["val_tau_se"] == pytest.approx(0.1 / math.sqrt(3))
  assert summary["paper_test_tau"] == 0.8968


def test_the_package_runs_as_a_module():
  """``python -m experiments.rnn_zoo`` reaches this parser (one subprocess: it imports jax and flax)."""
  done = subprocess.run(
    [sys.executable, "-m", "experiments.rnn_zoo", "predict", "--help"],
    cwd=pathlib.Path(__file__).resolve().parents[3],  # the repository root
    capture_output=True,
    text=True,
    check=True,
  )
  assert "--predictors" in done.stdout and "deep_sets" in done.stdout and "(default: 100)" in done.stdout


def test_a_spec_trains_the_predictor_at_its_own_preset(loaded, budget):
  row = main.run_seed("deep_sets@paper", loaded, 0, config=budget, sizes="small", progress=False)
  space = loaded["train"].space
  count = {
    sizes: unf.num_parameters(
      predictors.make_predictor("deep_sets", space, train_inputs=None, rngs=nnx.Rngs(0), sizes=sizes)
    )
    for sizes in ("small", "paper")
  }
  assert row["predictor"] == "deep_sets@paper" and count["paper"] != count["small"]
  assert row["parameters"] == count["paper"]
