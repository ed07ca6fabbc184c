"""The accelerator check: four measurements on this machine's accelerator, each against the same on its CPU.

Run through ``benchmarks/device.sh`` (which picks the Python), on a machine that may be lent for minutes
only. Each measurement runs twice, in two processes of this machine: first with JAX's default platform
(the accelerator), then with ``JAX_PLATFORMS=cpu``; both come from one machine, so their ratio means
something. The measurements, with the functions of the other benchmarks:

- the UNF layer against a pointwise Dense on the MLP 784-512-10 weight space
  (:func:`benchmarks.unf_layer.bench`);
- the UNF learned optimizer's inner steps per second on ``mlp_fashion8`` under PES (8 pairs, K = 50), a
  raw jitted PES step, and the same runs advanced without the estimator (:func:`benchmarks.metatrain.pes_rates`);
- ``metatrain train`` in this process for 200 outer steps of ``configs/exp1/base.gin`` (no Ray, no
  evaluation, a temporary workdir): inner steps per second over the steps after the first few (which
  compile), and the run's wall time;
- one learner step at the 84.5k theta of :mod:`benchmarks.cluster_scale` (the UNF learned optimizer of
  ``transformer_lm``, width 32; the table prints the count it measured) from 8 packed estimates, as they
  arrive from Ray workers, without Ray.

Prints a markdown table, and writes it to ``$OUT/device.md`` when ``OUT`` is set, beside each process's
raw numbers (``device-accelerator.json``, ``device-cpu.json``, written after every measurement, so a run
cut short still leaves what it measured). A measurement that fails (a missing package, no data) shows as
``failed`` in its rows, with the error below the table; the others still run.

``--cpu`` is the check that the script works: the CPU process alone (no accelerator column), tiny sizes
(the CNN space, PES with 2 pairs and K = 10, 5 outer steps, the 2.7k theta of mlp_fashion8, 2 repeats) and
XLA's optimizations off, which cuts the compiling that is nearly all of its time to a third: under a minute
on 2 busy cores. Not a test of speed: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

CONFIG = "configs/exp1/base.gin"
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
PLATFORMS = ("accelerator", "cpu")  # the order they run in: the accelerator's numbers are the scarce ones


class Row(NamedTuple):
  """One line of the table: ``key`` in the measurements' results, and whether more or less is better."""

  key: str
  label: str
  unit: str
  higher_is_better: bool | None  # None: a ratio, no speed-up column


ROWS = (
  Row("layer_forward_ms", "UNF layer forward, {space} space, 19 -> 32 features", "ms", False),
  Row("layer_forward_backward_ms", "UNF layer forward + backward, same", "ms", False),
  Row("dense_forward_ms", "pointwise Dense(19 -> 32) on the same weights", "ms", False),
  Row("layer_over_dense", "UNF layer forward / Dense", "x", None),
  Row(
    "pes_inner_per_s", "UNF LOpt, mlp_fashion8: raw jitted PES step ({pairs} pairs, K={truncation})", "inner/s", True
  ),
  Row("plain_inner_per_s", "same runs advanced without PES (vmapped unroll)", "inner/s", True),
  Row(
    "train_inner_per_s",
    "metatrain train, "
    + CONFIG
    + " (PES {pairs} pairs, K={truncation}), {outer_steps} outer steps, rate after step {warmup}",
    "inner/s",
    True,
  ),
  Row("train_seconds", "same run's wall time, compiling and checkpoints included", "s", False),
  Row(
    "learner_step_ms", "one learner step, {theta} theta ({learner_task} UNF LOpt), {estimates} estimates", "ms", False
  ),
)


def sizes(quick: bool) -> dict[str, Any]:
  """The measurements' sizes: the issue's (default), or tiny ones for ``--cpu``."""
  if quick:
    return {
      "space": "CNN 3-16-32-10",
      "repeats": 2,
      "pairs": 2,
      "truncation": 10,
      "outer_steps": 5,
      "warmup": 1,
      "learner_task": "mlp_fashion8",
      "estimates": 8,
    }
  return {
    "space": "MLP 784-512-10",
    "repeats": 10,
    "pairs": 8,
    "truncation": 50,
    "outer_steps": 200,
    "warmup": 5,
    "learner_task": "transformer_lm",
    "estimates": 8,
  }


