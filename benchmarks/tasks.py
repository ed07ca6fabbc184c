"""Inner training speed of every task with Adam, for 1 and 16 vmapped copies.

Per task: training steps per second (one step = sample a batch on the device,
loss and gradient, Adam update), for a single run and for 16 runs vmapped
(steps of all copies counted), and the share of a step spent sampling data,
measured against the same step on a fixed batch. Each measurement runs a
`lax.scan` of K steps in one jitted call, as meta-training does. Not a test.
Run with `python -m benchmarks.tasks` (or `make bench`).
"""

from __future__ import annotations

import argparse
import functools

import jax
import optax

import tasks
from benchmarks.timing import best_seconds

LEARNING_RATE = 1e-3


@functools.partial(jax.jit, static_argnums=(3, 4))
def _unroll(task, params, key, steps, fixed):
  optimizer = optax.adam(LEARNING_RATE)
  batch = task.sample_batch(key)

  def step(carry, k):
    params, state = carry
    loss, grads = jax.value_and_grad(task.loss)(params, batch if fixed else task.sample_batch(k))
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, steps))
  return params, losses


@functools.partial(jax.jit, static_argnums=(3, 4))
def _unroll_many(task, params, keys, steps, fixed):
  return jax.vmap(lambda p, k: _unroll(task, p, k, steps, fixed))(params, keys)


def _steps_per_second(task, copies, steps, fixed, repeats):
  key = jax.random.key(0)
  if copies == 1:
    params = task.init(key)
    run = lambda: _unroll(task, params, key, steps, fixed)  # noqa: E731
  else:
    keys = jax.random.split(key, copies)
    params = jax.vmap(task.init)(keys)
    run = lambda: _unroll_many(task, params, keys, steps, fixed)  # noqa: E731
  return copies * steps / best_seconds(run, repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100, help="steps per jitted unroll (a tenth for the CNN)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
    "--tasks", nargs="*", default=["mlp_fashion8", "cnn_fashion16", "rnn_lm", "lstm_lm", "transformer_lm"]
  )
  args = parser.parse_args()
  print(f"Adam, {args.steps}-step jitted unrolls, {jax.devices()[0].platform}, best of {args.repeats}")
  print("| task | batch | steps/s, 1 run | steps/s, 16 vmapped (all copies) | same, fixed batch | sampling share |")
  print("|---|---|---|---|---|---|")
  for name in args.tasks:
    task = tasks.get(name)
    steps = max(1, args.steps // 10) if name.startswith("cnn") else args.steps
    one = _steps_per_second(task, 1, steps, False, args.repeats)
    many = _steps_per_second(task, 16, steps, False, args.repeats)
    fixed = _steps_per_second(task, 16, steps, True, args.repeats)
    share = 1.0 - many / fixed  # negative when within noise
    print(f"| {name} | {task.batch_size} | {one:,.0f} | {many:,.0f} | {fixed:,.0f} | {100 * share:+.1f}% |")


if __name__ == "__main__":
  main()
