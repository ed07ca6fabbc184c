"""A short demo of unf, run by `make run` until the meta-training job exists.

Builds a small flax MLP, reads its weight space, builds a UNF on it, checks
equivariance on a random group element, and prints parameter counts and timing.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import unf


def main() -> None:
  rngs = nnx.Rngs(0)
  model = nnx.Sequential(nnx.Linear(64, 32, rngs=rngs), jax.nn.relu, nnx.Linear(32, 10, rngs=rngs))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  space = unf.mlp_space(params)
  print(f"Weight space of an MLP 64-32-10:\n{space}\n")

  # The hidden label is an exact symmetry of the network: prove it.
  x = jax.random.normal(jax.random.key(1), (8, 64))
  graphdef, _ = nnx.split(model, nnx.Param)
  forward = jax.jit(lambda p, inputs: nnx.merge(graphdef, p)(inputs))
  deviation = unf.check_symmetry(forward, params, space, x, labels=["hidden0"])
  print(f"check_symmetry(hidden0): network output changes by at most {deviation:.2e} under a random permutation")

  # A UNF that maps (weights, gradients) features to 1 output feature per weight.
  net = unf.UNF(space, 2, 1, hidden=(32, 32), rngs=nnx.Rngs(2))
  features = jax.tree.map(lambda w: jnp.stack([w, jnp.sign(w)], axis=-1), params)
  run = nnx.jit(lambda m, t: m(t))
  start = time.perf_counter()
  out = jax.block_until_ready(run(net, features))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(10):
    out = jax.block_until_ready(run(net, features))
  step_ms = (time.perf_counter() - start) * 100

  sigma = unf.sample_permutation(space, jax.random.key(3), space.validate(params))
  permuted = jax.block_until_ready(run(net, unf.permute(space, sigma, features)))
  error = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(jax.tree.leaves(unf.permute(space, sigma, out)), jax.tree.leaves(permuted))
  )
  print(f"UNF(sigma . W) vs sigma . UNF(W): max deviation {error:.2e} (float32)")
  print(f"UNF parameters: {unf.num_parameters(net):,} for {space.num_parameters(space.validate(params)):,} weights")
  print(f"compile {compile_s:.2f} s, forward {step_ms:.2f} ms")


if __name__ == "__main__":
  main()
