#!/usr/bin/env bash
# Issue 22: a second meta-training seed (TrainConfig.seed = 1) of UNF and Deep Sets on the tasks where one seed
# left them tied, planned before any of its numbers was seen: each kind with the configuration that validation
# chose at seed 0 (the one that ships: UNF with the per-part outer rate on cnn_fashion16, configs/nominal/
# tasks4_long.gin everywhere else), 1,000 outer steps, ONE RUN AT A TIME. Then one evaluation per task of both
# seeds of both kinds (seed 0 linked in from SEED0 and PER_PART) against tuned Adam-cosine on 8 paired
# evaluation seeds, and the pooling of the meta-training seeds (experiments/learned_optimizers/pooled.py).
# Resumable: a finished run starts nothing, an interrupted one resumes from its checkpoint.
#   experiments/learned_optimizers/tasks4_seeds.sh     (RUNS=runs/tasks4_seeds, TASKS="rnn_lm cnn_fashion16",
#                                                       SEED0=runs/tasks4_long, PER_PART=runs/tasks4_long_per_part_lr,
#                                                       SEEDS="1": the meta-training seeds to run beside seed 0,
#                                                       EVAL=the evaluation's folder name, default the task's)
# A third seed (planned on 2026-12-07, after the two-seed tie on rnn_lm was seen, so the pooled interval is a
# sequential look and reads optimistic; the three-seed result is reported whatever its sign, and no fourth seed
# follows): SEEDS="1 2" TASKS=rnn_lm EVAL=rnn_lm_3seeds experiments/learned_optimizers/tasks4_seeds.sh
# A second seed on transformer_lm (planned on 2026-12-07, to test the one task where one seed put UNF ahead of
# Deep Sets; reported whatever its sign): TASKS=transformer_lm EVAL=transformer_lm_2seeds
#   experiments/learned_optimizers/tasks4_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/tasks4_seeds}
TASKS=${TASKS:-rnn_lm cnn_fashion16}
SEED0=${SEED0:-runs/tasks4_long}
PER_PART=${PER_PART:-runs/tasks4_long_per_part_lr}
METATRAIN=${METATRAIN:-.venv/bin/metatrain}
SEEDS=${SEEDS:-1}

config_of() {  # task kind -> the gin file and the folder of its seed-0 run
  if [ "$1" = cnn_fashion16 ] && [ "$2" = unf ]; then
    echo "configs/nominal/tasks4_long_per_part_lr.gin $PER_PART"
  else
    echo "configs/nominal/tasks4_long.gin $SEED0"
  fi
}

for task in $TASKS; do
  mkdir -p "$RUNS/$task"
  sources=""
  for kind in unf deep_sets; do
    read -r config seed0 <<< "$(config_of "$task" "$kind")"
    ln -sfn "$(realpath "$seed0/${task}_$kind")" "$RUNS/$task/${kind}_s0"
    sources="$sources $RUNS/$task/${kind}_s0/selected"
    for seed in $SEEDS; do
      name=${kind}_s$seed
      # A finished run (its log says done) is not rerun, so its log and wall time stay; an interrupted one
      # (a selection is written at every evaluation, so that proves nothing) resumes from its checkpoint.
      if ! grep -qs "^done: " "$RUNS/$task/$name.log"; then
        /usr/bin/time -f "$task $name: %e s" "$METATRAIN" train --config "$config" --workdir "$RUNS/$task/$name" \
          --gin_bindings TrainConfig.seed="$seed" WorkerConfig.task="\"$task\"" \
          WorkerConfig.learned_optimizer="\"$kind\"" > "$RUNS/$task/$name.log" 2>&1
      fi
      tail -n 1 "$RUNS/$task/$name.log"
      sources="$sources $RUNS/$task/$name/selected"
    done
  done
  out=${EVAL:-$task}
  /usr/bin/time -f "eval $out: %e s" "$METATRAIN" eval --checkpoint $sources --task "$task" --steps 1000 \
    --seeds 8 --baselines adam_cosine --out "$RUNS/eval/$out" > "$RUNS/eval_$out.log" 2>&1
  tail -n 1 "$RUNS/eval_$out.log"
  .venv/bin/python -m experiments.learned_optimizers.pooled "$RUNS/eval/$out" > /dev/null
done
