"""Probe: can one AdamW-cosine setting hold on both mlp_fashion8 and a small training set?

Final train and valid loss (never test) of AdamW-cosine over a grid of (rate, weight decay), 4 tuning seeds,
on ``mlp_fashion8`` and on the meta-training family's small members. It says whether a learned weight decay
alone can reach issue 22's small-data target before a meta-training run is spent on it.

  .venv/bin/python -m experiments.learned_optimizers.probe_weight_decay
"""

import itertools
import sys

import jax
import jax.numpy as jnp

import tasks
from metatrain.evaluation import baselines
from metatrain.evaluation.curves import train_run

STEPS = 2000
SEEDS = 4


def losses(task, lr, wd):
  def run(key):
    params, _ = train_run(task, baselines.adamw_cosine(lr, steps=STEPS, weight_decay=wd), key, STEPS)
    return jnp.stack([task.eval_loss(params, "train"), task.eval_loss(params, "valid")])

  keys = jax.random.split(jax.random.key(baselines.TUNE_SEED), SEEDS)
  return jax.jit(jax.vmap(run))(keys).mean(0)


def main(argv):
  names = argv or ["mlp_fashion8", "mlp_fashion8_small"]
  print("| task | lr | wd | final train | final valid |\n|---|---|---|---|---|")
  for name in names:
    task = tasks.get(name)
    for lr, wd in itertools.product((0.01, 0.03, 0.1), (0.0, 0.01, 0.1, 0.3, 1.0)):
      train, valid = (float(x) for x in losses(task, lr, wd))
      print(f"| {name} | {lr} | {wd} | {train:.4f} | {valid:.4f} |", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
