"""Benchmark of unf.infer_space and of building a UNF on the space it returns, on a 6-block Transformer LM.

Prints the seconds to infer the space of ``tasks.models.TransformerLM`` (d 32, 4 heads, MLP 128, 6 blocks,
vocabulary 84 as in the ``transformer_lm`` task) from
its jaxpr, with and without the ``check_symmetry`` proof, then the seconds to build a ``unf.UNF`` (two hidden
layers of 16 channels) on that space and run it once (compile included). Each figure is a fresh measurement
in this process after one warm-up of jax itself; the median of ``--repeats`` runs. Not a test: numbers depend on
the machine. Run with `make bench` or `python -m benchmarks.inference`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

import unf
from tasks.models import TransformerLM


def _seconds(run) -> float:
  start = time.perf_counter()
  jax.block_until_ready(run())
  return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--blocks", type=int, default=6)
  parser.add_argument("--vocab", type=int, default=84, help="vocabulary (84: the Shakespeare task's)")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  model = TransformerLM(
    args.vocab, d_model=32, num_heads=4, mlp=128, num_blocks=args.blocks, max_len=8, rngs=nnx.Rngs(0)
  )
  graphdef, state = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(state)
  tokens = jnp.zeros((8, 8), jnp.int32)
  apply = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  unf.infer_space(apply, params, tokens, verify=False)  # warm-up of jax's tracing machinery
  rows = []
  for verify in (False, True):
    times = [_seconds(lambda v=verify: unf.infer_space(apply, params, tokens, verify=v)) for _ in range(args.repeats)]
    rows.append((f"infer_space, verify={verify}", statistics.median(times)))
  space = unf.infer_space(apply, params, tokens, verify=False)
  x = jax.tree.map(lambda w: w[..., None], params)

  def build_and_call():
    unf.basis.plan.cache_clear()  # a fresh space each time, as a new user's first call
    net = unf.UNF(space, 1, 1, hidden=(16, 16), rngs=nnx.Rngs(0))
    return nnx.jit(lambda n, t: n(t))(net, x)

  rows.append(("UNF build + first call", statistics.median(_seconds(build_and_call) for _ in range(args.repeats))))
  leaves = len(space.paths)
  print(
    f"{args.blocks}-block Transformer LM (d 32, 4 heads, MLP 128, vocabulary {args.vocab}): "
    f"{leaves} leaves, {len(space.labels)} labels"
  )
  print("| what | seconds (median) |\n|---|---|")
  for what, seconds in rows:
    print(f"| {what} | {seconds:.2f} |")


if __name__ == "__main__":
  main()
