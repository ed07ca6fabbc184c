#!/usr/bin/env bash
# Experiment 1 (docs/api/guide/results.md): UNF and Deep Sets learned optimizers (preset PRESET) and the meta-trained SGDM,
# three meta-training seeds each, then one evaluation of all nine against the tuned baselines at T = 2000.
# Resumable: a finished run starts nothing, an interrupted one resumes from its checkpoint.
#   PRESET=adam experiments/learned_optimizers/exp1.sh        (RUNS=runs/exp1, JOBS=2, SEEDS="0 1 2")
set -euo pipefail
cd "$(dirname "$0")/../.."
PRESET=${PRESET:?set PRESET to the ablation winner, e.g. PRESET=adam}
RUNS=${RUNS:-runs/exp1}
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-0 1 2}
METATRAIN=${METATRAIN:-.venv/bin/metatrain}
mkdir -p "$RUNS"
jobs=""
for seed in $SEEDS; do
  for kind in unf deep_sets sgdm; do jobs="$jobs $kind:$seed"; done
done
printf '%s\n' $jobs | xargs -P "$JOBS" -I{} sh -c '
  kind=${1%:*}; seed=${1#*:}; name=${kind}_s${seed}
  if [ "$kind" = sgdm ]; then config=configs/exp1/sgdm.gin; extra=""
  else config=configs/exp1/base.gin; extra="WorkerConfig.learned_optimizer=\"$kind\" WorkerConfig.preset=\"$2\""; fi
  /usr/bin/time -f "$name: %e s" $3 train --config $config --workdir $4/$name \
    --gin_bindings TrainConfig.seed=$seed $extra > $4/$name.log 2>&1' _ {} "$PRESET" "$METATRAIN" "$RUNS"
sources=""
for kind in unf deep_sets sgdm; do for seed in $SEEDS; do sources="$sources $RUNS/${kind}_s${seed}"; done; done
/usr/bin/time -f "eval mlp_fashion8: %e s" $METATRAIN eval --checkpoint $sources --task mlp_fashion8 --steps 2000 \
  --seeds 8 --out "$RUNS/eval/mlp_fashion8"
/usr/bin/time -f "eval mlp_fashion16_wide: %e s" $METATRAIN eval --checkpoint $sources --task mlp_fashion16_wide \
  --steps 2000 --seeds 8 --transfer_from mlp_fashion8 --out "$RUNS/eval/mlp_fashion16_wide"
for task in mlp_fashion8 mlp_fashion16_wide; do
  .venv/bin/python -m experiments.learned_optimizers.pooled "$RUNS/eval/$task" > /dev/null
done