def measure_layer(size: dict[str, Any]) -> dict[str, float]:
  """The UNF layer and the pointwise Dense on the MLP space (:func:`benchmarks.unf_layer.bench`)."""
  from benchmarks import unf_layer

  r = unf_layer.bench(size["space"], unf_layer.SPACES[size["space"]], size["repeats"])
  return {
    "layer_forward_ms": r["fwd_ms"],
    "layer_forward_backward_ms": r["fwd_bwd_ms"],
    "dense_forward_ms": r["dense_ms"],
    "layer_over_dense": r["ratio"],
  }


def measure_pes(size: dict[str, Any]) -> dict[str, float]:
  """PES with the UNF learned optimizer on mlp_fashion8, and the plain unroll (:func:`.metatrain.pes_rates`)."""
  import tasks
  from benchmarks.metatrain import pes_rates
  from metatrain import UNFLOpt

  task = tasks.get("mlp_fashion8")
  pes, plain = pes_rates(task, UNFLOpt(task.space), size["pairs"], size["truncation"], size["repeats"])
  return {"pes_inner_per_s": pes, "plain_inner_per_s": plain}


def measure_learner(size: dict[str, Any]) -> dict[str, float]:
  """One :class:`metatrain.runtime.learner.Learner` step at the 84.5k theta, from packed estimates."""
  import jax
  import numpy as np

  from benchmarks.timing import best_seconds
  from metatrain import WorkerConfig
  from metatrain.outer import outer_optimizer
  from metatrain.runtime.estimate import packed_args
  from metatrain.runtime.learner import Learner

  lopt = WorkerConfig(task=size["learner_task"], learned_optimizer="unf", width=32).build_learned_optimizer()
  theta = jax.tree.map(np.asarray, lopt.init_meta(jax.random.key(0)))
  leaves = jax.tree.leaves(theta)
  skeleton = jax.tree.map(lambda _: 0, theta)
  rng = np.random.default_rng(0)
  estimates = []
  for worker in range(size["estimates"]):  # as a Ray worker's estimate arrives: one flat buffer
    grad = [1e-3 * rng.standard_normal(leaf.shape).astype(leaf.dtype) for leaf in leaves]
    unpack, args = packed_args(skeleton, grad, 1.0, 0, worker, {})
    estimates.append(unpack(*args))
  learner = Learner(outer_optimizer(1e-3, total_steps=10**6), theta, staleness=10**9)  # every estimate fresh
  seconds = best_seconds(lambda: learner.apply(estimates), size["repeats"])
  return {"learner_step_ms": 1e3 * seconds, "theta_parameters": float(sum(leaf.size for leaf in leaves))}


def measure_train(size: dict[str, Any]) -> dict[str, float]:
  """``metatrain train`` in this process: inner steps per second after ``warmup`` steps, and wall time."""
  from metatrain.cli import parse_config
  from metatrain.runtime.train import train

  bindings = [
    "TrainConfig.use_ray = False",
    f"TrainConfig.outer_steps = {size['outer_steps']}",
    "TrainConfig.eval_every = 0",
    f"PES.num_pairs = {size['pairs']}",  # the config's own (8 and 50) but with --cpu
    f"PES.truncation = {size['truncation']}",
  ]
  config, worker, operative = parse_config(CONFIG, bindings)
  with tempfile.TemporaryDirectory(prefix="device-train-") as workdir:
    start = time.perf_counter()
    _, history = train(config, worker, workdir, operative_config=operative)
    wall = time.perf_counter() - start
  timed = history[size["warmup"] :]
  seconds = [1.0 / h["outer_steps_per_second"] for h in timed]
  inner = [h["inner_steps_per_second"] * s for h, s in zip(timed, seconds)]
  return {"train_inner_per_s": sum(inner) / sum(seconds), "train_seconds": wall}


MEASUREMENTS: dict[str, Callable[[dict[str, Any]], dict[str, float]]] = {
  "layer": measure_layer,
  "learner": measure_learner,
  "pes": measure_pes,
  "train": measure_train,  # last: it turns on JAX's persistent compilation cache in the process
}


