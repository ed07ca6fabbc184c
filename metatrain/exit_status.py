"""The exit statuses of the ``metatrain`` command, in one place (sysexits.h's and the shell's conventions).

0 is success. The launchers act on them: ``launch/slurm.sbatch`` requeues a job that exits with
:data:`PREEMPTED_EXIT_STATUS`.
"""

#: For bad input (a configuration, arguments, or checkpoints that do not resume), as argparse exits on bad flags.
BAD_INPUT_EXIT_STATUS = 2

#: ``metatrain train`` could not write a checkpoint (EX_IOERR); the earlier ones are intact: make room and run
#: it again.
SAVE_FAILED_EXIT_STATUS = 74

#: ``metatrain train`` stopped by SIGTERM once its checkpoint is written (EX_TEMPFAIL: run it again to resume;
#: launch/slurm.sbatch requeues the job on it).
PREEMPTED_EXIT_STATUS = 75

#: ``metatrain train`` stopped by Ctrl-C (SIGINT; 128 + 2, the shell's convention), after its checkpoint is
#: written or, at a second Ctrl-C, at once.
INTERRUPTED_EXIT_STATUS = 130
