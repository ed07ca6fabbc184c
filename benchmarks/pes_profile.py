"""Where the time of a meta-training step goes: the PES step of the UNF learned optimizer, and its parts.

For one jitted estimate (``--pairs`` antithetic pairs, truncation ``--truncation``) on ``--task``, and for
each part of it compiled on its own over the same ``2 x pairs`` runs and ``truncation`` steps:

- ``task``: the task's forward and backward pass and plain SGD (the inner problem without the learned
  optimizer);
- ``update``: the learned optimizer's update on fixed gradients (features, momenta, ``f``, the base term);
- ``f``: the network ``f`` alone on fixed features;

it reports XLA's cost analysis of the compiled program, the best of ``--repeats`` wall times, and so the
achieved GFLOP/s and GB/s, next to what this machine reaches on a large float32 matmul (its compute
ceiling) and on elementwise passes over 64 MB (memory) and 4 MB (cache, the size of one layer of ``f``'s
activations over all runs). XLA's cost analysis counts a loop's body once, whatever its trip count: the
MFLOP and MB columns are those of one step of every run (the body of the ``truncation``-step scan; the
estimate's work outside the scan, drawing the noise and summing the estimate, is left out), and the rates
multiply them by ``truncation``.
Not a test. Run with ``python -m benchmarks.pes_profile`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import tasks
from benchmarks.timing import best_seconds
from metatrain import ESTIMATORS, LearnedOptimizerProblem, UNFLOpt
from metatrain.learned_optimizers import PRESETS, features, transforms


def cost(fn: Callable, *args: Any) -> tuple[Callable, float, float]:
  """``fn`` compiled for ``args``, and XLA's FLOPs and bytes accessed for one call."""
  compiled = jax.jit(fn).lower(*args).compile()
  analysis = compiled.cost_analysis() or {}
  return compiled, float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def row(name: str, fn: Callable, args: tuple, runs: int, steps: int, repeats: int) -> dict[str, float | str]:
  """Cost analysis (of one step of every run: the scan's body) and best wall time of ``fn(*args)``, which
  advances ``runs`` runs ``steps`` steps."""
  compiled, flops, nbytes = cost(fn, *args)
  seconds = best_seconds(lambda: compiled(*args), repeats)
  return {
    "part": name,
    "ms": 1e3 * seconds,
    "inner_per_s": runs * steps / seconds,
    "mflop": flops / 1e6,
    "mb": nbytes / 1e6,
    "gflop_s": steps * flops / seconds / 1e9,
    "gb_s": steps * nbytes / seconds / 1e9,
  }


