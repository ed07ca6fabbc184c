"""Benchmark of generating the GRU arithmetic zoo: inner steps per second over all models, and models per second.

For each batch size of the zoo, one shard of ``--models`` models (hidden ``--hidden``) is trained together for
``--steps`` steps (one jitted, vmapped ``lax.scan`` per chunk, as :func:`experiments.rnn_zoo.arithmetic.generate`
runs it), after one warm-up run that compiles it; the best of ``--repeats`` runs. Prints the inner steps per
second over all models of the shard, then the models per second of a whole zoo of the default configuration
(its mean step count, its batch sizes in equal shares), projected from them. Not a test: numbers depend on the
machine. Run with `make bench` or `python -m benchmarks.zoo_generation`.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from benchmarks.timing import best_seconds
from experiments.rnn_zoo import arithmetic


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", type=int, default=250, help="models per shard (the default shard size)")
  parser.add_argument("--hidden", type=int, default=arithmetic.ArithmeticConfig().hidden)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  zoo = arithmetic.ArithmeticConfig(hidden=args.hidden)
  print(
    f"GRU seq2seq, hidden {args.hidden}, {args.models} models per shard, {args.steps} steps, best of {args.repeats}"
  )
  print("| batch size | inner steps/s (all models) | examples/s |\n|---|---|---|")
  seconds_per_step = []
  for batch in zoo.batch_sizes:
    config = dataclasses.replace(
      zoo, num_models=args.models, batch_sizes=(batch,), min_steps=args.steps, max_steps=args.steps
    )
    hyper = arithmetic.sample_hyperparameters(config)
    seconds = best_seconds(
      lambda c=config, h=hyper: arithmetic.train_models(c, h, np.arange(args.models)), args.repeats
    )
    rate = args.models * args.steps / seconds
    seconds_per_step.append(1 / rate)
    print(f"| {batch} | {rate:,.0f} | {rate * batch:,.0f} |")
  mean_steps = (zoo.min_steps + zoo.max_steps) / 2
  models_per_second = 1 / (mean_steps * float(np.mean(seconds_per_step)))
  print(
    f"zoo of the default configuration ({zoo.min_steps}-{zoo.max_steps} steps, mean {mean_steps:.0f}): "
    f"{models_per_second:.2f} models/s, {zoo.num_models / models_per_second / 60:.1f} min for "
    f"{zoo.num_models:,} models, {10_000 / models_per_second / 60:.1f} min for 10,000 (training and evaluation)"
  )


if __name__ == "__main__":
  main()
