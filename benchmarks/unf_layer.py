"""Benchmark of unf.EquivariantLinear on the weight spaces of four architectures.

Prints, per space: compile time, forward and forward+backward time, parameter
count, and the forward time of a pointwise Dense(19 -> 32) applied to every
weight (the per-parameter cost floor), with the ratio. Not a test: numbers
depend on the machine. Run with `make bench` or `python -m benchmarks.unf_layer`.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

import unf
from benchmarks.timing import best_seconds

IN_FEATURES, OUT_FEATURES = 19, 32


def mlp_space():
  spec = {
    "dense0": {"kernel": ("input", "hidden0"), "bias": ("hidden0",)},
    "dense1": {"kernel": ("hidden0", "output"), "bias": ("output",)},
  }
  shapes = {"dense0": {"kernel": (784, 512), "bias": (512,)}, "dense1": {"kernel": (512, 10), "bias": (10,)}}
  return spec, shapes


def cnn_space():
  spec = {
    "conv0": {"kernel": (None, None, "input", "hidden0"), "bias": ("hidden0",)},
    "conv1": {"kernel": (None, None, "hidden0", "hidden1"), "bias": ("hidden1",)},
    "dense": {"kernel": ("hidden1", "output"), "bias": ("output",)},
  }
  shapes = {
    "conv0": {"kernel": (3, 3, 3, 16), "bias": (16,)},
    "conv1": {"kernel": (3, 3, 16, 32), "bias": (32,)},
    "dense": {"kernel": (32, 10), "bias": (10,)},
  }
  return spec, shapes


def rnn_space():
  spec = {
    "embed": {"embedding": ("vocab", "embed")},
    "cell": {
      "dense_i": {"kernel": ("embed", "hidden"), "bias": ("hidden",)},
      "dense_h": {"kernel": ("hidden", "hidden")},
    },
    "head": {"kernel": ("hidden", "vocab"), "bias": ("vocab",)},
  }
  shapes = {
    "embed": {"embedding": (256, 32)},
    "cell": {"dense_i": {"kernel": (32, 64), "bias": (64,)}, "dense_h": {"kernel": (64, 64)}},
    "head": {"kernel": (64, 256), "bias": (256,)},
  }
  return spec, shapes


def transformer_space(blocks=2, d=32, heads=4, mlp=128, vocab=1000, seq=64):
  hd = d // heads
  spec = {"embed": {"embedding": ("vocab", "residual")}, "pos_embed": {"embedding": ("position", "residual")}}
  shapes = {"embed": {"embedding": (vocab, d)}, "pos_embed": {"embedding": (seq, d)}}
  for b in range(blocks):
    h, qk, v, m = f"heads{b}", f"qk{b}", f"v{b}", f"mlp{b}"
    spec[f"block{b}"] = {
      "norm1": {"scale": ("residual",), "bias": ("residual",)},
      "attn": {
        "query": {"kernel": ("residual", h, qk), "bias": (h, qk)},
        "key": {"kernel": ("residual", h, qk), "bias": (h, qk)},
        "value": {"kernel": ("residual", h, v), "bias": (h, v)},
        "out": {"kernel": (h, v, "residual"), "bias": ("residual",)},
      },
      "norm2": {"scale": ("residual",), "bias": ("residual",)},
      "mlp": {
        "fc1": {"kernel": ("residual", m), "bias": (m,)},
        "fc2": {"kernel": (m, "residual"), "bias": ("residual",)},
      },
    }
    shapes[f"block{b}"] = {
      "norm1": {"scale": (d,), "bias": (d,)},
      "attn": {
        "query": {"kernel": (d, heads, hd), "bias": (heads, hd)},
        "key": {"kernel": (d, heads, hd), "bias": (heads, hd)},
        "value": {"kernel": (d, heads, hd), "bias": (heads, hd)},
        "out": {"kernel": (heads, hd, d), "bias": (d,)},
      },
      "norm2": {"scale": (d,), "bias": (d,)},
      "mlp": {"fc1": {"kernel": (d, mlp), "bias": (mlp,)}, "fc2": {"kernel": (mlp, d), "bias": (d,)}},
    }
  spec["final_norm"] = {"scale": ("residual",), "bias": ("residual",)}
  spec["head"] = {"kernel": ("residual", "vocab"), "bias": ("vocab",)}
  shapes["final_norm"] = {"scale": (d,), "bias": (d,)}
  shapes["head"] = {"kernel": (d, vocab), "bias": (vocab,)}
  return spec, shapes


SPACES = {
  "MLP 784-512-10": mlp_space,
  "CNN 3-16-32-10": cnn_space,
  "IRNN LM v256 e32 h64": rnn_space,
  "Transformer LM 2x(d32 h4 mlp128) v1000": transformer_space,
}


def bench(name, make, repeats):
  spec, shapes = make()
  key = jax.random.key(0)
  params = jax.tree.map(lambda s: jnp.zeros(s), shapes, is_leaf=lambda s: isinstance(s, tuple))
  space = unf.WeightSpace(spec).with_fixed_sizes(params)
  x = jax.tree.map(lambda s: jax.random.normal(key, (*s, IN_FEATURES)), shapes, is_leaf=lambda s: isinstance(s, tuple))
  layer = unf.EquivariantLinear(space, space, IN_FEATURES, OUT_FEATURES, rngs=nnx.Rngs(0))
  weights = {k: v[...] for k, v in layer.weights.items()}

  def forward(w, x):
    return unf.linear.apply(w, x, space, space)

  def loss(w, x):
    return sum(jnp.sum(jnp.square(y)) for y in jax.tree.leaves(forward(w, x)))

  fwd = jax.jit(forward)
  start = time.perf_counter()
  fwd.lower(weights, x).compile()
  compile_s = time.perf_counter() - start
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  dense_w = jax.random.normal(key, (IN_FEATURES, OUT_FEATURES)) / IN_FEATURES**0.5
  dense = jax.jit(lambda w, x: jax.tree.map(lambda a: a @ w, x))
  t_fwd = best_seconds(lambda: fwd(weights, x), repeats)
  t_bwd = best_seconds(lambda: grad(weights, x), repeats)
  t_dense = best_seconds(lambda: dense(dense_w, x), repeats)
  n_weights = sum(a.size for a in jax.tree.leaves(params))
  return {
    "space": name,
    "leaves": len(space),
    "weights": n_weights,
    "params": unf.num_parameters(layer),
    "compile_s": compile_s,
    "fwd_ms": 1e3 * t_fwd,
    "fwd_bwd_ms": 1e3 * t_bwd,
    "dense_ms": 1e3 * t_dense,
    "ratio": t_fwd / t_dense,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--only", default=None, help="substring of a space name")
  args = parser.parse_args()
  rows = [bench(n, m, args.repeats) for n, m in SPACES.items() if args.only is None or args.only in n]
  header = (
    "| weight space | leaves | weights | UNF layer params | compile (s) | forward (ms) | fwd+bwd (ms) "
    "| pointwise Dense (ms) | forward / Dense |"
  )
  print(
    f"EquivariantLinear({IN_FEATURES} -> {OUT_FEATURES} features), {jax.devices()[0].platform}, best of {args.repeats}"
  )
  print(header)
  print("|" + "---|" * 9)
  for r in rows:
    print(
      f"| {r['space']} | {r['leaves']} | {r['weights']:,} | {r['params']:,} | {r['compile_s']:.2f} | "
      f"{r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['dense_ms']:.2f} | {r['ratio']:.2f}x |"
    )


if __name__ == "__main__":
  main()
