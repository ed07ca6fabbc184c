#!/usr/bin/env bash
# Issue 22's headline (docs/api/guide/results.md): UNF and Deep Sets learned optimizers that start as tuned Adam-cosine
# (configs/nominal/base.gin), SEEDS meta-training seeds each, ONE AT A TIME (2 cores: a wall time means
# something only for a run alone), then one evaluation of the thetas each run selected on validation
# (WORKDIR/selected) against the tuned baselines, on mlp_fashion8 and on the held-out small-data task.
# Resumable: a finished run starts nothing, an interrupted one resumes from its checkpoint.
#   experiments/learned_optimizers/nominal.sh                 (RUNS=runs/nominal, SEEDS="0 1 2", KINDS="unf deep_sets")
#   STEPS=5000 experiments/learned_optimizers/nominal.sh       (outer steps per run; default the config's 1000)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/nominal}
SEEDS=${SEEDS:-0 1 2}
KINDS=${KINDS:-unf deep_sets}
CONFIG=${CONFIG:-configs/nominal/base.gin}
METATRAIN=${METATRAIN:-.venv/bin/metatrain}
steps=${STEPS:+TrainConfig.outer_steps=$STEPS}
mkdir -p "$RUNS"
sources=""
for kind in $KINDS; do
  for seed in $SEEDS; do
    name=${kind}_s${seed}
    /usr/bin/time -f "$name: %e s" "$METATRAIN" train --config "$CONFIG" --workdir "$RUNS/$name" \
      --gin_bindings TrainConfig.seed="$seed" WorkerConfig.learned_optimizer="\"$kind\"" $steps \
      > "$RUNS/$name.log" 2>&1
    tail -n 1 "$RUNS/$name.log"
    sources="$sources $RUNS/$name/selected"
  done
done
for task in mlp_fashion8 mlp_fashion8_small; do
  /usr/bin/time -f "eval $task: %e s" "$METATRAIN" eval --checkpoint $sources --task $task --steps 2000 \
    --seeds 8 --out "$RUNS/eval/$task"
done
# The small-data task's baselines at their best on the training loss (the other half of its target).
/usr/bin/time -f "eval mlp_fashion8_small, tuned on train: %e s" "$METATRAIN" eval --checkpoint $sources \
  --task mlp_fashion8_small --steps 2000 --seeds 8 --baselines adam adam_cosine --tune_split train \
  --out "$RUNS/eval/mlp_fashion8_small_tuned_on_train"
# Twice the meta-training horizon (the learned optimizers are told total_steps=4000), against Adam(W)-cosine
# tuned at 4000 steps.
/usr/bin/time -f "eval mlp_fashion8 at 4000 steps: %e s" "$METATRAIN" eval --checkpoint $sources --task mlp_fashion8 \
  --steps 4000 --seeds 8 --baselines adam_cosine adamw_cosine --out "$RUNS/eval/mlp_fashion8_T4000"
for folder in mlp_fashion8 mlp_fashion8_small mlp_fashion8_T4000; do
  .venv/bin/python -m experiments.learned_optimizers.pooled "$RUNS/eval/$folder" > /dev/null
done
