"""benchmarks.pes_profile's arithmetic: XLA's cost analysis counts a loop's body once, whatever its trip count.

The profile's GFLOP/s multiply the count by the scan's length; were XLA to count every iteration, they would be
``truncation`` times too high, and this fails.
"""

import jax
import jax.numpy as jnp

from benchmarks.pes_profile import cost


def test_cost_analysis_counts_a_scan_body_once():
  a = jnp.ones((64, 64), jnp.float32)
  counts = []
  for length in (1, 7):
    _, flops, _ = cost(lambda a, length=length: jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=length)[0], a)
    counts.append(flops)
    assert flops >= 2 * 64**3  # the matmul is counted
  assert counts[1] < 2 * counts[0]  # one body (and the loop counter), not seven
