"""The exit statuses of ``metatrain``: distinct, the launchers' and the shell's conventions, and what stops return."""

import pathlib
import re

from metatrain import exit_status
from metatrain.exit_status import INTERRUPTED_EXIT_STATUS, PREEMPTED_EXIT_STATUS
from metatrain.runtime.train import Preempted

SBATCH = pathlib.Path(__file__).resolve().parents[2] / "launch" / "slurm.sbatch"


def test_statuses_are_distinct_and_conventional():
  statuses = {name: value for name, value in vars(exit_status).items() if name.endswith("_EXIT_STATUS")}
  assert statuses == {
    "BAD_INPUT_EXIT_STATUS": 2,  # argparse's
    "SAVE_FAILED_EXIT_STATUS": 74,  # sysexits.h: EX_IOERR
    "PREEMPTED_EXIT_STATUS": 75,  # EX_TEMPFAIL
    "INTERRUPTED_EXIT_STATUS": 130,  # 128 + SIGINT
  }


def test_slurm_requeues_on_the_preempted_status_only():
  """A preempted run is requeued to resume; a failed save (a full disk) is not, or it would fail again and again."""
  text = SBATCH.read_text()
  assert re.search(rf"\$status -eq {PREEMPTED_EXIT_STATUS}\b.*\n\s*scontrol requeue", text)
  assert re.findall(r"\$status -eq (\d+)", text) == [str(PREEMPTED_EXIT_STATUS)]


def test_a_stop_carries_the_status_of_its_signal():
  assert Preempted("/w", 3, "SIGTERM").exit_status == PREEMPTED_EXIT_STATUS
  assert Preempted("/w", 3, "SIGINT").exit_status == INTERRUPTED_EXIT_STATUS