def ceilings(repeats: int) -> dict[str, float]:
  """This machine's float32 GFLOP/s on a 2048 x 2048 matmul, and GB/s of an elementwise pass (one read, one
  write) over 64 MB and over 4 MB."""
  a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  out = {"gflop_s": 2 * 2048**3 / best_seconds(lambda: matmul(a), repeats) / 1e9}
  scale = jax.jit(lambda x: 1.5 * x + 1.0)
  for megabytes in (64, 4):
    x = jax.random.normal(jax.random.key(1), (megabytes * 1024 * 1024 // 4,), jnp.float32)
    seconds = best_seconds(functools.partial(scale, x), repeats)
    out[f"gb_s_{megabytes}"] = 2 * x.nbytes / seconds / 1e9  # one read and one write of x
  return out


def parts(task_name: str, preset: str, estimator_name: str, pairs: int, truncation: int, repeats: int) -> list:
  """The rows of the table: the whole estimate, then its parts on the same runs and steps."""
  task = tasks.get(task_name)
  options = {k: v for k, v in PRESETS[preset].items() if k != "update_scale"}
  lopt = UNFLOpt(task.space, width=32, **options)
  theta = lopt.init_meta(jax.random.key(1))
  horizon = 20 * truncation
  problem = LearnedOptimizerProblem(task, lopt, horizon=horizon)
  estimator: Any = ESTIMATORS[estimator_name](num_pairs=pairs, truncation=truncation)  # type: ignore[call-arg]
  state = estimator.init(problem, theta, jax.random.key(2))
  runs, steps = 2 * pairs, truncation
  estimate = lambda s, k: estimator.step(problem, s, theta, k)  # noqa: E731
  rows = [row(f"{estimator_name} estimate", estimate, (state, jax.random.key(3)), runs, steps, repeats)]

  keys = jax.random.split(jax.random.key(4), runs)
  params = jax.vmap(task.init)(keys)

  def task_only(params, key):  # forward, backward and an SGD step of every run, `steps` times
    def body(params, key):
      batch_keys = jax.random.split(key, runs)
      grads = jax.vmap(lambda p, k: jax.grad(task.loss)(p, task.sample_batch(k, "train")))(params, batch_keys)
      return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads), None

    return jax.lax.scan(body, params, jax.random.split(key, steps))[0]

  rows.append(row("task (fwd + bwd + SGD)", task_only, (params, jax.random.key(5)), runs, steps, repeats))

  thetas = jax.tree.map(lambda t: jnp.broadcast_to(t, (runs, *t.shape)), theta)
  grads = jax.tree.map(lambda p: 0.01 * jax.random.normal(jax.random.key(6), p.shape, p.dtype), params)

  def update_only(thetas, params, grads):  # the learned optimizer's update of every run, `steps` times
    def one(theta, params, grads):
      optimizer = lopt.optimizer(theta, total_steps=horizon)

      def body(carry, _):
        params, opt_state = carry
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

      return jax.lax.scan(body, (params, optimizer.init(params)), None, length=steps)[0][0]

    return jax.vmap(one)(thetas, params, grads)

  rows.append(row("learned update (all of it)", update_only, (thetas, params, grads), runs, steps, repeats))

  # f reads every feature but the time ones, which it adds once per tensor (as the chain calls it).
  num_features = lopt.num_features - len(features.TIME_SCALES)
  x = jax.tree.map(lambda p: jax.random.normal(jax.random.key(7), (*p.shape, num_features), p.dtype), params)

  def f_only(thetas, x):  # the network f of every run, `steps` times (its input perturbed so no step is reused)
    def one(theta, x):
      def body(total, i):
        out = lopt.f(theta, jax.tree.map(lambda h: h + 1e-3 * i, x), i)
        return jax.tree.map(jnp.add, total, out), None

      zero = jax.tree.map(lambda h: jnp.zeros(h.shape[:-1], h.dtype), x)
      return jax.lax.scan(body, zero, jnp.arange(steps))[0]

    return jax.vmap(one)(thetas, x)

  rows.append(row("f alone", f_only, (thetas, x), runs, steps, repeats))

  # The chain's learned_correction link itself (momenta, features), with an f that only reads the features.
  correction = transforms.learned_correction(
    lambda x, step: jax.tree.map(lambda h: h.sum(-1), x), second_moments=lopt.features == "adam"
  )

  def features_only(params, grads):  # the 8 (+6) features and their momenta of every run, `steps` times
    def one(params, grads):
      def body(carry, _):
        state, total = carry
        out, state = correction.update(grads, state, params)
        return (state, jax.tree.map(jnp.add, total, out)), None

      init = (correction.init(params), jax.tree.map(jnp.zeros_like, params))
      return jax.lax.scan(body, init, None, length=steps)[0][1]

    return jax.vmap(one)(params, grads)

  rows.append(row("features and momenta", features_only, (params, grads), runs, steps, repeats))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="mlp_fashion8")
  parser.add_argument("--preset", default="nominal", choices=sorted(PRESETS))
  parser.add_argument("--estimator", default="pes", choices=sorted(ESTIMATORS))
  parser.add_argument("--pairs", type=int, default=8)
  parser.add_argument("--truncation", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  top = ceilings(args.repeats)
  print(
    f"{jax.devices()[0].platform}, {args.task}, UNF ({args.preset}), {args.estimator}, {args.pairs} pairs, "
    f"K={args.truncation}, best of {args.repeats}. This machine: {top['gflop_s']:.0f} GFLOP/s on a 2048^2 "
    f"matmul; {top['gb_s_64']:.1f} GB/s (64 MB) and {top['gb_s_4']:.1f} GB/s (4 MB) on an elementwise pass"
  )
  print("| part | ms | inner steps/s | share of the estimate | MFLOP per step | MB per step | GFLOP/s | GB/s |")
  print("|---|---|---|---|---|---|---|---|")
  rows = parts(args.task, args.preset, args.estimator, args.pairs, args.truncation, args.repeats)
  for r in rows:
    print(
      f"| {r['part']} | {r['ms']:.1f} | {r['inner_per_s']:,.0f} | {r['ms'] / rows[0]['ms']:.0%} | "
      f"{r['mflop']:,.0f} | {r['mb']:.1f} | {r['gflop_s']:.1f} | {r['gb_s']:.1f} |"
    )


if __name__ == "__main__":
  main()
