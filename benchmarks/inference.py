"""Benchmark of unf.infer_space and of building a UNF on the space it returns, on Transformer LMs of 6 and 24 blocks.

Prints the seconds to infer the space of ``tasks.models.TransformerLM`` (d 32, 4 heads, MLP 128, vocabulary 84
as in the ``transformer_lm`` task; the first of ``--blocks``) from its jaxpr, with and without the
``check_symmetry`` proof, then for every ``--blocks`` the seconds to enumerate one layer's basis
(``unf.basis.plan``, part of the build) and to build a ``unf.UNF`` (two hidden layers of 16 channels) on that
space and run it once (compile included). With ``--step-by-step`` it also times the layers run one step of the
plan at a time (``unf.linear._BATCH = False``, as before isomorphic blocks were batched). With ``--opt-level0``
it also times the build + first call jitted with XLA's backend optimisation level 0
(``jax.jit(..., compiler_options={"xla_backend_optimization_level": 0})``), and a call after the first at both
levels: what a user who calls a UNF a few times on a new space trades.
Each figure is a fresh measurement in this process after one warm-up of jax itself; the median of ``--repeats``
runs. Not a test: numbers depend on the machine. Run with `make bench` or `python -m benchmarks.inference`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

import unf
import unf._program
from tasks.models import TransformerLM


def _seconds(run) -> float:
  start = time.perf_counter()
  jax.block_until_ready(run())
  return time.perf_counter() - start


def _transformer(blocks: int, vocab: int):
  model = TransformerLM(vocab, d_model=32, num_heads=4, mlp=128, num_blocks=blocks, max_len=8, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(state)
  apply = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  return apply, params, jnp.zeros((8, 8), jnp.int32)


OPT_LEVEL0 = {"xla_backend_optimization_level": 0}


def _build_and_call(space, params, compiler_options=None):
  """Builds a fresh UNF on ``space`` and calls it once, jitted (with ``compiler_options`` if given)."""
  unf.basis.clear_caches()  # a fresh space each time, as a new user's first call
  unf._program.program.cache_clear()
  x = jax.tree.map(lambda w: w[..., None], params)
  net = unf.UNF(space, 1, 1, hidden=(16, 16), rngs=nnx.Rngs(0))
  if compiler_options is None:
    return nnx.jit(lambda n, t: n(t))(net, x)
  jitted, state = _jitted(net, compiler_options)
  return jitted(state, x)


def _jitted(net: nnx.Module, compiler_options):
  """``(call, state)``: ``net``'s call jitted with ``compiler_options`` (which ``nnx.jit`` does not take)."""
  graphdef, state = nnx.split(net)
  return jax.jit(lambda s, t: nnx.merge(graphdef, s)(t), compiler_options=compiler_options), state


def _call_seconds(space, params, compiler_options, repeats: int) -> float:
  """Median seconds of one call after the first (compiled) of a UNF on ``space``."""
  x = jax.tree.map(lambda w: w[..., None], params)
  jitted, state = _jitted(unf.UNF(space, 1, 1, hidden=(16, 16), rngs=nnx.Rngs(0)), compiler_options)
  jax.block_until_ready(jitted(state, x))
  return statistics.median(_seconds(lambda: jitted(state, x)) for _ in range(max(repeats, 10)))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--blocks", type=int, nargs="+", default=[6, 24])
  parser.add_argument("--vocab", type=int, default=84, help="vocabulary (84: the Shakespeare task's)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--step-by-step", action="store_true", help="also time the plan run one step at a time")
  parser.add_argument(
    "--opt-level0", action="store_true", help="also time the UNF jitted at XLA's backend optimisation level 0"
  )
  args = parser.parse_args(argv)
  apply, params, tokens = _transformer(args.blocks[0], args.vocab)
  unf.infer_space(apply, params, tokens, verify=False)  # warm-up of jax's tracing machinery
  rows = []
  for verify in (False, True):
    times = [_seconds(lambda v=verify: unf.infer_space(apply, params, tokens, verify=v)) for _ in range(args.repeats)]
    rows.append((f"infer_space, verify={verify}, {args.blocks[0]} blocks", statistics.median(times)))
  for blocks in args.blocks:
    apply, params, tokens = _transformer(blocks, args.vocab)
    space = unf.infer_space(apply, params, tokens, verify=False)
    print(f"{blocks}-block Transformer LM: {len(space.paths)} leaves, {len(space.labels)} labels", flush=True)
    times = [_seconds(lambda s=space: (unf.basis.clear_caches(), unf.basis.plan(s, s))[1]) for _ in range(args.repeats)]
    rows.append((f"basis.plan (part of the build), {blocks} blocks", statistics.median(times)))
    for batched in (True, False) if args.step_by_step else (True,):
      unf.linear._BATCH = batched
      times = [_seconds(lambda s=space, p=params: _build_and_call(s, p)) for _ in range(args.repeats)]
      how = "" if batched else ", step by step"
      rows.append((f"UNF build + first call, {blocks} blocks{how}", statistics.median(times)))
    unf.linear._BATCH = True
    if args.opt_level0:
      times = [_seconds(lambda s=space, p=params: _build_and_call(s, p, OPT_LEVEL0)) for _ in range(args.repeats)]
      rows.append((f"UNF build + first call, {blocks} blocks, XLA optimisation level 0", statistics.median(times)))
      for name, options in (("default", None), ("level 0", OPT_LEVEL0)):
        seconds = _call_seconds(space, params, options, args.repeats)
        rows.append((f"UNF call after the first, {blocks} blocks, XLA optimisation {name}", seconds))
  print(f"Transformer LM (d 32, 4 heads, MLP 128, vocabulary {args.vocab})")
  print("| what | seconds (median) |\n|---|---|")
  for what, seconds in rows:
    print(f"| {what} | {seconds:.2f} |" if seconds >= 0.1 else f"| {what} | {seconds:.4f} |")


if __name__ == "__main__":
  main()
