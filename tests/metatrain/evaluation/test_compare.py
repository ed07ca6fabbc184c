"""`metatrain eval` end to end on the smoke config's checkpoint: files, table, CSV and TensorBoard agree."""

import csv

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tasks
from metatrain import adam, cli, grid_search, learned_curves, load_learned_optimizer
from metatrain.evaluation import compare

STEPS, SEEDS, EVERY = 20, 2, 5


@pytest.fixture(scope="module")
def workdir(smoke_run):
  return smoke_run.workdir


def _eval(workdir, task, out, *extra):
  args = ["eval", "--checkpoint", str(workdir), "--task", task, "--steps", str(STEPS), "--seeds", str(SEEDS)]
  return cli.main([*args, "--every", str(EVERY), "--tune_seeds", "1", "--out", str(out), *extra])


def _rows(path):
  with open(path) as file:
    return list(csv.DictReader(file))


def test_eval_writes_curves_plot_table_and_tensorboard(workdir, tmp_path):
  assert _eval(workdir, "mlp_fashion8", tmp_path) == 0
  assert (tmp_path / "curves.png").stat().st_size > 10_000
  table = compare.parse_summary((tmp_path / "summary.md").read_text())
  learned = "unf (step 4)"
  assert set(table) == {"adam", "sgdm", "adam_cosine", "adamw_cosine", learned}
  rows = _rows(tmp_path / "curves.csv")
  for name, columns in table.items():
    assert all(np.isfinite(v) for cell in columns.values() for v in cell)
    # The table, recomputed from the CSV: final valid loss of each seed, mean and standard error.
    for split in ("valid", "test"):
      final = [float(r["loss"]) for r in rows if r["optimizer"] == name and r["split"] == split and r["step"] == "20"]
      assert len(final) == SEEDS
      mean, se = np.mean(final), np.std(final, ddof=1) / np.sqrt(SEEDS)
      np.testing.assert_allclose(columns[f"final {split}"], (mean, se), atol=6e-5)
    best = [
      min(float(r["loss"]) for r in rows if r["optimizer"] == name and r["split"] == "valid" and r["seed"] == seed)
      for seed in {r["seed"] for r in rows}
    ]
    np.testing.assert_allclose(columns["best valid"][0], np.mean(best), atol=6e-5)
  # The paired differences, recomputed from the CSV: the learned optimizer against Adam-cosine, seed by seed.
  text = (tmp_path / "summary.md").read_text()
  row = next(line for line in text.splitlines() if line.startswith(f"| {learned} | adam_cosine |"))
  final = {
    name: [float(r["loss"]) for r in rows if r["optimizer"] == name and r["split"] == "test" and r["step"] == "20"]
    for name in (learned, "adam_cosine")
  }
  assert f"{np.mean(np.subtract(final[learned], final['adam_cosine'])):+.4f} [" in row.split("|")[4]
  # The learned optimizer's training batch losses are those of an independent run with the same keys.
  task = tasks.get("mlp_fashion8")
  lopt, theta = load_learned_optimizer(workdir, space=task.space)
  keys = jax.numpy.stack([jax.random.key(compare.EVAL_SEED + i) for i in range(SEEDS)])
  expected = np.asarray(learned_curves(task, lopt, theta, keys, STEPS))
  seeds = sorted({r["seed"] for r in rows})
  batch_rows = [r for r in rows if r["optimizer"] == learned and r["split"] == "train_batch"]
  got = [[float(r["loss"]) for r in batch_rows if r["seed"] == s] for s in seeds]
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  assert {int(s) for s in seeds}.isdisjoint(range(100))  # evaluation seeds are not meta-training or tuning seeds
  # TensorBoard holds the mean curves.
  events = EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  valid = events.Scalars("valid/adam")
  assert [e.step for e in valid] == list(range(0, STEPS + 1, EVERY))
  adam_final = [
    float(r["loss"]) for r in rows if r["optimizer"] == "adam" and r["split"] == "valid" and r["step"] == "20"
  ]
  np.testing.assert_allclose(valid[-1].value, np.mean(adam_final), rtol=1e-5)


