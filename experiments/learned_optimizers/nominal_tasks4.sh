#!/usr/bin/env bash
# Issue 22 on cnn_fashion16, rnn_lm and transformer_lm: a nominal learned optimizer per task
# (configs/nominal/tasks4.gin), ONE RUN AT A TIME, then its theta selected on validation against Adam-cosine
# tuned on validation, paired on 8 evaluation seeds at the horizon (T = 1000).
# Resumable: a finished run starts nothing, an interrupted one resumes from its checkpoint.
#   experiments/learned_optimizers/nominal_tasks4.sh     (RUNS=runs/nominal_tasks4, TASKS, KINDS="deep_sets",
#                                                         CONFIG=configs/nominal/tasks4.gin, BASELINES=adam_cosine,
#                                                         COMPARE: another RUNS whose runs of the same task the
#                                                         evaluation pairs with these)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/nominal_tasks4}
TASKS=${TASKS:-cnn_fashion16 rnn_lm transformer_lm}
KINDS=${KINDS:-deep_sets}
CONFIG=${CONFIG:-configs/nominal/tasks4.gin}
BASELINES=${BASELINES:-adam_cosine}
METATRAIN=${METATRAIN:-.venv/bin/metatrain}
mkdir -p "$RUNS"
for task in $TASKS; do
  sources=""
  for other in ${COMPARE:+$COMPARE/${task}_*/selected}; do
    [ -d "$other" ] && sources="$sources $other"
  done
  for kind in $KINDS; do
    name=${task}_${kind}
    /usr/bin/time -f "$name: %e s" "$METATRAIN" train --config "$CONFIG" --workdir "$RUNS/$name" \
      --gin_bindings WorkerConfig.task="\"$task\"" WorkerConfig.learned_optimizer="\"$kind\"" \
      > "$RUNS/$name.log" 2>&1
    tail -n 1 "$RUNS/$name.log"
    sources="$sources $RUNS/$name/selected"
  done
  /usr/bin/time -f "eval $task: %e s" "$METATRAIN" eval --checkpoint $sources --task "$task" --steps 1000 \
    --seeds 8 --baselines $BASELINES --out "$RUNS/eval/$task" > "$RUNS/eval_$task.log" 2>&1
  tail -n 1 "$RUNS/eval_$task.log"
done
