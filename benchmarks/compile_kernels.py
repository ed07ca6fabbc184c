"""Where XLA's compilation of a UNF on a deep Transformer LM goes: its kernels, by kind, and their LLVM time.

For every ``--blocks``, a fresh process builds the UNF of :mod:`benchmarks.inference` (two hidden layers of 16
channels) on the Transformer LM's inferred space, lowers its first call and times ``.compile()`` alone (the
median of ``--repeats`` processes). One more process compiles it with XLA's per-kernel log on
(``TF_CPP_VMODULE=ir_compiler=1``); its lines give every kernel's LLVM compile time, summed here by kind:

- ``output slices``: the kernels that cut the output stacks into the pytree's leaves (one per output leaf);
- ``concatenations``: the unfused ``concatenate`` kernels: mostly the per-group weights of a batched step put
  side by side on every call (up to one operand per leaf: 102 at 6 blocks), and the input leaves stacked;
- everything else.

The summed LLVM time adds the kernels of XLA's parallel compile threads, so it can exceed the wall time.
It also prints a 16 -> 16 layer's parameter count, and the part of it in the terms that read every leaf's
full pool (signature ``()``): one matrix per output leaf whose rows are every input leaf's pool, so that part
grows with the square of the number of leaves.
Not a test. Run with ``python -m benchmarks.compile_kernels`` (about 1.5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import time

_LLVM_LINE = re.compile(r"Compiled LLVM module: (\S+) time: ([\d.]+) (us|ms|s)\b")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_MARK = "-- the UNF's compilation starts --"


def _kind(module: str) -> str:
  """``__compute_module_slice_bitcast_fusion.74_kernel_module`` -> ``"output slices"``."""
  name = re.sub(r"(\.\d+)?(_elemental)?_kernel_module$", "", module.removeprefix("__compute_module_"))
  name = re.sub(r"\.\d+$", "", name)
  if name == "slice_bitcast_fusion":
    return "output slices"
  if name == "concatenate":
    return "concatenations"
  return "everything else"


def _child(blocks: int) -> None:
  """Builds, lowers and compiles the UNF; prints the compile seconds and the parameter counts."""
  import jax
  from flax import nnx

  import unf
  from benchmarks.inference import _transformer
  from unf.basis import label_fixed_axes, plan

  apply, params, tokens = _transformer(blocks, 84)
  space = unf.infer_space(apply, params, tokens, verify=False)
  x = jax.tree.map(lambda w: w[..., None], params)
  net = unf.UNF(space, 1, 1, hidden=(16, 16), rngs=nnx.Rngs(0))
  lowered = nnx.jit(lambda n, t: n(t)).lower(net, x)
  print(_MARK, file=sys.stderr, flush=True)  # XLA's log lines after it are this compilation's
  start = time.perf_counter()
  lowered.compile()
  print(f"COMPILE {time.perf_counter() - start:.3f}", flush=True)
  hidden = net.layers[1]
  s_in, s_out, _ = label_fixed_axes(space, space, "auto")
  pooled = sum(
    hidden.weights[unf.linear._weight_name(s_out, g)].size for g in plan(s_in, s_out).groups if not g.signature
  )
  print(f"LEAVES {len(space.paths)} PARAMS {unf.parameter_count(space, space, 16, 16)} POOLED {pooled}", flush=True)


def _run(blocks: int, log: bool) -> str:
  env = dict(os.environ)
  if log:
    env.update(TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="ir_compiler=1")
  done = subprocess.run(
    [sys.executable, "-m", "benchmarks.compile_kernels", "--child", str(blocks)],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  return done.stdout + done.stderr.partition(_MARK)[2]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--blocks", type=int, nargs="+", default=[6, 24])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child is not None:
    _child(args.child)
    return
  print(
    "| blocks | leaves | compile (s, median) | kernels | LLVM s (summed) | output slices | concatenations "
    "| 16 -> 16 layer params | of which full-pool terms |\n|---|---|---|---|---|---|---|---|---|"
  )
  for blocks in args.blocks:
    seconds = [float(re.search(r"COMPILE ([\d.]+)", _run(blocks, False)).group(1)) for _ in range(args.repeats)]
    text = _run(blocks, True)
    count: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    for name, value, unit in _LLVM_LINE.findall(text):
      count[_kind(name)] += 1
      total[_kind(name)] += float(value) * _UNITS[unit]
    if not count:
      raise RuntimeError("XLA wrote no per-kernel compile lines: this jaxlib ignores TF_CPP_VMODULE=ir_compiler=1.")
    leaves, params, pooled = map(int, re.search(r"LEAVES (\d+) PARAMS (\d+) POOLED (\d+)", text).groups())
    llvm = sum(total.values())
    share = {k: f"{count[k]} ({100 * total[k] / llvm:.0f}%)" for k in ("output slices", "concatenations")}
    print(
      f"| {blocks} | {leaves} | {statistics.median(seconds):.2f} | {sum(count.values())} | {llvm:.1f} "
      f"| {share['output slices']} | {share['concatenations']} | {params:,} | {pooled / params:.0%} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
