"""How much of a learned optimizer's update ``f`` is at initialisation, per tensor, on ``mlp_fashion8``.

For each preset of :data:`metatrain.learned_optimizers.PRESETS` (UNF, width 32), the optimizer at its initial
theta trains ``mlp_fashion8`` for ``--steps`` steps; at the first and the last step it reports, over the
tensors of the network, the range of ``RMS(beta * f) / RMS(base term)`` (the share of ``f`` in the update
before ``alpha``) and the RMS of ``f`` itself. The learned optimizers' docstrings describe their
initialisation; this measures it. Not a test: ``python -m benchmarks.update_share`` (seconds).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tasks
from metatrain import UNFLOpt
from metatrain.learned_optimizers import PRESETS, fan_ins, transforms


def shares(preset: str, steps: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """``{step: (share per tensor, RMS of f per tensor)}`` at the first and the last of ``steps`` steps."""
  task = tasks.get("mlp_fashion8")
  params = task.init(jax.random.key(1))
  options = dict(PRESETS[preset])
  if options.get("update_scale") == "fan_in":
    options["reference_fan_in"] = fan_ins(params)
  lopt = UNFLOpt(task.space, width=32, **options)
  theta = lopt.init_meta(jax.random.key(0))
  optimizer = lopt.optimizer(theta, total_steps=steps)
  state = optimizer.init(params)
  # f's term alone (the chain's learned_correction link, without beta), on the same gradients.
  correction = transforms.learned_correction(functools.partial(lopt.f, theta), second_moments=lopt.features == "adam")
  correction_state = correction.init(params)
  out = {}
  for step in range(steps):
    grads = jax.grad(task.loss)(params, task.sample_batch(jax.random.key(step + 2), "train"))
    if step in (0, steps - 1):
      with_f, _ = optimizer.update(grads, state, params)
      without = lopt.optimizer({**theta, "log_beta": jnp.asarray(-jnp.inf)}, total_steps=steps)
      base, _ = without.update(grads, state, params)
      rms = lambda x: float(jnp.sqrt(jnp.mean(jnp.square(x))))  # noqa: E731
      share = [rms(a - b) / max(rms(b), 1e-30) for a, b in zip(jax.tree.leaves(with_f), jax.tree.leaves(base))]
      f_out, _ = correction.update(grads, correction_state, params)
      f_rms = [rms(y) for y in jax.tree.leaves(f_out)]
      out[step + 1] = (np.asarray(share), np.asarray(f_rms))
    updates, state = optimizer.update(grads, state, params)
    _, correction_state = correction.update(grads, correction_state, params)
    params = optax.apply_updates(params, updates)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--presets", nargs="+", default=sorted(PRESETS))
  args = parser.parse_args()
  print("UNF (width 32) at its initial theta on mlp_fashion8, per tensor: share = RMS(beta f) / RMS(base term)")
  print("| preset | step | share of beta * f (min - max over tensors) | RMS of f (min - max) |\n|---|---|---|---|")
  for preset in args.presets:
    for step, (share, f_rms) in shares(preset, args.steps).items():
      print(
        f"| {preset} | {step} | {share.min():.2%} - {share.max():.2%} | {f_rms.min():.3f} - {f_rms.max():.3f} |",
        flush=True,
      )


if __name__ == "__main__":
  main()