def test_eval_on_a_held_out_task_and_clear_errors(workdir, tmp_path, capsys):
  # Widths and input size differ from the meta-training task: the same theta runs.
  extra = ["--transfer_from", "mlp_fashion8", "--baselines", "adam"]  # fewer baselines: they are tested above
  assert _eval(workdir, "mlp_fashion16_wide", tmp_path / "wide", *extra) == 0
  table = compare.parse_summary((tmp_path / "wide" / "summary.md").read_text())
  assert np.isfinite(table["unf (step 4)"]["final valid"][0])
  # Adam at the rate tuned on mlp_fashion8 (same steps and tuning seed), run untuned on the wide task.
  rate, _ = grid_search(tasks.get("mlp_fashion8"), adam, compare.ADAM_RATES, steps=STEPS, seeds=[compare.TUNE_SEED])
  rows = [
    line
    for line in (tmp_path / "wide" / "summary.md").read_text().splitlines()
    if line.startswith("| adam @ mlp_fashion8 |")
  ]
  assert len(rows) == 1 and f"tuned: lr {rate:g} |" in rows[0]
  assert set(table) == {"adam", "adam @ mlp_fashion8", "adam_cosine @ mlp_fashion8", "unf (step 4)"}
  # Another architecture, an unknown task, a folder without checkpoints: exit 2 with a message.
  assert _eval(workdir, "cnn_fashion16", tmp_path / "cnn") == 2
  assert "meta-trained on another architecture" in capsys.readouterr().err
  assert _eval(workdir, "mlp_mnist", tmp_path / "x") == 2
  assert "unknown task 'mlp_mnist'" in capsys.readouterr().err
  assert _eval(workdir, "mlp_fashion8", tmp_path / "z", "--baselines", "lion") == 2
  assert "unknown baselines ['lion']" in capsys.readouterr().err
  assert _eval(tmp_path, "mlp_fashion8", tmp_path / "y") == 2
  assert "no checkpoints in" in capsys.readouterr().err
  assert not (tmp_path / "cnn").exists()


def test_baselines_are_tuned_on_the_split_asked_for(workdir, tmp_path, monkeypatch):
  """--tune_split train: the grid search minimises the final training loss (the default, valid, is the
  split every other evaluation here tunes on)."""
  splits = []
  real = compare.grid_search

  def recording(*args, split, **kwargs):
    splits.append(split)
    return real(*args, split=split, **kwargs)

  monkeypatch.setattr(compare, "grid_search", recording)
  assert _eval(workdir, "mlp_fashion8", tmp_path, "--baselines", "adam", "--tune_split", "train") == 0
  assert splits == ["train"]
  rate = next(float(r["learning_rate"]) for r in _rows(tmp_path / "curves.csv") if r["optimizer"] == "adam")
  task = tasks.get("mlp_fashion8")
  expected, _ = grid_search(task, adam, compare.ADAM_RATES, steps=STEPS, seeds=(compare.TUNE_SEED,), split="train")
  assert rate == pytest.approx(expected)


def test_names_say_the_run_where_two_optimizers_are_of_one_kind(tmp_path):
  from types import SimpleNamespace

  def item(kind, step, path):
    return SimpleNamespace(learned_optimizer=SimpleNamespace(name=kind), step=step, path=tmp_path / path)

  loaded = [
    item("unf", 300, "runs/unf_s0/selected"),
    item("unf", 400, "runs/unf_s1/checkpoints/400"),
    item("deep_sets", 300, "runs/deep_sets_s0/selected"),
  ]
  assert compare.names_of(loaded) == ["unf (step 300) [unf_s0]", "unf (step 400) [unf_s1]", "deep_sets (step 300)"]
  # Workdirs of one name in different folders: the folders above them that tell them apart are named too.
  loaded = [
    item("unf", 1000, "runs/tasks4_long/rnn_lm_unf/selected"),
    item("unf", 625, "runs/tasks4_long_per_part_lr/rnn_lm_unf/selected"),
    item("unf", 500, "runs/x/a/unf_s0/selected"),
    item("unf", 600, "runs/y/a/unf_s0/checkpoints/600"),
    item("deep_sets", 1000, "runs/tasks4_long/rnn_lm_deep_sets/selected"),
    item("unf", 875, "metatrain/pretrained/rnn_lm_unf"),  # a shipped optimizer: its own folder
  ]
  assert compare.names_of(loaded) == [
    "unf (step 1000) [tasks4_long/rnn_lm_unf]",
    "unf (step 625) [tasks4_long_per_part_lr/rnn_lm_unf]",
    "unf (step 500) [x/a/unf_s0]",
    "unf (step 600) [y/a/unf_s0]",
    "deep_sets (step 1000)",
    "unf (step 875) [pretrained/rnn_lm_unf]",
  ]
