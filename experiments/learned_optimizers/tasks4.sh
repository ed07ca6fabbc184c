#!/usr/bin/env bash
# Experiment 1 on the paper's other architectures (docs/api/guide/results.md): UNF and Deep Sets learned optimizers
# meta-trained on each task of configs/tasks4/ (one meta-training seed, the task file's outer steps), then one
# evaluation per task against the tuned baselines on shared evaluation seeds, at the meta-training horizon.
# Resumable: a finished run starts nothing, an interrupted one resumes from its checkpoint.
#   experiments/learned_optimizers/tasks4.sh [TASKS...]   (default: rnn_lm transformer_lm cnn_fashion16;
#                                                           RUNS=runs/tasks4, JOBS=2, STEPS=1000, SEEDS=8)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/tasks4}
JOBS=${JOBS:-2}
STEPS=${STEPS:-1000}
SEEDS=${SEEDS:-8}
METATRAIN=${METATRAIN:-.venv/bin/metatrain}
[ $# -eq 0 ] && set -- rnn_lm transformer_lm cnn_fashion16
mkdir -p "$RUNS"
for task in "$@"; do
  printf '%s\n' unf deep_sets | xargs -P "$JOBS" -I{} sh -c \
    "/usr/bin/time -f '${task}_{}: %e s' $METATRAIN train --config configs/tasks4/$task.gin \
      --workdir $RUNS/${task}_{} --gin_bindings 'WorkerConfig.learned_optimizer=\"{}\"' >> $RUNS/${task}_{}.log 2>&1"
done
for task in "$@"; do
  /usr/bin/time -f "eval $task: %e s" $METATRAIN eval --checkpoint "$RUNS/${task}_unf" "$RUNS/${task}_deep_sets" \
    --task "$task" --steps "$STEPS" --seeds "$SEEDS" --out "$RUNS/eval/$task"
done
