"""Pools the meta-training seeds of each learned optimizer in a ``metatrain eval`` folder, paired on eval seeds.

Every optimizer of the evaluation trained the same evaluation seeds. For a learned optimizer meta-trained
with several seeds (workdirs ``KIND_sN``, names ``KIND (step S) [KIND_sN]``), its final loss on an
evaluation seed is the mean over its meta-training seeds; the table pairs these means with every baseline
and every other learned optimizer on the evaluation seeds (mean difference and 95% t interval). The spread
over meta-training seeds is reported beside it: the interval covers the evaluation seeds, not the draw of
another meta-training seed, so the per-seed differences show whether the sign holds for each.

  python -m experiments.learned_optimizers.pooled runs/exp1/eval/mlp_fashion8   # writes pooled.md there
"""

from __future__ import annotations

import collections
import csv
import pathlib
import re
import sys

import numpy as np

from metatrain.evaluation.stats import mean_se, paired_difference

SPLITS = ("train", "test")


def final_losses(folder: pathlib.Path) -> dict[str, dict[str, dict[int, float]]]:
  """``{optimizer: {split: {eval seed: final loss}}}`` from ``curves.csv``."""
  rows = list(csv.DictReader(open(folder / "curves.csv")))
  last = max(int(r["step"]) for r in rows if r["split"] == "test")
  table: dict = collections.defaultdict(lambda: collections.defaultdict(dict))
  for r in rows:
    if r["split"] in SPLITS and int(r["step"]) == last:
      table[r["optimizer"]][r["split"]][int(r["seed"])] = float(r["loss"])
  return table


def kind_of(name: str) -> str:
  """``"unf (step 1000) [unf_s0]"`` -> ``"unf (meta-trained)"``; a baseline's name (``"sgdm"``) is its kind."""
  match = re.search(r"\[(.+)_s\d+\]$", name)
  return f"{match.group(1)} (meta-trained)" if match else name


def pooled(folder: pathlib.Path) -> str:
  """The pooled comparison as markdown."""
  table = final_losses(folder)
  groups = collections.defaultdict(list)
  for name in table:
    groups[kind_of(name)].append(name)
  seeds = sorted(next(iter(table.values()))["test"])
  learned = [kind for kind in groups if kind.endswith("(meta-trained)")]

  def values(kind: str, split: str) -> np.ndarray:
    return np.mean([[table[n][split][s] for s in seeds] for n in groups[kind]], axis=0)

  lines = [
    f"Final loss per optimizer, mean +- s.e. over {len(seeds)} evaluation seeds (learned optimizers: the mean over "
    "their meta-training seeds on each evaluation seed; in brackets, each meta-training seed's mean).",
    "",
    "| optimizer | meta-training seeds | final train | final test |",
    "|---|---|---|---|",
  ]
  for kind in groups:
    cells = []
    for split in SPLITS:
      cell = "{:.4f} +- {:.4f}".format(*mean_se(values(kind, split)))
      if kind in learned:
        cell += " [" + ", ".join(f"{np.mean(list(table[n][split].values())):.4f}" for n in groups[kind]) + "]"
      cells.append(cell)
    lines.append(f"| {kind} | {len(groups[kind]) if kind in learned else '-'} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "Paired on the evaluation seeds: mean difference `a - b` of the final loss [95% t interval]; negative: `a` ends "
    "lower; `*`: the interval excludes 0. `per seed`: the mean difference of each of `a`'s meta-training seeds.",
    "",
    "| a | b | final train | final test | per seed (train) |",
    "|---|---|---|---|---|",
  ]
  kinds = list(groups)
  for a in learned:
    for b in kinds:
      if b == a or (b in learned and kinds.index(b) < kinds.index(a)):
        continue
      cells = []
      for split in SPLITS:
        d = paired_difference(values(a, split), values(b, split))
        cells.append(f"{d}{' *' if d.excludes_zero() else ''}")
      per_seed = [np.mean([table[n]["train"][s] for s in seeds]) - np.mean(values(b, "train")) for n in groups[a]]
      cells.append(", ".join(f"{x:+.4f}" for x in per_seed))
      lines.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  folder = pathlib.Path(argv[0])
  text = pooled(folder)
  (folder / "pooled.md").write_text(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
