"""The ``metatrain`` command: ``metatrain train`` (meta-train from a gin config) and ``metatrain eval``.

gin lives here and in ``configs/`` only: it fills :class:`TrainConfig`,
:class:`WorkerConfig` and the estimators (``WorkerConfig.estimator = @PES()``,
``PES.num_pairs = 8``), and the run itself takes plain values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import gin  # noqa: E402

from metatrain.estimators import ESTIMATORS  # noqa: E402
from metatrain.exit_status import BAD_INPUT_EXIT_STATUS, INTERRUPTED_EXIT_STATUS, SAVE_FAILED_EXIT_STATUS  # noqa: E402
from metatrain.runtime.config import TrainConfig, WorkerConfig  # noqa: E402

GinTrainConfig = gin.external_configurable(TrainConfig, name="TrainConfig")
GinWorkerConfig = gin.external_configurable(WorkerConfig, name="WorkerConfig")
for _estimator in ESTIMATORS.values():  # WorkerConfig.estimator = @PES(); PES.num_pairs = 8
  gin.external_configurable(_estimator, name=_estimator.__name__)


def parse_config(config: str, bindings: list[str]) -> tuple[TrainConfig, WorkerConfig, str]:
  """Parses a gin file and bindings into the two configs; gin's errors name the file and line.

  ``WorkerConfig.estimator`` is ``@PES()`` unless bound otherwise, so that ``PES.*`` bindings always
  reach the estimator. Bindings of another estimator than the one chosen (``PES.num_pairs`` in a config
  switched to ``@FullES()`` on the command line) do nothing: they are reported with a warning.

  Args:
    config: the gin file.
    bindings: extra bindings, applied after the file (``"TrainConfig.outer_steps = 10"``).

  Returns:
    ``(train config, worker config, operative gin config text)``.
  """
  if not os.path.isfile(config):
    raise FileNotFoundError(f"config file {config!r} not found; see configs/ for examples.")
  gin.clear_config()
  gin.parse_config("WorkerConfig.estimator = @PES()")
  gin.parse_config_files_and_bindings([config], bindings, finalize_config=False)
  train_config, worker_config = GinTrainConfig(), GinWorkerConfig()
  chosen = type(worker_config.estimator)
  unused = []
  for estimator in ESTIMATORS.values():
    for field in dataclasses.fields(estimator) if estimator is not chosen else ():
      try:
        gin.query_parameter(f"{estimator.__name__}.{field.name}")
      except ValueError:
        continue
      unused.append(f"{estimator.__name__}.{field.name}")
  if unused:
    takes = ", ".join(f"{chosen.__name__}.{field.name}" for field in dataclasses.fields(chosen))
    warnings.warn(f"unused bindings {unused}: the estimator is {chosen.__name__} (it takes {takes}).", stacklevel=2)
  return train_config, worker_config, gin.config_str()


def build_parser() -> argparse.ArgumentParser:
  """The ``metatrain`` command line: subcommands ``train``, ``eval`` and ``export``."""
  parser = argparse.ArgumentParser(prog="metatrain", description="Meta-train learned optimizers.")
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("train", help="meta-train with a gin config; resumes from the workdir's checkpoints")
  run.add_argument("--config", required=True, help="a gin file, e.g. configs/mlp_unf.gin")
  run.add_argument("--gin_bindings", nargs="*", default=[], help="extra bindings, e.g. TrainConfig.outer_steps=10")
  run.add_argument("--workdir", required=True, help="checkpoints and TensorBoard logs go here")
  run.add_argument("--address", default=None, help='Ray address: "auto" on a cluster (default: a local Ray)')
  evaluate = commands.add_parser("eval", help="meta-trained optimizers vs tuned baselines: CSV, plot, table")
  evaluate.add_argument(
    "--checkpoint", nargs="+", required=True, help="workdirs of `metatrain train` runs (or their checkpoint folders)"
  )
  evaluate.add_argument("--task", required=True, help="the task to train, e.g. mlp_fashion8 (see tasks.names())")
  evaluate.add_argument("--steps", type=int, default=2000, help="inner steps per run (tuning runs too)")
  evaluate.add_argument("--seeds", type=int, default=5, help="evaluation runs per optimizer")
  evaluate.add_argument("--every", type=int, default=20, help="steps between train / valid evaluations")
  evaluate.add_argument("--tune_seeds", type=int, default=2, help="runs per learning rate in the grid search")
  evaluate.add_argument(
    "--tune_split", choices=("valid", "train"), default="valid", help="the loss the baselines are tuned on"
  )
  evaluate.add_argument("--out", default=None, help="output folder (default: WORKDIR/eval/TASK, of the first)")
  evaluate.add_argument(
    "--transfer_from", default=None, help="also run Adam at the rates tuned on this task (e.g. mlp_fashion8)"
  )
  evaluate.add_argument(
    "--baselines", nargs="+", default=None, help="the tuned baselines to run (default: all of them)"
  )
  export = commands.add_parser("export", help="write a meta-trained optimizer as a shipped one (JSON + npz)")
  export.add_argument("--checkpoint", required=True, help="the workdir of a `metatrain train` run (or a checkpoint)")
  export.add_argument("--out", required=True, help="the folder to write, e.g. metatrain/pretrained/NAME")
  export.add_argument("--note", default="", help="kept with it: the command and wall time that produced it")
  return parser


def main(argv: list[str] | None = None) -> int:
  """Runs ``metatrain train``, ``eval`` or ``export``; returns the exit status.

  The statuses are named in :mod:`metatrain.exit_status`: 0 when done; 2
  (:data:`~metatrain.exit_status.BAD_INPUT_EXIT_STATUS`) for bad input (a configuration, or checkpoints that do
  not resume); 75 (:data:`~metatrain.exit_status.PREEMPTED_EXIT_STATUS`) when ``train`` was stopped by SIGTERM
  after writing its checkpoint (run it again to resume); 130 (:data:`~metatrain.exit_status.INTERRUPTED_EXIT_STATUS`)
  when stopped by Ctrl-C (after writing its checkpoint; at a second Ctrl-C at once, the earlier checkpoints
  intact); 74 (:data:`~metatrain.exit_status.SAVE_FAILED_EXIT_STATUS`) when a checkpoint could not be written
  (the earlier ones are intact: make room and run it again).

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).
  """
  args = build_parser().parse_args(argv)
  if args.command == "eval":
    return _eval(args)
  if args.command == "export":
    from metatrain.loading import export  # orbax

    try:
      folder = export(args.checkpoint, args.out, note=args.note)
    except (ValueError, FileNotFoundError) as error:
      print(f"metatrain export: {error}", file=sys.stderr)
      return BAD_INPUT_EXIT_STATUS
    print(f"written to {folder.resolve()}: optimizer.json, theta.npz")
    return 0
  bindings = list(args.gin_bindings) + ([f"TrainConfig.address = {args.address!r}"] if args.address else [])
  try:
    train_config, worker_config, operative = parse_config(args.config, bindings)
  except (ValueError, TypeError, FileNotFoundError) as error:
    print(f"metatrain: bad configuration: {error}", file=sys.stderr)
    return BAD_INPUT_EXIT_STATUS
  from metatrain.loading import CheckpointError, as_path  # orbax
  from metatrain.runtime.checkpoint import SaveFailed
  from metatrain.runtime.train import Preempted, train  # tensorboardX, tqdm

  try:
    workdir = as_path(args.workdir)
  except CheckpointError as error:  # a URL orbax cannot write (s3://): refused before anything is written
    print(f"metatrain: {error}", file=sys.stderr)
    return BAD_INPUT_EXIT_STATUS
  print(f"workdir: {workdir}")
  print(f"  checkpoints: {workdir / 'checkpoints'}")
  print(f"  TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}")
  try:
    _, history = train(train_config, worker_config, workdir, operative_config=operative)
  except Preempted as stopped:
    print(f"metatrain: {stopped}", file=sys.stderr)
    return stopped.exit_status
  except KeyboardInterrupt:  # a second Ctrl-C, or one before the run's loop started
    print(
      "metatrain: stopped at once by Ctrl-C; a checkpoint cut short is discarded, the complete ones in "
      f"{workdir / 'checkpoints'} are intact: run again to resume from the latest.",
      file=sys.stderr,
    )
    return INTERRUPTED_EXIT_STATUS
  except CheckpointError as error:
    print(f"metatrain: {error}", file=sys.stderr)
    return BAD_INPUT_EXIT_STATUS
  except SaveFailed as error:
    print(f"metatrain: {error}", file=sys.stderr)
    return SAVE_FAILED_EXIT_STATUS
  if history:
    print(f"done: {len(history)} outer steps, last meta-loss {history[-1].get('meta_loss', float('nan')):.4f}")
  return 0


def _eval(args: argparse.Namespace) -> int:
  from metatrain.evaluation import compare

  if args.steps < 1 or args.seeds < 1 or args.every < 1 or args.steps % args.every:
    print("metatrain eval: --steps, --seeds, --every must be positive, --steps a multiple of --every.", file=sys.stderr)
    return BAD_INPUT_EXIT_STATUS
  try:
    results, out = compare.compare(
      args.checkpoint,
      args.task,
      args.out,
      steps=args.steps,
      seeds=args.seeds,
      every=args.every,
      tune_seeds=args.tune_seeds,
      tune_split=args.tune_split,
      transfer_from=args.transfer_from,
      baselines=args.baselines,
    )
  except (KeyError, ValueError, FileNotFoundError) as error:
    print(f"metatrain eval: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
    return BAD_INPUT_EXIT_STATUS
  print(compare.summary(results, args.task, args.steps))
  print(f"written to {out.resolve()}: curves.csv, curves.png, summary.md, tensorboard/")
  return 0


if __name__ == "__main__":
  sys.exit(main())
