"""``metatrain train`` that also records every estimate it applies: ``python -m ... LOG metatrain-args...``.

Each applied outer step appends one JSON line to LOG: the learner's step after
it, ``[worker_id, theta_step, digest of the gradient]`` for each estimate
used (and under ``workers`` the workers each is the sum of, for sums per
node), and the count of stale ones dropped (each of them under ``dropped``), so
that a test run in another process can see which estimates were applied, how
often, and when (the fault tests act on it mid-run).

With ``SLOW_SAVE=PATH`` in the environment, the first checkpoint save that
starts while the file PATH exists removes it, writes ``PATH.saving`` and waits
30 s before it completes: a test can then act (a second Ctrl-C) while that checkpoint is
being written.
"""

import hashlib
import json
import os
import pathlib
import sys
import time

import numpy as np

from metatrain import cli
from metatrain.runtime.learner import Learner


def _digest(grad) -> str:
  import jax

  hasher = hashlib.sha1()
  for leaf in jax.tree.leaves(grad):
    hasher.update(np.ascontiguousarray(leaf).tobytes())
  return hasher.hexdigest()[:16]


def main(log_path: str, argv: list[str]) -> int:
  apply = Learner.apply
  log = open(log_path, "a")  # noqa: SIM115 - open for the whole run

  def recorded(self, estimates):
    step = self.step
    fresh = [step - e.theta_step <= self.staleness for e in estimates]
    used = [e for e, ok in zip(estimates, fresh) if ok]
    metrics = apply(self, estimates)
    if self.step > step:
      origins = [[e.worker_id, e.theta_step, _digest(e.grad)] for e in used]
      stale = [[e.worker_id, e.theta_step, _digest(e.grad)] for e, ok in zip(estimates, fresh) if not ok]
      summed = [list(e.workers) for e in used]  # the workers of each sum (a node's aggregator), [] for one's
      record = {"step": self.step, "estimates": origins, "workers": summed, "stale": len(stale), "dropped": stale}
      log.write(json.dumps(record) + "\n")
      log.flush()
    return metrics

  Learner.apply = recorded
  if os.environ.get("SLOW_SAVE"):
    _slow_saves(pathlib.Path(os.environ["SLOW_SAVE"]))
  try:
    return cli.main(argv)
  finally:
    log.close()


def _slow_saves(armed: pathlib.Path) -> None:
  import orbax.checkpoint as ocp

  wait = ocp.CheckpointManager.wait_until_finished

  def slow(self):
    if armed.exists():  # once: not again when the manager closes
      armed.unlink()
      armed.with_suffix(".saving").write_text("saving")
      time.sleep(30)
    return wait(self)

  ocp.CheckpointManager.wait_until_finished = slow


if __name__ == "__main__":
  sys.exit(main(sys.argv[1], sys.argv[2:]))