def measure(size: dict[str, Any], path: str) -> None:
  """Every measurement in this process, on JAX's default platform; results to ``path`` after each one."""
  import jax

  device = jax.devices()[0]
  result: dict[str, Any] = {
    "platform": device.platform,
    "device": f"CPU, {os.cpu_count()} cores"
    if device.platform == "cpu"
    else f"{device.platform}: {device.device_kind}",
    "jax": jax.__version__,
    "values": {},
    "errors": {},
  }
  for name, function in MEASUREMENTS.items():
    start = time.perf_counter()
    try:
      result["values"].update(function(size))
    except Exception as error:  # one failure (a missing package, no data) leaves the others to run
      traceback.print_exc()
      result["errors"][name] = f"{type(error).__name__}: {error}"
    print(f"[{device.platform}] {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    with open(path, "w") as file:
      json.dump(result, file, indent=1)


def run_platform(platform: str, size: dict[str, Any], quick: bool, folder: str) -> dict[str, Any]:
  """Runs :func:`measure` in a child process (``JAX_PLATFORMS=cpu`` for the CPU); returns its results."""
  path = os.path.join(folder, f"device-{platform}.json")
  env = dict(os.environ, TQDM_DISABLE="1", RAY_USAGE_STATS_ENABLED="0")
  if platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
  if quick:  # XLA's optimizations off: a third of the compile time, and what --cpu checks is that it runs
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {QUICK_XLA_FLAGS}".strip()
  command = [sys.executable, "-m", "benchmarks.device", "--measure", path] + (["--cpu"] if quick else [])
  status = subprocess.run(command, env=env, check=False).returncode
  try:
    with open(path) as file:
      result = json.load(file)
  except (OSError, json.JSONDecodeError):
    result = {"platform": platform, "device": platform, "jax": "?", "values": {}, "errors": {}}  # died at once
  if status != 0:
    result["errors"]["process"] = f"exited with status {status}"
  return result


def _format(value: float, unit: str) -> str:
  if unit == "inner/s":
    return f"{value:,.0f}"
  if unit == "x":
    return f"{value:.2f}x"
  return f"{value:.1f}" if unit == "s" else f"{value:.2f}"


def _cell(result: dict[str, Any], row: Row) -> str:
  value = result["values"].get(row.key)
  return "failed" if value is None else _format(value, row.unit)


def table(results: list[dict[str, Any]], size: dict[str, Any]) -> str:
  """The markdown table of ``results`` (the CPU's first, then the accelerator's, if any)."""
  cpu, others = results[0], results[1:]
  theta = cpu["values"].get("theta_parameters") or next((r["values"].get("theta_parameters") for r in others), None)
  labels = {**size, "theta": f"{theta / 1e3:.1f}k" if theta else "?"}
  lines = [f"{r['device']}, JAX {r['jax']}" for r in results] + [""]
  names = [r["platform"].upper() for r in others]
  header = ["measurement", "unit", "CPU", *names, *(f"speed-up on {name}" for name in names)]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in ROWS:
    cells = [row.label.format(**labels), row.unit, _cell(cpu, row)] + [_cell(r, row) for r in others]
    for other in others:
      a, b = cpu["values"].get(row.key), other["values"].get(row.key)
      if row.higher_is_better is None or not a or not b:
        cells.append("")
      else:
        cells.append(f"{b / a:.2f}x" if row.higher_is_better else f"{a / b:.2f}x")
    lines.append("| " + " | ".join(cells) + " |")
  errors = [f"- {r['device']}, {name}: {message}" for r in results for name, message in r["errors"].items()]
  return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu", action="store_true", help="tiny sizes, the CPU alone: checks that this runs")
  parser.add_argument("--measure", metavar="JSON", help=argparse.SUPPRESS)  # the child process: measure, write
  args = parser.parse_args(argv)
  size = sizes(args.cpu)
  if args.measure:
    measure(size, args.measure)
    return 0
  out = os.environ.get("OUT")
  with tempfile.TemporaryDirectory(prefix="device-") as scratch:
    folder = out or scratch
    platforms = ("cpu",) if args.cpu else PLATFORMS
    by_platform = {platform: run_platform(platform, size, args.cpu, folder) for platform in platforms}
  results = [by_platform["cpu"]] + [by_platform[p] for p in platforms if p != "cpu"]
  text = table(results, size)
  if args.cpu:
    text += "\n--cpu: tiny sizes and XLA's optimizations off; this checks that the script runs, not speed.\n"
  elif results[1]["platform"] == "cpu":
    text += "\nThe accelerator run found no accelerator: JAX ran it on the CPU too.\n"
  print(text)
  if out:
    with open(os.path.join(out, "device.md"), "w") as file:
      file.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
