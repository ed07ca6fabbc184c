"""Meta-training throughput: learned optimizers against Adam, and PES against plain unrolls.

(1) Inner steps per second on a task, 16 runs vmapped in one jitted
`lax.scan`, with Adam, the Deep Sets learned optimizer and the UNF learned
optimizer. (2) PES throughput (16 antithetic pairs = 32 runs, truncation K)
in inner steps per second, against the same 32 runs advanced K steps by the
learned optimizer without the estimator (no noise, no resets, no estimate).
Not a test. Run with `python -m benchmarks.metatrain` (or `make bench`).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import tasks
from benchmarks.timing import best_seconds
from metatrain import PES, DeepSetsLOpt, LearnedOptimizerProblem, UNFLOpt, adam, learned_curves, training_curves
from metatrain.estimators import common


def inner_rates(task, runs, steps, repeats):
  keys = jax.random.split(jax.random.key(0), runs)
  baseline = adam(1e-3)  # one object: the transformation is a static argument (a new one recompiles)
  rates = {"Adam": runs * steps / best_seconds(lambda: training_curves(task, baseline, keys, steps), repeats)}
  for lopt in (DeepSetsLOpt(task.space), UNFLOpt(task.space)):
    theta = lopt.init_meta(jax.random.key(1))
    seconds = best_seconds(lambda lopt=lopt, theta=theta: learned_curves(task, lopt, theta, keys, steps), repeats)
    rates[type(lopt).__name__] = runs * steps / seconds
  return rates


def pes_rates(task, lopt, pairs, truncation, repeats):
  problem = LearnedOptimizerProblem(task, lopt, horizon=100 * truncation)
  theta = lopt.init_meta(jax.random.key(1))
  estimator = PES(num_pairs=pairs, truncation=truncation)
  state = estimator.init(problem, theta, jax.random.key(2))
  pes_step = jax.jit(lambda problem, state, key: estimator.step(problem, state, theta, key))
  pes_seconds = best_seconds(lambda: pes_step(problem, state, jax.random.key(3)), repeats)

  thetas = jax.tree.map(lambda t: jnp.broadcast_to(t, (pairs, *t.shape)), theta)

  @jax.jit
  def plain(problem, thetas, state, key):  # the same 2 x pairs runs, same vmapped scan, no estimator
    return common.unroll_pairs(problem, thetas, thetas, state.pos, state.neg, key, truncation)

  plain_seconds = best_seconds(lambda: plain(problem, thetas, state, jax.random.key(3)), repeats)
  inner = estimator.inner_steps(problem.horizon)
  return inner / pes_seconds, inner / plain_seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tasks", nargs="*", default=["mlp_fashion8", "rnn_lm", "transformer_lm"])
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"{jax.devices()[0].platform}, 16 runs vmapped, {args.steps}-step scans, best of {args.repeats}")
  print("| task | Adam | Deep Sets LOpt | UNF LOpt | UNF / Deep Sets step time |")
  print("|---|---|---|---|---|")
  for name in args.tasks:
    task = tasks.get(name)
    r = inner_rates(task, 16, args.steps, args.repeats)
    ratio = r["DeepSetsLOpt"] / r["UNFLOpt"]
    print(f"| {name} | {r['Adam']:,.0f} | {r['DeepSetsLOpt']:,.0f} | {r['UNFLOpt']:,.0f} | {ratio:.2f}x |")
  print()
  print(f"PES, 16 antithetic pairs (32 runs), K={args.steps}, UNF LOpt, inner steps per second")
  print("| task | PES | plain vmapped unroll | PES overhead |")
  print("|---|---|---|---|")
  for name in args.tasks:
    task = tasks.get(name)
    pes, plain = pes_rates(task, UNFLOpt(task.space), 16, args.steps, args.repeats)
    print(f"| {name} | {pes:,.0f} | {plain:,.0f} | {plain / pes:.2f}x |")


if __name__ == "__main__":
  main()
