"""Learning-rate schedules shared by the hand-designed baselines and the learned optimizers' nominal term."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

#: The fraction of the steps a warm-up lasts in :func:`metatrain.adam_cosine`, :func:`metatrain.adamw_cosine` and
#: the learned optimizers' ``"nominal"`` base term.
WARMUP_FRACTION = 0.05


def warmup_cosine(peak: float | jax.Array, steps: int, *, warmup_fraction: float = WARMUP_FRACTION) -> optax.Schedule:
  """Linear warm-up from 0 to ``peak`` over ``w = round(warmup_fraction * steps)`` steps, then cosine decay to 0.

  ``lr(t) = peak * t / w`` for ``t < w``, and ``peak * (1 + cos(pi * (t - w) / (steps - w))) / 2`` for
  ``w <= t <= steps`` (0 after it): ``optax.warmup_cosine_decay_schedule``'s values, for a peak that may be traced.

  Args:
    peak: the peak learning rate (a float or a traced scalar).
    steps: the length of the run.
    warmup_fraction: the warm-up's share of the steps.
  """
  warmup = max(1, round(warmup_fraction * steps))
  if not 0 < warmup < steps:
    raise ValueError(f"warmup_cosine: the warm-up ({warmup} steps) must be shorter than the run ({steps} steps).")

  def schedule(count: Any) -> Any:
    # Written out, not optax.warmup_cosine_decay_schedule: that one branches in Python on the peak value,
    # which grid_search passes traced.
    t = jnp.asarray(count, jnp.float32)
    rising = t / warmup
    progress = jnp.clip((t - warmup) / (steps - warmup), 0.0, 1.0)
    return peak * jnp.where(t < warmup, rising, 0.5 * (1 + jnp.cos(jnp.pi * progress)))

  return schedule


#: The number of terms of :func:`schedule_correction` (the length of a nominal optimizer's ``theta["schedule"]``).
SCHEDULE_TERMS = 4


def schedule_correction(coefficients: jax.Array, count: Any, steps: int) -> jax.Array:
  """A learned factor on a schedule: ``exp(sum_k c_k cos(k pi p))``, ``p = clip(count / steps, 0, 1)``, k = 1..K.

  A smooth function of the run's progress ``p`` that is exactly 1 when every coefficient is 0 (the nominal
  schedule unchanged), and bounded by ``exp(sum_k |c_k|)``. The constant term is left out: it is the peak
  rate's, which is learned on its own.

  Args:
    coefficients: ``c``, shape ``(K,)``.
    count: the step (a scalar, traced or not).
    steps: the length of the run.

  Returns:
    The factor, a float32 scalar.
  """
  progress = jnp.clip(jnp.asarray(count, jnp.float32) / steps, 0.0, 1.0)
  k = jnp.arange(1, coefficients.shape[-1] + 1, dtype=jnp.float32)
  return jnp.exp(jnp.sum(coefficients.astype(jnp.float32) * jnp.cos(k * jnp.pi * progress)))
